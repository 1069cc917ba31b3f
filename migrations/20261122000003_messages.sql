-- Messages are rows, not a growing array inside the conversation, so an append costs the same
-- for the first message and the millionth.
--
-- seq orders messages. It comes from one global sequence; appends to one conversation are
-- serialised by a lock on the conversation row, so within a conversation seq grows in commit
-- order and a reader paging by (conversation_id, seq) never misses a late commit.
-- id is the client's message id when it sent one: appending the same id twice stores it once.
CREATE TABLE messages (
    id                 uuid        PRIMARY KEY,
    conversation_id    uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq                bigint      GENERATED ALWAYS AS IDENTITY,
    role               text        NOT NULL,
    text               text        NOT NULL,
    translation        text,
    grammar_suggestion text,
    audio_id           uuid        REFERENCES audio_files (id),
    phonemes           jsonb,
    feedback           jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_role_is_user_or_bot CHECK (role IN ('user', 'bot')),
    CONSTRAINT messages_seq_unique UNIQUE (seq)
);

CREATE INDEX messages_by_conversation_in_order ON messages (conversation_id, seq);
