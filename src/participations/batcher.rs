//! Coalesces the counter writes that arrive for one participation while a write to it is in
//! flight into the next single statement.
//!
//! One hot participation clicked from many connections is where plain PostgreSQL is weakest:
//! every `UPDATE ... SET clicks = clicks + 1` waits for the row lock of the one before, and each
//! holds it through a WAL flush. Here the first write for a row goes out at once; writes that
//! arrive meanwhile queue, and when it commits, the whole queue goes out as one statement (the
//! `UPDATE` by the sums, one ledger row per write). Each request is answered only after the
//! commit that holds its write, with the row as its own write left it: the writes of a batch
//! run as if one after another, so concurrent clicks are answered 1, 2, 3, ... each once.
//!
//! Keyed requests stay exactly-once, in one stage: their keys are not claimed before the
//! handler (as for other routes) but by the batch's statement itself, which applies the deltas
//! and records each key with its answer - claim, effect and record together. A key
//! already held (a retry) fails that statement; the batch runs again without it, and the key is
//! answered from its record.

use super::model::{not_found, Delta, Participation, Prefix};
use super::store;
use super::store::Applied;
use crate::coalesce::{self, Lanes};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, Claim, IdempotencyConfig, KeyHeld, StoredResponse};
use crate::reply::{Outcome, Reply};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// A counter write and the idempotency claim it carries, if any.
struct Write {
    delta: Delta,
    claim: Option<Claim>,
}

/// What a batch tells each of its writes. The write's own request renders its answer from
/// it, on its own worker: the lane's drain, which the next batch waits for, does not.
enum Told {
    /// Applied: the row before the batch, and the batch's sums up to this write (for a write
    /// that came alone, the row after it and no sums).
    Counted(Arc<Participation>, Prefix),
    /// Its key is held by an earlier request (a retry): answered from that request's record.
    Held(Claim),
}

type Job = coalesce::Job<Write, ApiResult<Told>>;

/// One lane per participation, one batch in flight each: a batch waits for the row lock of
/// the one before it anyway.
#[derive(Clone)]
pub struct Batcher {
    lanes: Lanes<Uuid, Write, ApiResult<Told>>,
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
        let lane_pool = pool.clone();
        let run = move |jobs| {
            let pool = lane_pool.clone();
            async move { run(&pool, config, id, jobs).await }
        };
        let write = Write { delta, claim };
        // Only a worker stopping mid-batch drops it (its statement rolls back): retry elsewhere.
        match self.lanes.submit(id, write, run).await.unwrap_or_else(|| Err(coalesce::unanswered()))? {
            Told::Counted(before, prefix) => {
                crate::recorder::upsert("participation", Outcome::Updated.as_str());
                Ok(answer(&before.after(&prefix)))
            }
            Told::Held(claim) => idempotency::held_elsewhere(pool, &claim).await,
        }
    }
}

/// A counter write's answer: the row as that write left it.
fn answer(participation: &Participation) -> Reply {
    Reply::resource(Outcome::Updated, participation, || participation.location())
}

/// Renders the replays of counter records (`idempotency::render_rows_with`, at startup); their
/// status is always 200.
pub struct RecordedAnswers;

impl idempotency::RowAnswers for RecordedAnswers {
    fn answer<'a>(
        &'a self,
        pool: &'a PgPool,
        _status: u16,
        row: serde_json::Value,
        patch: Option<serde_json::Value>,
    ) -> futures_util::future::LocalBoxFuture<'a, ApiResult<StoredResponse>> {
        Box::pin(recorded_answer(pool, row, patch))
    }
}

/// The answer a record of a counter write stands for: its batch's row before the batch and
/// the write's prefix (see [`store::apply`]), rendered as the live answer was, so a replay
/// repeats its bytes. Records written before migration 17 have no prefix: their row is the
/// answer.
async fn recorded_answer(
    pool: &PgPool,
    row: serde_json::Value,
    prefix: Option<serde_json::Value>,
) -> ApiResult<StoredResponse> {
    let recorded = store::recorded(&mut *crate::db::acquire(pool).await?, row).await?;
    let participation = match prefix {
        Some(prefix) => {
            let prefix: Prefix = serde_json::from_value(prefix).map_err(anyhow::Error::new)?;
            recorded.after(&prefix)
        }
        None => recorded,
    };
    Ok(StoredResponse::from(&answer(&participation)))
}

/// Sends each job its answer. The writes without a key and the first write of each key go in
/// one statement; a key that appears again in the batch (a retry that overtook its answer)
/// goes in the next, where it finds the first's record.
async fn run(pool: &PgPool, config: IdempotencyConfig, id: Uuid, jobs: Vec<Job>) {
    let (keyed, plain): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| job.input.claim.is_some());
    let mut rounds = coalesce::rounds(keyed, |write: &Write| write.claim.as_ref().map(Claim::slot)).into_iter();
    write(pool, config, id, plain.into_iter().chain(rounds.next().unwrap_or_default()).collect()).await;
    for round in rounds {
        write(pool, config, id, round).await;
    }
}

