-- Coalesced counter batches now claim their keys inside their own transaction, with the answer
-- already on the row, so nothing looks claims up by claim_id alone any more: a claim is
-- completed or released through its primary key, with claim_id as the fence. The index only
-- cost a write per claim.
DROP INDEX idempotency_keys_claim_id;
