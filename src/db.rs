//! The database: where it is (a `DATABASE_URL` or our own cluster), the pool, migrations.

pub mod cluster;
pub mod shards;

use crate::settings::Settings;
use anyhow::Context;
use cluster::{Cluster, Durability};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, Postgres, TransactionManager};
use std::borrow::Cow;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request waits for a connection that the pool has room to open. Against a live
/// server opening one takes milliseconds; a server that is down or restarting refuses it, and
/// the pool would keep trying for the whole acquire timeout while the client waits. Waiting
/// for a *busy* pool (every connection in use) is not bounded by this: that wait is load.
pub const FAIL_FAST: Duration = Duration::from_secs(1);

/// A connection from the pool (see [`waiting`]), or this worker's warm one when it is free
/// (see [`Conn`]).
pub async fn acquire(pool: &PgPool) -> Result<Conn, sqlx::Error> {
    let (pool_id, failures) = (warm::id(pool), warm::failures());
    if let Some((conn, since)) = warm::take(pool_id) {
        return Ok(Conn { inner: Some(Inner::Warm(conn)), pool: pool_id, since, failures });
    }
    let pooled = waiting(pool, pool.acquire()).await?;
    Ok(Conn { inner: Some(Inner::Pooled(pooled)), pool: pool_id, since: Instant::now(), failures })
}

/// Statements of one server that failed because the database was unreachable, since it
/// started: a connection out of its pool while this moved may be dead, and does not stay warm.
/// Counted per server, not per process, so that one server's outage does not make another's
/// connections suspect (the tests run many servers in one process). The workers that keep a
/// connection warm share it ([`keep_warm`]) and count into it. A worker that keeps none (it
/// has a single connection) does not count: then the others learn of an outage from their own
/// statements.
#[derive(Clone, Default)]
pub struct Failures(Arc<AtomicU64>);

/// A connection for a few statements, from [`acquire`].
///
/// Each worker keeps one connection warm: taken out of its pool for good, and handed to the
/// worker's next `acquire` when it is back. A pooled connection goes back to its pool with a
/// round trip first (sqlx pings every connection it is given back, after the answer has gone),
/// so at one request at a time each request took another connection, on another backend whose
/// caches were cold. Through the warm connection a click at one connection costs PostgreSQL
/// about a fifth less CPU and its p50 is 0.08-0.1 ms lower; at 64 connections, where a counter
/// lane runs one batch after another, clicks ran 40-75% faster (bench/PROFILE.md, fourth
/// round). The warm one is no connection more: the worker's pool is one smaller
/// ([`keep_warm`]).
///
/// A connection that may be broken goes back to the pool instead, where the ping tests it: one
/// that was out while any statement of its server found the database unreachable
/// ([`Failures`]), one left in a transaction, one opened before the embedded cluster last
/// crashed. A statement cancelled midway leaves its answer unread; the connection's next
/// statement reads it first, as the ping would have. One with messages queued and unsent goes
/// home only once they are sent ([`warm::flush_then_back`]): a transaction dropped on an error
/// queues its `ROLLBACK` there, and holds its locks until that goes out.
pub struct Conn {
    inner: Option<Inner>,
    /// The pool it came from ([`warm::id`]).
    pool: usize,
    /// When it left the pool: a crash of the embedded cluster after this killed it.
    since: Instant,
    /// Its server's [`Failures`] when it was handed out.
    failures: u64,
}

enum Inner {
    Warm(PgConnection),
    Pooled(PoolConnection<Postgres>),
}

const HELD: &str = "a Conn holds its connection until it is dropped";

impl std::ops::Deref for Conn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self.inner.as_ref().expect(HELD) {
            Inner::Warm(conn) => conn,
            Inner::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self.inner.as_mut().expect(HELD) {
            Inner::Warm(conn) => conn,
            Inner::Pooled(conn) => conn,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let sound = warm::failures() == self.failures && !self.is_in_transaction();
        // Not sound: a warm one closes, a pooled one goes back to its pool, which tests it
        // (and so sends what it has queued).
        let conn = match self.inner.take().expect(HELD) {
            Inner::Warm(conn) => conn,
            Inner::Pooled(conn) if sound && warm::wanted(self.pool) => conn.detach(),
            Inner::Pooled(_) => return,
        };
        // `should_flush` is hidden from sqlx's docs; its pool asks the same before it pings.
        match sound && conn.should_flush() {
            true => warm::flush_then_back(self.pool, conn, self.since),
            false => warm::back(self.pool, sound.then_some((conn, self.since))),
        }
    }
}

