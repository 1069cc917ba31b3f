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
//! JSON write records its key with its effect): a transaction that upserts the rows, then
//! records each key with its write's answer ([`idempotency::record`]) and commits both. A key
//! another request holds (a retry that came first, or the key under another body) takes its
//! write out of the batch, which rolls back and goes again without it; that write is answered
//! from the holder's record. A keyed upsert used to pay a claim, then a transaction of its own:
//! a sixth of the unkeyed throughput at 64 connections.

use super::model::{AnalysisUpsert, Conversation, Shape};
use super::store;
use crate::coalesce::{self, Lanes};
use crate::db::shards::Shards;
use crate::error::ApiResult;
use crate::idempotency::{self, Claim, IdempotencyConfig, StoredResponse};
use crate::reply::{Outcome, Reply};
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

/// One transaction for the round: the upsert, then the keys' records with their answers. While
/// a key is held elsewhere, the transaction rolls back and goes again without its write.
async fn write_keyed(pool: &PgPool, config: IdempotencyConfig, jobs: Vec<Job>) {
    let statement = async |writes: &[&Write]| {
        let claim = |write: &Write| write.claim.clone().expect("a keyed lane holds keyed writes only");
        let mut told: Vec<Option<Told>> = writes.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..writes.len()).collect();
        while !pending.is_empty() {
            let mut tx = crate::db::begin(pool).await?;
            let inputs: Vec<&AnalysisUpsert> = pending.iter().map(|&n| &writes[n].input).collect();
            let written = store::upsert_many(&mut tx, &inputs).await?;
            let replies: Vec<Reply> =
                written.iter().map(|(conversation, outcome)| conversation.reply(*outcome)).collect();
            let claims: Vec<Claim> = pending.iter().map(|&n| claim(writes[n])).collect();
            let responses: Vec<StoredResponse> = replies.iter().map(Into::into).collect();
            let records: Vec<(&Claim, &StoredResponse)> = claims.iter().zip(&responses).collect();
            let recorded = idempotency::record(&mut tx, &records, config).await?;
            if recorded.len() == claims.len() {
                tx.commit().await?;
                for ((n, reply), claim) in pending.drain(..).zip(replies).zip(&claims) {
                    claim.mark_completed();
                    told[n] = Some(Told::Recorded(reply));
                }
            } else {
                drop(tx);
                for (n, claim) in pending.iter().zip(claims) {
                    if !recorded.contains(&claim.claim_id) {
                        told[*n] = Some(Told::Held(claim));
                    }
                }
                pending.retain(|n| told[*n].is_none());
            }
        }
        Ok(told.into_iter().map(|told| told.expect("every write is told")).collect())
    };
    coalesce::settle(jobs, statement, "keyed upsert").await;
}
