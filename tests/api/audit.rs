//! `upsertd audit`: a clean database passes; every kind of corruption the constraints normally
//! forbid is found once the test (which owns its database) removes a constraint and writes it.

use crate::helpers::TestApp;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::process::{Command, Output};
use upsertd::ops::audit::{run, Finding, Report};
use uuid::Uuid;

fn audit_binary(database_url: &str, data_dir: &std::path::Path, json: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_upsertd"));
    command
        .arg("audit")
        .arg("--database-url")
        .arg(database_url)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn");
    if json {
        command.arg("--json");
    }
    command.output().expect("the upsertd binary runs")
}

async fn audit(app: &TestApp) -> Report {
    let mut conn = app.pool.acquire().await.unwrap();
    run(&mut conn, &app.data_dir).await.expect("the audit runs")
}

async fn exec(app: &TestApp, sql: &str) {
    sqlx::raw_sql(sql).execute(&app.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Stores `content` as the audio store would and catalogues it.
async fn stored_audio(app: &TestApp, content: &[u8], on_disk: &[u8]) -> (Uuid, String) {
    let sha = hex::encode(Sha256::digest(content));
    let path = app.data_dir.join("audio").join(&sha[..2]).join(&sha);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, on_disk).unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO audio_files (id, sha256, content_type, bytes, analysis) VALUES ($1, $2, 'audio/wav', $3, '{}')",
    )
    .bind(id)
    .bind(&sha)
    .bind(content.len() as i64)
    .execute(&app.pool)
    .await
    .unwrap();
    (id, sha)
}

fn find<'a>(report: &'a Report, table: &str, key: &str, problem: &str) -> &'a Finding {
    report
        .findings()
        .find(|f| f.table == table && f.key == key && f.problem.contains(problem))
        .unwrap_or_else(|| panic!("no finding {table}.{key} {problem:?} in\n{}", report.render()))
}

#[tokio::test]
async fn a_clean_database_passes_every_check_and_the_binary_exits_0() {
    let app = TestApp::spawn().await;
    let saved = app.save_analysis(json!({"session_id": "clean-1", "transcript": "hi"})).await;
    assert_eq!(saved.status(), 201);
    let appended = app.append_messages("clean-1", json!({"messages": [{"role": "user", "text": "hello"}]})).await;
    assert_eq!(appended.status(), 201);
    stored_audio(&app, b"RIFF....WAVE", b"RIFF....WAVE").await;
    let participation = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let clicks = app.url(&format!("/api/participations/{participation}/clicks"));
    let keyed = app.client.post(clicks).header("idempotency-key", "clean").json(&json!({})).send().await.unwrap();
    assert_eq!(keyed.status(), 200, "a counter record and its answer row");

    let report = audit(&app).await;
    assert!(report.clean, "{}", report.render());

    let output = audit_binary(&app.database_url(), &app.data_dir, false);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("clean: every check passed"), "{stdout}");
}

