use crate::helpers::{assert_problem, TestApp};
use serde_json::{json, Value};

#[tokio::test]
async fn concurrent_creates_of_existing_conversations_each_get_their_own() {
    let sessions: Vec<Value> = (0..20).map(|g| json!({"session_id": format!("s-{g}")})).collect();
    let key_of = |c: &Value| c["session_id"].as_str().unwrap().to_owned();
    let app = TestApp::spawn().await;
    app.creates_of_existing_each_get_their_own("/api/conversations", &sessions, key_of, "conversations").await;
}

#[tokio::test]
async fn upload_then_save_analysis_make_one_conversation() {
    let app = TestApp::spawn().await;
    let form = crate::upload::tone_form("legacy-1").text("transcript", "ni hao");
    let first = app.upload_audio(form).await;
    assert_eq!(first.status(), 201, "the first step inserts");
    let second = app.save_analysis(json!({"session_id": "legacy-1", "analysis": {"score": 7}})).await;
    assert_eq!(second.status(), 200, "the second step updates the same conversation");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["transcript"], "ni hao", "an absent transcript keeps the stored one");
    assert_eq!(body["analysis"], json!({"score": 7}));
    assert_eq!(body["audio"]["content_type"], "audio/wav", "the audio reference survives the second step");
    assert_eq!(body["version"], 2);
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
}

#[tokio::test]
async fn save_analysis_then_upload_make_one_conversation() {
    let app = TestApp::spawn().await;
    let first = app.save_analysis(json!({"session_id": "legacy-2", "transcript": "typed"})).await;
    assert_eq!(first.status(), 201);
    let form = reqwest::multipart::Form::new()
        .text("session_id", "legacy-2")
        .part("audio", reqwest::multipart::Part::bytes(crate::upload::sine_wav(8_000, 1, 0.2, 0.5)));
    let second = app.upload_audio(form).await;
    assert_eq!(second.status(), 200, "the upload finds the conversation save-analysis made");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["transcript"], "typed", "no STT and no transcript part: the stored transcript stays");
    assert_eq!(body["analysis"]["format"], "wav", "without an analysis part the audio's analysis is stored");
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
}

#[tokio::test]
async fn each_step_repeated_is_unchanged_and_writes_no_row_version() {
    let app = TestApp::spawn().await;
    let body = json!({"session_id": "again", "transcript": "t", "analysis": {"a": [1, 2]}, "language": "zh"});
    assert_eq!(app.save_analysis(&body).await.status(), 201);
    let xmin_before: String =
        sqlx::query_scalar("SELECT xmin::text FROM conversations").fetch_one(&app.pool).await.unwrap();
    for _ in 0..3 {
        let repeat = app.save_analysis(&body).await;
        assert_eq!(repeat.status(), 200);
        assert_eq!(repeat.headers()["upsert-outcome"], "unchanged");
        assert_eq!(repeat.headers()["etag"], "\"1\"");
    }
    let xmin_after: String =
        sqlx::query_scalar("SELECT xmin::text FROM conversations").fetch_one(&app.pool).await.unwrap();
    assert_eq!(xmin_before, xmin_after, "an unchanged repeat must not write a new row version");

    let wav = crate::upload::sine_wav(16_000, 1, 0.3, 0.5);
    let upload = || {
        reqwest::multipart::Form::new()
            .text("session_id", "again")
            .part("audio", reqwest::multipart::Part::bytes(wav.clone()))
    };
    assert_eq!(app.upload_audio(upload()).await.headers()["upsert-outcome"], "updated");
    assert_eq!(app.upload_audio(upload()).await.headers()["upsert-outcome"], "unchanged");
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
}

