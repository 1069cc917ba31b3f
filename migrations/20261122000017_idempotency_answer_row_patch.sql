-- Every write of a coalesced counter batch is now answered with the row as its own write left
-- it (the running sums of the batch up to that write), not with the row the batch left. The
-- batch's row is still kept once, in idempotency_answer_rows; each record adds only the
-- columns in which its own answer differs from that row (`{"clicks": 17}`), and a replay
-- renders `participation || response_row_patch`. NULL: the record's answer is the batch's row
-- (its write was the batch's last, or the record was written before this migration).
ALTER TABLE idempotency_keys ADD COLUMN response_row_patch jsonb;
