//! Coalesces the reads of create-or-get: calls that arrive while others' reads are in flight
//! share the next `SELECT ... WHERE participants_key = ANY($1)` ([`store::find_many`]).
//!
//! Most create-or-get calls find their chat, and one read per call spent most of PostgreSQL's
//! time and upsertd's on what surrounds it: a connection taken from the pool and given back
//! (sqlx pings it on the way back), a round trip, a statement. Reads take no lock and need no
//! order, so several go out at once; those that arrive while all are out wait and go together.
//! A call whose chat is missing goes on to the insert ([`store::insert_or_find`]).

use super::store::{self, Chat};
use crate::coalesce::{self, Lanes};
use crate::domain::ParticipantsKey;
use crate::error::ApiResult;
use sqlx::PgPool;
use std::collections::HashMap;

/// Reads in flight at once; the calls that arrive meanwhile wait for the next free one.
const IN_FLIGHT: usize = 4;

type Answer = ApiResult<Option<Chat>>;
type Job = coalesce::Job<String, Answer>;

/// One lane for every chat read: any keys may share a statement.
#[derive(Clone)]
pub struct Lookups {
    lanes: Lanes<(), String, Answer>,
}

impl Default for Lookups {
    fn default() -> Self {
        Self { lanes: Lanes::new(IN_FLIGHT) }
    }
}

impl Lookups {
    /// The chat of `key`, if there is one.
    pub async fn find(&self, pool: &PgPool, key: &ParticipantsKey) -> Answer {
        let pool = pool.clone();
        let run = move |jobs| {
            let pool = pool.clone();
            async move { read(&pool, jobs).await }
        };
        self.lanes.submit((), key.as_str().to_owned(), run).await.unwrap_or_else(|| Err(coalesce::unanswered()))
    }
}

/// One statement for the batch; each call gets the chat of its own key.
async fn read(pool: &PgPool, jobs: Vec<Job>) {
    let statement = async |keys: &[&String]| {
        let mut conn = crate::db::acquire(pool).await?;
        let keys: Vec<&str> = keys.iter().map(|key| key.as_str()).collect();
        let found: HashMap<String, Chat> = store::find_many(&mut conn, &keys)
            .await?
            .into_iter()
            .map(|chat| (chat.participants_key.clone(), chat))
            .collect();
        // Cloned: two calls of a batch may ask for one key.
        Ok(keys.iter().map(|key| found.get(*key).cloned()).collect())
    };
    coalesce::settle(jobs, statement, "chat read").await;
}