/// Applies the writes in order, each answered as if it had come alone after the ones before
/// it, in as few statements as the writes allow ([`store::apply`]): one, unless
///
/// - a write would overflow a counter: it gets its own 422 and the writes after it go again;
/// - a key is held by an earlier request (a retry): the writes go again without it, and it is
///   answered from its holder's record;
/// - the statement fails otherwise, for a reason that may be one write's: the writes go again
///   one a statement, so only the write at fault gets the error. An outage is everyone's.
async fn write(pool: &PgPool, config: IdempotencyConfig, id: Uuid, mut pending: Vec<Job>) {
    let mut conn = match crate::db::acquire(pool).await {
        Ok(conn) => conn,
        Err(error) => return fail(pending, &error.into()),
    };
    let mut held: Vec<Job> = Vec::new();
    let (mut alone, mut freed_only) = (false, false);
    // After a batch that would overflow: how many of its writes fit, which go next.
    let mut fitting = usize::MAX;
    while !pending.is_empty() {
        let limit = if alone { 1 } else { pending.len() }.min(fitting);
        // A write whose running sum would not even fit in i64 goes in a later statement, where
        // it is judged against the row as the writes before it left it.
        let prefixes = Prefix::running(pending[..limit].iter().map(|job| &job.input.delta));
        let take = prefixes.len();
        let deltas: Vec<&Delta> = pending[..take].iter().map(|job| &job.input.delta).collect();
        let claims: Vec<(usize, &Claim)> =
            pending[..take].iter().enumerate().filter_map(|(n, job)| Some((n, job.input.claim.as_ref()?))).collect();
        match store::apply(&mut conn, id, &deltas, &prefixes, &claims, config).await.map_err(ApiError::from) {
            // Unknown id: nothing was written; the guard records the 404 of each key like any 4xx.
            Ok(Ok(Applied::Unknown)) => pending.drain(..).for_each(|job| job.answer(Err(not_found()))),
            Ok(Ok(Applied::Rows { before, applied: true })) => {
                fitting = usize::MAX;
                let before: Arc<Participation> = Arc::from(before);
                for (job, prefix) in pending.drain(..take).zip(prefixes) {
                    counted(job, before.clone(), prefix);
                }
            }
            // Its answer is the row itself: the row plus nothing.
            Ok(Ok(Applied::Alone(after))) => {
                fitting = usize::MAX;
                counted(pending.remove(0), Arc::from(after), Prefix::default());
            }
            // Nothing was written: the writes before the first that overflows the locked row
            // go next; that one, once first in line, is refused.
            Ok(Ok(Applied::Rows { before, applied: false })) => {
                let first = prefixes.iter().position(|prefix| before.overflow(prefix).is_some());
                match first {
                    Some(0) => {
                        let job = pending.remove(0);
                        let column = before.overflow(&prefixes[0]).expect("it overflows");
                        let refused = job.input.delta.overflow(column);
                        job.answer(Err(refused));
                    }
                    Some(fit) => fitting = fit,
                    None => {
                        let bug =
                            anyhow::anyhow!("the statement found an overflow that Participation::overflow does not");
                        return fail(pending, &ApiError::Internal(bug));
                    }
                }
            }
            Ok(Err(KeyHeld)) => {
                let claims: Vec<&Claim> = claims.iter().map(|(_, claim)| *claim).collect();
                let taken = match idempotency::held_keys(&mut conn, &claims).await {
                    Ok(taken) => taken,
                    Err(error) => return fail(pending, &error),
                };
                // Nothing held: the clash was with records past their TTL, deleted now. A
                // second such clash is a race with other processes: let the clients retry.
                if taken.is_empty() {
                    if freed_only {
                        return fail(pending, &ApiError::Conflict);
                    }
                    freed_only = true;
                }
                let (now_held, rest) = pending.into_iter().partition(|job: &Job| {
                    job.input.claim.as_ref().is_some_and(|claim| taken.contains(&claim.claim_id))
                });
                held.extend::<Vec<Job>>(now_held);
                pending = rest;
            }
            Err(error) if matches!(error, ApiError::DatabaseUnavailable(_)) => return fail(pending, &error),
            Err(error) if take > 1 => {
                pending[..take]
                    .iter()
                    .for_each(|job| job.warn(&error, "a counter batch failed; it goes again one by one"));
                alone = true;
            }
            Err(error) => pending.remove(0).answer(Err(error)),
        }
    }
    for mut job in held {
        let claim = job.input.claim.take().expect("only a keyed write is held");
        job.answer(Ok(Told::Held(claim)));
    }
}

/// Answers an applied write with the row its answer is rendered from and its prefix.
fn counted(job: Job, row: Arc<Participation>, prefix: Prefix) {
    if let Some(claim) = &job.input.claim {
        claim.mark_completed();
    }
    job.answer(Ok(Told::Counted(row, prefix)));
}

/// Every write left gets the error of a failure that belongs to all (the database is down).
fn fail(jobs: Vec<Job>, error: &ApiError) {
    for job in jobs {
        job.warn(error, "a counter batch failed; every write in it gets the error");
        job.answer(Err(error.copy()));
    }
}
