-- POST /api/participations create-or-get over 1,000 (campaign, streamer) pairs: the pair claimed
-- and, when the claim took, the participation and its token inserted, in one statement; the
-- existing participation read through its pair when the claim found it taken.
\set g random(0, 999)
WITH pair AS (
    INSERT INTO participation_pairs (campaign_id, streamer_id, participation_id)
    VALUES ('pgb-c-' || :g, 'pgb-s', gen_random_uuid())
    ON CONFLICT (campaign_id, streamer_id) DO NOTHING
    RETURNING participation_id
), token AS (
    INSERT INTO participation_tokens (browser_source_token, participation_id)
    SELECT encode(sha256(participation_id::text::bytea), 'hex'), participation_id FROM pair
), ins AS (
    INSERT INTO participations (id, campaign_id, streamer_id, browser_source_token)
    SELECT participation_id, 'pgb-c-' || :g, 'pgb-s', encode(sha256(participation_id::text::bytea), 'hex')
    FROM pair
    RETURNING *
)
SELECT count(*) AS inserted FROM ins \gset
\if :inserted = 0
SELECT * FROM participations WHERE id = (
    SELECT participation_id FROM participation_pairs WHERE campaign_id = 'pgb-c-' || :g AND streamer_id = 'pgb-s');
\endif
