use crate::cluster::{free_port, start_binary};
use crate::helpers::{assert_problem, scratch_dir, TestApp};
use futures_util::{stream, StreamExt};
use reqwest::header::HeaderValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    replayed: bool,
}

/// Sends one keyed POST, retrying while the key is in flight (409) as a client would, for at
/// most 30 s: a key stuck in flight fails the test instead of hanging it.
async fn send_keyed(client: &reqwest::Client, url: &str, key: &str, body: &Value) -> Answer {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = client.post(url).header("idempotency-key", key).json(body).send().await.unwrap();
        if response.status() == 409 {
            assert!(std::time::Instant::now() < deadline, "{url}: key {key} stayed in flight for 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
        return Answer { status: response.status().as_u16(), body: response.bytes().await.unwrap().to_vec(), replayed };
    }
}

/// Sends each logical request once, or 2-3 times: some copies at the same moment, some after
/// the first one answered. Returns every answer per key.
async fn send_with_retries(
    app: &TestApp,
    path: &str,
    logical: usize,
    body: impl Fn(usize) -> Value,
) -> HashMap<String, Vec<Answer>> {
    let url = app.url(path);
    let answers: Vec<(String, Vec<Answer>)> = stream::iter(0..logical)
        .map(|i| {
            let (url, body, client) = (url.clone(), body(i), app.client.clone());
            async move {
                let key = format!("logical-{i}-{}", uuid::Uuid::new_v4());
                let copies = match i % 10 {
                    0..=6 => 1,
                    7 | 8 => 2,
                    _ => 3,
                };
                let simultaneous = if i % 2 == 0 { copies } else { 1 };
                let mut answers: Vec<Answer> =
                    futures_util::future::join_all((0..simultaneous).map(|_| send_keyed(&client, &url, &key, &body)))
                        .await;
                for _ in simultaneous..copies {
                    answers.push(send_keyed(&client, &url, &key, &body).await);
                }
                (key, answers)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    answers.into_iter().collect()
}

fn assert_replays_identical(answers: &HashMap<String, Vec<Answer>>) {
    for (key, copies) in answers {
        let originals: Vec<_> = copies.iter().filter(|a| !a.replayed).collect();
        assert_eq!(originals.len(), 1, "exactly one copy of {key} ran: {copies:?}");
        for copy in copies {
            assert_eq!(
                (copy.status, &copy.body),
                (originals[0].status, &originals[0].body),
                "replay of {key} is byte-identical"
            );
        }
    }
}

#[tokio::test]
async fn retried_clicks_count_once_and_replays_are_byte_identical() {
    let app = TestApp::spawn().await;
    let created = app.participation("c", "s").await;
    let id = created["id"].as_str().unwrap();
    let types = ["direct", "chat", "qr", "link"];
    let answers =
        send_with_retries(&app, &format!("/api/participations/{id}/clicks"), 500, |i| json!({"type": types[i % 4]}))
            .await;
    let sent: usize = answers.values().map(Vec::len).sum();
    assert!(sent > 600, "a good share was sent more than once ({sent} requests)");
    assert_replays_identical(&answers);
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(stored["clicks"], 500, "500 logical clicks, however often sent");
    assert_eq!(app.count("SELECT count(*) FROM participation_events").await, 500);
}

/// Keyed save-analysis upserts share their batch's statement, and each records its own answer
/// there: six logical writes to each of 50 conversations, some sent twice or three times, apply
/// once each (a transcript of their own: a write applied twice would add a version) and are
/// answered with the row as they left it, every copy with the bytes of the one that ran.
#[tokio::test]
async fn retried_save_analysis_upserts_apply_once_and_replays_are_byte_identical() {
    let app = TestApp::spawn().await;
    let answers = send_with_retries(
        &app,
        "/api/save-analysis",
        300,
        |i| json!({"session_id": format!("retried-{}", i % 50), "transcript": format!("t{i}")}),
    )
    .await;
    assert_replays_identical(&answers);
    let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
    for original in answers.values().flat_map(|copies| copies.iter().filter(|a| !a.replayed)) {
        let row: Value = serde_json::from_slice(&original.body).unwrap();
        let session = row["session_id"].as_str().unwrap().to_owned();
        versions.entry(session).or_default().push(row["version"].as_i64().unwrap());
    }
    assert_eq!(versions.len(), 50);
    for (session, mut seen) in versions {
        seen.sort();
        assert_eq!(seen, [1, 2, 3, 4, 5, 6], "{session}: each write answered with its own version");
    }
    assert_eq!(app.count("SELECT sum(version)::int8 FROM conversations").await, 300, "each write is one version");
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys WHERE response_status IS NOT NULL").await, 300);
    // Records completed by one transaction share its xmin: fewer transactions than writes means
    // keyed upserts did share batches, so the test covered them.
    let transactions = app.count("SELECT count(DISTINCT xmin::text) FROM idempotency_keys").await;
    assert!(transactions < 300, "the 300 keyed upserts were stored by {transactions} transactions");
}

/// Keyed upserts record their keys in their batch's statement, with no claim before: a
/// duplicate sent while the first is in flight waits for it and replays it, and a batch that
/// meets a key another request holds (a retry, or the key under another body) goes again
/// without that write, as one statement still, while that write is answered from the record.
#[tokio::test]
async fn a_keyed_upsert_whose_key_is_held_leaves_its_batch_and_is_answered_from_the_record() {
    let app = TestApp::spawn().await;
    for gate in ["gate-1", "gate-2"] {
        assert_eq!(app.save_analysis(json!({"session_id": gate})).await.status(), 201);
    }
    let send = |key: &str, session: &str| {
        let request = app.client.post(app.url("/api/save-analysis")).header("idempotency-key", key);
        let body = json!({"session_id": session, "transcript": "t"});
        tokio::spawn(async move {
            let response = request.json(&body).send().await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            (response.status().as_u16(), replayed, response.bytes().await.unwrap())
        })
    };
    let done = send("done", "d").await.unwrap();
    assert_eq!((done.0, done.1), (201, false));
    // The lane's two batches in flight wait for a row this transaction holds, so the writes
    // sent after them queue up and go out as one batch.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM conversations WHERE session_id = 'gate-1' FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let first = send("first", "gate-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let duplicate = send("first", "gate-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let others: Vec<_> = (0..5).map(|i| send(&format!("other-{i}"), &format!("o-{i}"))).collect();
    let retry = send("done", "d");
    let reused = send("done", "m");
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.rollback().await.unwrap();

    let first = first.await.unwrap();
    assert_eq!((first.0, first.1), (200, false));
    assert_eq!(duplicate.await.unwrap(), (200, true, first.2), "the duplicate waited and replays the first");
    assert_eq!(app.get_conversation("gate-1").await.json::<Value>().await.unwrap()["version"], 2, "one effect");
    for other in others {
        assert_eq!(other.await.unwrap().0, 201, "the writes batched with held keys count");
    }
    assert_eq!(retry.await.unwrap(), (201, true, done.2), "the retry replays the record");
    assert_problem_status(reused.await.unwrap(), 422, "idempotency_key_reused");
    assert_eq!(app.count("SELECT count(*) FROM conversations WHERE session_id = 'm'").await, 0, "nothing written");
    // The writes left went again together: one transaction recorded them all. On Citus their
    // session ids hash to other shards, whose lanes the held row does not hold up.
    let transactions = app.count("SELECT count(DISTINCT xmin::text) FROM idempotency_keys WHERE key LIKE 'other-%'");
    if app.count("SELECT count(*) FROM pg_extension WHERE extname = 'citus'").await == 0 {
        assert_eq!(transactions.await, 1);
    }
}

/// A keyed save-analysis that writes keeps its row in its record (its statement has no
/// rendered answer to store), one that changes nothing keeps its body; each replays with the
/// bytes and headers of its original, the audio file of an uploaded conversation included, and
/// a record past its TTL lets its key run again.
#[tokio::test]
async fn keyed_save_analysis_records_replay_from_their_row_or_body_and_expire() {
    let app = TestApp::spawn().await;
    assert_eq!(app.upload_audio(crate::upload::tone_form("kept")).await.status(), 201);
    let send = |key: &str, transcript: &str| {
        let request = app.client.post(app.url("/api/save-analysis")).header("idempotency-key", key);
        request.json(&json!({"session_id": "kept", "transcript": transcript})).send()
    };
    let answer = |response: reqwest::Response| async move {
        let headers = response.headers();
        let named = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        let seen = (response.status().as_u16(), named("upsert-outcome"), named("etag"));
        (seen, named("idempotent-replayed").is_some(), response.bytes().await.unwrap())
    };
    let updated = answer(send("k-update", "one").await.unwrap()).await;
    assert_eq!((&updated.0, updated.1), (&(200, Some("updated".into()), Some("\"2\"".into())), false));
    let body: Value = serde_json::from_slice(&updated.2).unwrap();
    assert!(body["audio"]["sha256"].is_string(), "the answer holds the audio file: {body}");
    let unchanged = answer(send("k-same", "one").await.unwrap()).await;
    assert_eq!((&unchanged.0, unchanged.1), (&(200, Some("unchanged".into()), Some("\"2\"".into())), false));
    for (key, transcript, original) in [("k-update", "one", &updated), ("k-same", "one", &unchanged)] {
        let replay = answer(send(key, transcript).await.unwrap()).await;
        assert_eq!((&replay.0, replay.1, &replay.2), (&original.0, true, &original.2), "{key} replays");
    }
    let layout = "SELECT count(*) FROM idempotency_keys
                  WHERE (key = 'k-update' AND response_row IS NOT NULL AND response_body IS NULL)
                     OR (key = 'k-same' AND response_row IS NULL AND response_body IS NOT NULL)";
    assert_eq!(app.count(layout).await, 2, "a write keeps its row, an unchanged answer its body");

    let expire = "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'k-update'";
    sqlx::query(expire).execute(&app.pool).await.unwrap();
    let again = answer(send("k-update", "two").await.unwrap()).await;
    assert_eq!((again.0 .0, again.1), (200, false), "an expired key runs again, under another body");
    let stored: Value = app.get_conversation("kept").await.json().await.unwrap();
    assert_eq!((stored["transcript"].as_str(), stored["version"].as_i64()), (Some("two"), Some(3)));
}

fn assert_problem_status((status, replayed, body): (u16, bool, bytes::Bytes), expected: u16, code: &str) {
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, replayed, problem["code"].as_str()), (expected, false, Some(code)), "{problem}");
}

/// A conditional save-analysis records its key in its own transaction: a retry replays the
/// answer, where running again would fail its `If-Match` (the version has moved on), and a
/// stale `If-Match` under a new key is refused and recorded as refused.
#[tokio::test]
async fn a_retried_conditional_save_analysis_is_replayed_not_run_again() {
    let app = TestApp::spawn().await;
    app.save_analysis(json!({"session_id": "cond", "transcript": "one"})).await;
    let send = |key: &str| {
        let body = json!({"session_id": "cond", "transcript": "two"});
        let request = app.client.post(app.url("/api/save-analysis")).header("idempotency-key", key);
        request.header("if-match", "\"1\"").json(&body).send()
    };
    let first = send("cond-1").await.unwrap();
    assert_eq!(first.status(), 200);
    let first = first.bytes().await.unwrap();
    let again = send("cond-1").await.unwrap();
    assert_eq!((again.status().as_u16(), again.headers().contains_key("idempotent-replayed")), (200, true));
    assert_eq!(again.bytes().await.unwrap(), first, "the replay is byte-identical");
    assert_problem(send("cond-2").await.unwrap(), 409, "version_mismatch").await;
    let stored: Value = app.get_conversation("cond").await.json().await.unwrap();
    assert_eq!((stored["version"].as_i64(), stored["transcript"].as_str()), (Some(2), Some("two")));
    let records = "SELECT response_status::int8 FROM idempotency_keys ORDER BY key";
    let statuses: Vec<i64> = sqlx::query_scalar(records).fetch_all(&app.pool).await.unwrap();
    assert_eq!(statuses, [200, 409], "each key recorded once, with its answer");
}

#[tokio::test]
async fn retried_appends_without_message_ids_add_nothing() {
    let app = TestApp::spawn().await;
    let answers = send_with_retries(
        &app,
        "/api/conversations/retry-me/messages",
        100,
        |i| json!({"messages": [{"role": "user", "text": format!("q{i}")}, {"role": "bot", "text": format!("a{i}")}]}),
    )
    .await;
    assert_replays_identical(&answers);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 200);
    assert_eq!(app.count("SELECT message_count FROM conversations").await, 200);
}

#[tokio::test]
async fn a_reused_key_is_422_bad_keys_are_400_and_4xx_answers_are_replayed() {
    let app = TestApp::spawn().await;
    let url = app.url("/api/save-analysis");
    let first = send_keyed(&app.client, &url, "k1", &json!({"session_id": "a"})).await;
    assert_eq!(first.status, 201);
    let other_body =
        app.client.post(&url).header("idempotency-key", "k1").json(&json!({"session_id": "b"})).send().await.unwrap();
    assert_problem(other_body, 422, "idempotency_key_reused").await;
    let other_path = app
        .client
        .post(app.url("/api/conversations"))
        .header("idempotency-key", "k1")
        .json(&json!({"session_id": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other_path.status(), 200, "the same key on another path is another key");

    for bad in [
        HeaderValue::from_static(""),
        HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        HeaderValue::from_static("two words"),
    ] {
        let response = app
            .client
            .post(&url)
            .header("idempotency-key", bad)
            .json(&json!({"session_id": "c"}))
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, "invalid_idempotency_key").await;
    }

    let invalid = send_keyed(&app.client, &url, "k2", &json!({"session_id": ""})).await;
    assert_eq!((invalid.status, invalid.replayed), (422, false));
    let again = send_keyed(&app.client, &url, "k2", &json!({"session_id": ""})).await;
    assert_eq!((again.status, again.replayed, &again.body), (422, true, &invalid.body), "a 4xx is stored and replayed");
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
}

#[tokio::test]
async fn a_5xx_is_not_stored_so_a_retry_runs_again() {
    // Speech-to-text pointed at a closed port answers 502.
    let dead_stt = format!("http://127.0.0.1:{}/v1/audio/transcriptions", free_port());
    let app = TestApp::spawn_with(&["--stt-url", &dead_stt]).await;
    let form = || {
        reqwest::multipart::Form::new()
            .text("session_id", "stt-down")
            .part("audio", reqwest::multipart::Part::bytes(crate::upload::sine_wav(8000, 1, 0.1, 0.3)))
    };
    for attempt in 0..2 {
        let response = app
            .client
            .post(app.url("/api/upload-audio"))
            .header("idempotency-key", "upload-1")
            .multipart(form())
            .send()
            .await
            .unwrap();
        assert!(response.headers().get("idempotent-replayed").is_none(), "attempt {attempt} ran again");
        assert_problem(response, 502, "transcription_failed").await;
    }
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0, "a 5xx leaves no record");
}

#[tokio::test]
async fn a_retried_upload_with_a_new_multipart_boundary_is_a_replay() {
    let app = TestApp::spawn().await;
    let wav = crate::upload::sine_wav(8000, 1, 0.2, 0.3);
    let mut bodies = Vec::new();
    for _ in 0..2 {
        // reqwest draws a new boundary for every form, as browsers do.
        let form = reqwest::multipart::Form::new()
            .text("session_id", "up")
            .part("audio", reqwest::multipart::Part::bytes(wav.clone()));
        let response = app
            .client
            .post(app.url("/api/upload-audio"))
            .header("idempotency-key", "u1")
            .multipart(form)
            .send()
            .await
            .unwrap();
        bodies.push((
            response.status().as_u16(),
            response.headers().contains_key("idempotent-replayed"),
            response.bytes().await.unwrap(),
        ));
    }
    assert_eq!((bodies[0].0, bodies[0].1), (201, false));
    assert_eq!((bodies[1].0, bodies[1].1), (201, true), "the same parts under a new boundary replay");
    assert_eq!(bodies[0].2, bodies[1].2);
}

/// Counter writes claim their keys inside their batch's transaction: the answers that never
/// reach a batch (4xx) are stored all the same, and a key stays bound to its first body.
#[tokio::test]
async fn keyed_counter_answers_without_a_write_are_stored_and_a_key_keeps_its_body() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let clicks = app.url(&format!("/api/participations/{id}/clicks"));

    let invalid = send_keyed(&app.client, &clicks, "bad", &json!({"type": "bogus"})).await;
    let again = send_keyed(&app.client, &clicks, "bad", &json!({"type": "bogus"})).await;
    assert_eq!((invalid.status, invalid.replayed), (422, false));
    assert_eq!((again.status, again.replayed, &again.body), (422, true, &invalid.body), "a 422 is stored and replayed");

    let unknown = app.url(&format!("/api/participations/{}/clicks", uuid::Uuid::new_v4()));
    let missing = send_keyed(&app.client, &unknown, "gone", &json!({})).await;
    let again = send_keyed(&app.client, &unknown, "gone", &json!({})).await;
    assert_eq!((missing.status, again.status, again.replayed), (404, 404, true), "a 404 is stored and replayed");

    let first = send_keyed(&app.client, &clicks, "once", &json!({"type": "chat"})).await;
    assert_eq!((first.status, first.replayed), (200, false));
    for other in [json!({"type": "qr"}), json!({"type": "bogus"})] {
        let reused = app.client.post(&clicks).header("idempotency-key", "once").json(&other).send().await.unwrap();
        assert_problem(reused, 422, "idempotency_key_reused").await;
    }
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!((stored["clicks"].as_i64(), stored["chat_clicks"].as_i64()), (Some(1), Some(1)), "one click counted");
    let records = app.count("SELECT count(*) FROM idempotency_keys WHERE response_status IS NOT NULL").await;
    assert_eq!(records, 3, "bad, gone and once are recorded; nothing else");
}

