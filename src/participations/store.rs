//! All SQL of participations and their ledger.

use super::model::{Delta, Overlay, Participation};
use crate::domain::{BrowserSourceToken, ParticipantId};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{Claim, ClaimColumns, IdempotencyConfig};
use crate::reply::Outcome;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

/// Create-or-get on (campaign_id, streamer_id), read first like chats (see
/// `chats::store::create_or_get` for why). The token is drawn only for the insert and no later
/// statement names its column, so nothing can ever rewrite it.
pub async fn create_or_get(
    conn: &mut PgConnection,
    campaign: &ParticipantId,
    streamer: &ParticipantId,
) -> ApiResult<(Participation, Outcome)> {
    if let Some(found) = find_by_pair(conn, campaign, streamer).await? {
        return Ok((found, Outcome::Unchanged));
    }
    let token = BrowserSourceToken::generate();
    let inserted = sqlx::query_as!(
        Participation,
        "INSERT INTO participations (id, campaign_id, streamer_id, browser_source_token) VALUES ($1, $2, $3, $4)
         ON CONFLICT (campaign_id, streamer_id) DO NOTHING
         RETURNING *",
        Uuid::now_v7(),
        campaign.as_str(),
        streamer.as_str(),
        token.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(created) => Ok((created, Outcome::Inserted)),
        None => Ok((find_by_pair(conn, campaign, streamer).await?.ok_or(ApiError::Conflict)?, Outcome::Unchanged)),
    }
}

