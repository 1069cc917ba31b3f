//! All SQL of participations and their ledger.

use super::model::{Delta, Overlay, Participation, Prefix};
use crate::coalesce::Lookup;
use crate::db::{rejects, vanished, Guards, StoreResult};
use crate::domain::{BrowserSourceToken, ParticipantId};
use crate::idempotency::{self, Claim, ClaimColumns, IdempotencyConfig, KeyHeld};
use crate::reply::Outcome;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

/// The read of create-or-get on (campaign_id, streamer_id), shared by concurrent callers
/// (`coalesce::Reads`); read first for the reason `chats::store::ByKey` gives.
pub struct ByPair;

impl Lookup for ByPair {
    type Key = (String, String);
    type Row = Participation;
    const WHAT: &'static str = "participation read";

    async fn find_one(
        conn: &mut PgConnection,
        (campaign, streamer): &(String, String),
    ) -> StoreResult<Option<Participation>> {
        find_by_pair(conn, campaign, streamer).await
    }

    async fn find_many(conn: &mut PgConnection, pairs: &[&(String, String)]) -> StoreResult<Vec<Participation>> {
        let (campaigns, streamers): (Vec<&str>, Vec<&str>) =
            pairs.iter().map(|(c, s)| (c.as_str(), s.as_str())).unzip();
        Ok(sqlx::query_as!(
            Participation,
            "SELECT * FROM participations WHERE id IN (
                 SELECT participation_id FROM participation_pairs
                 WHERE (campaign_id, streamer_id) IN (SELECT * FROM unnest($1::text[], $2::text[])))",
            &campaigns as &[&str],
            &streamers as &[&str],
        )
        .fetch_all(conn)
        .await?)
    }

    fn key_of(participation: &Participation) -> (String, String) {
        (participation.campaign_id.clone(), participation.streamer_id.clone())
    }
}

/// The write of create-or-get, after a read found nothing, in the caller's transaction: one
/// statement claims the pair (`participation_pairs`), and only when it did, inserts the
/// participation and its token (`participation_tokens`). The token is drawn only for the insert
/// and no later statement names its column, so nothing can ever rewrite it. When the pair is
/// taken, a concurrent caller inserted it since the read and committed (DO NOTHING waits for
/// it), so a second read sees its participation.
pub async fn insert_or_find(
    conn: &mut PgConnection,
    campaign: &ParticipantId,
    streamer: &ParticipantId,
) -> StoreResult<(Participation, Outcome)> {
    let token = BrowserSourceToken::generate();
    let inserted = sqlx::query_as!(
        Participation,
        r#"WITH pair AS (
               INSERT INTO participation_pairs (campaign_id, streamer_id, participation_id) VALUES ($2, $3, $1)
               ON CONFLICT (campaign_id, streamer_id) DO NOTHING
               RETURNING participation_id
           ), token AS (
               INSERT INTO participation_tokens (browser_source_token, participation_id)
               SELECT $4, participation_id FROM pair
           )
           INSERT INTO participations (id, campaign_id, streamer_id, browser_source_token)
           SELECT participation_id, $2, $3, $4 FROM pair
           RETURNING *"#,
        Uuid::now_v7(),
        campaign.as_str(),
        streamer.as_str(),
        token.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(created) => Ok((created, Outcome::Inserted)),
        None => Ok((
            find_by_pair(conn, campaign.as_str(), streamer.as_str()).await?.ok_or_else(|| vanished("participation"))?,
            Outcome::Unchanged,
        )),
    }
}