pub use warm::keep as keep_warm;

/// The worker's warm connection: a thread-local slot, since a connection belongs to the
/// runtime of the worker that opened it (see `startup::worker_pool`).
mod warm {
    use super::{cluster, Failures};
    use sqlx::postgres::PgPool;
    use sqlx::PgConnection;
    use std::cell::RefCell;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    struct Slot {
        pool: usize,
        state: State,
        failures: Failures,
    }

    enum State {
        /// None yet, or the last one was let go: the next sound pooled connection stays.
        Wanted,
        /// In use.
        Out,
        Home(PgConnection, Instant),
    }

    thread_local! {
        static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
    }

    /// A pool, by the address of its connect options: each pool has its own.
    pub fn id(pool: &PgPool) -> usize {
        Arc::as_ptr(&pool.connect_options()) as usize
    }

    /// Keeps one connection of `pool`, the worker's own (one smaller for it), warm on this
    /// thread (see [`super::Conn`]).
    pub fn keep(pool: &PgPool, failures: &Failures) {
        SLOT.with_borrow_mut(|slot| {
            *slot = Some(Slot { pool: id(pool), state: State::Wanted, failures: failures.clone() })
        });
    }

    /// This thread's server's [`Failures`] so far (none where no connection is kept warm).
    pub fn failures() -> u64 {
        SLOT.with_borrow(|slot| slot.as_ref().map_or(0, |s| s.failures.0.load(Ordering::Relaxed)))
    }