#[tokio::test]
async fn every_kind_of_corruption_is_reported_with_its_table_key_and_rows() {
    let mut app = TestApp::spawn().await;
    app.skip_final_audit();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let participation = Uuid::now_v7();
    exec(&app, "ALTER TABLE conversations DROP CONSTRAINT conversations_session_id_unique CASCADE").await;
    exec(&app, "ALTER TABLE chats DROP CONSTRAINT chats_participants_key_matches_participants").await;
    exec(&app, "ALTER TABLE participations DROP CONSTRAINT participations_impressions_not_negative").await;
    // What an interrupted CREATE INDEX CONCURRENTLY leaves behind.
    exec(&app, "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'audio_files_sha256_unique'::regclass").await;
    exec(
        &app,
        &format!(
            "INSERT INTO conversations (id, session_id, message_count) VALUES ('{a}', 'twice', 0), ('{b}', 'twice', 3);
             INSERT INTO chats (id, participants, participants_key) VALUES (gen_random_uuid(), '{{a_b,c}}', 'a_b_c');
             INSERT INTO participations (id, campaign_id, streamer_id, browser_source_token, impressions, clicks)
                 VALUES ('{participation}', 'camp', 'streamer', repeat('c', 64), -1, 5);
             INSERT INTO idempotency_keys (scope, key, method, path, shard, digest, fingerprint, claim_id,
                                           locked_until, expires_at)
                 VALUES ('', 'dead-request', 'POST', '/api/chats', gen_random_uuid(), '\\x01', '\\x00',
                         gen_random_uuid(), now() - interval '1 minute', now() + interval '1 day');
             INSERT INTO idempotency_keys (scope, key, method, path, shard, digest, fingerprint, claim_id,
                                           locked_until, expires_at, response_status, response_row_id, completed_at)
                 VALUES ('', 'answer-gone', 'POST', '/api/participations/x/clicks', gen_random_uuid(), '\\x02',
                         '\\x00', gen_random_uuid(), now(), now() + interval '1 day', 200, gen_random_uuid(), now());"
        ),
    )
    .await;
    let (missing, _) = stored_audio(&app, b"gone", b"gone").await;
    let (altered, _) = stored_audio(&app, b"original", b"tampered").await;
    let missing_sha = hex::encode(Sha256::digest(b"gone"));
    std::fs::remove_file(app.data_dir.join("audio").join(&missing_sha[..2]).join(&missing_sha)).unwrap();

    let report = audit(&app).await;
    assert!(!report.clean);
    find(&report, "conversations", "conversations_session_id_unique", "missing");
    find(&report, "audio_files", "audio_files_sha256_unique", "not a valid unique index");
    let duplicate = find(&report, "conversations", "session_id", "\"twice\" is held by 2 rows");
    assert_eq!(duplicate.rows, [a.to_string(), b.to_string()]);
    let malformed = find(&report, "chats", "participants_key", "not the sorted distinct participant ids");
    assert!(malformed.rows[0].contains("'a_b_c'"), "{:?}", malformed.rows);
    let negative = find(&report, "participations", "id", "negative counter: impressions -1");
    assert_eq!(negative.rows, [participation.to_string()]);
    // Inserted around the API: nothing claims its pair and its token, so nothing keeps them unique.
    let unclaimed = find(&report, "participations", "campaign_id, streamer_id", "\"camp,streamer\" is not claimed");
    assert_eq!(unclaimed.rows, [participation.to_string()]);
    find(&report, "participations", "browser_source_token", "is not claimed for it");
    find(&report, "participations", "(campaign_id, streamer_id)", "clicks is 5 but its events sum to 0");
    find(&report, "participations", "(campaign_id, streamer_id)", "impressions is -1 but its events sum to 0");
    let count = find(&report, "conversations", "session_id", "message_count is 3 but it has 0 messages");
    assert_eq!(count.rows, [b.to_string()]);
    assert!(find(&report, "audio_files", "sha256", "file is missing").rows[0].starts_with(&missing.to_string()));
    assert!(find(&report, "audio_files", "sha256", "does not match").rows[0].starts_with(&altered.to_string()));
    assert!(find(&report, "idempotency_keys", "(scope, method, path, key)", "past their lease").rows[0]
        .contains("dead-request"));
    assert!(
        find(&report, "idempotency_keys", "response_row_id", "answer row is missing").rows[0].contains("answer-gone")
    );

    let output = audit_binary(&app.database_url(), &app.data_dir, true);
    assert_eq!(output.status.code(), Some(1), "a finding exits 1: {}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert_eq!(json["clean"], false);
    let findings: usize =
        json["checks"].as_array().unwrap().iter().map(|c| c["findings"].as_array().unwrap().len()).sum();
    assert_eq!(findings, report.findings().count(), "the JSON report lists the same findings");
}

#[tokio::test]
async fn an_unreachable_database_exits_2() {
    let data_dir = crate::helpers::scratch_dir(&format!("audit-{}", Uuid::new_v4().simple()));
    let output = audit_binary("postgres://postgres@localhost:1/nowhere?host=/nonexistent-upsertd", &data_dir, false);
    assert_eq!(output.status.code(), Some(2), "could not check: {}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}
