-- Every write of a coalesced counter batch is answered with the same participation row, yet
-- each of the batch's records kept its own copy (response_row, about 630 of a record's 870
-- bytes). The row is now kept once per batch, in idempotency_answer_rows, and the records point
-- at it: a keyed counter write writes about a third of the bytes it did, and the row is
-- rendered to JSON once per batch instead of once per key.
--
-- Dropping response_row breaks processes of the previous version that are still running
-- (their keyed counter writes fail): stop them before this migration runs (docs/operating.md).
CREATE TABLE idempotency_answer_rows (
    id            uuid        NOT NULL,
    participation jsonb       NOT NULL,
    expires_at    timestamptz NOT NULL,
    CONSTRAINT idempotency_answer_rows_pkey PRIMARY KEY (id)
);

-- The purge deletes expired rows through this index, after the records that point at them.
CREATE INDEX idempotency_answer_rows_by_expiry ON idempotency_answer_rows (expires_at);

-- No foreign key: checking it would cost a lookup per record, the cost this table removes.
-- A row expires with its records (the same expires_at, written by the same statement).
ALTER TABLE idempotency_keys ADD COLUMN response_row_id uuid;

INSERT INTO idempotency_answer_rows (id, participation, expires_at)
SELECT claim_id, response_row, expires_at FROM idempotency_keys WHERE response_row IS NOT NULL;

UPDATE idempotency_keys SET response_row_id = claim_id WHERE response_row IS NOT NULL;

ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_completed_has_answer,
    DROP COLUMN response_row,
    ADD CONSTRAINT idempotency_keys_completed_has_answer
        CHECK (response_status IS NULL OR response_body IS NOT NULL OR response_row_id IS NOT NULL);

-- What the missing foreign key would have caught. A record listed here gets 409 instead of its
-- replay until it expires.
CREATE VIEW idempotency_records_without_answer AS
SELECT k.scope, k.method, k.path, k.key, k.response_row_id, k.completed_at
FROM idempotency_keys k
WHERE k.response_row_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM idempotency_answer_rows a WHERE a.id = k.response_row_id);

COMMENT ON VIEW idempotency_records_without_answer IS
    'Counter records whose answer row is gone, so their key cannot be replayed. Normally empty.';
COMMENT ON TABLE idempotency_answer_rows IS
    'The participations rows (to_jsonb) that keyed counter writes were answered with, one per coalesced batch; idempotency_keys.response_row_id points here.';
COMMENT ON COLUMN idempotency_keys.response_row_id IS
    'Counter routes only: the idempotency_answer_rows row whose rendering was the answer; response_body and response_headers are then NULL.';
