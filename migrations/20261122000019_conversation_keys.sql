-- Distributed PostgreSQL (Citus, README "Scaling out") splits conversations by session_id, the
-- key every conversation route names, and keeps a conversation's messages on the same shard;
-- every unique key of a split table must hold that column.
--   conversations: session_id is the key (conversations_session_id_unique, as before). The id,
--   which the server draws (UUIDv7) and which no route looks up, is no longer a unique key:
--   unique by how it is made, indexed for the joins that use it.
--   messages: each holds its conversation's session_id. A message id is unique within its
--   conversation (a repeat of it there is skipped); seq orders the messages of one conversation
--   and is drawn from that conversation's last one under its row lock, not from one sequence
--   for all: a global sequence is not a global order once nodes draw from their own ranges.
DROP VIEW conversation_message_count_mismatches;

ALTER TABLE messages ADD COLUMN session_id text;
UPDATE messages m SET session_id = c.session_id FROM conversations c WHERE c.id = m.conversation_id;
ALTER TABLE messages ALTER COLUMN session_id SET NOT NULL;

ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey;
ALTER TABLE conversations DROP CONSTRAINT conversations_pkey;
CREATE INDEX conversations_by_id ON conversations (id);
ALTER TABLE messages ADD CONSTRAINT messages_session_id_fkey
    FOREIGN KEY (session_id) REFERENCES conversations (session_id) ON DELETE CASCADE;

-- Values already drawn keep their order: they grew with commit order within a conversation.
ALTER TABLE messages ALTER COLUMN seq DROP IDENTITY;
ALTER TABLE messages
    DROP CONSTRAINT messages_seq_unique,
    ADD CONSTRAINT messages_seq_unique UNIQUE (session_id, seq),
    DROP CONSTRAINT messages_pkey,
    ADD CONSTRAINT messages_pkey PRIMARY KEY (session_id, id);
DROP INDEX messages_by_conversation_in_order;
-- A message id sent to another conversation than the one holding it is refused (422); this
-- finds where an id is held.
CREATE INDEX messages_by_id ON messages (id);

CREATE VIEW conversation_message_count_mismatches AS
SELECT c.id AS conversation_id, c.session_id, c.message_count, count(m.id) AS messages
FROM conversations c LEFT JOIN messages m ON m.session_id = c.session_id
GROUP BY c.session_id, c.id, c.message_count
HAVING c.message_count <> count(m.id);

COMMENT ON VIEW conversation_message_count_mismatches IS
    'Conversations whose message_count is not the number of their messages; normally empty.';
COMMENT ON COLUMN messages.session_id IS 'The conversation''s session_id: its key, and where the message lives on Citus.';
COMMENT ON COLUMN messages.seq IS
    'Order of the messages within their conversation: the conversation''s last seq plus the message''s place in its request, drawn under the conversation''s row lock.';
COMMENT ON COLUMN messages.id IS
    'The client''s message id when it sent one (a repeat is stored once per conversation, another conversation''s id is refused); imports derive it from the legacy message, so a re-run adds nothing.';
