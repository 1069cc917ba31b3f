//! Coalesces the plain upserts of save-analysis (no `Idempotency-Key`, no `If-Match`) that
//! arrive while others are in flight into one multi-row statement ([`store::upsert_many`]).
//!
//! One upsert per statement spends most of PostgreSQL's time on what surrounds the row: the
//! statement, the commit and its WAL flush. Writes of one [`Shape`] share a lane; its first write
//! goes out at once and those that arrive meanwhile go out together, each answered after the
//! commit that holds it with the same row and outcome it would have got alone. Keyed and
//! conditional upserts run in their own transaction (their records and checks belong to it).
//! On Citus a lane also holds one shard's session ids only ([`Shards`]).

use super::model::{AnalysisUpsert, Conversation, Shape};
use super::store;
use crate::coalesce::{self, Lanes};
use crate::db::shards::Shards;
use crate::error::ApiResult;
use crate::reply::Outcome;
use sqlx::PgPool;

/// Batches in flight per shape: while one waits for its commit, the next can be written.
const IN_FLIGHT: usize = 2;

type Answer = ApiResult<(Conversation, Outcome)>;
type Job = coalesce::Job<AnalysisUpsert, Answer>;

#[derive(Clone)]
pub struct Batcher {
    lanes: Lanes<(Shape, usize), AnalysisUpsert, Answer>,
    /// The shards of `conversations`.
    shards: Shards,
}

impl Batcher {
    pub fn new(shards: Shards) -> Self {
        Self { lanes: Lanes::new(IN_FLIGHT), shards }
    }

    pub async fn upsert(&self, pool: &PgPool, input: AnalysisUpsert) -> Answer {
        debug_assert!(input.expected_version.is_none(), "If-Match runs in its own transaction");
        let pool = pool.clone();
        let run = move |jobs| {
            let pool = pool.clone();
            async move {
                for round in coalesce::rounds(jobs, |input: &AnalysisUpsert| input.session_id.clone()) {
                    write(&pool, round).await;
                }
            }
        };
        let lane = (input.shape(), self.shards.of(input.session_id.as_str().as_bytes()));
        self.lanes.submit(lane, input, run).await.unwrap_or_else(|| Err(coalesce::unanswered()))
    }
}

/// One statement for the round ([`coalesce::settle`]: a write the database refuses fails
/// alone).
async fn write(pool: &PgPool, jobs: Vec<Job>) {
    let statement = async |inputs: &[&AnalysisUpsert]| {
        let mut conn = crate::db::acquire(pool).await?;
        Ok(store::upsert_many(&mut conn, inputs).await?)
    };
    coalesce::settle(jobs, statement, "upsert").await;
}
