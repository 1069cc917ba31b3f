//! The application state handlers reach through `web::Data<AppState>`. It stands below the
//! routes: it imports the stores' coalescers and configuration, never a route or the startup
//! that joins them.

use crate::conversations::audio::AudioStore;
use crate::conversations::stt::Stt;
use crate::error::ApiError;
use crate::idempotency::{self, IdempotencyConfig};
use sqlx::PgPool;

/// What every handler can reach through `web::Data<AppState>`.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub audio: AudioStore,
    pub stt: Option<Stt>,
    pub max_upload_bytes: u64,
    /// Origin of the URLs handed out (tracking, QR code), without a trailing slash.
    pub public_base_url: String,
    pub idempotency: IdempotencyConfig,
    pub counters: crate::participations::batcher::Batcher,
    pub upserts: crate::conversations::batcher::Batcher,
    pub claims: idempotency::Claims,
}

impl AppState {
    /// A connection for a read.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, ApiError> {
        Ok(crate::db::waiting(self.pool.acquire()).await?)
    }
}