#[tokio::test]
async fn two_hundred_concurrent_save_analysis_insert_once() {
    let app = TestApp::spawn().await;
    let started = std::time::Instant::now();
    let results = app
        .concurrently(200, 64, |i| {
            app.save_analysis(json!({"session_id": "storm", "transcript": format!("t{}", i % 2)}))
        })
        .await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let server_errors = results.iter().filter(|(s, _)| s.is_server_error()).count();
    eprintln!("200 concurrent save-analysis took {:?}", started.elapsed());
    assert_eq!((created, ok, server_errors), (1, 199, 0), "one insert, the rest updates, no 5xx");
    let ids: std::collections::HashSet<_> = results.iter().map(|(_, body)| body["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "every answer is the same conversation");
    assert_eq!(app.count("SELECT count(*) FROM conversations WHERE session_id = 'storm'").await, 1);
}

#[tokio::test]
async fn concurrent_saves_share_statements_yet_each_is_answered_as_if_alone() {
    const SESSIONS: usize = 40;
    const WRITES: usize = 10;
    let app = TestApp::spawn().await;
    let results = app
        .concurrently(SESSIONS * WRITES, 64, |i| {
            let (session_id, write) = (format!("c{}", i % SESSIONS), i / SESSIONS);
            // Two shapes (fields given), so two lanes write the same rows at once; every value
            // is new, so every write changes its row.
            let body = if write % 2 == 0 {
                json!({"session_id": session_id, "transcript": format!("w{write}")})
            } else {
                json!({"session_id": session_id, "analysis": {"write": write}})
            };
            app.save_analysis(body)
        })
        .await;
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 201), "every save succeeds: {results:?}");
    for session in 0..SESSIONS {
        let session_id = format!("c{session}");
        let answers: Vec<_> = results.iter().filter(|(_, body)| body["session_id"] == session_id.as_str()).collect();
        let created: Vec<_> = answers.iter().filter(|(s, _)| *s == 201).map(|(_, body)| &body["version"]).collect();
        let mut versions: Vec<i64> = answers.iter().map(|(_, body)| body["version"].as_i64().unwrap()).collect();
        versions.sort_unstable();
        assert_eq!(created, [1], "{session_id}: one insert, the write that made version 1");
        assert_eq!(versions, (1..=WRITES as i64).collect::<Vec<_>>(), "{session_id}: each write made its own version");
    }
    let stored = app.count("SELECT count(*) FROM conversations WHERE version = 10").await;
    assert_eq!(stored, SESSIONS as i64, "one row per session, every write counted once");
    // Inserts that arrived together went out as one statement (one transaction, one created_at).
    let transactions = app.count("SELECT count(DISTINCT created_at) FROM conversations").await;
    assert!(transactions < SESSIONS as i64, "concurrent saves were coalesced ({transactions} transactions)");
}

/// A repeat (an upsert that changes nothing) must be answered with the row as it is now, also
/// when another request changed or inserted that row while the repeat's statement ran: the
/// upsert then waited for that request and compared against its row, which the statement's
/// own snapshot does not show (so the repeat's row is read by a statement of its own, with a
/// snapshot of its own; bench/PROFILE.md, "Fifth round", has what else was tried). In each
/// wave, every session gets one new transcript from several requests at once, through two
/// servers, so that the first statement to change a row and the repeats meet.
#[tokio::test]
async fn identical_concurrent_saves_are_all_answered_with_the_row_as_it_is_now() {
    const SESSIONS: usize = 16;
    const SENDERS: usize = 8;
    const WAVES: i64 = 30;
    let mut app = TestApp::spawn().await;
    let other = app.second_server().await;
    // Even sessions exist already and each wave updates them; odd ones are new in each wave.
    let session_id = |session: usize, wave: i64| match session % 2 {
        0 => format!("r{session}"),
        _ => format!("r{session}-{wave}"),
    };
    for session in (0..SESSIONS).step_by(2) {
        let old = app.save_analysis(json!({"session_id": format!("r{session}"), "transcript": "old"})).await;
        assert_eq!(old.status(), 201);
    }
    let servers = [app.url("/api/save-analysis"), format!("{other}/api/save-analysis")];
    for wave in 0..WAVES {
        let transcript = format!("wave {wave}");
        let results = app
            .concurrently(SESSIONS * SENDERS, 64, |i| {
                let body = json!({"session_id": session_id(i % SESSIONS, wave), "transcript": transcript});
                let sent = app.client.post(&servers[i / SESSIONS % 2]).json(&body).send();
                async move { sent.await.unwrap() }
            })
            .await;
        for (status, body) in &results {
            assert!(status.is_success(), "wave {wave}: {status} {body}");
            let version = if body["session_id"].as_str().is_some_and(|id| id.contains('-')) { 1 } else { wave + 2 };
            assert_eq!(
                (body["transcript"].as_str(), body["version"].as_i64()),
                (Some(transcript.as_str()), Some(version)),
                "wave {wave}: every answer is the row as this wave's one write left it: {body}"
            );
        }
    }
}

#[tokio::test]
async fn two_hundred_concurrent_creates_with_one_session_id_insert_once() {
    let app = TestApp::spawn().await;
    let results = app.concurrently(200, 64, |_| app.create_conversation(json!({"session_id": "tabs"}))).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!((created, ok), (1, 199), "one 201, every other answer 200");
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
}

#[tokio::test]
async fn create_without_session_id_makes_one_and_repeats_are_unchanged() {
    let app = TestApp::spawn().await;
    let response = app.create_conversation(json!({"user_id": "u1"})).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let session_id = body["session_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(session_id).is_ok(), "the server makes a UUID session id");
    assert_eq!(location, format!("/api/conversations/{session_id}"));
    let again = app.create_conversation(json!({"session_id": session_id, "user_id": "someone else"})).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["upsert-outcome"], "unchanged");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["user_id"], "u1", "create-or-get returns the existing conversation unchanged");
    let fetched: Value = app.get_conversation(session_id).await.json().await.unwrap();
    assert_eq!(fetched["id"], body["id"]);
}

