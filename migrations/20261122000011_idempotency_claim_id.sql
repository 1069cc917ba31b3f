-- Each claim draws a random claim_id, so one id names one claim of one request. The index lets
-- a coalesced counter batch lock and complete all its claims with "claim_id = ANY($1)" through
-- an index, however large the table grows (a join on the four key columns against an unnest
-- was planned as a scan).
CREATE UNIQUE INDEX idempotency_keys_claim_id ON idempotency_keys (claim_id);
