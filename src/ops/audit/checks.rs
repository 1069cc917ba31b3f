//! The audit's checks. The table checks read the operator views of migration 8, so what the
//! audit reports is what `SELECT * FROM <view>` shows in psql.

use super::Finding;
use crate::conversations::audio::AudioStore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

/// The constraints the contract rests on: the natural keys (unique) and their format CHECKs.
const KEY_CONSTRAINTS: &[(&str, &str)] = &[
    ("audio_files", "audio_files_pkey"),
    ("audio_files", "audio_files_sha256_unique"),
    ("audio_files", "audio_files_sha256_is_lowercase_hex"),
    ("conversations", "conversations_session_id_unique"),
    ("conversations", "conversations_session_id_format"),
    ("messages", "messages_pkey"),
    ("messages", "messages_seq_unique"),
    ("chats", "chats_pkey"),
    ("chats", "chats_participants_key_unique"),
    ("chats", "chats_participants_key_matches_participants"),
    ("participations", "participations_pkey"),
    ("participations", "participations_token_is_64_hex"),
    ("participation_pairs", "participation_pairs_pkey"),
    ("participation_tokens", "participation_tokens_pkey"),
    ("participation_tokens", "participation_tokens_token_is_64_hex"),
    ("participation_events", "participation_events_pkey"),
    ("idempotency_keys", "idempotency_keys_pkey"),
    ("idempotency_answer_rows", "idempotency_answer_rows_pkey"),
    ("import_sources", "import_sources_pkey"),
];

fn finding(table: &str, key: &str, problem: impl Into<String>, rows: Vec<String>) -> Finding {
    Finding { table: table.into(), key: key.into(), problem: problem.into(), rows }
}

/// Each key constraint exists on its table; a unique one is backed by a valid unique index
/// (an interrupted CREATE INDEX CONCURRENTLY leaves an invalid one), a CHECK is validated.
pub async fn constraints(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let names: Vec<String> = KEY_CONSTRAINTS.iter().map(|(_, name)| (*name).to_owned()).collect();
    let present = sqlx::query!(
        r#"SELECT con.conname::text AS "name!", con.conrelid::regclass::text AS "table_name!",
                  con.contype::text AS "kind!", con.convalidated AS "validated!",
                  i.indisvalid AS "index_valid?", i.indisunique AS "index_unique?"
           FROM pg_constraint con
           LEFT JOIN pg_index i ON i.indexrelid = con.conindid
           WHERE con.conname = ANY($1) AND pg_table_is_visible(con.conrelid)"#,
        &names,
    )
    .fetch_all(conn)
    .await?;
    let mut findings = Vec::new();
    for (table, name) in KEY_CONSTRAINTS {
        // On a Citus coordinator a reference table's copy there (`audio_files_102008`) carries
        // its CHECKs under the same names: the table's own constraint is the one that counts.
        let Some(row) = present
            .iter()
            .find(|row| row.name == *name && row.table_name == *table)
            .or_else(|| present.iter().find(|row| row.name == *name))
        else {
            findings.push(finding(table, name, "constraint is missing", Vec::new()));
            continue;
        };
        let problem = if row.table_name != *table {
            Some(format!("constraint is on table {}", row.table_name))
        } else if row.kind == "c" && !row.validated {
            Some(format!("CHECK is NOT VALID: ALTER TABLE {table} VALIDATE CONSTRAINT {name}"))
        } else if row.kind != "c" && (row.index_valid != Some(true) || row.index_unique != Some(true)) {
            Some(format!("its index is not a valid unique index: REINDEX INDEX CONCURRENTLY {name}"))
        } else {
            None
        };
        if let Some(problem) = problem {
            findings.push(finding(table, name, problem, Vec::new()));
        }
    }
    Ok(findings)
}

/// A key value as a finding shows it.
fn quoted(value: Option<String>) -> String {
    value.map_or_else(|| "null".to_owned(), |v| format!("{v:?}"))
}

pub async fn duplicate_keys(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let rows = sqlx::query!(
        r#"SELECT table_name AS "table_name!", key_name AS "key_name!", key_value, row_count AS "row_count!",
                  row_ids AS "row_ids!"
           FROM duplicate_key_candidates ORDER BY 1, 2, 3"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let value = quoted(r.key_value);
            finding(&r.table_name, &r.key_name, format!("{value} is held by {} rows", r.row_count), r.row_ids)
        })
        .collect())
}

pub async fn malformed_keys(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let rows = sqlx::query!(
        r#"SELECT table_name AS "table_name!", key_name AS "key_name!", problem AS "problem!",
                  array_agg(row_id || ' (' || coalesce(quote_literal(key_value), 'null') || ')' ORDER BY row_id)
                      AS "rows!"
           FROM malformed_keys GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| finding(&r.table_name, &r.key_name, r.problem, r.rows)).collect())
}

pub async fn negative_counters(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let rows = sqlx::query!(
        r#"SELECT id, array_to_string(ARRAY[
                   CASE WHEN impressions < 0 THEN 'impressions ' || impressions END,
                   CASE WHEN clicks < 0 THEN 'clicks ' || clicks END,
                   CASE WHEN chat_clicks < 0 THEN 'chat_clicks ' || chat_clicks END,
                   CASE WHEN qr_scans < 0 THEN 'qr_scans ' || qr_scans END,
                   CASE WHEN link_clicks < 0 THEN 'link_clicks ' || link_clicks END,
                   CASE WHEN estimated_earnings < 0 THEN 'estimated_earnings ' || estimated_earnings END,
                   CASE WHEN viewer_samples < 0 THEN 'viewer_samples ' || viewer_samples END,
                   CASE WHEN avg_viewer_count < 0 THEN 'avg_viewer_count ' || avg_viewer_count END,
                   CASE WHEN peak_viewer_count < 0 THEN 'peak_viewer_count ' || peak_viewer_count END
               ], ', ') AS "negative!"
           FROM participations
           WHERE least(impressions, clicks, chat_clicks, qr_scans, link_clicks, viewer_samples, peak_viewer_count) < 0
              OR estimated_earnings < 0 OR avg_viewer_count < 0
           ORDER BY id"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| finding("participations", "id", format!("negative counter: {}", r.negative), vec![r.id.to_string()]))
        .collect())
}

