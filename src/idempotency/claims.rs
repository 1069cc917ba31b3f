//! Coalesces the claims of keyed requests that arrive together into one statement
//! ([`store::claim_many`]): a claim is a durable write, and one commit per keyed request was
//! what bounded keyed traffic (keyed clicks ran at a fifth of unkeyed ones). On Citus a lane
//! holds one shard's keys only ([`Shards`]).

use super::claim::{Claim, IdempotencyConfig};
use super::store::{self, Claimed};
use crate::coalesce::{self, Lanes};
use crate::db::shards::Shards;
use crate::error::ApiResult;
use sqlx::PgPool;

/// Claim statements in flight: while one waits for its commit, the next can be written.
const IN_FLIGHT: usize = 2;

type Job = coalesce::Job<Claim, ApiResult<bool>>;

#[derive(Clone)]
pub struct Claims {
    lanes: Lanes<usize, Claim, ApiResult<bool>>,
    /// The shards of `idempotency_keys`.
    shards: Shards,
}

impl Claims {
    pub fn new(shards: Shards) -> Self {
        Self { lanes: Lanes::new(IN_FLIGHT), shards }
    }

    /// Claims the key, or tells what holds it.
    pub async fn claim(&self, pool: &PgPool, claim: &Claim, config: IdempotencyConfig) -> ApiResult<Claimed> {
        let run_pool = pool.clone();
        let run = move |jobs| {
            let pool = run_pool.clone();
            async move {
                for round in coalesce::rounds(jobs, Claim::slot) {
                    write(&pool, round, config).await;
                }
            }
        };
        let won = self
            .lanes
            .submit(self.shards.of(claim.shard.as_bytes()), claim.clone(), run)
            .await
            .unwrap_or_else(|| Err(coalesce::unanswered()))?;
        if won {
            Ok(Claimed::Ours)
        } else {
            store::inspect(pool, claim).await
        }
    }
}

async fn write(pool: &PgPool, jobs: Vec<Job>, config: IdempotencyConfig) {
    let statement = async |claims: &[&Claim]| {
        let mut conn = crate::db::acquire(pool).await?;
        let unanswered: Vec<_> = claims.iter().map(|claim| (*claim, None)).collect();
        let won = store::claim_many(&mut conn, &unanswered, config).await?;
        Ok(claims.iter().map(|claim| won.contains(&claim.claim_id)).collect())
    };
    coalesce::settle(jobs, statement, "claim").await;
}
