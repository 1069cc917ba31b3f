-- On a Citus coordinator (README, "Scaling out": the citus extension created in this database
-- and the workers registered before `upsertd migrate`), the tables are distributed by the plan
-- below; on plain PostgreSQL this migration does nothing. tests/api/distribution.rs reads the
-- plan from this file and checks the schema against it on every test run.
--
-- The plan: what one request writes lives on one shard.
--   conversations by session_id, the key every conversation route names, with their messages
--   beside them;
--   participations by id, the column every counter write names, with their ledger
--   (participation_events) and QR images beside them (co-located: same column, same shards);
--   participation_pairs by campaign_id and participation_tokens by browser_source_token: each
--   keeps one natural key unique, looked up by it alone;
--   idempotency_keys by key and idempotency_answer_rows by id: records are found by their key;
--   audio_files, chats and import_sources as reference tables (a copy on every node): small or
--   read by many, written rarely.
-- The operator views, in forms a distributed database can run: a correlated NOT EXISTS between
-- tables split by different columns cannot be planned there; EXCEPT can, and plain PostgreSQL
-- runs it as a hashed set operation.
CREATE OR REPLACE VIEW idempotency_records_without_answer AS
SELECT k.scope, k.method, k.path, k.key, k.response_row_id, k.completed_at
FROM idempotency_keys k
WHERE k.response_row_id IN (SELECT response_row_id FROM idempotency_keys WHERE response_row_id IS NOT NULL
                            EXCEPT SELECT id FROM idempotency_answer_rows);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    PERFORM create_reference_table('audio_files');
    PERFORM create_reference_table('chats');
    PERFORM create_reference_table('import_sources');
    -- Foreign keys between distributed tables are created after both are distributed, one
    -- shard at a time within this transaction.
    SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    ALTER TABLE messages DROP CONSTRAINT messages_session_id_fkey;
    PERFORM create_distributed_table('conversations', 'session_id');
    PERFORM create_distributed_table('messages', 'session_id', colocate_with => 'conversations');
    ALTER TABLE messages ADD CONSTRAINT messages_session_id_fkey
        FOREIGN KEY (session_id) REFERENCES conversations (session_id) ON DELETE CASCADE;
    PERFORM create_distributed_table('participations', 'id');
    PERFORM create_distributed_table('participation_events', 'participation_id', colocate_with => 'participations');
    PERFORM create_distributed_table('participation_qr_codes', 'participation_id', colocate_with => 'participations');
    PERFORM create_distributed_table('participation_pairs', 'campaign_id');
    PERFORM create_distributed_table('participation_tokens', 'browser_source_token');
    PERFORM create_distributed_table('idempotency_keys', 'key');
    PERFORM create_distributed_table('idempotency_answer_rows', 'id');
END
$$;