    /// A statement on this thread found the database unreachable.
    pub fn failed() {
        SLOT.with_borrow(|slot| {
            if let Some(slot) = slot {
                slot.failures.0.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// The warm connection, when it is home and belongs to pool `pool`.
    pub fn take(pool: usize) -> Option<(PgConnection, Instant)> {
        SLOT.with_borrow_mut(|slot| {
            let slot = slot.as_mut().filter(|s| s.pool == pool && matches!(s.state, State::Home(..)))?;
            let State::Home(conn, since) = std::mem::replace(&mut slot.state, State::Out) else { return None };
            // Opened before the embedded cluster last crashed: dead. Dropped, it closes.
            if cluster::opened_before_last_crash(since.elapsed()) {
                slot.state = State::Wanted;
                return None;
            }
            Some((conn, since))
        })
    }

    /// Whether this thread keeps a connection of pool `pool` warm and wants one.
    pub fn wanted(pool: usize) -> bool {
        SLOT.with_borrow(|slot| slot.as_ref().is_some_and(|s| s.pool == pool && matches!(s.state, State::Wanted)))
    }

    /// The warm connection home once what it has queued is sent (a `ROLLBACK`, whose
    /// transaction holds its locks until then), in a task of the worker's; a thread that is no
    /// worker lets it go, which ends its transaction as well. Meanwhile the worker's statements
    /// take pooled connections.
    pub fn flush_then_back(pool: usize, mut conn: PgConnection, since: Instant) {
        if actix_rt::Arbiter::try_current().is_none() {
            return back(pool, None);
        }
        actix_rt::spawn(async move {
            let sent = sqlx::Connection::ping(&mut conn).await.is_ok();
            back(pool, sent.then_some((conn, since)));
        });
    }

    /// The warm connection back home, or a new one for the slot; `None`: let it go (it
    /// closes), and keep the next sound one.
    pub fn back(pool: usize, conn: Option<(PgConnection, Instant)>) {
        SLOT.with_borrow_mut(|slot| {
            if let Some(slot) = slot.as_mut().filter(|s| s.pool == pool) {
                slot.state = match conn {
                    Some((conn, since)) => State::Home(conn, since),
                    None => State::Wanted,
                };
            }
        });
    }
}

/// A transaction on a connection from [`acquire`]: the worker's warm one when it is free.
pub async fn begin(pool: &PgPool) -> Result<Tx, sqlx::Error> {
    let mut conn = acquire(pool).await?;
    Manager::begin(&mut conn, None).await?;
    Ok(Tx { conn, open: true })
}

type Manager = <Postgres as sqlx::Database>::TransactionManager;

/// A transaction on a [`Conn`], from [`begin`]. sqlx's own `Transaction` can own only a
/// connection of the pool's, which pays the pool's ping on the way back; this one owns a
/// `Conn` and does what `Transaction` does. Dropped uncommitted, it queues a `ROLLBACK` that goes
/// out before the connection's next statement, so its connection stays sound and stays warm.
pub struct Tx {
    conn: Conn,
    open: bool,
}

impl Tx {
    /// Commits. On an error the transaction is still held: let the caller see the error (an
    /// outage marks every connection out as suspect, [`Failures`]) before it drops it.
    pub async fn commit(&mut self) -> Result<(), sqlx::Error> {
        Manager::commit(&mut self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.open {
            Manager::start_rollback(&mut self.conn);
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// Awaits a connection from the pool, counted in `upsertd_db_pool_waiting`
/// while it waits (the figure that tells an operator the pool is too small), and for at most
/// [`FAIL_FAST`] while the pool has room: then a database that is down is a prompt 503.
async fn waiting<T>(pool: &PgPool, acquire: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    let gauge = metrics::gauge!(crate::recorder::POOL_WAITING);
    gauge.increment(1.0);
    let acquired = if pool.size() < pool.options().get_max_connections() {
        tokio::time::timeout(FAIL_FAST, acquire).await.unwrap_or(Err(sqlx::Error::PoolTimedOut))
    } else {
        acquire.await
    };
    gauge.decrement(1.0);
    acquired
}

/// What a store says happened in the database; the HTTP edge (`error.rs`) decides what each
/// means to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, is shutting down or is out of resources.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// A concurrent write got in the way (a unique violation of a race, a serialization
    /// failure, a deadlock): the same request may well succeed again.
    #[error("a concurrent write got in the way: {0}")]
    Conflict(sqlx::Error),
    /// A constraint refused a value: the field it guards, as the statement that can raise it
    /// maps it ([`rejects`]).
    #[error("{field}: refused by the database")]
    Refused { field: &'static str },
    /// A value is already used where it must be unique (a message id, by another conversation).
    #[error("{field} is already used by another {by}")]
    Taken { field: String, by: &'static str },
    /// `If-Match` named another version, or a row that does not exist.
    #[error("version mismatch: {0}")]
    VersionMismatch(String),
    /// A failure no statement should have: a bug, or an operator's hand in the tables.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &error {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) => {
                warm::failed();
                StoreError::Unavailable(error)
            }
            E::Database(db) => match sqlstate(db.as_ref()).unwrap_or_default().as_ref() {
                // Class 08 (connection), 57P0x (shutdown / cannot connect now), 53 (resources).
                c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                    warm::failed();
                    StoreError::Unavailable(error)
                }
                // Someone else got there first: safe to retry, and never a 500.
                "23505" | "40001" | "40P01" => {
                    tracing::warn!(error = %db, "unexpected write conflict");
                    StoreError::Conflict(error)
                }
                _ => StoreError::Other(anyhow::Error::new(error)),
            },
            _ => StoreError::Other(anyhow::Error::new(error)),
        }
    }
}

/// The constraints a statement can break, each with the request field it guards.
pub type Guards = &'static [(&'static str, &'static str)];

/// Classifies a statement's error knowing which constraints it can break (`guards`, written
/// next to the statement): a CHECK, foreign key or length limit that one of them names is
/// [`StoreError::Refused`] with its field; anything else as any database error.
pub fn rejects(guards: Guards) -> impl Fn(sqlx::Error) -> StoreError {
    move |error| {
        let field = match &error {
            sqlx::Error::Database(db) => {
                refused_field(guards, sqlstate(db.as_ref()).as_deref(), db.constraint(), db.message())
            }
            _ => None,
        };
        match field {
            Some(field) => StoreError::Refused { field },
            None => error.into(),
        }
    }
}

/// The field a refusal (SQLSTATE `code`) concerns, by the constraint it names; `None` for a
/// constraint none of `guards` names (an operator's, not the contract's: a server fault). A
/// refusal that names no constraint at all (a Citus coordinator may re-raise a worker's error
/// without it, README "Scaling out") concerns the statement's only field, or else the request
/// as a whole (`body`): one of the statement's guards refused a value.
fn refused_field(guards: Guards, code: Option<&str>, constraint: Option<&str>, message: &str) -> Option<&'static str> {
    if !matches!(code, Some("23503" | "23514" | "22001")) || guards.is_empty() {
        return None;
    }
    match (constraint.or_else(|| constraint_in(message)), guards) {
        (Some(named), _) => guards.iter().find(|(constraint, _)| is_constraint(named, constraint)).map(|(_, f)| *f),
        (None, [(_, only)]) => Some(only),
        (None, _) => Some("body"),
    }
}

/// The SQLSTATE of a database error. A Citus coordinator that inserts rows through COPY (an
/// `INSERT ... SELECT` over many shards) re-raises a worker's constraint violation as XX000,
/// an internal error, with PostgreSQL's message: the message tells which violation it was.
pub fn sqlstate(error: &dyn sqlx::error::DatabaseError) -> Option<Cow<'_, str>> {
    let code = error.code()?;
    Some(match violation_in(&code, error.message()) {
        Some(violation) => Cow::Borrowed(violation),
        None => code,
    })
}

/// The constraint violation an internal error (XX000) reports in its message, if any.
fn violation_in(code: &str, message: &str) -> Option<&'static str> {
    const VIOLATIONS: [(&str, &str); 4] = [
        ("duplicate key value violates unique constraint", "23505"),
        ("violates check constraint", "23514"),
        ("violates foreign key constraint", "23503"),
        ("violates not-null constraint", "23502"),
    ];
    (code == "XX000").then(|| VIOLATIONS.iter().find(|(text, _)| message.contains(text)).map(|(_, c)| *c)).flatten()
}

/// The constraint a database error names: its constraint field or, when a Citus coordinator
/// dropped that field, its message. Compare it with [`is_constraint`].
pub fn named_constraint(error: &dyn sqlx::error::DatabaseError) -> Option<&str> {
    error.constraint().or_else(|| constraint_in(error.message()))
}

/// The constraint a PostgreSQL message names (`... violates check constraint "name"`).
fn constraint_in(message: &str) -> Option<&str> {
    let start = message.find("constraint \"")? + "constraint \"".len();
    message[start..].split('"').next()
}

/// `named` is `constraint`, or its copy on a Citus shard (`<constraint>_<shard id>`).
pub fn is_constraint(named: &str, constraint: &str) -> bool {
    named.strip_prefix(constraint).is_some_and(|rest| {
        rest.is_empty()
            || rest.strip_prefix('_').is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// What a store says when a row that cannot be missing is: one a statement of this request
/// just found in its way (`ON CONFLICT DO NOTHING`) or holds locked, and that no route deletes.
/// A retry would not find it either: no conflict to retry, a failure, logged with what vanished.
pub fn vanished(what: &'static str) -> StoreError {
    tracing::error!(what, "a row that no route deletes is missing");
    StoreError::Other(anyhow::anyhow!("the {what} row vanished"))
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The database upsertd talks to, and the cluster behind it when upsertd runs its own.
pub struct Database {
    pub options: PgConnectOptions,
    /// What an operator can paste into `psql`.
    pub display: String,
    cluster: Option<Cluster>,
}

pub const EMBEDDED_DATABASE: &str = "upsertd";

impl Database {
    /// Uses `DATABASE_URL` when given; otherwise starts (or reuses) the cluster in
    /// `<data-dir>/postgres` and makes sure the `upsertd` database exists.
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        if let Some(url) = settings.database_url.as_deref().filter(|u| !u.is_empty()) {
            let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid PostgreSQL URL")?;
            return Ok(Self { options, display: redact(url), cluster: None });
        }
        let data_dir = settings.data_dir.clone();
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(&data_dir, Durability::Durable))
            .await
            .context("the cluster start task failed")??;
        cluster.create_database(EMBEDDED_DATABASE).await?;
        Ok(Self {
            options: cluster.connect_options(EMBEDDED_DATABASE),
            display: cluster.psql_command(EMBEDDED_DATABASE),
            cluster: Some(cluster),
        })
    }

    /// For commands that visit the database while a `serve` may be running on the same data
    /// dir (audit, import, migrate): its embedded cluster when it is up, else as [`Self::open`].
    pub async fn visit(settings: &Settings) -> anyhow::Result<Self> {
        let explicit = settings.database_url.as_deref().is_some_and(|u| !u.is_empty());
        match Cluster::running(&settings.data_dir, EMBEDDED_DATABASE).filter(|_| !explicit) {
            Some((options, display)) => Ok(Self { options, display, cluster: None }),
            None => Self::open(settings).await,
        }
    }

    /// A lazy pool: the server starts (and answers 503) even while the database is down, and
    /// recovers by itself when it comes back.
    pub fn pool(&self, settings: &Settings) -> PgPool {
        PgPoolOptions::new()
            .max_connections(settings.db_max_connections)
            // No ping before every use (a round trip per request): a connection that died with
            // its server fails its statement instead, that request answers 503, and the pool
            // replaces the connection.
            .test_before_acquire(false)
            // Except after the embedded cluster crashed and was started again: connections
            // opened before are all dead, and are replaced before a request gets one.
            .before_acquire(|_, meta| Box::pin(async move { Ok(!cluster::opened_before_last_crash(meta.age)) }))
            .acquire_timeout(settings.db_acquire_timeout.0)
            .connect_lazy_with(self.options.clone().log_statements(tracing::log::LevelFilter::Trace))
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.options)
            .await
            .context("could not connect to the database to migrate it")?;
        MIGRATOR.run(&mut conn).await.context("migrations failed")?;
        conn.close().await.ok();
        Ok(())
    }

    /// Supervises the embedded cluster, if this process started one: see [`Cluster::supervise`].
    pub fn supervise(&self) -> Option<tokio::sync::oneshot::Receiver<anyhow::Error>> {
        self.cluster.as_ref().map(Cluster::supervise)
    }

    /// Stops the embedded cluster, if this process started one.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        match self.cluster {
            Some(cluster) => tokio::task::spawn_blocking(move || cluster.stop()).await?,
            None => Ok(()),
        }
    }
}

/// Hides a password in a URL before it is printed.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARDS: Guards = &[("t_clicks_not_negative", "clicks"), ("t_earnings_not_negative", "earnings")];