async fn find_by_pair(conn: &mut PgConnection, campaign: &str, streamer: &str) -> StoreResult<Option<Participation>> {
    Ok(sqlx::query_as!(
        Participation,
        "SELECT * FROM participations WHERE id = (
             SELECT participation_id FROM participation_pairs WHERE campaign_id = $1 AND streamer_id = $2)",
        campaign,
        streamer
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<Participation>> {
    Ok(sqlx::query_as!(Participation, "SELECT * FROM participations WHERE id = $1", id).fetch_optional(conn).await?)
}

/// How [`apply`] ended.
pub enum Applied {
    /// No such participation: nothing was written.
    Unknown,
    /// `before`: the row as it was before the batch, stamped with the statement's
    /// `updated_at`. `applied`: every write was applied, in order, and each write's answer is
    /// `before.after(its prefix)`. Not applied: the batch would take a column past what it
    /// holds, and nothing was written (`before.overflow` finds the first write that does).
    Rows { before: Box<Participation>, applied: bool },
    /// A write that came alone was applied: the row as it left it, which is its answer.
    Alone(Box<Participation>),
}

/// What the counters refuse (none can go below zero), by the column each guards: counter
/// deltas are never negative, so this is a bug's or an operator's hand, named all the same.
const COUNTER_GUARDS: Guards = &[
    ("participations_impressions_not_negative", "impressions"),
    ("participations_clicks_not_negative", "clicks"),
    ("participations_chat_clicks_not_negative", "chat_clicks"),
    ("participations_qr_scans_not_negative", "qr_scans"),
    ("participations_link_clicks_not_negative", "link_clicks"),
    ("participations_estimated_earnings_not_negative", "estimated_earnings"),
    ("participations_viewer_samples_not_negative", "viewer_samples"),
    ("participations_avg_viewer_count_not_negative", "avg_viewer_count"),
];

/// Runs a counter statement: what [`apply`] and [`apply_alone`] share, written once.
///
/// `moved` adds the batch's totals (`$2`-`$10`, [`Prefix`]) to the row `target` names (`$1`
/// is the participation), only if they fit every column: an `UPDATE` that matches nothing
/// wrote nothing. It names `$1` too, which is how Citus sends it to one shard only; joined to
/// `target` alone, it ran on all 32. The answer's columns come from the row `$from` names, as `b`, stamped with
/// the statement's time, with `applied`. `$head` defines `target` and what comes before
/// `moved`, `$tail` what comes after; their own parameters start at `$11`. Evaluates to the
/// row and `applied`, if the statement returned one. (A macro: `query!` takes only literals,
/// which it joins with `+`.)
macro_rules! counter_statement {
    ($conn:expr, $head:tt, $tail:tt, $from:tt, $id:expr, $total:expr, $($param:expr),+ $(,)?) => {{
        let total: &Prefix = $total;
        sqlx::query!(
            "WITH " + $head + r#", moved AS (
               UPDATE participations p SET
                   impressions = p.impressions + $2,
                   clicks = p.clicks + $3,
                   chat_clicks = p.chat_clicks + $4,
                   qr_scans = p.qr_scans + $5,
                   link_clicks = p.link_clicks + $6,
                   estimated_earnings = p.estimated_earnings + $7,
                   viewer_samples = p.viewer_samples + $8,
                   viewer_count_total = p.viewer_count_total + $9,
                   avg_viewer_count = CASE WHEN $8 = 0 THEN p.avg_viewer_count
                                      ELSE (p.viewer_count_total + $9)::float8
                                           / (p.viewer_samples + $8)::float8 END,
                   peak_viewer_count = GREATEST(p.peak_viewer_count, coalesce($10::bigint, 0)),
                   updated_at = now()
               FROM target t
               WHERE p.id = $1 AND p.id = t.id
                 AND $2::bigint <= 9223372036854775807 - p.impressions
                 AND $3::bigint <= 9223372036854775807 - p.clicks
                 AND $4::bigint <= 9223372036854775807 - p.chat_clicks
                 AND $5::bigint <= 9223372036854775807 - p.qr_scans
                 AND $6::bigint <= 9223372036854775807 - p.link_clicks
                 AND $8::bigint <= 9223372036854775807 - p.viewer_samples
                 AND $9::bigint <= 9223372036854775807 - p.viewer_count_total
                 AND p.estimated_earnings + $7::numeric < 1e14
               RETURNING p.*
           ), "# + $tail + r#"
           SELECT b.id AS "id!", b.campaign_id AS "campaign_id!", b.streamer_id AS "streamer_id!",
                  b.browser_source_token AS "browser_source_token!", b.impressions AS "impressions!",
                  b.clicks AS "clicks!", b.chat_clicks AS "chat_clicks!", b.qr_scans AS "qr_scans!",
                  b.link_clicks AS "link_clicks!", b.estimated_earnings AS "estimated_earnings!",
                  b.viewer_samples AS "viewer_samples!", b.avg_viewer_count AS "avg_viewer_count!",
                  b.peak_viewer_count AS "peak_viewer_count!", b.qr_code_url, b.tracking_url, b.chat_command,
                  b.created_at AS "created_at!", now() AS "updated_at!",
                  b.viewer_count_total AS "viewer_count_total!", EXISTS (SELECT FROM moved) AS "applied!"
           FROM "# + $from,
            $id,
            total.impressions,
            total.clicks,
            total.chat_clicks,
            total.qr_scans,
            total.link_clicks,
            total.earnings,
            total.samples,
            total.viewers,
            total.peak,
            $($param),+
        )
        .fetch_optional($conn)
        .await
        .map(|row| {
            row.map(|row| {
                let participation = Participation {
                    id: row.id,
                    campaign_id: row.campaign_id,
                    streamer_id: row.streamer_id,
                    browser_source_token: row.browser_source_token,
                    impressions: row.impressions,
                    clicks: row.clicks,
                    chat_clicks: row.chat_clicks,
                    qr_scans: row.qr_scans,
                    link_clicks: row.link_clicks,
                    estimated_earnings: row.estimated_earnings,
                    viewer_samples: row.viewer_samples,
                    avg_viewer_count: row.avg_viewer_count,
                    peak_viewer_count: row.peak_viewer_count,
                    qr_code_url: row.qr_code_url,
                    tracking_url: row.tracking_url,
                    chat_command: row.chat_command,
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    viewer_count_total: row.viewer_count_total,
                };
                (Box::new(participation), row.applied)
            })
        })
    }};
}

/// Applies counter writes - one, or several that arrived together for this participation -
/// and records the answer of each keyed one, in one autocommit statement.
///
/// The writes run as if one after another, in the order given; `prefixes` are their running
/// sums ([`Prefix::running`], one per delta, the last one the batch's total). The statement
/// locks and reads the row and applies the batch only if its total fits every column (the
/// deltas are never negative, so then every prefix fits too): the `UPDATE` by the total, one
/// ledger row per write, in order, and one `idempotency_keys` record per claim. The records
/// share one `idempotency_answer_rows` row, the row before the batch stamped with the
/// statement's time, and each keeps its write's prefix (`response_row_patch`), from which its
/// answer is rendered as the live one was. Effect and records commit together or not at all,
/// so a crash leaves no claim behind. A write that came alone takes [`apply_alone`].
///
/// The answer row's id is a UUIDv7 drawn here, so the ids follow the order of their batches and
/// the primary key grows at one end. A random id lands on a random page of that index; in a
/// large table that page has mostly not changed since the last checkpoint, and its first change
/// logs the whole page (bench/PROFILE.md, seventh round).
///
/// `claims` pairs each claim with the index of its write. The records are plain inserts: a
/// key that already has one (a retry) fails the whole statement, and the caller learns it as
/// [`KeyHeld`]. They are inserted in primary-key order, so two processes inserting the same
/// keys wait for each other in one order, never a deadlock.
///
/// The mean viewer count is `total / samples` of two exact integers, so samples arriving
/// concurrently give the same mean as the same samples in any order.
pub async fn apply(
    conn: &mut PgConnection,
    id: Uuid,
    deltas: &[&Delta],
    prefixes: &[Prefix],
    claims: &[(usize, &Claim)],
    config: IdempotencyConfig,
) -> StoreResult<Result<Applied, KeyHeld>> {
    debug_assert_eq!(deltas.len(), prefixes.len(), "one prefix per write");
    if let ([delta], [total]) = (deltas, prefixes) {
        return apply_alone(conn, id, delta, total, claims.first().map(|(_, claim)| *claim), config).await;
    }
    let column = |f: fn(&Delta) -> i64| deltas.iter().map(|d| f(d)).collect::<Vec<_>>();
    let kinds: Vec<&str> = deltas.iter().map(|d| d.kind).collect();
    let earnings: Vec<Decimal> = deltas.iter().map(|d| d.earnings).collect();
    let viewers: Vec<Option<i64>> = deltas.iter().map(|d| d.viewer_count).collect();
    let keys = ClaimColumns::of(&claims.iter().map(|(_, claim)| *claim).collect::<Vec<_>>());
    let patches: Vec<serde_json::Value> =
        claims.iter().map(|(write, _)| serde_json::to_value(&prefixes[*write]).expect("a prefix serialises")).collect();
    let row = counter_statement!(
        conn,
        r#"d AS (
               SELECT * FROM unnest($11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
                                    $16::bigint[], $17::numeric[], $18::bigint[]) WITH ORDINALITY
                   AS d(kind, impressions, clicks, chat_clicks, qr_scans, link_clicks, earnings, viewer_count, n)
           ), target AS (
               SELECT * FROM participations WHERE id = $1 FOR UPDATE
           )"#,
        r#"ledger AS (
               INSERT INTO participation_events
                   (participation_id, kind, impressions, clicks, chat_clicks, qr_scans, link_clicks, earnings,
                       viewer_count)
               SELECT moved.id, d.kind, d.impressions, d.clicks, d.chat_clicks, d.qr_scans, d.link_clicks, d.earnings,
                      d.viewer_count
               FROM moved, d
               ORDER BY d.n
           ), answer AS (
               INSERT INTO idempotency_answer_rows (id, shard, participation, expires_at)
               SELECT $29::uuid, b.id, to_jsonb(b) || jsonb_build_object('updated_at', now()),
                      now() + make_interval(secs => $25::float8 / 1000)
               FROM target b
               WHERE cardinality($20::text[]) > 0 AND EXISTS (SELECT FROM moved)
               RETURNING id, expires_at
           ), recorded AS (
               INSERT INTO idempotency_keys
                   (scope, key, method, path, shard, digest, fingerprint, claim_id, locked_until, expires_at,
                    response_status, response_row_id, response_row_patch, completed_at)
               SELECT i.scope, i.key, i.method, i.path, i.shard, i.digest, i.fingerprint, i.claim_id, now(),
                      answer.expires_at, $26::int2, answer.id, i.patch, now()
               FROM unnest($19::text[], $20::text[], $21::text[], $22::text[], $23::bytea[], $24::uuid[],
                           $27::jsonb[], $28::uuid[], $30::bytea[])
                        AS i (scope, key, method, path, fingerprint, claim_id, patch, shard, digest),
                    answer
               ORDER BY i.shard, i.digest
           )"#,
        "target b",
        id,
        prefixes.last().expect("a batch has a write"),
        &kinds as &[&str],
        &column(|d| d.impressions),
        &column(|d| d.clicks),
        &column(|d| d.chat_clicks),
        &column(|d| d.qr_scans),
        &column(|d| d.link_clicks),
        &earnings,
        &viewers as &[Option<i64>],
        &keys.scope as &[&str],
        &keys.key as &[&str],
        &keys.method as &[&str],
        &keys.path as &[&str],
        &keys.fingerprint as &[&[u8]],
        &keys.claim_id,
        config.ttl.as_millis() as f64,
        Outcome::Updated.status().as_u16() as i16,
        &patches,
        &keys.shard,
        Uuid::now_v7(),
        &keys.digest as &[&[u8]],
    );
    match row {
        Err(error) if idempotency::is_key_held(&error) => Ok(Err(KeyHeld)),
        row => Ok(Ok(match row.map_err(rejects(COUNTER_GUARDS))? {
            Some((before, applied)) => Applied::Rows { before, applied },
            None => Applied::Unknown,
        })),
    }
}

