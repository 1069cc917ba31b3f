-- POST /api/conversations/{session_id}/messages with one message (-D sid=<session id>): the
-- transaction of append_messages() in src/conversations/store.rs: insert-if-absent and lock the
-- conversation, insert the message and bump message_count/version in one statement, read the
-- stored message back.
\set n random(1, 1000000000)
BEGIN;
INSERT INTO conversations (id, session_id) VALUES (gen_random_uuid(), :sid)
    ON CONFLICT (session_id) DO NOTHING RETURNING id;
SELECT id FROM conversations WHERE session_id = :sid FOR UPDATE;
WITH added AS (
    INSERT INTO messages (id, conversation_id, session_id, seq, role, text)
    SELECT gen_random_uuid(), c.id, :sid, (SELECT coalesce(max(seq), 0) FROM messages WHERE session_id = :sid) + 1,
           'user', 'message ' || :n
    FROM conversations c WHERE c.session_id = :sid
    ON CONFLICT (session_id, id) DO NOTHING
    RETURNING 1
)
UPDATE conversations
SET message_count = message_count + (SELECT count(*) FROM added), version = version + 1, updated_at = now()
WHERE session_id = :sid AND EXISTS (SELECT 1 FROM added)
RETURNING *;
SELECT * FROM messages WHERE session_id = :sid ORDER BY seq DESC LIMIT 1;
COMMIT;
