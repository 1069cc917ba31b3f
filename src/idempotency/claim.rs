//! The key a request owns, and how long keys live.

use sha2::{Digest, Sha256};
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
    /// The record's identity, with `shard` its primary key (migration 23): [`digest`] of
    /// scope, method, path and key.
    pub digest: [u8; 16],
    pub claim_id: uuid::Uuid,
    /// Recorded by the write itself, in the statement or the transaction of its effect (the
    /// counters, the JSON writes), rather than claimed before the handler runs.
    pub deferred: bool,
    /// SHA-256 of method, path and body: a key reused for another request is refused.
    pub fingerprint: Vec<u8>,
    /// Set once the response is stored with the effect, so the guard does not store it again.
    pub(super) completed: Arc<AtomicBool>,
}

/// The first 16 bytes of the SHA-256 of scope, method, path and key joined by newlines, which
/// none of them holds: one identity, one digest. Migration 23 computes the same in SQL for the
/// records it found.
pub fn digest(scope: &str, method: &str, path: &str, key: &str) -> [u8; 16] {
    let mut hasher = Sha256::new();
    for (n, part) in [scope, method, path, key].into_iter().enumerate() {
        if n > 0 {
            hasher.update(b"\n");
        }
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..16].try_into().expect("16 of SHA-256's 32 bytes")
}

impl Claim {
    /// The row of `idempotency_keys` this claim takes, as a number: two claims of one row have
    /// one slot. Two rows whose slots collide (2^-64) only go in separate statements
    /// ([`crate::coalesce::rounds`]) like a key and its retry.
    pub fn slot(&self) -> u64 {
        u64::from_le_bytes(self.digest[..8].try_into().expect("8 bytes"))
    }

    pub(crate) fn mark_completed(&self) {
        self.completed.store(true, Ordering::Release);
    }

    pub(super) fn is_completed(&self) -> bool {
        self.completed.load(Ordering::Acquire)
    }
}