/// [`apply`] for a write that came alone, as most do when few clients write at once: the
/// `UPDATE`, its ledger row and its record, in one statement with one row of parameters and
/// no lock taken before the `UPDATE`. Without the arrays of a batch, the lock and the read of
/// the row before, PostgreSQL spends about 50 µs less on it (bench/PROFILE.md, sixteenth
/// round).
///
/// The answer is the row as the `UPDATE` left it (the write's delta is the batch's total), and
/// a keyed write's answer row is that row, with an empty prefix: `Participation::after` of an
/// empty prefix is the row itself. When the `UPDATE` matched nothing, the row is read to tell
/// an unknown participation from a write that does not fit; a row changed since so that the
/// write fits after all (an operator's hand) makes it go again.
async fn apply_alone(
    conn: &mut PgConnection,
    id: Uuid,
    delta: &Delta,
    total: &Prefix,
    claim: Option<&Claim>,
    config: IdempotencyConfig,
) -> StoreResult<Result<Applied, KeyHeld>> {
    loop {
        let row = counter_statement!(
            &mut *conn,
            "target AS (SELECT $1::uuid AS id)",
            r#"ledger AS (
               INSERT INTO participation_events
                   (participation_id, kind, impressions, clicks, chat_clicks, qr_scans, link_clicks, earnings,
                       viewer_count)
               SELECT id, $11::text, $2, $3, $4, $5, $6, $7, $10 FROM moved
           ), answer AS (
               INSERT INTO idempotency_answer_rows (id, shard, participation, expires_at)
               SELECT $12::uuid, m.id, to_jsonb(m), now() + make_interval(secs => $13::float8 / 1000)
               FROM moved m
               WHERE $15::text IS NOT NULL
               RETURNING id, expires_at
           ), recorded AS (
               INSERT INTO idempotency_keys
                   (scope, key, method, path, shard, digest, fingerprint, claim_id, locked_until, expires_at,
                    response_status, response_row_id, response_row_patch, completed_at)
               SELECT $14::text, $15::text, $16::text, $17::text, $18::uuid, $19::bytea, $20::bytea, $21::uuid,
                      now(), answer.expires_at, $22::int2, answer.id, '{}', now()
               FROM answer
           )"#,
            "moved b",
            id,
            total,
            delta.kind,
            Uuid::now_v7(),
            config.ttl.as_millis() as f64,
            claim.map(|c| c.scope.as_str()),
            claim.map(|c| c.key.as_str()),
            claim.map(|c| c.method.as_str()),
            claim.map(|c| c.path.as_str()),
            claim.map(|c| c.shard),
            claim.map(|c| c.digest.as_slice()),
            claim.map(|c| c.fingerprint.as_slice()),
            claim.map(|c| c.claim_id),
            Outcome::Updated.status().as_u16() as i16,
        );
        match row {
            Err(error) if idempotency::is_key_held(&error) => return Ok(Err(KeyHeld)),
            row => {
                if let Some((after, _)) = row.map_err(rejects(COUNTER_GUARDS))? {
                    return Ok(Ok(Applied::Alone(after)));
                }
            }
        }
        match get(&mut *conn, id).await? {
            None => return Ok(Ok(Applied::Unknown)),
            Some(row) if row.overflow(total).is_some() => {
                return Ok(Ok(Applied::Rows { before: Box::new(row), applied: false }))
            }
            Some(_) => continue,
        }
    }
}