pub async fn unclaimed_keys(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let rows = sqlx::query!(
        r#"SELECT id AS "id!", key_name AS "key_name!", key_value FROM participation_keys_unclaimed ORDER BY 1, 2"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let problem = format!("{} is not claimed for it", quoted(r.key_value));
            finding("participations", &r.key_name, problem, vec![r.id.to_string()])
        })
        .collect())
}

pub async fn ledger(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let rows = sqlx::query!(
        r#"SELECT participation_id AS "participation_id!", campaign_id AS "campaign_id!",
                  streamer_id AS "streamer_id!", counter AS "counter!", stored::text AS "stored!",
                  from_events::text AS "from_events!"
           FROM participation_ledger_mismatches ORDER BY 1, 4"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let problem = format!(
                "({}, {}): {} is {} but its events sum to {}",
                r.campaign_id, r.streamer_id, r.counter, r.stored, r.from_events
            );
            finding("participations", "(campaign_id, streamer_id)", problem, vec![r.participation_id.to_string()])
        })
        .collect())
}

pub async fn message_counts(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let rows = sqlx::query!(
        r#"SELECT conversation_id AS "conversation_id!", session_id AS "session_id!",
                  message_count AS "message_count!", messages AS "messages!"
           FROM conversation_message_count_mismatches ORDER BY 2"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let problem =
                format!("{:?}: message_count is {} but it has {} messages", r.session_id, r.message_count, r.messages);
            finding("conversations", "session_id", problem, vec![r.conversation_id.to_string()])
        })
        .collect())
}

pub async fn stuck_idempotency_keys(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let rows = sqlx::query!(
        r#"SELECT scope AS "scope!", method AS "method!", path AS "path!", key AS "key!",
                  locked_until AS "locked_until!"
           FROM idempotency_keys_in_flight WHERE stuck ORDER BY locked_until"#
    )
    .fetch_all(conn)
    .await?;
    let listed = rows
        .iter()
        .map(|r| key_record(&r.method, &r.path, &r.key, &r.scope, format!("lease ended {}", r.locked_until)));
    Ok(key_records(
        "(scope, method, path, key)",
        "unfinished request(s) past their lease: the process running them died",
        listed.collect(),
    ))
}

/// Counter records must find the row their answer is rendered from; no foreign key says so.
pub async fn records_without_answer(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let rows = sqlx::query!(
        r#"SELECT method AS "method!", path AS "path!", key AS "key!", scope AS "scope!",
                  response_row_id AS "response_row_id!"
           FROM idempotency_records_without_answer ORDER BY completed_at"#
    )
    .fetch_all(conn)
    .await?;
    let listed = rows
        .iter()
        .map(|r| key_record(&r.method, &r.path, &r.key, &r.scope, format!("answer row {}", r.response_row_id)));
    Ok(key_records(
        "response_row_id",
        "counter record(s) whose answer row is missing: their keys answer 409, not a replay",
        listed.collect(),
    ))
}

fn key_record(method: &str, path: &str, key: &str, scope: &str, detail: String) -> String {
    format!("{method} {path} {key:?} scope {scope:?} ({detail})")
}

/// One finding on `idempotency_keys` listing `records`, or none when there are none.
fn key_records(key: &str, problem: &str, records: Vec<String>) -> Vec<Finding> {
    if records.is_empty() {
        return Vec::new();
    }
    vec![finding("idempotency_keys", key, format!("{} {problem}", records.len()), records)]
}

pub async fn stored_audio(conn: &mut PgConnection) -> anyhow::Result<Vec<(Uuid, String)>> {
    let rows = sqlx::query!("SELECT id, sha256 FROM audio_files ORDER BY id").fetch_all(conn).await?;
    Ok(rows.into_iter().map(|r| (r.id, r.sha256)).collect())
}

/// Blocking: reads every file. A malformed hash was reported by `malformed_keys` already.
pub fn audio_on_disk(store: &AudioStore, stored: Vec<(Uuid, String)>) -> Vec<Finding> {
    let mut missing = Vec::new();
    let mut unreadable = Vec::new();
    let mut altered = Vec::new();
    for (id, sha256) in stored {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let path = store.path_for(&sha256);
        let row = format!("{id} ({})", path.display());
        match std::fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(row),
            Err(e) => unreadable.push(format!("{row}: {e}")),
            Ok(mut file) => {
                let mut hasher = Sha256::new();
                match std::io::copy(&mut file, &mut hasher) {
                    Err(e) => unreadable.push(format!("{row}: {e}")),
                    Ok(_) if hex::encode(hasher.finalize()) != sha256 => altered.push(row),
                    Ok(_) => {}
                }
            }
        }
    }
    [
        (missing, "file is missing"),
        (unreadable, "file cannot be read"),
        (altered, "file content does not match its sha256"),
    ]
    .into_iter()
    .filter(|(rows, _)| !rows.is_empty())
    .map(|(rows, problem)| finding("audio_files", "sha256", problem, rows))
    .collect()
}