async fn find_by_pair(
    conn: &mut PgConnection,
    campaign: &ParticipantId,
    streamer: &ParticipantId,
) -> ApiResult<Option<Participation>> {
    Ok(sqlx::query_as!(
        Participation,
        "SELECT * FROM participations WHERE campaign_id = $1 AND streamer_id = $2",
        campaign.as_str(),
        streamer.as_str()
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> ApiResult<Option<Participation>> {
    Ok(sqlx::query_as!(Participation, "SELECT * FROM participations WHERE id = $1", id).fetch_optional(conn).await?)
}

/// A key of a batch already has a record (a retry, or a request that another process ran
/// meanwhile): [`apply`] wrote nothing.
pub struct KeyHeld;

/// How [`apply`] ended.
pub enum Applied {
    /// No such participation: nothing was written.
    Unknown,
    /// The first `answers.len()` writes were applied, in order, each answered with the row as
    /// it left it. `refused`: the write after them would have taken this column past what it
    /// holds; neither it nor any later write was applied.
    Rows { answers: Vec<Participation>, refused: Option<String> },
}

/// Applies counter writes - one, or several that arrived together for this participation -
/// and records the answer of each keyed one, in one autocommit statement.
///
/// The writes run as if one after another, in the order given: the row is locked and read,
/// and each write's row is the row before the batch plus the running sums (count, mean and
/// maximum for viewer samples) of the writes up to it, computed in `numeric`, which cannot
/// overflow. The first write that would take a column past what it holds is refused: it and
/// the writes after it are left out, and the caller sends the later ones again. The `UPDATE`
/// sets the last applied write's row, one ledger row per applied write is appended in order,
/// and one `idempotency_keys` record per applied claim is inserted. The records share one
/// `idempotency_answer_rows` row (the batch's) and each keeps the columns in which its own
/// answer differs from it (`response_row_patch`). Effect and records commit together or not at
/// all, so a crash leaves no claim behind. Each write's answer has the same `updated_at`: the
/// statement's `now()`, which the `UPDATE` writes.
///
/// `claims` pairs each claim with the index of its write in `deltas`. The records are plain
/// inserts: a key that already has one (a retry) fails the whole statement, and the caller
/// learns it as [`KeyHeld`]. They are inserted in key order, so two processes inserting the
/// same keys wait for each other in one order, never a deadlock.
///
/// The mean viewer count is `total / samples` of two exact integers, so samples arriving
/// concurrently give the same mean as the same samples in any order.
pub async fn apply(
    conn: &mut PgConnection,
    id: Uuid,
    deltas: &[&Delta],
    claims: &[(usize, &Claim)],
    config: IdempotencyConfig,
) -> ApiResult<Result<Applied, KeyHeld>> {
    let column = |f: fn(&Delta) -> i64| deltas.iter().map(|d| f(d)).collect::<Vec<_>>();
    let kinds: Vec<&str> = deltas.iter().map(|d| d.kind).collect();
    let earnings: Vec<Decimal> = deltas.iter().map(|d| d.earnings).collect();
    let viewers: Vec<Option<i64>> = deltas.iter().map(|d| d.viewer_count).collect();
    let keys = ClaimColumns::of(&claims.iter().map(|(_, claim)| *claim).collect::<Vec<_>>());
    // Ordinals start at 1, as `WITH ORDINALITY` counts.
    let claim_writes: Vec<i64> = claims.iter().map(|(write, _)| *write as i64 + 1).collect();
    let steps = sqlx::query!(
        r#"WITH d AS (
               SELECT * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                                    $8::numeric[], $9::bigint[]) WITH ORDINALITY
                   AS d(kind, impressions, clicks, chat_clicks, qr_scans, link_clicks, earnings, viewer_count, n)
           ), before AS (
               SELECT * FROM participations WHERE id = $1 FOR UPDATE
           ), run AS (
               SELECT d.n, d.kind, d.impressions, d.clicks, d.chat_clicks, d.qr_scans, d.link_clicks, d.earnings,
                      d.viewer_count,
                      b.impressions + sum(d.impressions) OVER w AS r_impressions,
                      b.clicks + sum(d.clicks) OVER w AS r_clicks,
                      b.chat_clicks + sum(d.chat_clicks) OVER w AS r_chat_clicks,
                      b.qr_scans + sum(d.qr_scans) OVER w AS r_qr_scans,
                      b.link_clicks + sum(d.link_clicks) OVER w AS r_link_clicks,
                      b.estimated_earnings + sum(d.earnings) OVER w AS r_earnings,
                      b.viewer_samples::numeric + count(d.viewer_count) OVER w AS r_samples,
                      b.viewer_count_total + coalesce(sum(d.viewer_count) OVER w, 0) AS r_viewers,
                      CASE WHEN count(d.viewer_count) OVER w = 0 THEN b.avg_viewer_count
                           ELSE (b.viewer_count_total + coalesce(sum(d.viewer_count) OVER w, 0))::float8
                                / (b.viewer_samples::numeric + count(d.viewer_count) OVER w)::float8
                      END AS r_avg,
                      GREATEST(b.peak_viewer_count, coalesce(max(d.viewer_count) OVER w, 0)) AS r_peak
               FROM d, before b
               WINDOW w AS (ORDER BY d.n)
           ), checked AS (
               SELECT run.*,
                      CASE WHEN r_impressions > 9223372036854775807 THEN 'impressions'
                           WHEN r_clicks > 9223372036854775807 THEN 'clicks'
                           WHEN r_chat_clicks > 9223372036854775807 THEN 'chat_clicks'
                           WHEN r_qr_scans > 9223372036854775807 THEN 'qr_scans'
                           WHEN r_link_clicks > 9223372036854775807 THEN 'link_clicks'
                           WHEN r_earnings >= 1e14 THEN 'estimated_earnings'
                           WHEN r_samples > 9223372036854775807 THEN 'viewer_samples'
                           WHEN r_viewers > 9223372036854775807 THEN 'viewer_count_total'
                      END AS overflow
               FROM run
           ), upto AS (
               SELECT coalesce(min(n), 9223372036854775807) AS refused FROM checked WHERE overflow IS NOT NULL
           ), applied AS (
               SELECT checked.* FROM checked, upto WHERE n < upto.refused
           ), moved AS (
               UPDATE participations p SET
                   impressions = l.r_impressions, clicks = l.r_clicks, chat_clicks = l.r_chat_clicks,
                   qr_scans = l.r_qr_scans, link_clicks = l.r_link_clicks, estimated_earnings = l.r_earnings,
                   viewer_samples = l.r_samples, viewer_count_total = l.r_viewers, avg_viewer_count = l.r_avg,
                   peak_viewer_count = l.r_peak, updated_at = now()
               FROM (SELECT * FROM applied ORDER BY n DESC LIMIT 1) l
               WHERE p.id = $1
               RETURNING p.*
           ), ledger AS (
               INSERT INTO participation_events
                   (participation_id, kind, impressions, clicks, chat_clicks, qr_scans, link_clicks, earnings,
                       viewer_count)
               SELECT moved.id, a.kind, a.impressions, a.clicks, a.chat_clicks, a.qr_scans, a.link_clicks, a.earnings,
                      a.viewer_count
               FROM moved, applied a
               ORDER BY a.n
           ), i AS (
               SELECT * FROM unnest($10::text[], $11::text[], $12::text[], $13::text[], $14::bytea[], $15::uuid[],
                                    $18::bigint[])
                   AS i (scope, key, method, path, fingerprint, claim_id, n)
               WHERE i.n IN (SELECT n FROM applied)
           ), answer AS (
               INSERT INTO idempotency_answer_rows (id, participation, expires_at)
               SELECT gen_random_uuid(), to_jsonb(moved), now() + make_interval(secs => $16::float8 / 1000)
               FROM moved
               WHERE EXISTS (SELECT FROM i)
               RETURNING id, expires_at
           ), recorded AS (
               INSERT INTO idempotency_keys
                   (scope, key, method, path, fingerprint, claim_id, locked_until, expires_at,
                    response_status, response_row_id, response_row_patch, completed_at)
               SELECT i.scope, i.key, i.method, i.path, i.fingerprint, i.claim_id, now(), answer.expires_at,
                      $17::int2, answer.id,
                      nullif(jsonb_strip_nulls(jsonb_build_object(
                          'impressions', nullif(a.r_impressions, m.impressions),
                          'clicks', nullif(a.r_clicks, m.clicks),
                          'chat_clicks', nullif(a.r_chat_clicks, m.chat_clicks),
                          'qr_scans', nullif(a.r_qr_scans, m.qr_scans),
                          'link_clicks', nullif(a.r_link_clicks, m.link_clicks),
                          'estimated_earnings', nullif(a.r_earnings, m.estimated_earnings),
                          'viewer_samples', nullif(a.r_samples, m.viewer_samples),
                          'viewer_count_total', nullif(a.r_viewers, m.viewer_count_total),
                          'avg_viewer_count', nullif(a.r_avg, m.avg_viewer_count),
                          'peak_viewer_count', nullif(a.r_peak, m.peak_viewer_count))), '{}'),
                      now()
               FROM i JOIN applied a USING (n), answer, moved m
               ORDER BY i.key, i.path, i.method, i.scope
           )
           SELECT c.overflow, b.id AS "id!", b.campaign_id AS "campaign_id!", b.streamer_id AS "streamer_id!",
                  b.browser_source_token AS "browser_source_token!",
                  CASE WHEN c.overflow IS NULL THEN c.r_impressions::bigint END AS impressions,
                  CASE WHEN c.overflow IS NULL THEN c.r_clicks::bigint END AS clicks,
                  CASE WHEN c.overflow IS NULL THEN c.r_chat_clicks::bigint END AS chat_clicks,
                  CASE WHEN c.overflow IS NULL THEN c.r_qr_scans::bigint END AS qr_scans,
                  CASE WHEN c.overflow IS NULL THEN c.r_link_clicks::bigint END AS link_clicks,
                  CASE WHEN c.overflow IS NULL THEN c.r_earnings::numeric(20, 6) END AS estimated_earnings,
                  CASE WHEN c.overflow IS NULL THEN c.r_samples::bigint END AS viewer_samples,
                  c.r_avg AS "avg_viewer_count!", c.r_peak AS "peak_viewer_count!", b.qr_code_url, b.tracking_url,
                  b.chat_command, b.created_at AS "created_at!", now() AS "updated_at!",
                  CASE WHEN c.overflow IS NULL THEN c.r_viewers::bigint END AS viewer_count_total
           FROM checked c, before b, upto
           WHERE c.n <= upto.refused
           ORDER BY c.n"#,
        id,
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
        &claim_writes,
    )
    .fetch_all(conn)
    .await;
    let steps = match steps {
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("idempotency_keys_pkey") => return Ok(Err(KeyHeld)),
        steps => steps?,
    };
    if steps.is_empty() {
        return Ok(Ok(Applied::Unknown));
    }
    let mut answers = Vec::with_capacity(steps.len());
    for step in steps {
        if step.overflow.is_some() {
            return Ok(Ok(Applied::Rows { answers, refused: step.overflow }));
        }
        let counted = |value: Option<i64>| value.expect("an applied write's counters are set");
        answers.push(Participation {
            id: step.id,
            campaign_id: step.campaign_id,
            streamer_id: step.streamer_id,
            browser_source_token: step.browser_source_token,
            impressions: counted(step.impressions),
            clicks: counted(step.clicks),
            chat_clicks: counted(step.chat_clicks),
            qr_scans: counted(step.qr_scans),
            link_clicks: counted(step.link_clicks),
            estimated_earnings: step.estimated_earnings.expect("an applied write's earnings are set"),
            viewer_samples: counted(step.viewer_samples),
            avg_viewer_count: step.avg_viewer_count,
            peak_viewer_count: step.peak_viewer_count,
            qr_code_url: step.qr_code_url,
            tracking_url: step.tracking_url,
            chat_command: step.chat_command,
            created_at: step.created_at,
            updated_at: step.updated_at,
            viewer_count_total: counted(step.viewer_count_total),
        });
    }
    Ok(Ok(Applied::Rows { answers, refused: None }))
}

/// The row an idempotency record points at (`idempotency_answer_rows`, see [`apply`]), typed
/// again by PostgreSQL itself, so every value is exactly the one the live answer was rendered
/// from. These rows live for the key TTL: a migration that adds a NOT NULL column to
/// `participations` must also add it to the rows already written, or their replays fail.
pub async fn recorded(conn: &mut PgConnection, row: serde_json::Value) -> ApiResult<Participation> {
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
) -> ApiResult<Option<Participation>> {
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
) -> ApiResult<Option<Participation>> {
    Ok(sqlx::query_as!(
        Participation,
        r#"WITH image AS (
               INSERT INTO participation_qr_codes (participation_id, png)
               SELECT id, $2 FROM participations WHERE id = $1
               ON CONFLICT (participation_id) DO UPDATE SET png = EXCLUDED.png, created_at = now()
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

pub async fn qr_code_png(conn: &mut PgConnection, id: Uuid) -> ApiResult<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar!("SELECT png FROM participation_qr_codes WHERE participation_id = $1", id)
        .fetch_optional(conn)
        .await?)
}

/// The QR image of the participation that holds `token`, for the overlay that shows it.
pub async fn overlay_qr_code_png(conn: &mut PgConnection, token: &str) -> ApiResult<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar!(
        "SELECT q.png FROM participation_qr_codes q JOIN participations p ON p.id = q.participation_id
         WHERE p.browser_source_token = $1",
        token
    )
    .fetch_optional(conn)
    .await?)
}

/// Looks a token up through its unique index whatever the input, so an unknown token and a
/// malformed one take the same path and time.
pub async fn overlay(conn: &mut PgConnection, token: &str) -> ApiResult<Option<Overlay>> {
    Ok(sqlx::query_as!(
        Overlay,
        "SELECT campaign_id, streamer_id, chat_command, tracking_url, qr_code_url
         FROM participations WHERE browser_source_token = $1",
        token
    )
    .fetch_optional(conn)
    .await?)
}
