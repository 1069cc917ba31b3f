//! Coalesces the upserts of save-analysis without `If-Match` that arrive while others are in
//! flight into one multi-row statement ([`store::upsert_many`]).
//!
//! One upsert per statement spends most of PostgreSQL's time on what surrounds the row: the
//! statement, the commit and its WAL flush. Writes of one [`Shape`] share a lane; its first write
//! goes out at once and those that arrive meanwhile go out together, each answered after the
//! commit that holds it with the same row and outcome it would have got alone. Conditional
//! upserts run in their own transaction (their check belongs to it). On Citus a lane also holds
//! one shard's session ids only ([`Shards`]).
//!
//! Keyed upserts have lanes of their own. Their keys are recorded by their batch (as every
//! JSON write records its key with its effect), in the same autocommit statement as the upserts
//! ([`store::upsert_recorded`]): each record keeps the row its answer is rendered from. A key
//! another request holds (a retry that came first, or the key under another body) fails that
//! statement, which wrote nothing; the batch goes again without that write, which is answered
//! from the holder's record. A write that changed nothing is recorded after, with its rendered
//! answer ([`idempotency::record`]). A keyed upsert used to pay a claim, then a transaction of
//! its own (a sixth of the unkeyed throughput at 64 connections), then a transaction per batch
//! (bench/PROFILE.md, eleventh and twelfth rounds).

use super::model::{AnalysisUpsert, Conversation, Shape};
use super::store;
use crate::coalesce::{self, Lanes};
use crate::db::shards::Shards;
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, Claim, IdempotencyConfig, KeyHeld, StoredResponse};
use crate::reply::{Outcome, Reply};
use futures_util::future::LocalBoxFuture;
use sqlx::PgPool;

/// Batches in flight per lane: while one waits for its commit, the next can be written.
const IN_FLIGHT: usize = 2;

/// An upsert and its `Idempotency-Key`, if any.
struct Write {
    input: AnalysisUpsert,
    claim: Option<Claim>,
}

/// What a batch tells each of its writes. Moved once, through the lane's channel, so the row
/// stays unboxed, as it was before keyed writes shared the lanes: no allocation per write.
#[allow(clippy::large_enum_variant)]
enum Told {
    /// Written without a key: its own request renders the answer, on its own worker (the
    /// lane's drain, which the next batch waits for, does not).
    Written(Conversation, Outcome),
    /// Written with a key: the answer its record stores, rendered before the commit.
    Recorded(Reply),
    /// Not written: another request holds its key, and that request's record answers it.
    Held(Claim),
}

type Job = coalesce::Job<Write, ApiResult<Told>>;

#[derive(Clone)]
pub struct Batcher {
    /// By shape, shard and whether the writes are keyed.
    lanes: Lanes<(Shape, usize, bool), Write, ApiResult<Told>>,
    /// The shards of `conversations`.
    shards: Shards,
}

impl Batcher {
    pub fn new(shards: Shards) -> Self {
        Self { lanes: Lanes::new(IN_FLIGHT), shards }
    }

    /// Upserts `input` (recording its key, if any) and returns the answer to send.
    pub async fn upsert(
        &self,
        pool: &PgPool,
        config: IdempotencyConfig,
        input: AnalysisUpsert,
        claim: Option<Claim>,
    ) -> ApiResult<Reply> {
        debug_assert!(input.expected_version.is_none(), "If-Match runs in its own transaction");
        let keyed = claim.is_some();
        let run_pool = pool.clone();
        let run = move |jobs| {
            let pool = run_pool.clone();
            async move {
                for round in coalesce::rounds(jobs, |write: &Write| write.input.session_id.clone()) {
                    if !keyed {
                        write(&pool, round).await;
                        continue;
                    }
                    // A key twice in one statement (under two bodies) goes in the next one.
                    for round in coalesce::rounds(round, |write: &Write| write.claim.as_ref().map(Claim::slot)) {
                        write_keyed(&pool, config, round).await;
                    }
                }
            }
        };
        let lane = (input.shape(), self.shards.of(input.session_id.as_str().as_bytes()), keyed);
        let told = self.lanes.submit(lane, Write { input, claim }, run).await;
        match told.unwrap_or_else(|| Err(coalesce::unanswered()))? {
            Told::Written(conversation, outcome) => Ok(conversation.reply(outcome)),
            Told::Recorded(reply) => Ok(reply),
            Told::Held(claim) => idempotency::held_elsewhere(pool, &claim).await,
        }
    }
}

