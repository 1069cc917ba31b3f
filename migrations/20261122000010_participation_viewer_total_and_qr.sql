-- The running mean of viewer samples is the total divided by the count, both kept exactly as
-- integers, so concurrent samples give the same mean as sequential ones (an incremental float
-- mean would drift with the order of arrival). avg_viewer_count is derived in the same UPDATE.
ALTER TABLE participations
    ADD COLUMN viewer_count_total bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT participations_viewer_count_total_not_negative CHECK (viewer_count_total >= 0);

-- The QR code image (PNG) of a participation's tracking URL, made by POST .../qr-code and
-- served by GET .../qr-code.png. A table of its own keeps the image out of the counter rows
-- that every click rewrites and returns.
CREATE TABLE participation_qr_codes (
    participation_id uuid        PRIMARY KEY REFERENCES participations (id) ON DELETE CASCADE,
    png              bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
