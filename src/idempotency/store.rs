//! The SQL of `idempotency_keys`.

use super::claim::{Claim, IdempotencyConfig};
use crate::db::{is_constraint, named_constraint, sqlstate};
use crate::error::ApiResult;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use std::sync::OnceLock;
use std::time::Duration;
use uuid::Uuid;

/// A response as stored: enough to replay it byte for byte.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl From<&crate::reply::Reply> for StoredResponse {
    fn from(reply: &crate::reply::Reply) -> Self {
        Self {
            status: reply.status.as_u16(),
            headers: reply.headers.iter().map(|(name, value)| (name.to_string(), value.clone())).collect(),
            body: reply.body.clone(),
        }
    }
}

/// What a claim attempt found.
pub enum Claimed {
    /// The key is ours: run the request.
    Ours,
    Replay(StoredResponse),
    Mismatch,
    /// Another request holds the key for this long yet.
    InFlight(Duration),
}

/// Claims as the columns of an `unnest(...)`: one array per field, in claim order.
pub struct ClaimColumns<'a> {
    pub scope: Vec<&'a str>,
    pub key: Vec<&'a str>,
    pub method: Vec<&'a str>,
    pub path: Vec<&'a str>,
    pub shard: Vec<Uuid>,
    pub digest: Vec<&'a [u8]>,
    pub fingerprint: Vec<&'a [u8]>,
    pub claim_id: Vec<Uuid>,
}