    #[test]
    fn a_refusal_is_known_by_its_constraint_on_a_shard_or_in_its_message_alone() {
        let check = Some("23514");
        let field = |constraint, message| refused_field(GUARDS, check, constraint, message);
        assert_eq!(field(Some("t_earnings_not_negative"), ""), Some("earnings"));
        // Citus: a worker's constraint carries its shard's id...
        assert_eq!(field(Some("t_earnings_not_negative_102008"), ""), Some("earnings"));
        // ...or the coordinator passes the message on without the constraint field.
        let message = r#"new row for relation "t_102008" violates check constraint "t_earnings_not_negative_102008""#;
        assert_eq!(field(None, message), Some("earnings"));
        // Not a shard suffix: another constraint, none of the contract's.
        assert_eq!(field(Some("t_earnings_not_negative_x1"), ""), None);
        // Named nowhere: still a refused value, never a server fault.
        assert_eq!(field(None, "violates a constraint"), Some("body"));
        assert_eq!(refused_field(&GUARDS[..1], check, None, ""), Some("clicks"));
        // Not a refusal, or a statement that guards nothing: as any database error.
        assert_eq!(refused_field(GUARDS, Some("23505"), Some("t_clicks_not_negative"), ""), None);
        assert_eq!(refused_field(&[], check, Some("t_clicks_not_negative"), ""), None);
    }

