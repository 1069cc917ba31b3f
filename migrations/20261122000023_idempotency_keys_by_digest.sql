-- The primary key of idempotency_keys held the record's whole identity, (key, path, method,
-- scope, shard): about 130 bytes an entry, since a counter route's path spells a 64-character
-- token and a key may be 255 characters. Clients choose their keys, so every record lands at a
-- random leaf of that index. Once the table holds many records, the index outgrows the cache,
-- and each keyed write reads a leaf, evicts a dirty page for it, and after a checkpoint logs the
-- whole leaf to the WAL. It is now keyed by (shard, digest): `digest` is the first 16 bytes of
-- the SHA-256 of scope, method, path and key joined by newlines, which none of the four can
-- hold (a key is visible ASCII, a path holding a control character is stored as its own
-- digest, `guard::routed_target`), so one identity has one digest. About 40 bytes an entry.
-- upsertd computes the same (`idempotency::claim::digest`). Two identities sharing a digest
-- (2^-64 odds among 2^32 records) would share a record, as one key would.
--
-- Measured on the development machine (bench/PROFILE.md, thirteenth round), keyed clicks at 64
-- connections on a table of 1.75 million records: 19,300-22,400 req/s with this key against
-- 16,000-17,600 with the wide one.
--
-- The backfill rewrites every record and the new key is built from scratch, with the table
-- locked for as long as that takes (docs/operating.md, Upgrading). One subcommand per ALTER
-- TABLE, inside a DO block, for Citus (migration 21); escape-format `decode` is IMMUTABLE, as
-- Citus requires (`convert_to` is only STABLE), and yields a text's bytes once its backslashes
-- are doubled.
DO $$
BEGIN
    ALTER TABLE idempotency_keys ADD COLUMN digest bytea;
    UPDATE idempotency_keys SET digest = substr(sha256(decode(replace(
        scope || E'\n' || method || E'\n' || path || E'\n' || key, '\', '\\'), 'escape')), 1, 16);
    ALTER TABLE idempotency_keys ALTER COLUMN digest SET NOT NULL;
    ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
    ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (shard, digest);
    COMMENT ON COLUMN idempotency_keys.digest IS
        'The first 16 bytes of sha256(scope || E''\n'' || method || E''\n'' || path || E''\n'' || key): the record''s identity, with shard its primary key.';
END
$$;
