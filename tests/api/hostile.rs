//! Hostile clients (issue 22): what a client sends, most of them without a token, must not
//! stall a worker, fill the database or `/metrics`, or fail another client's write.

use crate::cluster::{free_port, start_binary, terminate};
use crate::helpers::{assert_problem, scratch_dir, TestApp};
use crate::spellings::raw;
use serde_json::{json, Value};

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn a_boundary_longer_than_rfc_2046_allows_is_refused_before_any_search() {
    let app = TestApp::spawn().await;
    for (boundary_len, keyed) in [(71, true), (60_001, true), (71, false)] {
        let boundary = "A".repeat(boundary_len - 1) + "B";
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let mut headers = vec![("content-type", content_type.as_str())];
        if keyed {
            headers.push(("idempotency-key", "long-boundary"));
        }
        let body = vec![b'A'; 256 * 1024];
        let answer = raw(&app, "POST", "/api/upload-audio", &headers, &body).await;
        assert_eq!(answer.status, 400, "boundary of {boundary_len}: {answer:?}");
        assert_eq!(answer.json()["code"], "malformed_request");
    }
    // 70 characters are allowed: the form is read (and lacks its audio part).
    let boundary = "b".repeat(70);
    let body =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--{boundary}--\r\n");
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let answer = raw(
        &app,
        "POST",
        "/api/upload-audio",
        &[("content-type", &content_type), ("idempotency-key", "k70")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert_eq!(answer.json()["errors"][0]["field"], "audio");
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 1, "only the well-formed request claimed");
}

#[tokio::test]
async fn without_a_token_nothing_is_claimed_or_stored() {
    let app = TestApp::spawn_with(&["--api-tokens", "tok1"]).await;
    for path in ["/api/overlay/x", "/api/chats", "/api/participations/x/clicks", "/api/nothing-here"] {
        for n in 0..3 {
            let key = format!("no-token-{n}");
            let answer = raw(&app, "POST", path, &[JSON, ("idempotency-key", &key)], b"{}").await;
            assert!(answer.status == 401 || answer.status == 405, "{path}: {answer:?}");
        }
    }
    let unknown = raw(&app, "GET", "/api/nothing-here", &[], b"").await;
    assert_eq!(unknown.status, 401, "routes under /api are not listed to clients without a token");
    let overlay = raw(&app, "GET", "/api/overlay/x/nothing-here", &[], b"").await;
    assert_eq!(overlay.status, 404, "the overlay's prefix is public, its unknown paths too (README)");
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0);
}