/// The row an idempotency record points at (`idempotency_answer_rows`, see [`apply`]), typed
/// again by PostgreSQL itself, so every value is exactly the one the live answer was rendered
/// from. These rows live for the key TTL: a migration that adds a NOT NULL column to
/// `participations` must also add it to the rows already written, or their replays fail.
pub async fn recorded(conn: &mut PgConnection, row: serde_json::Value) -> StoreResult<Participation> {
    // Unchecked at compile time: `jsonb_populate_record` hides the columns' nullability from
    // the macros, and `*` keeps this in step with the table.
    Ok(sqlx::query_as("SELECT * FROM jsonb_populate_record(NULL::participations, $1)")
        .bind(row)
        .fetch_one(conn)
        .await?)
}

/// Sets the chat command (default `!<campaign_id>`) and the tracking URL, which is
/// `overlay_base` followed by the stored token, in one statement.
pub async fn set_chat_command(
    conn: &mut PgConnection,
    id: Uuid,
    command: Option<&str>,
    overlay_base: &str,
) -> StoreResult<Option<Participation>> {
    Ok(sqlx::query_as!(
        Participation,
        "UPDATE participations
         SET chat_command = COALESCE($2, '!' || campaign_id), tracking_url = $3 || browser_source_token,
             updated_at = now()
         WHERE id = $1
         RETURNING *",
        id,
        command,
        overlay_base,
    )
    .fetch_optional(conn)
    .await?)
}