impl<'a> ClaimColumns<'a> {
    pub fn of(claims: &[&'a Claim]) -> Self {
        let text = |field: fn(&'a Claim) -> &'a str| claims.iter().map(|c| field(c)).collect();
        Self {
            scope: text(|c| &c.scope),
            key: text(|c| &c.key),
            method: text(|c| &c.method),
            path: text(|c| &c.path),
            shard: claims.iter().map(|c| c.shard).collect(),
            digest: claims.iter().map(|c| c.digest.as_slice()).collect(),
            fingerprint: claims.iter().map(|c| c.fingerprint.as_slice()).collect(),
            claim_id: claims.iter().map(|c| c.claim_id).collect(),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Claims the keys (distinct ones), taking over claims whose lease ran out and records past
/// their TTL; returns the `claim_id`s that won. A claim given with an answer is recorded as
/// answered at once: an answer given without a write (coalesced, `Claims`), or one
/// whose write runs in the same transaction ([`record`]). Rows are claimed in primary-key
/// order, so two statements claiming the same keys lock them in the same order and cannot
/// deadlock.
pub async fn claim_many(
    conn: &mut PgConnection,
    claims: &[(&Claim, Option<&StoredResponse>)],
    config: IdempotencyConfig,
) -> ApiResult<Vec<Uuid>> {
    let columns = ClaimColumns::of(&claims.iter().map(|(claim, _)| *claim).collect::<Vec<_>>());
    let answers = || claims.iter().map(|(_, answer)| *answer);
    Ok(sqlx::query_scalar!(
        r#"INSERT INTO idempotency_keys AS k
               (scope, key, method, path, shard, digest, fingerprint, claim_id, locked_until, expires_at,
                response_status, response_headers, response_body, completed_at)
           SELECT scope, key, method, path, shard, digest, fingerprint, claim_id,
                  now() + make_interval(secs => $7::float8 / 1000), now() + make_interval(secs => $8::float8 / 1000),
                  status, headers, body, CASE WHEN status IS NOT NULL THEN now() END
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::uuid[], $9::uuid[],
                       $10::int2[], $11::jsonb[], $12::bytea[], $13::bytea[])
                AS i (scope, key, method, path, fingerprint, claim_id, shard, status, headers, body, digest)
           ORDER BY shard, digest
           ON CONFLICT (shard, digest) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, claim_id = EXCLUDED.claim_id,
               locked_until = EXCLUDED.locked_until, expires_at = EXCLUDED.expires_at,
               response_status = EXCLUDED.response_status, response_headers = EXCLUDED.response_headers,
               response_body = EXCLUDED.response_body, completed_at = EXCLUDED.completed_at,
               created_at = EXCLUDED.created_at
           WHERE k.expires_at < EXCLUDED.created_at
              OR (k.response_status IS NULL AND k.locked_until < EXCLUDED.created_at)
           RETURNING claim_id"#,
        &columns.scope as &[&str],
        &columns.key as &[&str],
        &columns.method as &[&str],
        &columns.path as &[&str],
        &columns.fingerprint as &[&[u8]],
        &columns.claim_id,
        millis(config.lease) as f64,
        millis(config.ttl) as f64,
        &columns.shard,
        &answers().map(|a| a.map(|a| a.status as i16)).collect::<Vec<_>>() as &[Option<i16>],
        &answers().map(|a| a.map(headers_json)).collect::<Vec<_>>() as &[Option<serde_json::Value>],
        &answers().map(|a| a.map(|a| a.body.as_slice())).collect::<Vec<_>>() as &[Option<&[u8]>],
        &columns.digest as &[&[u8]],
    )
    .fetch_all(conn)
    .await?)
}

fn headers_json(response: &StoredResponse) -> serde_json::Value {
    serde_json::to_value(&response.headers).expect("header pairs serialise")
}

/// Records the keys with the answers of writes made in the same transaction, for routes whose
/// keys are claimed by the write itself ([`Claim::deferred`]): the `claim_id`s recorded. A key
/// missing from them is held by another request (see [`inspect`]); the caller must roll its
/// effects back. A key another transaction is recording waits for that one to end.
pub async fn record(
    conn: &mut PgConnection,
    records: &[(&Claim, &StoredResponse)],
    config: IdempotencyConfig,
) -> ApiResult<Vec<Uuid>> {
    let claims: Vec<(&Claim, Option<&StoredResponse>)> =
        records.iter().map(|(claim, answer)| (*claim, Some(*answer))).collect();
    claim_many(conn, &claims, config).await
}

/// A key of a statement's records already has one (a retry, or a request that another process
/// ran meanwhile): the statement, which records its keys with plain inserts, wrote nothing.
pub struct KeyHeld;

/// Whether `error` is such a statement's record meeting its key's ([`KeyHeld`]).
pub fn is_key_held(error: &sqlx::Error) -> bool {
    // A unique violation that names no constraint (Citus may drop the name) can only be this
    // one too: these statements insert no other row whose key a client chooses.
    matches!(error, sqlx::Error::Database(e)
        if sqlstate(e.as_ref()).as_deref() == Some("23505")
            && named_constraint(e.as_ref()).is_none_or(|named| is_constraint(named, "idempotency_keys_pkey")))
}

/// Renders the answer of a record that keeps a row instead of a body, from that row, the
/// record's status and its `response_row_patch`. The resource whose writes record such rows
/// installs it when the app is built ([`render_rows_with`]), so that the layer names no resource.
pub trait RowAnswers: Send + Sync {
    fn answer<'a>(
        &'a self,
        pool: &'a PgPool,
        status: u16,
        row: serde_json::Value,
        patch: Option<serde_json::Value>,
    ) -> LocalBoxFuture<'a, ApiResult<StoredResponse>>;
}

/// Where a record keeps its row, each written by one resource's statements.
#[derive(Clone, Copy)]
pub enum Kept {
    /// In `idempotency_answer_rows`, which a batch's records share (`response_row_id`).
    Shared,
    /// In the record itself (`response_row`).
    Own,
}

static SHARED_ROWS: OnceLock<Box<dyn RowAnswers>> = OnceLock::new();
static OWN_ROWS: OnceLock<Box<dyn RowAnswers>> = OnceLock::new();

/// Installs how the rows kept `kept` are rendered; the first installation holds for the
/// process (every app a process builds installs the same).
pub fn render_rows_with(kept: Kept, answers: impl RowAnswers + 'static) {
    let _ = match kept {
        Kept::Shared => &SHARED_ROWS,
        Kept::Own => &OWN_ROWS,
    }
    .set(Box::new(answers));
}

/// What holds a key this request did not win: a stored answer (one that keeps a row is
/// rendered from it, [`RowAnswers`]), another request's body, or a request still running.
pub async fn inspect(pool: &PgPool, claim: &Claim) -> ApiResult<Claimed> {
    let Some(row) = sqlx::query!(
        r#"SELECT fingerprint, response_status, response_headers, response_body, response_row, response_row_id,
                  response_row_patch,
                  extract(epoch FROM greatest(locked_until - now(), interval '0'))::float8 AS "remaining_secs!"
           FROM idempotency_keys
           WHERE shard = $1 AND digest = $2"#,
        claim.shard,
        &claim.digest[..],
    )
    .fetch_optional(pool)
    .await?
    else {
        // Purged since the claim: it is free again; the client's retry will take it.
        return Ok(Claimed::InFlight(Duration::from_secs(1)));
    };
    if row.fingerprint != claim.fingerprint {
        return Ok(Claimed::Mismatch);
    }
    // The answer row in a statement of its own, by its id alone: it lives beside its
    // participation, which is the record's shard only when the path spelled the id in its
    // canonical form (`guard::shard`). On Citus a replay asks every shard; a replay is rare.
    let kept = match (row.response_row, row.response_row_id) {
        (Some(own), _) => Some((Kept::Own, own)),
        (None, Some(id)) => {
            let shared = sqlx::query_scalar!("SELECT participation FROM idempotency_answer_rows WHERE id = $1", id)
                .fetch_optional(pool)
                .await?;
            shared.map(|row| (Kept::Shared, row))
        }
        (None, None) => None,
    };
    match (row.response_status, row.response_headers, row.response_body, kept) {
        (Some(status), Some(headers), Some(body), _) => Ok(Claimed::Replay(StoredResponse {
            status: status as u16,
            headers: serde_json::from_value(headers).unwrap_or_default(),
            body,
        })),
        (Some(status), _, _, Some((kept, recorded))) => {
            let answers = match kept {
                Kept::Shared => &SHARED_ROWS,
                Kept::Own => &OWN_ROWS,
            }
            .get()
            .ok_or_else(|| anyhow::anyhow!("no renderer of recorded rows is installed"))?;
            Ok(Claimed::Replay(answers.answer(pool, status as u16, recorded, row.response_row_patch).await?))
        }
        _ => Ok(Claimed::InFlight(Duration::from_secs_f64(row.remaining_secs.max(0.0)))),
    }
}

/// Of these claims, the ones whose key another request holds. A record past its TTL and a
/// claim past its lease are deleted instead, which frees their keys (where [`claim_many`] would
/// take them over), for writes that record their keys with plain inserts.
pub async fn held_keys(conn: &mut PgConnection, claims: &[&Claim]) -> ApiResult<Vec<Uuid>> {
    let columns = ClaimColumns::of(claims);
    Ok(sqlx::query_scalar!(
        r#"WITH i AS (
               SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::uuid[]) AS i (shard, digest, claim_id)
           ), freed AS (
               DELETE FROM idempotency_keys k USING i
               WHERE (k.shard, k.digest) = (i.shard, i.digest)
                 AND (k.expires_at < now() OR (k.response_status IS NULL AND k.locked_until < now()))
               RETURNING i.claim_id
           )
           SELECT i.claim_id AS "claim_id!" FROM i JOIN idempotency_keys k USING (shard, digest)
           WHERE i.claim_id NOT IN (SELECT claim_id FROM freed)"#,
        &columns.shard,
        &columns.digest as &[&[u8]],
        &columns.claim_id,
    )
    .fetch_all(conn)
    .await?)
}

/// Stores the response on the claimed row, fenced by `claim_id`, which a take-over replaces.
/// `false`: the claim was taken over (its lease ran out), and the caller must not commit its
/// effect.
pub async fn complete(conn: &mut PgConnection, claim: &Claim, response: &StoredResponse) -> ApiResult<bool> {
    let stored = sqlx::query!(
        "UPDATE idempotency_keys
         SET response_status = $4, response_headers = $5, response_body = $6, completed_at = now()
         WHERE shard = $1 AND digest = $2 AND claim_id = $3",
        claim.shard,
        &claim.digest[..],
        claim.claim_id,
        response.status as i16,
        headers_json(response),
        response.body,
    )
    .execute(conn)
    .await?;
    Ok(stored.rows_affected() == 1)
}

/// Gives a key back after a 5xx, so the client's retry runs the request again.
pub async fn release(pool: &PgPool, claim: &Claim) -> ApiResult<()> {
    sqlx::query!(
        "DELETE FROM idempotency_keys
         WHERE shard = $1 AND digest = $2 AND claim_id = $3 AND response_status IS NULL",
        claim.shard,
        &claim.digest[..],
        claim.claim_id,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes expired records, and the counter answer rows that expired with them, a batch at a
/// time: each batch is a short statement, so the purge never holds many locks. Returns the
/// number of records deleted.
///
/// It picks rows by their key, not by `ctid` with `FOR UPDATE SKIP LOCKED`, which a distributed
/// table refuses (README, "Scaling out"), so it may wait for a row that a claim is reviving.
/// It waits at most [`PURGE_LOCK_TIMEOUT`]: then it gives the round up, well before a deadlock
/// check would choose a victim, so a purge never makes a write fail. The `DELETE` rechecks
/// expiry on the row it waited for, so a key revived meanwhile stays.
pub async fn purge_expired(pool: &PgPool) -> ApiResult<u64> {
    const BATCH: i64 = 1000;
    let mut total = 0;
    loop {
        let mut tx = crate::db::begin(pool).await?;
        // `citus.propagate_set_commands` makes a Citus coordinator pass the timeout on to its
        // workers; plain PostgreSQL keeps it as an unused placeholder.
        sqlx::raw_sql(PURGE_LOCK_TIMEOUT).execute(&mut *tx).await?;
        let deleted = sqlx::query!(
            r#"WITH records AS (
                   DELETE FROM idempotency_keys k
                   USING (SELECT shard, digest FROM idempotency_keys
                          WHERE expires_at < now() AND (response_status IS NOT NULL OR locked_until < now())
                          LIMIT $1) expired
                   WHERE k.shard = expired.shard AND k.digest = expired.digest
                     AND k.expires_at < now() AND (k.response_status IS NOT NULL OR k.locked_until < now())
                   RETURNING 1
               ), answer_rows AS (
                   DELETE FROM idempotency_answer_rows a
                   USING (SELECT id, shard FROM idempotency_answer_rows WHERE expires_at < now() LIMIT $1) expired
                   WHERE a.id = expired.id AND a.shard = expired.shard
                   RETURNING 1
               )
               SELECT (SELECT count(*) FROM records) AS "records!",
                      (SELECT count(*) FROM answer_rows) AS "answer_rows!""#,
            BATCH
        )
        .fetch_one(&mut *tx)
        .await;
        let deleted = match deleted {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                tracing::debug!("the purge waited for a row in use; it goes on next round");
                return Ok(total);
            }
            deleted => deleted?,
        };
        tx.commit().await?;
        total += deleted.records as u64;
        if deleted.records < BATCH && deleted.answer_rows < BATCH {
            return Ok(total);
        }
    }
}

/// How long a purge waits for a row lock (see [`purge_expired`]).
const PURGE_LOCK_TIMEOUT: &str = "SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL lock_timeout = '100ms'";

/// SQLSTATE 55P03: `lock_timeout` passed.
const LOCK_NOT_AVAILABLE: &str = "55P03";