    #[test]
    fn a_violation_citus_reports_as_an_internal_error_is_known_by_its_message() {
        let unique = r#"duplicate key value violates unique constraint "idempotency_keys_pkey_102261""#;
        assert_eq!(violation_in("XX000", unique), Some("23505"));
        let check = r#"new row for relation "t_1" violates check constraint "t_clicks_not_negative_1""#;
        assert_eq!(violation_in("XX000", check), Some("23514"));
        assert_eq!(violation_in("XX000", "cache lookup failed"), None, "another internal error stays one");
        assert_eq!(violation_in("23505", unique), None, "a proper SQLSTATE is kept");
    }

    #[test]
    fn a_held_key_is_known_on_a_shard_too() {
        assert!(is_constraint("idempotency_keys_pkey", "idempotency_keys_pkey"));
        assert!(is_constraint("idempotency_keys_pkey_102193", "idempotency_keys_pkey"));
        assert!(!is_constraint("idempotency_keys_pkey_", "idempotency_keys_pkey"));
        assert!(!is_constraint("idempotency_keys_pkey2", "idempotency_keys_pkey"));
        let message = r#"duplicate key value violates unique constraint "idempotency_keys_pkey_102193""#;
        assert_eq!(constraint_in(message), Some("idempotency_keys_pkey_102193"));
    }
}
