//! The key a request owns, and how long keys live.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long keys are kept and leased.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyConfig {
    pub ttl: Duration,
    pub lease: Duration,
}

/// A key this request owns, found by `Writer` in the request's extensions.
#[derive(Debug, Clone)]
pub struct Claim {
    pub scope: String,
    pub key: String,
    pub method: String,
    pub path: String,
    /// Where the record lives (`idempotency_keys.shard`, migration 21): beside the row the
    /// route names (`Keys::beside`, in the guard), or a place drawn from the key.
    pub shard: uuid::Uuid,
    pub claim_id: uuid::Uuid,
    /// Recorded by the write itself, in the statement or the transaction of its effect (the
    /// counters, the JSON writes), rather than claimed before the handler runs.
    pub deferred: bool,
    /// SHA-256 of method, path and body: a key reused for another request is refused.
    pub fingerprint: Vec<u8>,
    /// Set once the response is stored with the effect, so the guard does not store it again.
    pub(super) completed: Arc<AtomicBool>,
}

impl Claim {
    /// The row of `idempotency_keys` this claim takes, (scope, method, path, key), as a hash:
    /// two claims of one row have one slot. Two rows whose hashes collide (2^-64) only go in
    /// separate statements ([`crate::coalesce::rounds`]) like a key and its retry; hashing
    /// spares a batch four string copies per key.
    pub fn slot(&self) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one((
            &self.scope,
            &self.method,
            &self.path,
            &self.key,
        ))
    }

    pub(crate) fn mark_completed(&self) {
        self.completed.store(true, Ordering::Release);
    }

    pub(super) fn is_completed(&self) -> bool {
        self.completed.load(Ordering::Acquire)
    }
}