/// A keyed counter write records the row it left, in its own statement, and a replay renders
/// its answer from that row again: awkward values (a mean of 7/3, money at full scale) must come
/// back byte for byte. A record past its TTL that the purge has not reached yet frees its key.
#[tokio::test]
async fn a_counter_answer_replayed_from_its_recorded_row_is_byte_identical() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let post = |counter: &str, body: Value| {
        let path = format!("/api/participations/{id}/{counter}");
        let app = &app;
        async move { app.post_json(&path, body).await.status() }
    };
    for viewers in [1, 2, 4] {
        assert_eq!(post("viewer-samples", json!({"viewer_count": viewers})).await, 200);
    }
    assert_eq!(post("earnings", json!({"amount": "123456789012.000001"})).await, 200);
    let clicks = app.url(&format!("/api/participations/{id}/clicks"));

    let first = send_keyed(&app.client, &clicks, "exact", &json!({"type": "qr"})).await;
    let shown: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        (shown["avg_viewer_count"].as_f64(), shown["estimated_earnings"].as_str()),
        (Some(7.0 / 3.0), Some("123456789012.000001"))
    );
    let rows = "SELECT count(*) FROM idempotency_keys
                WHERE response_body IS NULL AND response_row_id IN (SELECT id FROM idempotency_answer_rows)";
    assert_eq!(app.count(rows).await, 1, "recorded as the row, by the statement of the effect");
    let again = send_keyed(&app.client, &clicks, "exact", &json!({"type": "qr"})).await;
    assert_eq!((first.replayed, again.replayed), (false, true));
    assert_eq!(String::from_utf8_lossy(&again.body), String::from_utf8_lossy(&first.body), "the same bytes");

    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let after = send_keyed(&app.client, &clicks, "exact", &json!({"type": "qr"})).await;
    assert!(!after.replayed, "past its TTL the key runs again");
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(stored["qr_scans"], 2);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 1, "the expired record gave way");
}

