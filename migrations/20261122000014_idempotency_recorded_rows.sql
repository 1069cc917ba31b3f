-- A coalesced counter batch claims its keys, applies its writes and records their answer in one
-- autocommit statement, where before it took a transaction of four round trips. Their answer is
-- the participation row the batch left, which exists only inside that statement, so the record
-- keeps that row, and a replay renders the body from it with the code that rendered the live
-- answer: the same bytes.
ALTER TABLE idempotency_keys ADD COLUMN response_row jsonb;

ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_completed_has_answer
    CHECK (response_status IS NULL OR response_body IS NOT NULL OR response_row IS NOT NULL);

COMMENT ON COLUMN idempotency_keys.response_row IS
    'Counter routes only: the participations row (to_jsonb) whose rendering was the answer; response_body and response_headers are then NULL.';

COMMENT ON TABLE idempotency_keys IS
    'Idempotency-Key records of POST /api/* requests: claimed before the request runs and completed in the same transaction as its effect, or (counter routes) claimed and completed by the statement of the effect. See idempotency_keys_in_flight.';
