-- The ledger: every counter write appends one row here in the same statement as its UPDATE,
-- so each counter of a participation equals the sum of its events and money can be audited.
CREATE TABLE participation_events (
    id               bigint         GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    participation_id uuid           NOT NULL REFERENCES participations (id) ON DELETE CASCADE,
    kind             text           NOT NULL,
    impressions      bigint         NOT NULL DEFAULT 0,
    clicks           bigint         NOT NULL DEFAULT 0,
    chat_clicks      bigint         NOT NULL DEFAULT 0,
    qr_scans         bigint         NOT NULL DEFAULT 0,
    link_clicks      bigint         NOT NULL DEFAULT 0,
    earnings         numeric(20, 6) NOT NULL DEFAULT 0,
    viewer_count     bigint,
    created_at       timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT participation_events_kind_known
        CHECK (kind IN ('impressions', 'click', 'viewer_sample', 'earnings'))
);

CREATE INDEX participation_events_by_participation
    ON participation_events (participation_id, id);