/// Stores the QR image and points `qr_code_url` (and `tracking_url`) at it, in one statement.
pub async fn set_qr_code(
    conn: &mut PgConnection,
    id: Uuid,
    png: &[u8],
    tracking_url: &str,
    qr_code_url: &str,
) -> StoreResult<Option<Participation>> {
    Ok(sqlx::query_as!(
        Participation,
        r#"WITH image AS (
               INSERT INTO participation_qr_codes (participation_id, png)
               SELECT id, $2 FROM participations WHERE id = $1
               ON CONFLICT (participation_id) DO UPDATE
               SET png = EXCLUDED.png, created_at = EXCLUDED.created_at
           )
           UPDATE participations SET tracking_url = $3, qr_code_url = $4, updated_at = now()
           WHERE id = $1
           RETURNING *"#,
        id,
        png,
        tracking_url,
        qr_code_url,
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn qr_code_png(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar!("SELECT png FROM participation_qr_codes WHERE participation_id = $1", id)
        .fetch_optional(conn)
        .await?)
}

/// The QR image of the participation that holds `token`, for the overlay that shows it.
pub async fn overlay_qr_code_png(conn: &mut PgConnection, token: &str) -> StoreResult<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar!(
        "SELECT png FROM participation_qr_codes WHERE participation_id = (
             SELECT participation_id FROM participation_tokens WHERE browser_source_token = $1)",
        token
    )
    .fetch_optional(conn)
    .await?)
}

/// Looks a token up through its unique index whatever the input, so an unknown token and a
/// malformed one take the same path and time.
pub async fn overlay(conn: &mut PgConnection, token: &str) -> StoreResult<Option<Overlay>> {
    Ok(sqlx::query_as!(
        Overlay,
        "SELECT campaign_id, streamer_id, chat_command, tracking_url, qr_code_url FROM participations WHERE id = (
             SELECT participation_id FROM participation_tokens WHERE browser_source_token = $1)",
        token
    )
    .fetch_optional(conn)
    .await?)
}
