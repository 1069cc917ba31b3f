-- Uploaded audio, stored once per distinct content. The file lives on disk under
-- <data-dir>/audio/<sha256[0..2]>/<sha256>; this row is its catalogue entry. Keying by the
-- content hash is what makes a retried upload store nothing new.
CREATE TABLE audio_files (
    id           uuid        PRIMARY KEY,
    sha256       text        NOT NULL,
    content_type text        NOT NULL,
    bytes        bigint      NOT NULL,
    analysis     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audio_files_sha256_unique UNIQUE (sha256),
    CONSTRAINT audio_files_sha256_is_lowercase_hex CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT audio_files_bytes_not_negative CHECK (bytes >= 0)
);
