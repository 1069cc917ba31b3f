//! `upsertd import` on mongoexport fixtures holding every legacy defect the seeds describe.

use crate::helpers::TestApp;
use std::path::PathBuf;
use upsertd::ops::import::{import_file, Collection, ImportArgs, Summary};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A batch size of 2 makes even the small fixtures span several transactions.
async fn import(app: &TestApp, collection: Collection, file: &str, dry_run: bool) -> Summary {
    let args = ImportArgs { collection, file: fixture(file), dry_run, batch_size: 2, map_out: None };
    let mut conn = app.pool.acquire().await.unwrap();
    import_file(&mut conn, &args).await.unwrap_or_else(|e| panic!("importing {file} failed: {e:#}"))
}

/// Every row of the tables an import writes, as text: equal snapshots mean nothing changed.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let mut tables = Vec::new();
    for table in ["conversations", "messages", "chats", "participations", "participation_events", "import_sources"] {
        let rows: Option<String> =
            sqlx::query_scalar(&format!("SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM {table} t"))
                .fetch_one(&app.pool)
                .await
                .unwrap();
        tables.push(format!("{table}:\n{}", rows.unwrap_or_default()));
    }
    tables
}

fn rejected_lines(summary: &Summary) -> Vec<usize> {
    summary.rejected.iter().map(|r| r.line).collect()
}

