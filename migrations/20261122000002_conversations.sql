-- One conversation per client session. The unique session_id is the natural key every write
-- upserts on (INSERT ... ON CONFLICT (session_id)), so a retried or legacy second step can
-- never create a second row or fail with a duplicate-key error. The CHECK repeats the API's
-- format rule so that rows written by other tools (psql, imports) obey it as well, and a
-- NULL or empty key - the bug that broke the Mongo deployments - cannot be stored at all.
CREATE TABLE conversations (
    id            uuid        PRIMARY KEY,
    session_id    text        NOT NULL,
    user_id       text,
    language      text,
    transcript    text,
    analysis      jsonb,
    audio_id      uuid        REFERENCES audio_files (id),
    -- Kept by the append statement so listing a conversation never counts its messages.
    message_count bigint      NOT NULL DEFAULT 0,
    -- Grows by one on every change; a write that changes nothing leaves it (and the row) alone.
    version       bigint      NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversations_session_id_unique UNIQUE (session_id),
    CONSTRAINT conversations_session_id_format CHECK (session_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    CONSTRAINT conversations_message_count_not_negative CHECK (message_count >= 0),
    CONSTRAINT conversations_version_positive CHECK (version >= 1)
);

-- GET /api/conversations?user_id=... lists newest first with a (created_at, id) keyset.
CREATE INDEX conversations_by_user_newest_first
    ON conversations (user_id, created_at DESC, id DESC);
CREATE INDEX conversations_newest_first ON conversations (created_at DESC, id DESC);
