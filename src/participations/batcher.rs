//! Coalesces the counter writes that arrive for one participation while a write to it is in
//! flight into the next single statement.
//!
//! One hot participation clicked from many connections is where plain PostgreSQL is weakest:
//! every `UPDATE ... SET clicks = clicks + 1` waits for the row lock of the one before, and each
//! holds it through a WAL flush. Here the first write for a row goes out at once; writes that
//! arrive meanwhile queue, and when it commits, the whole queue goes out as one statement (the
//! `UPDATE` by the sums, one ledger row per write). Each request is answered
//! only after the commit that holds its write, with the row as that commit left it.
//!
//! Keyed requests stay exactly-once, in one stage: their keys are not claimed before the
//! handler (as for other routes) but by the batch's statement itself, which applies the deltas
//! and records each key with the row it left - claim, effect and record together. A key
//! already held (a retry) fails that statement; the batch runs again without it, and the key is
//! answered from its record.

use super::model::{Delta, Participation};
use super::store::KeyHeld;
use super::{not_found, store};
use crate::coalesce::{self, Lanes};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, Claim, IdempotencyConfig, StoredResponse};
use crate::reply::{Outcome, Reply};
use sqlx::PgPool;
use uuid::Uuid;

/// A counter write and the idempotency claim it carries, if any.
struct Write {
    delta: Delta,
    claim: Option<Claim>,
}

type Job = coalesce::Job<Write, ApiResult<Reply>>;

/// One lane per participation, one batch in flight each: a batch waits for the row lock of
/// the one before it anyway.
#[derive(Clone)]
pub struct Batcher {
    lanes: Lanes<Uuid, Write, ApiResult<Reply>>,
}

impl Default for Batcher {
    fn default() -> Self {
        Self { lanes: Lanes::new(1) }
    }
}

impl Batcher {
    /// Applies `delta` (with its idempotency claim, if any) and returns the answer to send.
    pub async fn apply(
        &self,
        pool: &PgPool,
        config: IdempotencyConfig,
        id: Uuid,
        delta: Delta,
        claim: Option<Claim>,
    ) -> ApiResult<Reply> {
        let pool = pool.clone();
        let run = move |jobs| {
            let pool = pool.clone();
            async move { run(&pool, config, id, jobs).await }
        };
        // Only a worker stopping mid-batch drops it (its statement rolls back): retry elsewhere.
        self.lanes.submit(id, Write { delta, claim }, run).await.unwrap_or_else(|| Err(coalesce::unanswered()))
    }
}

/// A counter write's answer: the row as its batch left it, shared by the batch's writes.
fn answer(participation: &Participation) -> Reply {
    Reply::resource(Outcome::Updated, participation, || participation.location())
}

/// The answer a record of a counter write stands for (its answer row, see [`store::apply`]):
/// rendered from the row as the live answer was, so a replay repeats its bytes.
pub async fn recorded_answer(pool: &PgPool, row: serde_json::Value) -> ApiResult<StoredResponse> {
    let participation = store::recorded(&mut *crate::db::waiting(pool.acquire()).await?, row).await?;
    Ok(StoredResponse::from(&answer(&participation)))
}

/// Sends each job its answer. The writes without a key and the first write of each key go in
/// one statement; a key that appears again in the batch (a retry that overtook its answer)
/// goes in the next, where it finds the first's record.
async fn run(pool: &PgPool, config: IdempotencyConfig, id: Uuid, jobs: Vec<Job>) {
    let (keyed, plain): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| job.input.claim.is_some());
    let mut rounds = coalesce::rounds(keyed, |write: &Write| write.claim.as_ref().map(Claim::slot)).into_iter();
    write(pool, config, id, plain, rounds.next().unwrap_or_default()).await;
    for round in rounds {
        write(pool, config, id, Vec::new(), round).await;
    }
}

/// One statement applies the deltas and records the keys ([`store::apply`]). A key that an
/// earlier request holds (a retry) fails it; it runs again without that key, which is
/// answered from its holder's record.
async fn write(pool: &PgPool, config: IdempotencyConfig, id: Uuid, plain: Vec<Job>, keyed: Vec<Job>) {
    let mut held: Vec<Uuid> = Vec::new();
    let result = async {
        let mut conn = crate::db::waiting(pool.acquire()).await?;
        let mut freed_only = false;
        loop {
            let live: Vec<&Job> = keyed
                .iter()
                .filter(|job| !job.input.claim.as_ref().is_some_and(|c| held.contains(&c.claim_id)))
                .collect();
            let deltas: Vec<Delta> =
                plain.iter().chain(live.iter().copied()).map(|job| job.input.delta.clone()).collect();
            if deltas.is_empty() {
                return Ok(None); // every key is held by an earlier request: nothing to write
            }
            let claims: Vec<&Claim> = live.iter().filter_map(|job| job.input.claim.as_ref()).collect();
            match store::apply(&mut conn, id, &deltas, &claims, config).await? {
                // Unknown id: nothing was written; the guard records the 404 of each key like any 4xx.
                Ok(None) => return Ok(None),
                Ok(Some(participation)) => {
                    claims.iter().for_each(|c| c.mark_completed());
                    return ApiResult::Ok(Some(answer(&participation)));
                }
                Err(KeyHeld) => {
                    let taken = idempotency::held_keys(&mut conn, &claims).await?;
                    // Nothing held: the clash was with records past their TTL, deleted now. A
                    // second such clash is a race with other processes: let the clients retry.
                    if taken.is_empty() {
                        if freed_only {
                            return Err(ApiError::Conflict);
                        }
                        freed_only = true;
                    }
                    held.extend(taken);
                }
            }
        }
    }
    .await;
    let shared = match result {
        Ok(shared) => shared,
        Err(error) => {
            tracing::warn!(%error, "a counter batch failed; every write in it is answered with the error");
            plain.into_iter().chain(keyed).for_each(|job| job.answer(Err(error.copy())));
            return;
        }
    };
    for job in plain.into_iter().chain(keyed) {
        match &job.input.claim {
            Some(claim) if held.contains(&claim.claim_id) => {
                let replayed = idempotency::held_elsewhere(pool, claim).await;
                job.answer(replayed);
            }
            _ => {
                if shared.is_some() {
                    crate::ops::metrics::upsert("participation", Outcome::Updated.as_str());
                }
                job.answer(shared.clone().ok_or_else(not_found));
            }
        }
    }
}
