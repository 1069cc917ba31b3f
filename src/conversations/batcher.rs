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
//! Keyed upserts (their keys claimed by the guard before the handler) have lanes of their own:
//! their batch is a transaction that upserts the rows, then stores each write's answer in its
//! key's record ([`idempotency::complete_many`]) and commits both. Before, each keyed upsert
//! had a transaction of its own, four round trips and a commit per request: a sixth of the
//! unkeyed throughput at 64 connections.

use super::model::{AnalysisUpsert, Conversation, Shape};
use super::store;
use crate::coalesce::{self, Lanes};
use crate::db::shards::Shards;
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, Claim, StoredResponse};
use crate::reply::{Outcome, Reply};
use sqlx::PgPool;

/// Batches in flight per lane: while one waits for its commit, the next can be written.
const IN_FLIGHT: usize = 2;

/// An upsert and the key it was claimed under, if any.
struct Write {
    input: AnalysisUpsert,
    claim: Option<Claim>,
}

/// What a batch tells each of its writes.
enum Told {
    /// Written without a key: its own request renders the answer, on its own worker (the
    /// lane's drain, which the next batch waits for, does not).
    Written(Box<Conversation>, Outcome),
    /// Written with a key: the answer its record stores, rendered before the commit.
    Recorded(Reply),
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

    /// Upserts `input` (with its claimed key, if any) and returns the answer to send.
    pub async fn upsert(&self, pool: &PgPool, input: AnalysisUpsert, claim: Option<Claim>) -> ApiResult<Reply> {
        debug_assert!(input.expected_version.is_none(), "If-Match runs in its own transaction");
        let pool = pool.clone();
        let run = move |jobs| {
            let pool = pool.clone();
            async move {
                for round in coalesce::rounds(jobs, |write: &Write| write.input.session_id.clone()) {
                    write(&pool, round).await;
                }
            }
        };
        let lane = (input.shape(), self.shards.of(input.session_id.as_str().as_bytes()), claim.is_some());
        let told = self.lanes.submit(lane, Write { input, claim }, run).await;
        match told.unwrap_or_else(|| Err(coalesce::unanswered()))? {
            Told::Written(conversation, outcome) => Ok(conversation.reply(outcome)),
            Told::Recorded(reply) => Ok(reply),
        }
    }
}

/// One statement for the round, and for keyed writes their records in its transaction
/// ([`coalesce::settle`]: a write the database refuses fails alone).
async fn write(pool: &PgPool, jobs: Vec<Job>) {
    let statement = async |writes: &[&Write]| {
        let inputs: Vec<&AnalysisUpsert> = writes.iter().map(|write| &write.input).collect();
        let claims: Vec<&Claim> = writes.iter().filter_map(|write| write.claim.as_ref()).collect();
        if claims.is_empty() {
            let mut conn = crate::db::acquire(pool).await?;
            let written = store::upsert_many(&mut conn, &inputs).await?;
            return Ok(written
                .into_iter()
                .map(|(conversation, outcome)| Told::Written(Box::new(conversation), outcome))
                .collect());
        }
        debug_assert_eq!(claims.len(), writes.len(), "a keyed lane holds keyed writes only");
        let mut tx = crate::db::begin(pool).await?;
        let replies: Vec<Reply> = store::upsert_many(&mut tx, &inputs)
            .await?
            .iter()
            .map(|(conversation, outcome)| conversation.reply(*outcome))
            .collect();
        let records: Vec<(&Claim, StoredResponse)> =
            claims.iter().copied().zip(replies.iter().map(Into::into)).collect();
        let stored = match records.as_slice() {
            // One key: the one-row statement, which keeps its plan (see `coalesce::Lookup`).
            [(claim, response)] => usize::from(idempotency::complete(&mut tx, claim, response).await?),
            _ => idempotency::complete_many(&mut tx, &records).await?.len(),
        };
        if stored < records.len() {
            // A lease ran out and a retry owns that key now: its run counts, not ours. The
            // batch rolls back, and its writes go again one by one: only that one is refused.
            return Err(ApiError::IdempotencyKeyInFlight { retry_after_secs: 1 });
        }
        tx.commit().await?;
        claims.iter().for_each(|claim| claim.mark_completed());
        Ok(replies.into_iter().map(Told::Recorded).collect())
    };
    coalesce::settle(jobs, statement, "upsert").await;
}