/// What a counter key answered, read the way docs/operating.md shows operators: the answer row
/// plus the record's prefix. A write that came alone keeps the row it left and an empty prefix,
/// a write in a batch the row before the batch and its sums; both read as their answer.
#[tokio::test]
async fn an_operator_reads_each_counter_key_s_answer_from_its_record_alone_or_batched() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let clicks = app.url(&format!("/api/participations/{id}/clicks"));
    let click = |key: String| {
        let (client, clicks) = (app.client.clone(), clicks.clone());
        async move {
            let answer = send_keyed(&client, &clicks, &key, &json!({"type": "chat"})).await;
            assert_eq!(answer.status, 200);
            (key, serde_json::from_slice::<Value>(&answer.body).unwrap()["clicks"].as_i64().unwrap())
        }
    };
    let mut answered: HashMap<String, i64> = HashMap::new();
    for n in 0..5 {
        answered.extend([click(format!("alone-{n}")).await]);
    }
    answered.extend(
        stream::iter(0..200).map(|n| click(format!("batched-{n}"))).buffer_unordered(64).collect::<Vec<_>>().await,
    );
    let read: HashMap<String, i64> = sqlx::query_as(
        "SELECT k.key,
                (a.participation->>'clicks')::bigint + coalesce((k.response_row_patch->>'clicks')::bigint, 0) AS clicks
         FROM idempotency_keys k
         JOIN idempotency_answer_rows a ON a.shard = k.shard AND a.id = k.response_row_id
         WHERE k.path LIKE '/api/participations/%/clicks'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(read, answered);
    let (answer_rows, records) = (
        app.count("SELECT count(*) FROM idempotency_answer_rows").await,
        app.count("SELECT count(*) FROM idempotency_keys").await,
    );
    assert!(answer_rows < records - 5, "the concurrent writes shared answer rows: {answer_rows} for {records}");
}

