-- psql is upsertd's second interface: every table and key column says what it holds and which
-- route writes it (\d+ shows it), and the views below answer an operator's usual questions with
-- a plain SELECT * FROM. `upsertd audit` reads the same views, so psql and the audit agree.
-- This migration also prepares the schema for `upsertd import` (import_sources, 'import' events).

COMMENT ON TABLE audio_files IS
    'Uploaded audio, one row per distinct content; the bytes live in <data-dir>/audio/<sha256[0..2]>/<sha256>. Written by POST /api/upload-audio.';
COMMENT ON COLUMN audio_files.sha256 IS
    'Natural key: SHA-256 of the bytes, 64 lowercase hex (audio_files_sha256_unique). The same bytes uploaded twice are one row.';
COMMENT ON COLUMN audio_files.analysis IS 'What the server measured in the file (format, levels, duration).';

COMMENT ON TABLE conversations IS
    'One conversation per client session. Written by POST /api/conversations, /api/save-analysis, /api/upload-audio, /api/conversations/{session_id}/messages and upsertd import conversations.';
COMMENT ON COLUMN conversations.session_id IS
    'Natural key (conversations_session_id_unique): 1-128 of [A-Za-z0-9._:-], never null. Every write upserts on it.';
COMMENT ON COLUMN conversations.analysis IS 'Replaced whole by save-analysis / upload-audio; never deep-merged.';
COMMENT ON COLUMN conversations.message_count IS 'Kept equal to the number of its messages rows by the append statement.';
COMMENT ON COLUMN conversations.version IS 'Starts at 1, grows by one on every change; sent as the ETag.';

COMMENT ON TABLE messages IS
    'Messages of a conversation, one row each, in seq order. Written by POST /api/conversations/{session_id}/messages and upsertd import conversations.';
COMMENT ON COLUMN messages.id IS
    'The client''s message id when it sent one (a repeat is stored once); imports derive it from the legacy message, so a re-run adds nothing.';
COMMENT ON COLUMN messages.seq IS 'Order of the messages within a conversation (one global sequence).';

COMMENT ON TABLE chats IS 'One chat per group of participants. Written by POST /api/chats and upsertd import chats.';
COMMENT ON COLUMN chats.participants_key IS
    'Natural key (chats_participants_key_unique): the sorted distinct participant ids joined by '','' (byte order).';
COMMENT ON COLUMN chats.participants IS 'The participant ids, sorted and distinct; participants_key is derived from them.';

COMMENT ON TABLE participations IS
    'A streamer''s participation in an ad campaign with its counters. Created by POST /api/participations; counters change only through the counter routes (each also appends a participation_events row) and upsertd import participations.';
COMMENT ON COLUMN participations.campaign_id IS
    'With streamer_id the natural key (participations_one_per_campaign_and_streamer).';
COMMENT ON COLUMN participations.streamer_id IS 'See campaign_id.';
COMMENT ON COLUMN participations.browser_source_token IS
    'Secret of the stream overlay (GET /api/overlay/{token}): 64 lowercase hex from a CSPRNG, set once on insert, never updated (participations_browser_source_token_unique).';
COMMENT ON COLUMN participations.estimated_earnings IS 'Money, numeric(20,6); the sum of its events'' earnings.';

COMMENT ON TABLE participation_events IS
    'The ledger: one row per counter write (same statement as the UPDATE) and one per imported legacy document, so every counter equals the sum of its events. See participation_ledger_mismatches.';

COMMENT ON TABLE idempotency_keys IS
    'Idempotency-Key records of POST /api/* requests: claimed before the request runs, completed in the same transaction as its effect. See idempotency_keys_in_flight.';
COMMENT ON COLUMN idempotency_keys.locked_until IS
    'The lease of a running request: after it passes, a retry may take the key over.';
COMMENT ON COLUMN idempotency_keys.response_status IS 'NULL while the first request runs; then its stored status.';