#[tokio::test]
async fn absent_fields_keep_and_null_clears() {
    let app = TestApp::spawn().await;
    app.save_analysis(
        json!({"session_id": "m", "transcript": "t", "language": "en", "user_id": "u", "analysis": {"x": 1}}),
    )
    .await;
    let kept: Value = app.save_analysis(json!({"session_id": "m", "language": "fr"})).await.json().await.unwrap();
    assert_eq!((kept["transcript"].as_str(), kept["language"].as_str()), (Some("t"), Some("fr")));
    assert_eq!(kept["analysis"], json!({"x": 1}));
    let cleared: Value =
        app.save_analysis(json!({"session_id": "m", "transcript": null, "analysis": null})).await.json().await.unwrap();
    assert_eq!(cleared["transcript"], Value::Null, "an explicit null clears");
    assert_eq!(cleared["analysis"], Value::Null);
    assert_eq!(cleared["user_id"], "u");
    let replaced: Value =
        app.save_analysis(json!({"session_id": "m", "analysis": {"y": 2}})).await.json().await.unwrap();
    assert_eq!(replaced["analysis"], json!({"y": 2}), "analysis is replaced whole, not merged");
    assert_eq!(replaced["version"], 4);
}

/// Each subset of the fields save-analysis takes has an upsert statement of its own
/// (`store::statements`; upload-audio's, which also set the audio, run in the upload
/// tests): each changes only the fields it sends, keeps the others, and a repeat changes nothing.
#[tokio::test]
async fn every_subset_of_fields_is_saved_and_only_its_fields_change() {
    let app = TestApp::spawn().await;
    let fields = ["user_id", "language", "transcript", "analysis"];
    let value = |field: &str, round: &str| if field == "analysis" { json!({round: true}) } else { json!(round) };
    for bits in 0u8..16 {
        let session = format!("shape-{bits}");
        let sent: Vec<&str> =
            fields.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, f)| *f).collect();
        let mut body = json!({"session_id": session});
        sent.iter().for_each(|field| body[*field] = value(field, "new"));
        let mut kept = json!({"session_id": session});
        fields.iter().for_each(|field| kept[*field] = value(field, "kept"));
        assert_eq!(app.save_analysis(&kept).await.status(), 201);
        let saved = app.save_analysis(&body).await;
        assert_eq!(saved.status(), 200, "shape {bits}");
        let saved: Value = saved.json().await.unwrap();
        assert_eq!(saved["version"], if sent.is_empty() { 1 } else { 2 }, "shape {bits}: {saved}");
        for field in fields {
            let expected = value(field, if sent.contains(&field) { "new" } else { "kept" });
            assert_eq!(saved[field], expected, "shape {bits}: {field}");
        }
        let repeated: Value = app.save_analysis(&body).await.json().await.unwrap();
        assert_eq!(repeated["version"], saved["version"], "shape {bits}: a repeat changes nothing");
    }
}

#[tokio::test]
async fn if_match_writes_on_match_and_409s_on_mismatch_writing_nothing() {
    let app = TestApp::spawn().await;
    app.save_analysis(json!({"session_id": "v", "transcript": "one"})).await;
    let send = |version: &str, transcript: &str| {
        app.client
            .post(app.url("/api/save-analysis"))
            .header("if-match", version)
            .json(&json!({"session_id": "v", "transcript": transcript}))
            .send()
    };
    let matched = send("\"1\"", "two").await.unwrap();
    assert_eq!(matched.status(), 200);
    assert_eq!(matched.headers()["etag"], "\"2\"");
    let stale = send("\"1\"", "three").await.unwrap();
    assert_problem(stale, 409, "version_mismatch").await;
    // The refused write locked the row to check its version. Its rollback has let the lock go,
    // though the server is idle now and sends its connections nothing more.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '5s'").execute(&mut *tx).await.unwrap();
    let locked = sqlx::query("SELECT 1 FROM conversations WHERE session_id = 'v' FOR UPDATE").execute(&mut *tx).await;
    assert!(locked.is_ok(), "the row is free after a refused write: {locked:?}");
    tx.rollback().await.unwrap();
    let stored: Value = app.get_conversation("v").await.json().await.unwrap();
    assert_eq!(
        (stored["transcript"].as_str(), stored["version"].as_i64()),
        (Some("two"), Some(2)),
        "nothing written on mismatch"
    );
    let missing = app
        .client
        .post(app.url("/api/save-analysis"))
        .header("if-match", "\"1\"")
        .json(&json!({"session_id": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_problem(missing, 409, "version_mismatch").await;
    assert_eq!(app.count("SELECT count(*) FROM conversations WHERE session_id = 'nobody'").await, 0);
}

#[tokio::test]
async fn conversations_list_newest_first_across_pages() {
    let app = TestApp::spawn().await;
    for i in 0..7 {
        app.create_conversation(json!({"session_id": format!("s{i}"), "user_id": "pager"})).await;
    }
    app.create_conversation(json!({"session_id": "other", "user_id": "someone"})).await;
    let seen: Vec<String> = app
        .all_pages("/api/conversations?user_id=pager&limit=3")
        .await
        .iter()
        .map(|c| c["session_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..7).rev().map(|i| format!("s{i}")).collect();
    assert_eq!(seen, expected, "every conversation once, newest first");
}
