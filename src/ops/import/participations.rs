//! Legacy `campaignparticipations`. Documents with the same (campaignId, streamerId) become one
//! participation whose counters are their sums; the earliest valid browserSourceToken is kept
//! (overlays keep working) and a missing or malformed one is replaced by a fresh CSPRNG token.
//! Each document also becomes one 'import' event, so every counter still equals the sum of its
//! events, and is recorded in `import_sources`, so a second run adds nothing.

use super::{
    extjson, participant_id, record_sources, refused, transaction_time, Collection, Group, Importer, MapRow, Outcome,
    Parsed, Sourced, Summary,
};
use crate::domain::{BrowserSourceToken, Money, ParticipantId};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

#[derive(Default)]
pub struct Participations {
    /// Tokens given to groups earlier in this run: two legacy participations sharing a token
    /// (the E11000 of the seeds) must not both keep it.
    tokens_taken: HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct Participation {
    campaign_id: ParticipantId,
    streamer_id: ParticipantId,
    token: Option<BrowserSourceToken>,
    impressions: i64,
    clicks: i64,
    chat_clicks: i64,
    qr_scans: i64,
    link_clicks: i64,
    earnings: Decimal,
    viewer_samples: i64,
    avg_viewer_count: f64,
    peak_viewer_count: i64,
    qr_code_url: Option<String>,
    tracking_url: Option<String>,
    chat_command: Option<String>,
    created_at: Option<DateTime<Utc>>,
}

fn participant(doc: &Value, name: &str) -> Result<ParticipantId, String> {
    let id = extjson::field(doc, name).and_then(extjson::id).ok_or_else(|| format!("{name}: missing"))?;
    participant_id(name, &id)
}

fn text(doc: &Value, name: &str) -> Result<Option<String>, String> {
    let value = extjson::string(doc, name)?;
    if value.as_deref().is_some_and(|v| v.contains('\0')) {
        return Err(format!("{name}: contains a NUL character"));
    }
    Ok(value)
}

/// A running mean over samples: weighted by sample counts; without samples, the larger.
fn combine_average(a: (f64, i64), b: (f64, i64)) -> f64 {
    let total = a.1 + b.1;
    if total > 0 {
        (a.0 * a.1 as f64 + b.0 * b.1 as f64) / total as f64
    } else {
        a.0.max(b.0)
    }
}

impl Importer for Participations {
    type Doc = Participation;

    fn parse(&self, doc: &Value) -> Result<Parsed<Participation>, String> {
        let campaign_id = participant(doc, "campaignId")?;
        let streamer_id = participant(doc, "streamerId")?;
        // Rounded per document as the column would, so the events sum to the counter exactly.
        let earnings = extjson::decimal(doc, "estimatedEarnings")?;
        let earnings =
            Money::rounded("estimatedEarnings", earnings).map_err(|error| refused(error, earnings))?.decimal();
        let token = extjson::string(doc, "browserSourceToken")?;
        let token = token.map(|raw| BrowserSourceToken::parse("browserSourceToken", &raw));
        let fixes = match &token {
            Some(Err(_)) => vec!["malformed browserSourceToken dropped"],
            _ => Vec::new(),
        };
        let participation = Participation {
            token: token.and_then(Result::ok),
            impressions: extjson::count(doc, "impressions")?,
            clicks: extjson::count(doc, "clicks")?,
            chat_clicks: extjson::count(doc, "chatClicks")?,
            qr_scans: extjson::count(doc, "qrScans")?,
            link_clicks: extjson::count(doc, "linkClicks")?,
            earnings,
            viewer_samples: extjson::count(doc, "viewerSamples")?,
            avg_viewer_count: extjson::float(doc, "avgViewerCount")?,
            peak_viewer_count: extjson::count(doc, "peakViewerCount")?,
            qr_code_url: text(doc, "qrCodeUrl")?,
            tracking_url: text(doc, "trackingUrl")?,
            chat_command: text(doc, "chatCommand")?,
            created_at: extjson::date(doc, "createdAt")?,
            campaign_id,
            streamer_id,
        };
        Ok(Parsed {
            key: format!("{},{}", participation.campaign_id.as_str(), participation.streamer_id.as_str()),
            doc: participation,
            fixes,
        })
    }

