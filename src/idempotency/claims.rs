//! Coalesces the claims of keyed requests that arrive together into one statement
//! ([`store::claim_many`]): a claim is a durable write, and one commit per keyed request was
//! what bounded keyed traffic (keyed clicks ran at a fifth of unkeyed ones). A claim may come
//! with its answer, recorded at once: the answer of a keyed write that wrote nothing (a
//! create-or-get that found its row, a 4xx). On Citus a lane holds one shard's keys only
//! ([`Shards`]).

use super::claim::{Claim, IdempotencyConfig};
use super::store::{self, Claimed, StoredResponse};
use crate::coalesce::{self, Lanes};
use crate::db::shards::Shards;
use crate::error::ApiResult;
use sqlx::PgPool;

/// Claim statements in flight: while one waits for its commit, the next can be written.
const IN_FLIGHT: usize = 2;

/// A claim, and the answer to record with it if there is one.
type Entry = (Claim, Option<StoredResponse>);
type Job = coalesce::Job<Entry, ApiResult<bool>>;

#[derive(Clone)]
pub struct Claims {
    lanes: Lanes<usize, Entry, ApiResult<bool>>,
    /// The shards of `idempotency_keys`.
    shards: Shards,
}

impl Claims {
    pub fn new(shards: Shards) -> Self {
        Self { lanes: Lanes::new(IN_FLIGHT), shards }
    }

    /// Claims the key (with `answer`, records it answered), or tells what holds it.
    pub async fn claim(
        &self,
        pool: &PgPool,
        claim: &Claim,
        answer: Option<&StoredResponse>,
        config: IdempotencyConfig,
    ) -> ApiResult<Claimed> {
        let run_pool = pool.clone();
        let run = move |jobs| {
            let pool = run_pool.clone();
            async move {
                for round in coalesce::rounds(jobs, |(claim, _): &Entry| claim.slot()) {
                    write(&pool, round, config).await;
                }
            }
        };
        let entry = (claim.clone(), answer.cloned());
        let won = self
            .lanes
            .submit(self.shards.of(claim.shard.as_bytes()), entry, run)
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
    let statement = async |entries: &[&Entry]| {
        let mut conn = crate::db::acquire(pool).await?;
        let claims: Vec<_> = entries.iter().map(|(claim, answer)| (claim, answer.as_ref())).collect();
        let won = store::claim_many(&mut conn, &claims, config).await?;
        Ok(claims.iter().map(|(claim, _)| won.contains(&claim.claim_id)).collect())
    };
    coalesce::settle(jobs, statement, "claim").await;
}
