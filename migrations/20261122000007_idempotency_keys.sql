-- Idempotency-Key records. A row is claimed (response_status NULL, locked_until in the future)
-- before the request runs and completed in the same transaction as the request's effect, so a
-- crash leaves either both or neither. A claim whose process died blocks its key only until
-- locked_until passes; the lease is stored here, so a restart does not shorten it.
CREATE TABLE idempotency_keys (
    scope            text        NOT NULL,
    key              text        NOT NULL,
    method           text        NOT NULL,
    path             text        NOT NULL,
    fingerprint      bytea       NOT NULL,
    claim_id         uuid        NOT NULL,
    locked_until     timestamptz NOT NULL,
    response_status  smallint,
    response_headers jsonb,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    expires_at       timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, method, path, key),
    CONSTRAINT idempotency_keys_key_is_visible_ascii CHECK (key ~ '^[\x21-\x7e]{1,255}$'),
    CONSTRAINT idempotency_keys_completed_has_response
        CHECK ((response_status IS NULL) = (completed_at IS NULL))
);

-- The purge task deletes expired rows in small batches through this index.
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
