//! Coalescing: writes that arrive for one lane while that lane's batches are in flight wait,
//! then go out together as one statement.
//!
//! Under load most of PostgreSQL's time per write goes to the work around the row - a round
//! trip, a statement, a commit and its WAL flush, and for a hot row the wait on its lock - not to
//! the row itself. A lane sends its first write at once, so an idle server adds no latency;
//! writes that arrive while `max_in_flight` batches are out queue up, and the next free drain
//! takes the whole queue. Each job is answered only after the batch that holds it is done.

use crate::db::StoreResult;
use crate::error::{ApiError, ApiResult};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// One queued write and where its answer goes.
pub struct Job<I, O> {
    pub input: I,
    done: oneshot::Sender<O>,
    /// The span of the request that queued it (its request id): a batch runs on whichever
    /// request started the drain, so what it logs about a write, it logs in that write's span.
    span: tracing::Span,
}

impl<I, O> Job<I, O> {
    /// Logs `message` about this write, in its request's span.
    pub fn warn(&self, error: &ApiError, message: &str) {
        self.span.in_scope(|| tracing::warn!(%error, "{message}"));
    }

    /// A job whose answer nobody awaits any more (its request was dropped) is answered into
    /// the void: its write still happened with the batch.
    pub fn answer(self, output: O) {
        let _ = self.done.send(output);
    }
}

struct Lane<J> {
    queue: Vec<J>,
    in_flight: usize,
}

type Shared<K, I, O> = Arc<Mutex<HashMap<K, Lane<Job<I, O>>>>>;

/// The lanes of one kind of write, keyed by what may share a statement.
pub struct Lanes<K, I, O> {
    lanes: Shared<K, I, O>,
    max_in_flight: usize,
}

impl<K, I, O> Clone for Lanes<K, I, O> {
    fn clone(&self) -> Self {
        Self { lanes: self.lanes.clone(), max_in_flight: self.max_in_flight }
    }
}

impl<K: Hash + Eq + Clone + 'static, I: 'static, O: 'static> Lanes<K, I, O> {
    pub fn new(max_in_flight: usize) -> Self {
        Self { lanes: Default::default(), max_in_flight: max_in_flight.max(1) }
    }

    /// Queues `input` on lane `key` and waits for its answer. When the lane has a free drain,
    /// one starts on this worker, running `run` on batch after batch until the queue is empty.
    /// `None`: the batch was dropped unanswered (see [`unanswered`]).
    pub async fn submit<F, Fut>(&self, key: K, input: I, run: F) -> Option<O>
    where
        F: Fn(Vec<Job<I, O>>) -> Fut + 'static,
        Fut: Future<Output = ()>,
    {
        let (done, answer) = oneshot::channel();
        let start_drain = {
            let mut lanes = self.lanes.lock().expect("the lane lock is never poisoned");
            let lane = lanes.entry(key.clone()).or_insert_with(|| Lane { queue: Vec::new(), in_flight: 0 });
            lane.queue.push(Job { input, done, span: tracing::Span::current() });
            let free = lane.in_flight < self.max_in_flight;
            lane.in_flight += usize::from(free);
            free
        };
        if start_drain {
            let mut drain = Drain { lanes: self.clone(), key, ended: false };
            tokio::task::spawn_local(async move {
                while let Some(batch) = drain.lanes.next_batch(&drain.key) {
                    run(batch).await;
                }
                drain.ended = true;
                drop(drain);
            });
        }
        answer.await.ok()
    }

    /// A drain that stopped early gives its place back; the lane's last one also drops what
    /// is queued, which answers those writes `None` rather than leaving them waiting forever.
    fn leave(&self, key: &K) {
        let mut lanes = self.lanes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lane) = lanes.get_mut(key) {
            lane.in_flight -= 1;
            if lane.in_flight == 0 {
                lanes.remove(key);
            }
        }
    }

    /// Everything queued on the lane, or `None` - and one drain fewer - when nothing is.
    fn next_batch(&self, key: &K) -> Option<Vec<Job<I, O>>> {
        let mut lanes = self.lanes.lock().expect("the lane lock is never poisoned");
        let lane = lanes.get_mut(key)?;
        if !lane.queue.is_empty() {
            return Some(std::mem::take(&mut lane.queue));
        }
        lane.in_flight -= 1;
        if lane.in_flight == 0 {
            lanes.remove(key);
        }
        None
    }
}