#[tokio::test]
async fn conversations_merge_by_session_id_with_messages_once_in_timestamp_order() {
    let app = TestApp::spawn().await;
    let summary = import(&app, Collection::Conversations, "conversations.jsonl", false).await;
    assert_eq!(summary.read, 8, "{}", summary.render());
    assert_eq!(rejected_lines(&summary), [4, 7, 8], "the malformed line, a bad sessionId and a bad role");
    assert_eq!(summary.merged, 1, "the second s-1 document is merged");
    assert_eq!(summary.inserted, 4, "s-1, s-2 and two conversations that had no sessionId");
    assert_eq!(summary.fixed.get("missing or null sessionId given a fresh one"), Some(&2));
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 4);

    let texts: Vec<String> = sqlx::query_scalar("SELECT text FROM messages WHERE session_id = 's-1' ORDER BY seq")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(texts, ["hello", "how are you", "hi", "fine"], "the union, each once, in timestamp order");
    let s1: (i64, Option<String>, Option<String>, i64) = sqlx::query_as(
        "SELECT message_count, transcript, user_id, version FROM conversations WHERE session_id = 's-1'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(s1, (4, Some("hello how are you".into()), Some("u1".into()), 1), "fields of both documents");
    let analysis: serde_json::Value = sqlx::query_scalar("SELECT analysis FROM conversations WHERE session_id = 's-2'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        analysis,
        serde_json::json!({"score": 7.5, "at": "2024-02-01T00:00:00+00:00"}),
        "plain JSON, no $ wrappers"
    );
    let generated: Vec<String> =
        sqlx::query_scalar("SELECT session_id FROM conversations WHERE session_id NOT LIKE 's-%' ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(generated.iter().all(|s| uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 7)));
}

#[tokio::test]
async fn a_second_conversation_import_changes_nothing_and_reuses_generated_session_ids() {
    let app = TestApp::spawn().await;
    import(&app, Collection::Conversations, "conversations.jsonl", false).await;
    let before = snapshot(&app).await;
    let again = import(&app, Collection::Conversations, "conversations.jsonl", false).await;
    assert_eq!(snapshot(&app).await, before, "no row was written by the second run");
    assert_eq!((again.inserted, again.updated, again.unchanged), (0, 0, 4), "{}", again.render());
    assert_eq!(again.fixed.get("missing or null sessionId given a fresh one"), None, "the first run's ids are reused");
    assert_eq!(again.details.get("messages stored"), Some(&0));
}

#[tokio::test]
async fn chats_get_one_row_per_participant_group_and_every_old_id_maps_to_the_kept_chat() {
    let app = TestApp::spawn().await;
    let summary = import(&app, Collection::Chats, "chats.json", false).await;
    assert_eq!(summary.read, 5, "{}", summary.render());
    assert_eq!(rejected_lines(&summary), [7], "a one-person chat, reported with the line it starts on");
    assert_eq!((summary.inserted, summary.merged), (3, 1));
    assert_eq!(summary.fixed.get("participantsKey backfilled"), Some(&1));
    assert_eq!(summary.fixed.get("participantsKey recomputed from participants"), Some(&2));
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT participants_key FROM chats ORDER BY 1").fetch_all(&app.pool).await.unwrap();
    assert_eq!(
        keys,
        ["1_user_2,user", "65b0000000000000000000aa,bob", "user_1,user_2"],
        "the two groups that shared the legacy key user_1_user_2 are two chats"
    );
    let target = |source: &str| summary.map.iter().find(|m| m.source_id == source).map(|m| m.target_id);
    assert_eq!(target("65c000000000000000000001"), target("65c000000000000000000003"), "merged ids map to one chat");
    assert_ne!(target("65c000000000000000000001"), target("65c000000000000000000002"));
    let created: String =
        sqlx::query_scalar("SELECT created_at::text FROM chats WHERE participants_key = 'user_1,user_2'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(created.starts_with("2024-01-01"), "the earliest createdAt is kept, got {created}");

    let before = snapshot(&app).await;
    let again = import(&app, Collection::Chats, "chats.json", false).await;
    assert_eq!(snapshot(&app).await, before, "a second run changes nothing");
    assert_eq!(again.map, summary.map, "and maps the old ids to the same chats");
}

#[tokio::test]
async fn participations_sum_counters_keep_the_earliest_token_and_balance_the_ledger() {
    let app = TestApp::spawn().await;
    let summary = import(&app, Collection::Participations, "participations.jsonl", false).await;
    assert_eq!(rejected_lines(&summary), [5, 6], "a negative counter and a missing streamerId: {}", summary.render());
    assert_eq!((summary.inserted, summary.merged), (2, 2));
    let merged: serde_json::Value = sqlx::query_scalar(
        "SELECT jsonb_build_object('impressions', impressions, 'clicks', clicks, 'chat_clicks', chat_clicks,
                    'qr_scans', qr_scans, 'link_clicks', link_clicks, 'earnings', estimated_earnings::text,
                    'viewer_samples', viewer_samples, 'avg', avg_viewer_count, 'peak', peak_viewer_count,
                    'viewer_total', viewer_count_total, 'token', browser_source_token, 'chat_command', chat_command)
         FROM participations WHERE campaign_id = 'camp1' AND streamer_id = 'streamer_a'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        merged,
        serde_json::json!({"impressions": 16, "clicks": 3, "chat_clicks": 1, "qr_scans": 0, "link_clicks": 1,
            "earnings": "1.350001", "viewer_samples": 4, "avg": 20, "peak": 25, "viewer_total": 80,
            "token": "b".repeat(64),
            "chat_command": "!camp1"}),
        "sums, the sample-weighted mean, the peak, and the token of the earliest document (2023-12-01)"
    );
    let other: String = sqlx::query_scalar(
        "SELECT browser_source_token FROM participations WHERE campaign_id = '65e000000000000000000001'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(other != "b".repeat(64) && other.len() == 64, "a token already kept by another participation is replaced");
    assert_eq!(app.count("SELECT count(*) FROM participation_events WHERE kind = 'import'").await, 4);
    assert_eq!(app.count("SELECT count(*) FROM participation_ledger_mismatches").await, 0, "counters = sums of events");

    let mut conn = app.pool.acquire().await.unwrap();
    let report = upsertd::ops::audit::run(&mut conn, &app.data_dir).await.unwrap();
    assert!(report.clean, "an imported database passes the audit:\n{}", report.render());

    let before = snapshot(&app).await;
    let again = import(&app, Collection::Participations, "participations.jsonl", false).await;
    assert_eq!(snapshot(&app).await, before, "a second run does not add the counters twice");
    assert_eq!((again.inserted, again.updated, again.unchanged), (0, 0, 2));
}

#[tokio::test]
async fn a_dry_run_reports_what_it_would_do_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let before = snapshot(&app).await;
    for (collection, file) in [
        (Collection::Conversations, "conversations.jsonl"),
        (Collection::Chats, "chats.json"),
        (Collection::Participations, "participations.jsonl"),
    ] {
        let summary = import(&app, collection, file, true).await;
        assert!(summary.inserted > 0, "the summary counts what would be inserted: {}", summary.render());
        assert!(summary.render().contains("dry run"));
    }
    assert_eq!(snapshot(&app).await, before, "nothing was written");
}

/// Values PostgreSQL refuses (a date before 4713 BC, a number outside `numeric`) reject their
/// own documents with a reason; the batches they are in and every later line are imported.
#[tokio::test]
async fn documents_postgresql_would_refuse_are_rejected_alone() {
    let app = TestApp::spawn().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let lines = [
        r#"{"sessionId":"ok-1"}"#,
        r#"{"sessionId":"old","createdAt":{"$date":{"$numberLong":"-400000000000000"}}}"#,
        r#"{"sessionId":"ok-2"}"#,
        r#"{"sessionId":"huge","analysis":{"x":1e999999}}"#,
        r#"{"sessionId":"ok-3","messages":[{"role":"user","text":"t","timestamp":{"$date":{"$numberLong":"-400000000000000"}}}]}"#,
        r#"{"sessionId":"ok-4"}"#,
    ];
    std::fs::write(file.path(), lines.join("\n")).unwrap();
    let args = ImportArgs {
        collection: Collection::Conversations,
        file: file.path().to_owned(),
        dry_run: false,
        batch_size: 2,
        map_out: None,
    };
    let mut conn = app.pool.acquire().await.unwrap();
    let summary = import_file(&mut conn, &args).await.unwrap_or_else(|e| panic!("the import aborted: {e:#}"));
    assert_eq!(rejected_lines(&summary), [2, 4, 5], "{}", summary.render());
    assert_eq!(summary.inserted, 3, "{}", summary.render());
    assert_eq!(app.count("SELECT count(*) FROM conversations WHERE session_id LIKE 'ok-%'").await, 3);
}
