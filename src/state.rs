//! The application state handlers reach through `web::Data<AppState>`. It stands below the
//! routes: it imports the stores' coalescers and configuration, never a route or the startup
//! that joins them.

use crate::conversations::audio::AudioStore;
use crate::conversations::stt::Stt;
use crate::error::ApiError;
use crate::idempotency::{self, IdempotencyConfig};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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

/// Every worker's pool, by worker, for the gauges of `/metrics`: one worker answers it, and it
/// reports them all.
#[derive(Clone, Default)]
pub struct WorkerPools(Arc<Mutex<BTreeMap<usize, PgPool>>>);

impl WorkerPools {
    pub fn insert(&self, worker: usize, pool: PgPool) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(worker, pool);
    }

    pub fn all(&self) -> Vec<(usize, PgPool)> {
        let pools = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pools.iter().map(|(worker, pool)| (*worker, pool.clone())).collect()
    }
}