/// The answer for a write whose batch was dropped unanswered (its worker stopped mid-batch, or
/// a bug): nothing of that batch was committed, so a retry is safe.
pub fn unanswered() -> ApiError {
    ApiError::DatabaseUnavailable("the write was dropped before it was answered; retry".into())
}

/// One running drain of a lane. Dropped before it ended - its batch panicked, or its worker
/// stopped mid-batch - it leaves the lane, so the lane is not held forever by a drain that is gone.
struct Drain<K: Hash + Eq + Clone + 'static, I: 'static, O: 'static> {
    lanes: Lanes<K, I, O>,
    key: K,
    ended: bool,
}

impl<K: Hash + Eq + Clone + 'static, I: 'static, O: 'static> Drop for Drain<K, I, O> {
    fn drop(&mut self) {
        if !self.ended {
            self.lanes.leave(&self.key);
        }
    }
}

/// Splits a batch into rounds in which `key` is distinct (one statement may change a row only
/// once), keeping arrival order: a key's second write goes in the round after its first.
pub fn rounds<I, O, D: Hash + Eq>(jobs: Vec<Job<I, O>>, key: impl Fn(&I) -> D) -> Vec<Vec<Job<I, O>>> {
    let mut rounds: Vec<Vec<Job<I, O>>> = Vec::new();
    let mut seen: HashMap<D, usize> = HashMap::new();
    for job in jobs {
        let round = seen.entry(key(&job.input)).or_default();
        if rounds.len() == *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(job);
        *round += 1;
    }
    rounds
}

/// Runs `statement` on the jobs' inputs and answers each job with its own output (in job
/// order). When it fails for a reason that may be one write's (its value, its row) - anything
/// but an outage - the jobs run again one a statement, so that only the write at fault gets the
/// error and the others are answered as if they had come alone. An outage is everyone's.
pub async fn settle<I, T>(
    jobs: Vec<Job<I, ApiResult<T>>>,
    statement: impl AsyncFn(&[&I]) -> ApiResult<Vec<T>>,
    what: &str,
) {
    let result = statement(&jobs.iter().map(|job| &job.input).collect::<Vec<_>>()).await;
    match result {
        Ok(outputs) => jobs.into_iter().zip(outputs).for_each(|(job, output)| job.answer(Ok(output))),
        Err(error) if jobs.len() > 1 && !matches!(error, ApiError::DatabaseUnavailable(_)) => {
            for job in jobs {
                job.warn(&error, &format!("a coalesced {what} failed; its writes go again one by one"));
                let alone = statement(&[&job.input]).await;
                job.answer(alone.map(|mut outputs| outputs.pop().expect("one write in, one answer out")));
            }
        }
        Err(error) => jobs.into_iter().for_each(|job| {
            job.warn(&error, &format!("a coalesced {what} failed; every write in it gets the error"));
            job.answer(Err(ApiError::copy(&error)));
        }),
    }
}

/// A read by unique key that concurrent callers can share ([`Reads`]).
pub trait Lookup: 'static {
    /// What a caller asks for.
    type Key: Hash + Eq + Clone + 'static;
    /// What it gets; cloned when two callers of one batch ask for one key.
    type Row: Clone + 'static;
    /// What is read, for the log.
    const WHAT: &'static str;

    /// The row of one key: a batch of one takes this one-key statement. PostgreSQL plans
    /// `= ANY($1)` again on every call (its custom plan looks cheaper than the generic one),
    /// 32 µs each measured, where `= $1` keeps its generic plan; a batch of one should cost no
    /// more than a read of its own.
    fn find_one(conn: &mut PgConnection, key: &Self::Key) -> impl Future<Output = StoreResult<Option<Self::Row>>>;

    /// The rows of these keys (two or more), in any order.
    fn find_many(conn: &mut PgConnection, keys: &[&Self::Key]) -> impl Future<Output = StoreResult<Vec<Self::Row>>>;

    fn key_of(row: &Self::Row) -> Self::Key;
}

