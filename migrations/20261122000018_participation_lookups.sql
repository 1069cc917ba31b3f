-- Distributed PostgreSQL (Citus, README "Scaling out") splits a table by one column, and every
-- unique key of a distributed table must hold that column. participations is split by id, the
-- column every counter write names; its two other natural keys, the overlay token and the
-- (campaign_id, streamer_id) pair, each get a table of their own keyed by them alone, written
-- in the transaction that creates the participation. The keys stay enforced by the database,
-- here as on Citus: a second participation for a pair, or a second holder of a token, is a
-- unique violation of these tables' primary keys. Neither column of participations ever
-- changes after its insert, so the rows here never change either.
CREATE TABLE participation_pairs (
    campaign_id      text NOT NULL,
    streamer_id      text NOT NULL,
    participation_id uuid NOT NULL,
    CONSTRAINT participation_pairs_pkey PRIMARY KEY (campaign_id, streamer_id)
);

CREATE TABLE participation_tokens (
    browser_source_token text NOT NULL,
    participation_id     uuid NOT NULL,
    CONSTRAINT participation_tokens_pkey PRIMARY KEY (browser_source_token),
    CONSTRAINT participation_tokens_token_is_64_hex CHECK (browser_source_token ~ '^[0-9a-f]{64}$')
);

INSERT INTO participation_pairs (campaign_id, streamer_id, participation_id)
SELECT campaign_id, streamer_id, id FROM participations;
INSERT INTO participation_tokens (browser_source_token, participation_id)
SELECT browser_source_token, id FROM participations;

ALTER TABLE participations
    DROP CONSTRAINT participations_browser_source_token_unique,
    DROP CONSTRAINT participations_one_per_campaign_and_streamer;

-- The ledger's key holds the participation it belongs to, so that its rows can live beside
-- their participation; the index that listed a participation's events is that key now.
ALTER TABLE participation_events
    DROP CONSTRAINT participation_events_pkey,
    ADD CONSTRAINT participation_events_pkey PRIMARY KEY (participation_id, id);
DROP INDEX participation_events_by_participation;

COMMENT ON TABLE participation_pairs IS
    'Natural key of participations: one participation per (campaign_id, streamer_id). Written with the participation by POST /api/participations and upsertd import participations; never changed.';
COMMENT ON TABLE participation_tokens IS
    'Natural key of participations: each browser_source_token (the overlay''s secret) belongs to one participation. Written with the participation; never changed.';
COMMENT ON COLUMN participations.campaign_id IS
    'With streamer_id the natural key, kept unique by participation_pairs.';
COMMENT ON COLUMN participations.browser_source_token IS
    'Secret of the stream overlay (GET /api/overlay/{token}): 64 lowercase hex from a CSPRNG, set once on insert, never updated; kept unique by participation_tokens.';

-- What keeps the keys unique is that each participation holds the rows that claim its pair and
-- its token. A participation written around the API (psql, a restore) may lack them, and then a
-- create-or-get would not find its pair. Normally empty; `upsertd audit` reports it. Written
-- with EXCEPT rather than an outer join, which a distributed database cannot run between
-- tables split by different columns.
CREATE VIEW participation_keys_unclaimed AS
SELECT p.id, 'campaign_id, streamer_id' AS key_name, p.campaign_id || ',' || p.streamer_id AS key_value
FROM participations p
WHERE p.id IN (SELECT id FROM (SELECT campaign_id, streamer_id, id FROM participations
                               EXCEPT SELECT campaign_id, streamer_id, participation_id FROM participation_pairs) u)
UNION ALL
SELECT p.id, 'browser_source_token', p.browser_source_token
FROM participations p
WHERE p.id IN (SELECT id FROM (SELECT browser_source_token, id FROM participations
                               EXCEPT SELECT browser_source_token, participation_id FROM participation_tokens) u);

COMMENT ON VIEW participation_keys_unclaimed IS
    'Participations whose pair or token no row of participation_pairs / participation_tokens claims for them. Normally empty.';