    async fn write(
        &mut self,
        tx: &mut PgConnection,
        groups: &[Group<Participation>],
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        // Two imports of one file at once would both find a document new; one at a time.
        sqlx::query!("SELECT 1 AS locked FROM pg_advisory_xact_lock(hashtext('upsertd import participations'))")
            .fetch_one(&mut *tx)
            .await?;
        let sources: Vec<String> = groups.iter().flat_map(|g| g.docs.iter().map(|d| d.source_id.clone())).collect();
        let done: HashMap<String, Uuid> = sqlx::query!(
            "SELECT source_id, target_id FROM import_sources WHERE collection = 'participations'
                AND source_id = ANY($1)",
            &sources,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.source_id, r.target_id))
        .collect();
        let now = transaction_time(tx).await?;
        for group in groups {
            let (fresh, seen): (Vec<&Sourced<Participation>>, Vec<_>) =
                group.docs.iter().partition(|d| !done.contains_key(&d.source_id));
            summary.add("documents imported by an earlier run", seen.len() as u64);
            let id = if fresh.is_empty() {
                summary.count(Outcome::Unchanged);
                done[&seen[0].source_id]
            } else {
                self.write_fresh(tx, &fresh, now, summary).await?
            };
            summary.map.extend(group.docs.iter().map(|d| MapRow {
                source_id: d.source_id.clone(),
                target_id: id,
                key: group.key.clone(),
            }));
        }
        Ok(())
    }
}

impl Participations {
    /// Adds documents not imported before to their participation (creating it if needed).
    async fn write_fresh(
        &mut self,
        tx: &mut PgConnection,
        fresh: &[&Sourced<Participation>],
        now: DateTime<Utc>,
        summary: &mut Summary,
    ) -> anyhow::Result<Uuid> {
        let mut docs: Vec<&Participation> = fresh.iter().map(|d| &d.doc).collect();
        // Earliest first (undated last, then file order): its token is the one kept.
        docs.sort_by_key(|d| (d.created_at.is_none(), d.created_at));
        let total = sum(&docs);
        let token = self.pick_token(tx, &total, &docs, summary).await?;
        let id = claim_pair(tx, &total).await?;
        let row = sqlx::query!(
            r#"INSERT INTO participations AS p (id, campaign_id, streamer_id, browser_source_token, impressions, clicks,
                   chat_clicks, qr_scans, link_clicks, estimated_earnings, viewer_samples, avg_viewer_count,
                   peak_viewer_count, qr_code_url, tracking_url, chat_command, created_at, viewer_count_total)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, coalesce($17, now()),
                       round($12::float8 * $11::bigint)::bigint)
               ON CONFLICT (id) DO UPDATE SET
                   impressions = p.impressions + EXCLUDED.impressions,
                   clicks = p.clicks + EXCLUDED.clicks,
                   chat_clicks = p.chat_clicks + EXCLUDED.chat_clicks,
                   qr_scans = p.qr_scans + EXCLUDED.qr_scans,
                   link_clicks = p.link_clicks + EXCLUDED.link_clicks,
                   estimated_earnings = p.estimated_earnings + EXCLUDED.estimated_earnings,
                   viewer_samples = p.viewer_samples + EXCLUDED.viewer_samples,
                   -- Live samples compute the mean as total / samples; legacy documents carry only
                   -- the mean, so the total they stand for is mean x samples.
                   viewer_count_total = p.viewer_count_total + EXCLUDED.viewer_count_total,
                   avg_viewer_count = CASE WHEN p.viewer_samples + EXCLUDED.viewer_samples > 0
                       THEN (p.avg_viewer_count * p.viewer_samples
                           + EXCLUDED.avg_viewer_count * EXCLUDED.viewer_samples)
                            / (p.viewer_samples + EXCLUDED.viewer_samples)
                       ELSE greatest(p.avg_viewer_count, EXCLUDED.avg_viewer_count) END,
                   peak_viewer_count = greatest(p.peak_viewer_count, EXCLUDED.peak_viewer_count),
                   qr_code_url = coalesce(p.qr_code_url, EXCLUDED.qr_code_url),
                   tracking_url = coalesce(p.tracking_url, EXCLUDED.tracking_url),
                   chat_command = coalesce(p.chat_command, EXCLUDED.chat_command),
                   created_at = least(p.created_at, EXCLUDED.created_at),
                   updated_at = $18
               RETURNING id, (xmax::text = '0') AS "inserted!""#,
            id,
            total.campaign_id.as_str(),
            total.streamer_id.as_str(),
            token,
            total.impressions,
            total.clicks,
            total.chat_clicks,
            total.qr_scans,
            total.link_clicks,
            total.earnings,
            total.viewer_samples,
            total.avg_viewer_count,
            total.peak_viewer_count,
            total.qr_code_url,
            total.tracking_url,
            total.chat_command,
            total.created_at,
            now,
        )
        .fetch_one(&mut *tx)
        .await?;
        if row.inserted {
            sqlx::query!(
                "INSERT INTO participation_tokens (browser_source_token, participation_id) VALUES ($1, $2)",
                token,
                id
            )
            .execute(&mut *tx)
            .await?;
        }
        summary.count(if row.inserted { Outcome::Inserted } else { Outcome::Updated });
        let events = sqlx::query!(
            "INSERT INTO participation_events (participation_id, kind, impressions, clicks, chat_clicks, qr_scans,
                 link_clicks, earnings, viewer_samples)
             SELECT $1, 'import', e.* FROM unnest($2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                 $7::numeric[], $8::int8[]) AS e",
            row.id,
            &docs.iter().map(|d| d.impressions).collect::<Vec<_>>(),
            &docs.iter().map(|d| d.clicks).collect::<Vec<_>>(),
            &docs.iter().map(|d| d.chat_clicks).collect::<Vec<_>>(),
            &docs.iter().map(|d| d.qr_scans).collect::<Vec<_>>(),
            &docs.iter().map(|d| d.link_clicks).collect::<Vec<_>>(),
            &docs.iter().map(|d| d.earnings).collect::<Vec<_>>(),
            &docs.iter().map(|d| d.viewer_samples).collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        summary.add("ledger events recorded", events.rows_affected());
        let sources: Vec<String> = fresh.iter().map(|d| d.source_id.clone()).collect();
        record_sources(tx, Collection::Participations, &sources, &vec![row.id; sources.len()]).await?;
        Ok(row.id)
    }

    /// The earliest valid token no other participation holds; a fresh one when there is none.
    /// A participation that already exists keeps its own token (no statement changes it).
    async fn pick_token(
        &mut self,
        tx: &mut PgConnection,
        total: &Participation,
        docs: &[&Participation],
        summary: &mut Summary,
    ) -> anyhow::Result<String> {
        let existing = sqlx::query_scalar!(
            "SELECT browser_source_token FROM participations WHERE id = (
                 SELECT participation_id FROM participation_pairs WHERE campaign_id = $1 AND streamer_id = $2)",
            total.campaign_id.as_str(),
            total.streamer_id.as_str(),
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(token) = existing {
            return Ok(token);
        }
        for token in docs.iter().filter_map(|d| d.token.as_ref()) {
            let held = sqlx::query_scalar!(
                "SELECT participation_id FROM participation_tokens WHERE browser_source_token = $1",
                token.as_str()
            )
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() && self.tokens_taken.insert(token.as_str().to_owned()) {
                return Ok(token.as_str().to_owned());
            }
            summary.fix("browserSourceToken shared with another participation replaced");
        }
        summary.fix("fresh browserSourceToken generated");
        Ok(BrowserSourceToken::generate().as_str().to_owned())
    }
}