-- Imported legacy participations carry counters that no API event produced; one 'import' event
-- per legacy document records them, and viewer_samples (always 0 for API events, which count
-- as one sample each when kind = 'viewer_sample') carries the document's sample count.
ALTER TABLE participation_events DROP CONSTRAINT participation_events_kind_known;
ALTER TABLE participation_events ADD CONSTRAINT participation_events_kind_known
    CHECK (kind IN ('impressions', 'click', 'viewer_sample', 'earnings', 'import'));
ALTER TABLE participation_events ADD COLUMN viewer_samples bigint NOT NULL DEFAULT 0;
ALTER TABLE participation_events ADD CONSTRAINT participation_events_viewer_samples_only_on_import
    CHECK (viewer_samples = 0 OR kind = 'import');
COMMENT ON COLUMN participation_events.viewer_samples IS
    'Viewer samples an imported legacy document had counted (kind import only).';

-- Which legacy document became which row, so a second run of the same export changes nothing
-- (counters are not added twice, generated session ids are reused) and old ids stay traceable.
CREATE TABLE import_sources (
    collection  text        NOT NULL,
    source_id   text        NOT NULL,
    target_id   uuid        NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT import_sources_pkey PRIMARY KEY (collection, source_id),
    CONSTRAINT import_sources_collection_known CHECK (collection IN ('conversations', 'chats', 'participations'))
);
COMMENT ON TABLE import_sources IS
    'Legacy documents already imported by upsertd import: the Mongo _id (or a hash of a document without one) and the row it went into.';
COMMENT ON COLUMN import_sources.target_id IS 'conversations.id, chats.id or participations.id, after merging.';

-- Any natural-key value held by more than one row. Normally empty: the unique constraints
-- forbid it; rows here mean a constraint was dropped or an index is corrupt.
CREATE VIEW duplicate_key_candidates AS
SELECT 'conversations' AS table_name, 'session_id' AS key_name, session_id AS key_value,
       count(*) AS row_count, array_agg(id::text ORDER BY id) AS row_ids
FROM conversations GROUP BY session_id HAVING count(*) > 1
UNION ALL
SELECT 'chats', 'participants_key', participants_key, count(*), array_agg(id::text ORDER BY id)
FROM chats GROUP BY participants_key HAVING count(*) > 1
UNION ALL
SELECT 'participations', 'browser_source_token', browser_source_token, count(*), array_agg(id::text ORDER BY id)
FROM participations GROUP BY browser_source_token HAVING count(*) > 1
UNION ALL
SELECT 'participations', '(campaign_id, streamer_id)', campaign_id || ',' || streamer_id, count(*),
       array_agg(id::text ORDER BY id)
FROM participations GROUP BY campaign_id, streamer_id HAVING count(*) > 1
UNION ALL
SELECT 'audio_files', 'sha256', sha256, count(*), array_agg(id::text ORDER BY id)
FROM audio_files GROUP BY sha256 HAVING count(*) > 1;
COMMENT ON VIEW duplicate_key_candidates IS 'Key values held by more than one row; normally empty.';

-- Keys that are null or break the contract's format. Normally empty (NOT NULL and CHECKs).
CREATE VIEW malformed_keys AS
SELECT 'conversations' AS table_name, 'session_id' AS key_name, id::text AS row_id, session_id AS key_value,
       CASE WHEN session_id IS NULL THEN 'null' ELSE 'not 1-128 of [A-Za-z0-9._:-]' END AS problem
FROM conversations WHERE session_id IS NULL OR session_id !~ '^[A-Za-z0-9._:-]{1,128}$'
UNION ALL
SELECT 'chats', 'participants_key', id::text, participants_key,
       CASE WHEN participants_key IS NULL THEN 'null'
            ELSE 'not the sorted distinct participant ids (each 1-128 of [A-Za-z0-9._@:-]) joined by '','''
       END
FROM chats
WHERE participants_key IS NULL
   OR participants_key IS DISTINCT FROM
      (SELECT string_agg(DISTINCT p COLLATE "C", ',' ORDER BY p COLLATE "C") FROM unnest(participants) AS p)
   OR EXISTS (SELECT 1 FROM unnest(participants) AS p WHERE p IS NULL OR p !~ '^[A-Za-z0-9._@:-]{1,128}$')
