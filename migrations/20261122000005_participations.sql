-- A streamer's participation in an ad campaign, with its counters.
-- Counters only ever change through one "UPDATE ... SET x = x + $n" (never a read-modify-write
-- in the application), and the CHECKs make a negative counter impossible whatever writes it.
-- browser_source_token is written once, on insert, and no later statement names the column.
CREATE TABLE participations (
    id                   uuid           PRIMARY KEY,
    campaign_id          text           NOT NULL,
    streamer_id          text           NOT NULL,
    browser_source_token text           NOT NULL,
    impressions          bigint         NOT NULL DEFAULT 0,
    clicks               bigint         NOT NULL DEFAULT 0,
    chat_clicks          bigint         NOT NULL DEFAULT 0,
    qr_scans             bigint         NOT NULL DEFAULT 0,
    link_clicks          bigint         NOT NULL DEFAULT 0,
    -- Money: exact decimal with six fractional digits, never a float.
    estimated_earnings   numeric(20, 6) NOT NULL DEFAULT 0,
    viewer_samples       bigint         NOT NULL DEFAULT 0,
    -- Running mean and peak, computed inside the sample's UPDATE.
    avg_viewer_count     double precision NOT NULL DEFAULT 0,
    peak_viewer_count    bigint         NOT NULL DEFAULT 0,
    qr_code_url          text,
    tracking_url         text,
    chat_command         text,
    created_at           timestamptz    NOT NULL DEFAULT now(),
    updated_at           timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT participations_browser_source_token_unique UNIQUE (browser_source_token),
    CONSTRAINT participations_one_per_campaign_and_streamer UNIQUE (campaign_id, streamer_id),
    CONSTRAINT participations_token_is_64_hex CHECK (browser_source_token ~ '^[0-9a-f]{64}$'),
    CONSTRAINT participations_impressions_not_negative CHECK (impressions >= 0),
    CONSTRAINT participations_clicks_not_negative CHECK (clicks >= 0),
    CONSTRAINT participations_chat_clicks_not_negative CHECK (chat_clicks >= 0),
    CONSTRAINT participations_qr_scans_not_negative CHECK (qr_scans >= 0),
    CONSTRAINT participations_link_clicks_not_negative CHECK (link_clicks >= 0),
    CONSTRAINT participations_estimated_earnings_not_negative CHECK (estimated_earnings >= 0),
    CONSTRAINT participations_viewer_samples_not_negative CHECK (viewer_samples >= 0),
    CONSTRAINT participations_avg_viewer_count_not_negative CHECK (avg_viewer_count >= 0),
    CONSTRAINT participations_peak_viewer_count_not_negative CHECK (peak_viewer_count >= 0)
);