/// The id of the pair's participation: a fresh one claimed for it now (`participation_pairs`,
/// which keeps the pair unique), or the one a participation already holds.
async fn claim_pair(tx: &mut PgConnection, total: &Participation) -> anyhow::Result<Uuid> {
    let (campaign, streamer) = (total.campaign_id.as_str(), total.streamer_id.as_str());
    let claimed = sqlx::query_scalar!(
        "INSERT INTO participation_pairs (campaign_id, streamer_id, participation_id) VALUES ($1, $2, $3)
         ON CONFLICT (campaign_id, streamer_id) DO NOTHING
         RETURNING participation_id",
        campaign,
        streamer,
        Uuid::now_v7(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    match claimed {
        Some(id) => Ok(id),
        // DO NOTHING waited for the transaction that holds the pair to commit: it is visible.
        None => Ok(sqlx::query_scalar!(
            "SELECT participation_id FROM participation_pairs WHERE campaign_id = $1 AND streamer_id = $2",
            campaign,
            streamer
        )
        .fetch_one(&mut *tx)
        .await?),
    }
}

/// The merged document: counters summed, peak the maximum, the mean weighted by samples,
/// texts from the newest document that has them; `docs` is sorted earliest first, so
/// the first one's creation time is the earliest.
fn sum(docs: &[&Participation]) -> Participation {
    let mut total = Participation { token: None, ..docs[0].clone() };
    for d in &docs[1..] {
        total.avg_viewer_count =
            combine_average((total.avg_viewer_count, total.viewer_samples), (d.avg_viewer_count, d.viewer_samples));
        total.impressions = total.impressions.saturating_add(d.impressions);
        total.clicks = total.clicks.saturating_add(d.clicks);
        total.chat_clicks = total.chat_clicks.saturating_add(d.chat_clicks);
        total.qr_scans = total.qr_scans.saturating_add(d.qr_scans);
        total.link_clicks = total.link_clicks.saturating_add(d.link_clicks);
        total.earnings += d.earnings;
        total.viewer_samples = total.viewer_samples.saturating_add(d.viewer_samples);
        total.peak_viewer_count = total.peak_viewer_count.max(d.peak_viewer_count);
        total.qr_code_url = d.qr_code_url.clone().or(total.qr_code_url);
        total.tracking_url = d.tracking_url.clone().or(total.tracking_url);
        total.chat_command = d.chat_command.clone().or(total.chat_command);
    }
    total
}