UNION ALL
SELECT 'participations', 'browser_source_token', id::text, browser_source_token,
       CASE WHEN browser_source_token IS NULL THEN 'null' ELSE 'not 64 lowercase hex' END
FROM participations WHERE browser_source_token IS NULL OR browser_source_token !~ '^[0-9a-f]{64}$'
UNION ALL
SELECT 'participations', '(campaign_id, streamer_id)', id::text, campaign_id || ',' || streamer_id,
       'null, or an id that is not 1-128 of [A-Za-z0-9._@:-]'
FROM participations
WHERE campaign_id IS NULL OR streamer_id IS NULL
   OR campaign_id !~ '^[A-Za-z0-9._@:-]{1,128}$' OR streamer_id !~ '^[A-Za-z0-9._@:-]{1,128}$'
UNION ALL
SELECT 'audio_files', 'sha256', id::text, sha256,
       CASE WHEN sha256 IS NULL THEN 'null' ELSE 'not 64 lowercase hex' END
FROM audio_files WHERE sha256 IS NULL OR sha256 !~ '^[0-9a-f]{64}$';
COMMENT ON VIEW malformed_keys IS 'Natural keys that are null or malformed; normally empty.';

-- Idempotency keys whose first request has not finished. stuck: its lease has passed, so the
-- process running it most likely died; a retry may take the key over.
CREATE VIEW idempotency_keys_in_flight AS
SELECT scope, method, path, key, claim_id, created_at, locked_until, locked_until < now() AS stuck
FROM idempotency_keys
WHERE response_status IS NULL;
COMMENT ON VIEW idempotency_keys_in_flight IS 'Claimed, unfinished Idempotency-Keys; stuck = past the lease.';

-- One row per (participation, counter) whose stored value differs from the sum of its events.
-- viewer_samples counts 'viewer_sample' events plus the samples imported documents carried.
CREATE VIEW participation_ledger_mismatches AS
WITH ledger AS (
    SELECT participation_id,
           sum(impressions) AS impressions, sum(clicks) AS clicks, sum(chat_clicks) AS chat_clicks,
           sum(qr_scans) AS qr_scans, sum(link_clicks) AS link_clicks, sum(earnings) AS earnings,
           count(*) FILTER (WHERE kind = 'viewer_sample') + sum(viewer_samples) AS viewer_samples
    FROM participation_events GROUP BY participation_id
)
SELECT p.id AS participation_id, p.campaign_id, p.streamer_id, c.counter, c.stored, c.from_events
FROM participations p
LEFT JOIN ledger l ON l.participation_id = p.id
CROSS JOIN LATERAL (VALUES
    ('impressions', p.impressions::numeric, coalesce(l.impressions, 0)),
    ('clicks', p.clicks::numeric, coalesce(l.clicks, 0)),
    ('chat_clicks', p.chat_clicks::numeric, coalesce(l.chat_clicks, 0)),
    ('qr_scans', p.qr_scans::numeric, coalesce(l.qr_scans, 0)),
    ('link_clicks', p.link_clicks::numeric, coalesce(l.link_clicks, 0)),
    ('estimated_earnings', p.estimated_earnings, coalesce(l.earnings, 0)),
    ('viewer_samples', p.viewer_samples::numeric, coalesce(l.viewer_samples, 0))
) AS c(counter, stored, from_events)
WHERE c.stored <> c.from_events;
COMMENT ON VIEW participation_ledger_mismatches IS
    'Participation counters that disagree with the sum of their participation_events; normally empty.';

-- Conversations whose message_count disagrees with their messages rows. Normally empty.
CREATE VIEW conversation_message_count_mismatches AS
SELECT c.id AS conversation_id, c.session_id, c.message_count, count(m.id) AS messages
FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
GROUP BY c.id
HAVING c.message_count <> count(m.id);
COMMENT ON VIEW conversation_message_count_mismatches IS
    'Conversations whose message_count is not the number of their messages; normally empty.';