/// Coalesced reads of create-or-get: calls that arrive while others' reads are in flight share
/// the next [`Lookup::find_many`].
///
/// Most create-or-get calls find their row, and one read per call spent most of PostgreSQL's
/// time and upsertd's on what surrounds it: a connection taken from the pool and given back
/// (sqlx pings it on the way back), a round trip, a statement. Reads take no lock and need no
/// order, so several go out at once; those that arrive while all are out wait and go together.
pub struct Reads<L: Lookup> {
    lanes: Lanes<(), L::Key, Found<L>>,
}

/// What a read answers a caller.
type Found<L> = ApiResult<Option<<L as Lookup>::Row>>;

impl<L: Lookup> Clone for Reads<L> {
    fn clone(&self) -> Self {
        Self { lanes: self.lanes.clone() }
    }
}

impl<L: Lookup> Default for Reads<L> {
    fn default() -> Self {
        /// Reads in flight at once; the calls that arrive meanwhile wait for the next free one.
        const IN_FLIGHT: usize = 4;
        Self { lanes: Lanes::new(IN_FLIGHT) }
    }
}

impl<L: Lookup> Reads<L> {
    /// The row of `key`, if there is one.
    pub async fn find(&self, pool: &PgPool, key: L::Key) -> Found<L> {
        let pool = pool.clone();
        let run = move |jobs| {
            let pool = pool.clone();
            async move { read::<L>(&pool, jobs).await }
        };
        self.lanes.submit((), key, run).await.unwrap_or_else(|| Err(unanswered()))
    }
}

/// One statement for the batch; each call gets the row of its own key.
async fn read<L: Lookup>(pool: &PgPool, jobs: Vec<Job<L::Key, Found<L>>>) {
    let statement = async |keys: &[&L::Key]| {
        let mut conn = crate::db::acquire(pool).await?;
        let rows = match keys {
            [key] => L::find_one(&mut conn, key).await?.into_iter().collect(),
            _ => L::find_many(&mut conn, keys).await?,
        };
        let found: HashMap<L::Key, L::Row> = rows.into_iter().map(|row| (L::key_of(&row), row)).collect();
        Ok(keys.iter().map(|key| found.get(*key).cloned()).collect())
    };
    settle(jobs, statement, L::WHAT).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    type Run = std::pin::Pin<Box<dyn Future<Output = ()>>>;

    /// Answers every job with the size of its batch, after a pause that keeps the batch in flight.
    fn sized(sizes: Rc<RefCell<Vec<usize>>>) -> impl Fn(Vec<Job<u32, usize>>) -> Run {
        move |jobs| {
            let sizes = sizes.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                sizes.borrow_mut().push(jobs.len());
                let size = jobs.len();
                jobs.into_iter().for_each(|job| job.answer(size));
            })
        }
    }

    #[tokio::test]
    async fn writes_that_arrive_while_one_is_in_flight_share_the_next_batch() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let lanes: Lanes<&str, u32, usize> = Lanes::new(1);
                let sizes = Rc::new(RefCell::new(Vec::new()));
                let first = lanes.submit("row", 0, sized(sizes.clone()));
                let later = async {
                    tokio::time::sleep(Duration::from_millis(5)).await; // the first is in flight now
                    futures_util::future::join_all((1..10).map(|n| lanes.submit("row", n, sized(sizes.clone())))).await
                };
                let (first, later) = futures_util::future::join(first, later).await;
                assert_eq!(*sizes.borrow(), [1, 9], "the first goes at once, the other nine wait and go together");
                assert_eq!((first, later), (Some(1), vec![Some(9); 9]));
                let other = lanes.submit("row", 10, sized(sizes.clone())).await;
                assert_eq!(other, Some(1), "an idle lane sends a write at once");
            })
            .await;
    }

    #[tokio::test]
    async fn a_batch_that_panics_does_not_hold_its_lane() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let lanes: Lanes<&str, u32, usize> = Lanes::new(1);
                let panics = |_: Vec<Job<u32, usize>>| async { panic!("a bug in a batch") };
                assert_eq!(lanes.submit("row", 1, panics).await, None, "the write of the failed batch is dropped");
                let sizes = Rc::new(RefCell::new(Vec::new()));
                let again = tokio::time::timeout(Duration::from_secs(2), lanes.submit("row", 2, sized(sizes))).await;
                assert_eq!(again.ok(), Some(Some(1)), "the lane works again");
            })
            .await;
    }
}
