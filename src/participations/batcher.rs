//! Coalesces the counter writes that arrive for one participation while a write to it is in
//! flight into the next single statement.
//!
//! One hot participation clicked from many connections is where plain PostgreSQL is weakest:
//! every `UPDATE ... SET clicks = clicks + 1` waits for the row lock of the one before, and each
//! holds it through a WAL flush. Here the first write for a row goes out at once; writes that
//! arrive meanwhile queue, and when it commits, the whole queue goes out as one statement (the
//! `UPDATE` by the sums, one ledger row per write) in one transaction. Each request is answered
//! only after the commit that holds its write, with the row as that commit left it.
//!
//! Keyed requests stay exactly-once: the batch transaction first locks the claims that are
//! still theirs (a request whose lease ran out and was taken over drops out with 409), then
//! stores the response on every claim before it commits - effect and records together.

use super::model::{Delta, Participation};
use super::store;
use crate::coalesce::{self, Lanes};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, Claim, StoredResponse};
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
    pub async fn apply(&self, pool: &PgPool, id: Uuid, delta: Delta, claim: Option<Claim>) -> ApiResult<Reply> {
        let pool = pool.clone();
        let run = move |jobs| {
            let pool = pool.clone();
            async move { run(&pool, id, jobs).await }
        };
        // Only a worker stopping mid-batch drops it (its transaction rolls back): retry elsewhere.
        self.lanes
            .submit(id, Write { delta, claim }, run)
            .await
            .unwrap_or_else(|| Err(ApiError::DatabaseUnavailable("the server is shutting down".into())))
    }
}

fn reply(participation: &Participation) -> Reply {
    Reply::written("participation", Outcome::Updated, participation, || participation.location())
}

/// A batch's result: the answer (`None`: no such participation) and the keyed jobs it holds.
type Written = Result<(Option<Reply>, Vec<Job>), (ApiError, Vec<Job>)>;

/// Sends each job its answer; a failure of the batch is every job's failure (nothing of it
/// was committed).
async fn run(pool: &PgPool, id: Uuid, jobs: Vec<Job>) {
    let (keyed, plain): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| job.input.claim.is_some());
    let written =
        if keyed.is_empty() { write_plain(pool, id, &plain).await } else { write_keyed(pool, id, &plain, keyed).await };
    match written {
        Ok((answer, keyed)) => {
            for job in plain.into_iter().chain(keyed) {
                job.answer(answer.clone().ok_or_else(not_found));
            }
        }
        Err((error, keyed)) => {
            tracing::warn!(%error, "a counter batch failed; every write in it is answered with the error");
            for job in plain.into_iter().chain(keyed) {
                job.answer(Err(error.copy()));
            }
        }
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("no participation has this id".into())
}

fn deltas<'a>(jobs: impl Iterator<Item = &'a Job>) -> Vec<Delta> {
    jobs.map(|job| job.input.delta.clone()).collect()
}

async fn write_plain(pool: &PgPool, id: Uuid, jobs: &[Job]) -> Written {
    let fail = |e: ApiError| (e, Vec::new());
    let mut conn = crate::db::waiting(pool.acquire()).await.map_err(|e| fail(e.into()))?;
    let updated = store::apply(&mut conn, id, &deltas(jobs.iter())).await.map_err(fail)?;
    Ok((updated.as_ref().map(reply), Vec::new()))
}

/// Plain and keyed writes of one batch in one transaction with the keys' records.
async fn write_keyed(pool: &PgPool, id: Uuid, plain: &[Job], keyed: Vec<Job>) -> Written {
    let mut tx = match crate::db::waiting(pool.begin()).await {
        Ok(tx) => tx,
        Err(e) => return Err((e.into(), keyed)),
    };
    let claims: Vec<Claim> = keyed.iter().filter_map(|j| j.input.claim.clone()).collect();
    let live = match idempotency::live_claims(&mut tx, &claims).await {
        Ok(live) => live,
        Err(e) => return Err((e, keyed)),
    };
    let (keyed, lost): (Vec<Job>, Vec<Job>) =
        keyed.into_iter().partition(|j| j.input.claim.as_ref().is_some_and(|c| live.contains(&c.claim_id)));
    for job in lost {
        job.answer(Err(ApiError::IdempotencyKeyInFlight { retry_after_secs: 1 }));
    }
    let updated = match store::apply(&mut tx, id, &deltas(plain.iter().chain(&keyed))).await {
        Ok(updated) => updated,
        Err(e) => return Err((e, keyed)),
    };
    // Unknown id: nothing to commit; the guard stores the 404 like any 4xx.
    let Some(participation) = updated else { return Ok((None, keyed)) };
    let answer = reply(&participation);
    let claims: Vec<Claim> = keyed.iter().filter_map(|j| j.input.claim.clone()).collect();
    match idempotency::complete(&mut tx, &claims, &StoredResponse::from(&answer)).await {
        Ok(true) => {}
        Ok(false) => return Err((ApiError::IdempotencyKeyInFlight { retry_after_secs: 1 }, keyed)),
        Err(e) => return Err((e, keyed)),
    }
    if let Err(e) = tx.commit().await {
        return Err((e.into(), keyed));
    }
    claims.iter().for_each(Claim::mark_completed);
    Ok((Some(answer), keyed))
}
