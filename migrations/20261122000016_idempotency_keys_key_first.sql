-- The primary key of idempotency_keys led with scope, method and path, which most keys share
-- (one caller, one route), so every comparison inside the index stepped over three equal
-- columns before reaching the key that tells two records apart. Led by the key, a comparison
-- is mostly settled by its first column, and the inner pages keep only that column. Same
-- columns, same uniqueness, same name (the code recognises a held key by it).
--
-- Measured on the development machine, 64 keyed counter writes in one statement into a
-- 220,000-record table: 4.1-4.9 ms with the old order, 3.8-4.1 ms with this one (3.0-3.3 ms
-- with no primary key at all).
--
-- Rebuilding the index locks the table for as long as it takes (docs/operating.md, Upgrading).
ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_pkey,
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (key, path, method, scope);
