-- A keyed save-analysis batch wrote its upsert and its keys' records in a transaction of four
-- round trips (BEGIN, the upsert, the records with the answers upsertd rendered from the
-- upsert's rows, COMMIT). It is now one autocommit statement, in which the answers exist only
-- as the rows the upsert returned: each record keeps its row (to_jsonb of the conversations
-- row), and a replay renders the body from it with the code that rendered the live answer, the
-- same bytes (response_status tells an insert, 201, from an update, 200). A write that changed
-- nothing still records its rendered body.
--
-- One subcommand per ALTER TABLE, inside a DO block, for Citus (migration 21).
DO $$
BEGIN
    ALTER TABLE idempotency_keys ADD COLUMN response_row jsonb;
    ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_completed_has_answer;
    ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_completed_has_answer
        CHECK (response_status IS NULL OR response_body IS NOT NULL OR response_row_id IS NOT NULL
               OR response_row IS NOT NULL);
    COMMENT ON COLUMN idempotency_keys.response_row IS
        'Keyed save-analysis records: the conversations row (to_jsonb) the answer is rendered from; response_body and response_headers are then NULL.';
END
$$;