/// Counter answer rows get ids in the order of their batches (UUIDv7), so their primary key
/// grows at one end instead of changing a random page per batch (and logging it whole after
/// each checkpoint).
#[tokio::test]
async fn counter_answer_rows_get_ids_in_the_order_of_their_batches() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let clicks = app.url(&format!("/api/participations/{id}/clicks"));
    for n in 0..12 {
        let answer = send_keyed(&app.client, &clicks, &format!("ordered-{n}"), &json!({"type": "chat"})).await;
        assert_eq!(answer.status, 200);
    }
    // One request at a time: one batch, so one answer row, each; a later batch, a later expiry.
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM idempotency_answer_rows ORDER BY expires_at")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 12);
    assert!(ids.iter().all(|id| id.get_version_num() == 7), "UUIDv7 ids: {ids:?}");
    assert!(ids.is_sorted(), "ids in the order of their batches: {ids:?}");
}

/// Two upsertd processes on one database, each with its own coalescing lanes: every key sent to
/// both at the same moment counts once. One of the two runs it; the other finds the record in
/// its batch's statement (a unique violation, never a 500) and replays the same bytes.
#[tokio::test]
async fn a_counter_key_sent_to_two_servers_at_once_counts_once() {
    let mut app = TestApp::spawn().await;
    let other = app.second_server().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/participations/{id}/clicks");
    let (here, there) = (app.url(&path), format!("{other}{path}"));
    let pairs: Vec<(Answer, Answer)> = stream::iter(0..300)
        .map(|i| {
            let (here, there, client) = (here.clone(), there.clone(), app.client.clone());
            async move {
                let (key, body) = (format!("twin-{i}"), json!({"type": "link"}));
                futures_util::future::join(
                    send_keyed(&client, &here, &key, &body),
                    send_keyed(&client, &there, &key, &body),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (a, b) in &pairs {
        assert_eq!((a.status, b.status), (200, 200));
        assert_ne!(a.replayed, b.replayed, "one of the two ran, the other replayed");
        assert_eq!(a.body, b.body, "both answers are the same bytes");
    }
    let stored: Value = app.get(&path.replace("/clicks", "")).await.json().await.unwrap();
    assert_eq!(stored["link_clicks"], 300, "300 keys, each sent twice, count 300");
    assert_eq!(app.count("SELECT count(*) FROM participation_events").await, 300);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 300);
    let answered =
        "SELECT count(*) FROM idempotency_keys WHERE response_row_id IN (SELECT id FROM idempotency_answer_rows)";
    assert_eq!(app.count(answered).await, 300, "every record points at the row it was answered with");
    let rows = app.count("SELECT count(*) FROM idempotency_answer_rows").await;
    assert!(rows < 300, "the keys of a batch share one answer row: {rows} rows for 300 keys");
}

#[tokio::test]
async fn an_expired_key_runs_again_and_the_purge_removes_it() {
    let app = TestApp::spawn_with(&["--idempotency-ttl", "1s"]).await;
    let created = app.participation("c", "s").await;
    let url = app.url(&format!("/api/participations/{}/clicks", created["id"].as_str().unwrap()));
    assert!(!send_keyed(&app.client, &url, "once", &json!({})).await.replayed);
    assert!(send_keyed(&app.client, &url, "once", &json!({})).await.replayed, "within the TTL: a replay");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after: Answer = send_keyed(&app.client, &url, "once", &json!({})).await;
    assert!(!after.replayed, "after the TTL the key runs again");
    let clicks: Value = serde_json::from_slice(&after.body).unwrap();
    assert_eq!(clicks["clicks"], 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let left = "SELECT (SELECT count(*) FROM idempotency_keys) + (SELECT count(*) FROM idempotency_answer_rows)";
    while app.count(left).await > 0 {
        assert!(std::time::Instant::now() < deadline, "the purge never removed the expired key and its answer row");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real binary, SIGKILLed mid-load and restarted on the same database: every key whose
/// answer was lost is retried, and the counter ends at exactly the number of distinct keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_load_loses_no_click_and_counts_none_twice() {
    let data_dir = scratch_dir(&format!("crash-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let env = [("IDEMPOTENCY_LEASE", "2s")];
    let mut server = start_binary(&data_dir, port, &env).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{base}/api/participations"))
        .json(&json!({"campaign_id": "c", "streamer_id": "s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{base}/api/participations/{}/clicks", created["id"].as_str().unwrap());
    let keys: Vec<String> = (0..1000).map(|i| format!("crash-{i}")).collect();

    let answered = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, Vec<u8>>::new()));
    let load = {
        let (keys, url, client, answered) = (keys.clone(), url.clone(), client.clone(), answered.clone());
        tokio::spawn(async move {
            stream::iter(keys)
                .for_each_concurrent(16, |key| {
                    let (url, client, answered) = (url.clone(), client.clone(), answered.clone());
                    async move {
                        let sent = client
                            .post(&url)
                            .header("idempotency-key", &key)
                            .json(&json!({"type": "link"}))
                            .send()
                            .await;
                        if let Ok(response) = sent {
                            if response.status() == 200 {
                                if let Ok(body) = response.bytes().await {
                                    answered.lock().unwrap().insert(key, body.to_vec());
                                }
                            }
                        }
                    }
                })
                .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while answered.lock().unwrap().len() < 100 {
        assert!(std::time::Instant::now() < deadline, "100 of the keys were not answered within 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    load.await.unwrap();
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() < keys.len(), "the kill happened mid-load ({} of {} answered)", answered.len(), keys.len());

    let mut server = start_binary(&data_dir, port, &env).await;
    for key in &keys {
        let answer = send_keyed(&client, &url, key, &json!({"type": "link"})).await;
        assert_eq!(answer.status, 200, "{key}");
        if let Some(original) = answered.get(key) {
            assert!(answer.replayed, "{key} was answered before the crash, so it replays");
            assert_eq!(&answer.body, original, "{key} replays byte for byte");
        }
    }
    let stored: Value = client
        .get(format!("{base}/api/participations/{}", created["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["clicks"], 1000, "one click per distinct key, none lost, none twice");
    assert_eq!(stored["link_clicks"], 1000);
    crate::cluster::terminate(&mut server);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Each record lives where Citus would keep it beside its effect (`idempotency_keys.shard`,
/// migration 21): a counter write's record and answer row beside its participation, any other
/// record at a place drawn from its key. Migration 21 derives the place of records written
/// before it by the rule the server looks them up by: re-derived by the migration's own
/// statements, every record still replays.
#[tokio::test]
async fn records_live_beside_their_rows_and_migration_21_places_old_ones_where_they_are_found() {
    use sha2::{Digest, Sha256};
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let canonical = app.url(&format!("/api/participations/{id}/clicks"));
    let upper = app.url(&format!("/api/participations/{}/clicks", id.to_uppercase()));
    let simple = app.url(&format!("/api/participations/{}/clicks", id.replace('-', "")));
    let chats = app.url("/api/chats");
    let requests: [(&str, &str, Value); 5] = [
        (&canonical, "click", json!({"type": "chat"})),
        (&upper, "click-upper", json!({"type": "qr"})),
        (&simple, "click-simple", json!({"type": "link"})),
        (&canonical, "refused", json!({"type": "bogus"})),
        (&chats, "chat", json!({"participants": ["p", "q"]})),
    ];
    let mut first = Vec::new();
    for (url, key, body) in &requests {
        first.push(send_keyed(&app.client, url, key, body).await);
    }
    assert_eq!(first.iter().map(|a| a.status).collect::<Vec<_>>(), [200, 200, 200, 422, 201]);
    let from_key = |key: &str| uuid::Uuid::from_slice(&Sha256::digest(key.as_bytes())[..16]).unwrap();
    let participation = uuid::Uuid::parse_str(&id).unwrap();
    let shard_of = |key: &'static str| {
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT shard FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_one(&app.pool)
    };
    assert_eq!(shard_of("click").await.unwrap(), participation, "beside the participation");
    assert_eq!(shard_of("click-upper").await.unwrap(), participation, "another spelling of the same id");
    assert_eq!(shard_of("refused").await.unwrap(), participation, "a 4xx of a counter route too");
    assert_eq!(shard_of("click-simple").await.unwrap(), from_key("click-simple"), "a non-canonical id: by key");
    assert_eq!(shard_of("chat").await.unwrap(), from_key("chat"), "another route: by key");
    let answer_rows: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT DISTINCT shard FROM idempotency_answer_rows").fetch_all(&app.pool).await.unwrap();
    assert_eq!(answer_rows, [participation], "counter answer rows beside their participation");

    let citus: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    if citus {
        // Beside: in one co-location group, whose tables share their shards' ranges and nodes.
        let groups: Vec<i32> = sqlx::query_scalar(
            "SELECT DISTINCT colocationid FROM pg_dist_partition
             WHERE logicalrelid IN ('participations'::regclass, 'idempotency_keys'::regclass,
                                    'idempotency_answer_rows'::regclass)",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(groups.len(), 1, "records and answer rows beside participations");
    }
    // Every place lost (as before migration 21, when there was none), then found again by the
    // migration's own statements. Not on Citus, which moves no row to another shard.
    let migration = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/20261122000021_idempotency_records_beside_their_rows.sql"),
    )
    .unwrap();
    let statement = |start: &str| {
        let at = migration.find(start).unwrap_or_else(|| panic!("migration 21 runs {start}"));
        migration[at..at + migration[at..].find(';').unwrap()].to_owned()
    };
    for table in ["idempotency_keys", "idempotency_answer_rows"].into_iter().filter(|_| !citus) {
        sqlx::raw_sql(&format!("UPDATE {table} SET shard = gen_random_uuid()")).execute(&app.pool).await.unwrap();
        sqlx::raw_sql(&statement(&format!("UPDATE {table} SET shard"))).execute(&app.pool).await.unwrap();
    }
    for ((url, key, body), first) in requests.iter().zip(&first) {
        let again = send_keyed(&app.client, url, key, body).await;
        assert_eq!((again.status, again.replayed, &again.body), (first.status, true, &first.body), "{key} replays");
    }
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(stored["clicks"].as_i64(), Some(3), "every click counted once");
}

/// A record's primary key is (shard, digest) (migration 23): the digest upsertd computes of
/// scope, method, path and key is the one the migration derives for the records it finds, for
/// a key with a backslash and a path with characters beyond ASCII too, so every record written
/// before it still replays.
#[tokio::test]
async fn records_are_keyed_by_digest_and_migration_23_derives_the_same_for_old_ones() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let clicks = app.url(&format!("/api/participations/{id}/clicks"));
    let chats = app.url("/api/chats");
    let save = app.url("/api/save-analysis");
    let append = app.url("/api/conversations/s%C3%A9ance/messages");
    let requests: [(&str, &str, Value); 4] = [
        (&clicks, "click", json!({"type": "chat"})),
        (&chats, r"back\slash", json!({"participants": ["p", "q"]})),
        (&save, "save", json!({"session_id": "digest", "transcript": "t"})),
        (&append, "append", json!({"messages": [{"role": "user", "text": "hi"}]})),
    ];
    let mut first = Vec::new();
    for (url, key, body) in &requests {
        first.push(send_keyed(&app.client, url, key, body).await);
    }
    let paths: Vec<String> =
        sqlx::query_scalar("SELECT path FROM idempotency_keys ORDER BY key").fetch_all(&app.pool).await.unwrap();
    assert!(paths.contains(&"/api/conversations/séance/messages".to_owned()), "a decoded path: {paths:?}");
    let migration = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/20261122000023_idempotency_keys_by_digest.sql"),
    )
    .unwrap();
    let at = migration.find("UPDATE idempotency_keys SET digest").expect("migration 23 derives the digest");
    let derive = &migration[at..at + migration[at..].find(';').unwrap()];
    let formula = &derive[derive.find("= ").unwrap() + 2..];
    let unchanged = format!("SELECT count(*) FROM idempotency_keys WHERE digest = ({formula})");
    assert_eq!(app.count(&unchanged).await, requests.len() as i64, "upsertd's digest is the migration's");
    // Lost: another value of each (IMMUTABLE, as Citus requires of an UPDATE).
    sqlx::raw_sql("UPDATE idempotency_keys SET digest = substr(sha256(digest), 1, 16)")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::raw_sql(derive).execute(&app.pool).await.unwrap();
    for ((url, key, body), first) in requests.iter().zip(&first) {
        let again = send_keyed(&app.client, url, key, body).await;
        assert_eq!((again.status, again.replayed, &again.body), (first.status, true, &first.body), "{key} replays");
    }
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(stored["clicks"].as_i64(), Some(1), "the click counted once");
}