#[tokio::test]
async fn huge_or_odd_paths_do_not_fail_the_claims_coalesced_with_them() {
    let app = TestApp::spawn().await;
    let long = format!("/api/conversations/{}/messages", "x".repeat(40_000));
    let odd = "/api/conversations/a%00b/messages".to_owned();
    let hostile = futures_util::future::join_all((0..40).map(|i| {
        let path = if i % 2 == 0 { long.clone() } else { odd.clone() };
        let app = &app;
        async move {
            let key = format!("hostile-{i}");
            raw(app, "POST", &path, &[JSON, ("idempotency-key", &key)], br#"{"messages":[]}"#).await.status
        }
    }));
    let honest = app.concurrently(200, 16, |i| {
        let sent = app
            .client
            .post(app.url("/api/chats"))
            .header("idempotency-key", format!("chat-{i}"))
            .json(&json!({"participants": ["a", format!("b{i}")]}))
            .send();
        async move { sent.await.unwrap() }
    });
    let (hostile, honest) = tokio::join!(hostile, honest);
    assert!(hostile.iter().all(|s| *s == 404 || *s == 422), "{hostile:?}");
    let failed: Vec<_> = honest.iter().filter(|(status, _)| !status.is_success()).collect();
    assert!(failed.is_empty(), "{} of 200 keyed chats failed: {:?}", failed.len(), failed.first());
    let longest: i32 =
        sqlx::query_scalar("SELECT max(length(path)) FROM idempotency_keys").fetch_one(&app.pool).await.unwrap();
    assert!(longest <= 512, "a claim stored a {longest}-byte path");
}

#[tokio::test]
async fn invented_methods_add_no_metric_series() {
    let app = TestApp::spawn().await;
    for n in 0..60 {
        let method = format!("M{n}{}", "X".repeat(2000));
        let answer = raw(&app, &method, "/api/chats", &[], b"").await;
        assert!(answer.status >= 400, "{method}: {answer:?}");
        raw(&app, &format!("BREW{n}"), "/healthz", &[], b"").await;
    }
    // Every method label in /metrics is one of a closed set (other tests share the recorder,
    // so the labels are checked, not the number of lines).
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let known = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "OTHER"];
    let labels: std::collections::BTreeSet<&str> =
        metrics.split("method=\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
    assert!(labels.contains("OTHER"), "{labels:?}");
    assert!(labels.iter().all(|label| known.contains(label)), "method labels as sent: {labels:?}");
}

#[tokio::test]
async fn a_number_postgresql_cannot_store_is_a_422_and_fails_no_other_write() {
    let app = TestApp::spawn().await;
    let bad = app.concurrently(20, 4, |i| {
        let sent = app
            .client
            .post(app.url("/api/save-analysis"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"session_id": "bad-{}", "analysis": {{"x": 1e999999}}}}"#, i % 3))
            .send();
        async move { sent.await.unwrap() }
    });
    let good = app.concurrently(200, 16, |i| {
        app.save_analysis(json!({"session_id": format!("good-{}", i % 50), "analysis": {"n": i}}))
    });
    let (bad, good) = tokio::join!(bad, good);
    for (status, body) in &bad {
        assert_eq!(status.as_u16(), 422, "{body}");
        assert_eq!(body["errors"][0]["field"], "analysis.x");
    }
    assert!(good.iter().all(|(status, _)| status.is_success()), "a valid write failed");
    for (path, body) in [
        ("/api/save-analysis", r#"{"session_id": "tiny", "analysis": {"x": 1e-20000}}"#),
        (
            "/api/conversations/m/messages",
            r#"{"messages": [{"role": "user", "text": "t", "feedback": {"n": 5e200000}}]}"#,
        ),
    ] {
        let response =
            app.client.post(app.url(path)).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_problem(response, 422, "validation_failed").await;
    }
    assert_eq!(
        app.count("SELECT count(*) FROM conversations WHERE session_id LIKE 'bad-%' OR session_id = 'tiny'").await,
        0
    );
}

#[tokio::test]
async fn a_transient_conflict_is_not_stored_as_the_keys_answer() {
    let app = TestApp::spawn().await;
    // A serialization failure, as a busy database raises it, for one group of participants.
    // On Citus, `chats` is a reference table, whose copies get a trigger only when it is asked
    // for (on plain PostgreSQL the setting is an inert placeholder), and a statement is passed
    // on to the workers as it was sent: one command each.
    let mut conn = app.pool.acquire().await.unwrap();
    for statement in [
        "SET citus.enable_unsafe_triggers = on",
        "CREATE FUNCTION fail_serialization() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001'; END $$",
        "CREATE TRIGGER fail_serialization BEFORE INSERT ON chats FOR EACH ROW EXECUTE FUNCTION fail_serialization()",
    ] {
        sqlx::raw_sql(statement).execute(&mut *conn).await.unwrap();
    }
    let send = || {
        app.client
            .post(app.url("/api/chats"))
            .header("idempotency-key", "transient")
            .json(&json!({"participants": ["p", "q"]}))
            .send()
    };
    let first = send().await.unwrap();
    let body = assert_problem(first, 409, "conflict").await;
    assert_eq!(body["code"], "conflict");
    sqlx::raw_sql("DROP TRIGGER fail_serialization ON chats").execute(&mut *conn).await.unwrap();
    let retried = send().await.unwrap();
    assert_eq!(retried.status(), 201, "the retry ran again instead of replaying the conflict");
    assert!(retried.headers().get("idempotent-replayed").is_none());
}

/// Bare-blob POSTs, foreign origins and rebound host names, against the token-less default.
#[tokio::test]
async fn without_tokens_web_pages_of_other_sites_cannot_write_or_read() {
    let app = TestApp::spawn_with(&["--cors-origins", "https://app.example.com"]).await;
    let body = br#"{"session_id": "csrf"}"#;
    let bare = raw(&app, "POST", "/api/save-analysis", &[], body).await;
    assert_eq!(bare.status, 415, "a body without Content-Type: {bare:?}");
    let text = raw(&app, "POST", "/api/save-analysis", &[("content-type", "text/plain")], body).await;
    assert_eq!(text.status, 415);
    let foreign = raw(&app, "POST", "/api/save-analysis", &[JSON, ("origin", "https://evil.example")], body).await;
    assert_eq!(foreign.status, 403, "{foreign:?}");
    assert_eq!(foreign.json()["code"], "forbidden");
    let null = raw(&app, "POST", "/api/save-analysis", &[JSON, ("origin", "null")], body).await;
    assert_eq!(null.status, 403);
    let rebound = raw(&app, "GET", "/api/conversations", &[("host", "rebind.attacker.example:80")], b"").await;
    assert_eq!(rebound.status, 403, "DNS rebinding: {rebound:?}");
    let rebound_write =
        raw(&app, "POST", "/api/save-analysis", &[JSON, ("host", "rebind.attacker.example")], body).await;
    assert_eq!(rebound_write.status, 403);
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 0, "nothing was written");
    // What the server's own clients send still works.
    let listed = raw(&app, "POST", "/api/save-analysis", &[JSON, ("origin", "https://app.example.com")], body).await;
    assert_eq!(listed.status, 201, "{listed:?}");
    let own = raw(&app, "POST", "/api/save-analysis", &[JSON, ("origin", app.address.as_str())], body).await;
    assert_eq!(own.status, 200, "{own:?}");
    let empty = raw(&app, "POST", "/api/conversations", &[], b"").await;
    assert_eq!(empty.status, 201, "an empty body needs no Content-Type: {empty:?}");
    for host in ["localhost:1", "[::1]:1", "127.0.0.1"] {
        let answer = raw(&app, "GET", "/healthz", &[("host", host)], b"").await;
        assert_eq!(answer.status, 200, "Host {host}");
    }
}

#[tokio::test]
async fn with_tokens_a_body_without_content_type_is_still_json() {
    let app = TestApp::spawn_with(&["--api-tokens", "tok1"]).await;
    let answer = raw(
        &app,
        "POST",
        "/api/save-analysis",
        &[("authorization", "Bearer tok1"), ("host", "api.example.com")],
        br#"{"session_id": "legacy"}"#,
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A WAV of `seconds` of 16-bit mono noise at 48 kHz.
fn wav(seconds: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cursor = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
    for i in 0..48_000 * seconds {
        writer.write_sample(((i.wrapping_mul(2_654_435_761)) >> 17) as i16).unwrap();
    }
    writer.finalize().unwrap();
    cursor.into_inner()
}

#[tokio::test]
async fn uploads_hold_bounded_memory_whatever_their_parts() {
    let data_dir = scratch_dir(&format!("hostile-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let mut server = start_binary(&data_dir, port, &[]).await;
    let pid = server.id();
    let url = format!("http://127.0.0.1:{port}/api/upload-audio");
    let client = reqwest::Client::new();
    // Warm up: one small upload, so the baseline includes what any upload allocates once.
    let small =
        reqwest::multipart::Form::new().part("audio", reqwest::multipart::Part::bytes(wav(1)).file_name("a.wav"));
    assert_eq!(client.post(&url).multipart(small).send().await.unwrap().status(), 201);
    let baseline = peak_rss_kib(pid);

    // 24 MiB of samples: analysed in one pass, never held.
    let big = wav(270);
    assert!(big.len() > 24 * 1024 * 1024);
    let form = reqwest::multipart::Form::new().part("audio", reqwest::multipart::Part::bytes(big).file_name("big.wav"));
    let answer = client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(answer.status(), 201);
    let analysis: Value = answer.json().await.unwrap();
    assert_eq!(analysis["analysis"]["duration_ms"], 270_000);

    // Unknown text parts: refused at the first, never collected.
    let mut form = reqwest::multipart::Form::new();
    for n in 0..600 {
        form = form.text(format!("junk{n}"), "j".repeat(32 * 1024));
    }
    let refused = client.post(&url).multipart(form).send().await;
    if let Ok(refused) = refused {
        let body = assert_problem(refused, 422, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "junk0");
    }
    let grown = peak_rss_kib(pid).saturating_sub(baseline);
    terminate(&mut server);
    let _ = std::fs::remove_dir_all(&data_dir);
    assert!(grown < 16 * 1024, "peak memory grew by {grown} KiB for one 24 MiB WAV and 19 MiB of unknown parts");
}
