-- Idempotency records beside the rows they answer for. On Citus (migration 20) a record lived on
-- the shard of its key and a counter write on its participation's, so every keyed counter write
-- committed on two shards, in two phases. Each record now carries `shard`, the column Citus
-- places it by: for a counter route (its statement records the key), the participation its path
-- names; for any other route, a uuid drawn from the key (the first 16 bytes of its SHA-256), so
-- those records stay spread by key. upsertd computes the same from the request
-- (`idempotency::Claim::shard`). It is a function of the path and the key, so adding it to the
-- primary key keeps the same rows unique. A counter's answer row carries its participation's id
-- there too. On Citus both tables then move beside `participations`.
--
-- Rebuilding the two primary keys locks both tables for as long as it takes (docs/operating.md,
-- Upgrading); on Citus so does moving them, which rewrites them. One subcommand per ALTER TABLE:
-- Citus refuses ADD CONSTRAINT beside others, and it passes a command on to its workers with
-- the text it came in, which must hold one command: hence the DO block.
DO $$
BEGIN
    ALTER TABLE idempotency_keys ADD COLUMN shard uuid;
    UPDATE idempotency_keys SET shard = CASE
        WHEN path ~ '^/api/participations/[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}/(impressions|clicks|viewer-samples|earnings)$'
            THEN substr(path, 21, 36)::uuid
        -- The key's bytes: a key is visible ASCII, and escape-format `decode` is IMMUTABLE, as Citus
        -- requires of a CASE (`convert_to` is only STABLE).
        ELSE encode(substr(sha256(decode(replace(key, '\', '\\'), 'escape')), 1, 16), 'hex')::uuid
    END;
    ALTER TABLE idempotency_keys ALTER COLUMN shard SET NOT NULL;
    ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
    ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (key, path, method, scope, shard);
    COMMENT ON COLUMN idempotency_keys.shard IS
        'Where the record lives: a counter route''s participation id, else the first 16 bytes of sha256(key).';

    ALTER TABLE idempotency_answer_rows ADD COLUMN shard uuid;
    UPDATE idempotency_answer_rows SET shard = (participation ->> 'id')::uuid;
    ALTER TABLE idempotency_answer_rows ALTER COLUMN shard SET NOT NULL;
    ALTER TABLE idempotency_answer_rows DROP CONSTRAINT idempotency_answer_rows_pkey;
    ALTER TABLE idempotency_answer_rows ADD CONSTRAINT idempotency_answer_rows_pkey PRIMARY KEY (id, shard);
    COMMENT ON COLUMN idempotency_answer_rows.shard IS 'The participation whose row this is.';

    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    PERFORM alter_distributed_table('idempotency_keys', 'shard', colocate_with => 'participations');
    PERFORM alter_distributed_table('idempotency_answer_rows', 'shard', colocate_with => 'participations');
END
$$;