/// One statement for the round ([`coalesce::settle`]: a write the database refuses fails
/// alone).
async fn write(pool: &PgPool, jobs: Vec<Job>) {
    let statement = async |writes: &[&Write]| {
        let inputs: Vec<&AnalysisUpsert> = writes.iter().map(|write| &write.input).collect();
        let mut conn = crate::db::acquire(pool).await?;
        let written = store::upsert_many(&mut conn, &inputs).await?;
        Ok(written.into_iter().map(|(conversation, outcome)| Told::Written(conversation, outcome)).collect())
    };
    coalesce::settle(jobs, statement, "upsert").await;
}

/// One statement for the round, the upserts with their keys' records ([`store::upsert_recorded`]).
/// While a key is held elsewhere the statement writes nothing, and it goes again without that
/// write. A write that changed nothing is recorded after, with the row it found.
async fn write_keyed(pool: &PgPool, config: IdempotencyConfig, jobs: Vec<Job>) {
    let statement = async |writes: &[&Write]| {
        let claim = |n: usize| writes[n].claim.as_ref().expect("a keyed lane holds keyed writes only");
        let mut conn = crate::db::acquire(pool).await?;
        let mut told: Vec<Option<Told>> = writes.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..writes.len()).collect();
        let mut freed_only = false;
        let written = loop {
            let inputs: Vec<&AnalysisUpsert> = pending.iter().map(|&n| &writes[n].input).collect();
            let claims: Vec<&Claim> = pending.iter().map(|&n| claim(n)).collect();
            match store::upsert_recorded(&mut conn, &inputs, &claims, config).await? {
                Ok(written) => break written,
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
                    for &n in pending.iter().filter(|&&n| taken.contains(&claim(n).claim_id)) {
                        told[n] = Some(Told::Held(claim(n).clone()));
                    }
                    pending.retain(|&n| told[n].is_none());
                }
            }
        };
        let mut unchanged: Vec<(usize, Reply)> = Vec::new();
        for (n, (conversation, outcome)) in pending.into_iter().zip(written) {
            let reply = conversation.reply(outcome);
            if outcome == Outcome::Unchanged {
                unchanged.push((n, reply));
            } else {
                claim(n).mark_completed();
                told[n] = Some(Told::Recorded(reply));
            }
        }
        // Nothing was written for these, so their records need no transaction with an effect.
        if !unchanged.is_empty() {
            let responses: Vec<StoredResponse> = unchanged.iter().map(|(_, reply)| reply.into()).collect();
            let records: Vec<(&Claim, &StoredResponse)> =
                unchanged.iter().zip(&responses).map(|((n, _), response)| (claim(*n), response)).collect();
            let recorded = idempotency::record(&mut conn, &records, config).await?;
            for (n, reply) in unchanged {
                told[n] = Some(if recorded.contains(&claim(n).claim_id) {
                    claim(n).mark_completed();
                    Told::Recorded(reply)
                } else {
                    Told::Held(claim(n).clone())
                });
            }
        }
        Ok(told.into_iter().map(|told| told.expect("every write is told")).collect())
    };
    coalesce::settle(jobs, statement, "keyed upsert").await;
}

/// Renders the replays of keyed save-analysis records that keep their row
/// (`idempotency::render_rows_with`, at startup): 201 for an insert, else 200.
pub struct RecordedAnswers;

impl idempotency::RowAnswers for RecordedAnswers {
    fn answer<'a>(
        &'a self,
        pool: &'a PgPool,
        status: u16,
        row: serde_json::Value,
        _patch: Option<serde_json::Value>,
    ) -> LocalBoxFuture<'a, ApiResult<StoredResponse>> {
        Box::pin(async move {
            let conversation = store::recorded(&mut *crate::db::acquire(pool).await?, row).await?;
            let outcome = if status == 201 { Outcome::Inserted } else { Outcome::Updated };
            Ok(StoredResponse::from(&conversation.reply(outcome)))
        })
    }
}
