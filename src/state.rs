//! What handlers receive, each piece its own `web::Data` so that a handler asks only for what
//! it uses. It stands below the routes: it imports the stores' coalescers and configuration,
//! never a route or the startup that registers these.

use crate::coalesce::{Lookup, Reads};
use crate::conversations::audio::AudioStore;
use crate::conversations::model::AnalysisUpsert;
use crate::conversations::stt::Stt;
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{Claim, IdempotencyConfig};
use crate::participations::model::Delta;
use crate::reply::Reply;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The worker's pool, for handlers that read.
#[derive(Clone)]
pub struct Db {
    pub pool: PgPool,
}

impl Db {
    /// A connection for a read.
    pub async fn conn(&self) -> Result<crate::db::Conn, ApiError> {
        Ok(crate::db::acquire(&self.pool).await?)
    }
}

/// Counter writes: the coalescer, shared by the workers, and the worker's pool its batches
/// write through.
#[derive(Clone)]
pub struct Counters {
    pub batcher: crate::participations::batcher::Batcher,
    pub pool: PgPool,
    pub idempotency: IdempotencyConfig,
}

impl Counters {
    pub async fn apply(&self, id: Uuid, delta: Delta, claim: Option<Claim>) -> ApiResult<Reply> {
        self.batcher.apply(&self.pool, self.idempotency, id, delta, claim).await
    }
}

/// The reads of create-or-get (chats, participations, conversations): the coalescer, shared
/// by the workers, and the worker's pool.
pub struct Lookups<L: Lookup> {
    pub reads: Reads<L>,
    pub pool: PgPool,
}

impl<L: Lookup> Clone for Lookups<L> {
    fn clone(&self) -> Self {
        Self { reads: self.reads.clone(), pool: self.pool.clone() }
    }
}

impl<L: Lookup> Lookups<L> {
    pub async fn find(&self, key: L::Key) -> ApiResult<Option<L::Row>> {
        self.reads.find(&self.pool, key).await
    }
}

/// Save-analysis upserts without `If-Match`: the coalescer, shared by the workers, and the
/// worker's pool.
#[derive(Clone)]
pub struct Upserts {
    pub batcher: crate::conversations::batcher::Batcher,
    pub pool: PgPool,
    pub idempotency: IdempotencyConfig,
}

impl Upserts {
    pub async fn upsert(&self, input: AnalysisUpsert, claim: Option<Claim>) -> ApiResult<Reply> {
        self.batcher.upsert(&self.pool, self.idempotency, input, claim).await
    }
}

/// What upload-audio needs besides the database: where audio goes, how large it may be, and
/// the speech-to-text backend when one is configured.
#[derive(Clone)]
pub struct Uploads {
    pub audio: AudioStore,
    pub stt: Option<Stt>,
    pub max_bytes: u64,
}

/// The origin of the URLs handed out (tracking, QR code), without a trailing slash.
#[derive(Clone)]
pub struct PublicBaseUrl(pub String);

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
