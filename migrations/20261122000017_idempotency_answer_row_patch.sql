-- Every write of a coalesced counter batch is now answered with the row as its own write left
-- it, not with the row the batch left. The batch keeps one idempotency_answer_rows row: for
-- batches from now on, the row as it was before the batch (stamped with the batch's
-- updated_at). Each record keeps its write's prefix - the sums of the batch's writes up to and
-- including its own, zeros left out, e.g. {"clicks": 17, "chat_clicks": 17} - and a replay
-- renders the row plus that prefix, as the live answer was rendered. NULL: a record written
-- before this migration, whose row is the batch's row after it, which was its answer then.
ALTER TABLE idempotency_keys ADD COLUMN response_row_patch jsonb;

COMMENT ON COLUMN idempotency_keys.response_row_patch IS
    'Counter records: the sums of the batch''s writes up to and including this one; the answer is the answer row plus these (docs/operating.md).';
