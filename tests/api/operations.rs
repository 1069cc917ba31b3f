use crate::cluster::{free_port, start_binary};
use crate::helpers::{assert_problem, scratch_dir, TestApp};
use futures_util::StreamExt;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::time::{Duration, Instant};
use upsertd::db::cluster::{Cluster, Durability};
use upsertd::settings::Settings;
use upsertd::startup::Application;

#[tokio::test]
async fn with_api_tokens_every_api_route_but_the_overlay_needs_one() {
    let app = TestApp::spawn_with(&["--api-tokens", "alpha, beta"]).await;
    let chat = json!({"participants": ["a", "b"]});
    assert_problem(app.post_json("/api/chats", &chat).await, 401, "unauthorized").await;
    let wrong = app.client.post(app.url("/api/chats")).bearer_auth("alphabet").json(&chat).send().await.unwrap();
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    assert_problem(wrong, 401, "unauthorized").await;
    assert_problem(app.get("/api/conversations").await, 401, "unauthorized").await;
    let right = app.client.post(app.url("/api/chats")).bearer_auth("beta").json(&chat).send().await.unwrap();
    assert_eq!(right.status(), 201);
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let credentials = format!("{scheme} alpha");
        let response = app.client.get(app.url("/api/conversations")).header("authorization", credentials).send();
        assert_eq!(response.await.unwrap().status(), 200, "the scheme {scheme} is Bearer (RFC 9110 §11.1)");
    }
    let padded = app.client.get(app.url("/api/conversations")).header("authorization", "Bearer alpha x").send();
    assert_eq!(padded.await.unwrap().status(), 401, "the token is matched exactly");
    assert_problem(app.get(&format!("/api/overlay/{}", "a".repeat(64))).await, 404, "not_found").await;
    assert_eq!(app.get("/healthz").await.status(), 200, "health is not behind auth");

    // An overlay holds only its browser source token: its QR image is served by that token,
    // without an API token, and the authenticated route by id still works.
    let made = app.client.post(app.url("/api/participations")).bearer_auth("alpha");
    let made: serde_json::Value =
        made.json(&json!({"campaign_id": "c", "streamer_id": "s"})).send().await.unwrap().json().await.unwrap();
    let id = made["id"].as_str().unwrap();
    let qr = app.client.post(app.url(&format!("/api/participations/{id}/qr-code"))).bearer_auth("alpha");
    let qr: serde_json::Value = qr.json(&json!({})).send().await.unwrap().json().await.unwrap();
    let token = made["browser_source_token"].as_str().unwrap();
    let image_url = qr["qr_code_url"].as_str().unwrap();
    let image_path = format!("/api/overlay/{token}/qr-code.png");
    assert!(image_url.ends_with(&image_path), "qr_code_url points at the public image: {image_url}");
    let public = app.get(&image_path).await;
    assert_eq!((public.status().as_u16(), public.headers()["content-type"].to_str().unwrap()), (200, "image/png"));
    let public = public.bytes().await.unwrap();
    assert_eq!(&public[..4], b"\x89PNG");
    let by_id = app.client.get(app.url(&format!("/api/participations/{id}/qr-code.png"))).bearer_auth("beta");
    assert_eq!(by_id.send().await.unwrap().bytes().await.unwrap(), public, "the same image by id, with a token");
    let without = app.get(&format!("/api/participations/{id}/qr-code.png")).await;
    assert_problem(without, 401, "unauthorized").await;
    let overlay: serde_json::Value = app.get(&format!("/api/overlay/{token}")).await.json().await.unwrap();
    assert_eq!(overlay["qr_code_url"].as_str(), Some(image_url));
    assert_problem(app.get(&format!("/api/overlay/{}/qr-code.png", "0".repeat(64))).await, 404, "not_found").await;

    assert_eq!(app.count("SELECT count(*) FROM chats").await, 1, "rejected requests wrote nothing");

    // Keys are scoped by token: two callers may pick the same key without colliding.
    let url = app.url("/api/conversations");
    for token in ["alpha", "beta"] {
        let response = app
            .client
            .post(&url)
            .bearer_auth(token)
            .header("idempotency-key", "same-key")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{token}'s request ran");
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
}

#[tokio::test]
async fn a_public_bind_without_tokens_is_refused_with_status_2() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_upsertd"))
        .args(["serve", "--bind", &format!("0.0.0.0:{}", free_port())])
        .env_remove("API_TOKENS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("API_TOKENS") && stderr.contains("--allow-unauthenticated"), "{stderr}");
}

/// The value of one series in Prometheus text, 0 when it is not there yet.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// The recorder is the process's, and other tests here count into it at the same time: this
/// test's requests go to the binary, a process of its own on this test's database, so every
/// series it reads moves by exactly its own requests.
#[tokio::test]
async fn metrics_count_requests_upserts_and_replays_and_every_answer_has_a_request_id() {
    let app = TestApp::spawn().await;
    let port = free_port();
    let _server = start_binary(&app.data_dir, port, &[("DATABASE_URL", &app.database_url())]).await;
    let (client, base) = (reqwest::Client::new(), format!("http://127.0.0.1:{port}"));
    let read = || async { client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap() };
    let chat = || client.post(format!("{base}/api/chats")).json(&json!({"participants": ["m1", "m2"]})).send();
    let keyed = || {
        let conversations = client.post(format!("{base}/api/conversations"));
        conversations.header("idempotency-key", "metrics-key").json(&json!({})).send()
    };
    let expected = [
        (r#"upsertd_http_requests_total{route="/api/chats",method="POST",status="201"}"#, 1.0),
        (r#"upsertd_http_requests_total{route="/api/chats",method="POST",status="200"}"#, 1.0),
        (r#"upsertd_http_requests_total{route="/api/conversations",method="POST",status="201"}"#, 2.0),
        (r#"upsertd_upserts_total{resource="chat",outcome="inserted"}"#, 1.0),
        (r#"upsertd_upserts_total{resource="chat",outcome="unchanged"}"#, 1.0),
        (r#"upsertd_upserts_total{resource="conversation",outcome="inserted"}"#, 1.0),
        ("upsertd_idempotent_replays_total", 1.0),
    ];
    let before = read().await;
    let first = chat().await.unwrap();
    assert!(first.headers().contains_key("x-request-id"));
    assert_eq!(first.status(), 201);
    assert_eq!(chat().await.unwrap().status(), 200);
    assert_eq!(keyed().await.unwrap().status(), 201);
    assert_eq!(keyed().await.unwrap().headers()["idempotent-replayed"], "true");
    let echoed = client.get(format!("{base}/healthz")).header("x-request-id", "trace-123").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-123");
    let after = read().await;
    for (name, delta) in expected {
        assert_eq!(series(&after, name) - series(&before, name), delta, "{name}");
    }
    for name in
        ["upsertd_http_request_duration_seconds_bucket", "upsertd_db_pool_connections", "upsertd_db_pool_waiting"]
    {
        assert!(after.contains(name), "/metrics lacks {name}");
    }
}

/// upsertd on a cluster of the test's own, with the service's pool settings (no ping before a
/// connection is used): its address, the cluster and its data folder.
async fn on_own_cluster(name: &str) -> (String, Cluster, std::path::PathBuf) {
    let data_dir = scratch_dir(&format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    let cluster = Cluster::start(&data_dir, Durability::Throwaway).unwrap();
    cluster.create_database("upsertd").await.unwrap();
    let options = cluster.connect_options("upsertd");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await.unwrap();
    upsertd::db::MIGRATOR.run(&mut conn).await.unwrap();
    <sqlx::PgConnection as sqlx::Connection>::close(conn).await.unwrap();
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .test_before_acquire(false)
        .connect_lazy_with(options);
    let dir = data_dir.join("app");
    let settings = Settings::from_args(["--bind", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()]);
    let app = Application::build(&settings, pool).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    (base, cluster, data_dir)
}

/// PostgreSQL stopped and started under a running server: 503 with Retry-After within the
/// acquire timeout while it is down, and writes work again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_prompt_503_and_the_service_recovers_by_itself() {
    let (base, cluster, data_dir) = on_own_cluster("outage").await;
    let client = reqwest::Client::new();
    let save =
        |sid: &'static str| client.post(format!("{base}/api/save-analysis")).json(&json!({"session_id": sid})).send();
    assert_eq!(save("before").await.unwrap().status(), 201);

    cluster.stop().unwrap();
    let started = Instant::now();
    let down = save("during").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "answered within the acquire timeout, not hung");
    assert!(down.headers().contains_key("retry-after"));
    assert_problem(down, 503, "database_unavailable").await;
    assert_problem(client.get(format!("{base}/readyz")).send().await.unwrap(), 503, "database_unavailable").await;

    let cluster = Cluster::start(&data_dir, Durability::Throwaway).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = save("after").await.unwrap().status();
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "only 503 while reconnecting");
        assert!(Instant::now() < deadline, "the service did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Each worker keeps a connection warm (`db::Conn`): kept, not opened afresh, under load. And
/// connections killed under a running server (an operator's `pg_terminate_backend`), the warm
/// ones among them: each dead connection fails at most the one statement that finds it (a
/// read here), with a 503, and once each has been found every request succeeds.
/// (A dead warm connection put back for the next request would fail every request of its
/// worker.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_are_kept_and_a_killed_one_fails_one_statement() {
    let (base, cluster, data_dir) = on_own_cluster("killed").await;
    let client = reqwest::Client::new();
    let saved = client.post(format!("{base}/api/save-analysis")).json(&json!({"session_id": "s"})).send();
    assert_eq!(saved.await.unwrap().status(), 201);
    // Reads: one statement each (writes that arrive together share one, and its failure).
    let reads = |n: usize, concurrency: usize| {
        futures_util::stream::iter(0..n)
            .map(|_| async { client.get(format!("{base}/api/conversations/s")).send().await.unwrap().status() })
            .buffer_unordered(concurrency)
            .map(|status| status.as_u16())
            .collect::<Vec<u16>>()
    };
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&cluster.connect_options("upsertd")).await.unwrap();
    let sessions = async |admin: &mut sqlx::PgConnection| -> i64 {
        sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *admin).await.unwrap();
        let opened = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()";
        sqlx::query_scalar(opened).fetch_one(&mut *admin).await.unwrap()
    };
    let before = sessions(&mut admin).await;
    // Connections of both workers opened and used, the warm ones too; and none opened beyond
    // what the pools hold (16): a warm connection is kept, not opened afresh.
    assert!(reads(1000, 32).await.iter().all(|status| *status == 200));
    let opened = sessions(&mut admin).await - before;
    assert!(opened <= 16, "{opened} connections opened for 1000 reads");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed >= 2, "upsertd had connections to kill");
    // One at a time, then many at once: every connection is found, warm or in a pool.
    let mut statuses = reads(100, 1).await;
    statuses.extend(reads(300, 32).await);
    let failed = statuses.iter().filter(|status| **status == 503).count() as i64;
    assert!(statuses.iter().all(|status| [200, 503].contains(status)), "only 200 or 503: {statuses:?}");
    assert!(failed <= killed, "{failed} requests failed for {killed} killed connections");
    assert!(reads(100, 1).await.iter().all(|status| *status == 200), "every dead connection was let go");
    <sqlx::PgConnection as sqlx::Connection>::close(admin).await.ok();
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Keyed writes run in a transaction on the worker's warm connection (`db::begin`). One dropped
/// uncommitted (its handler failed) must let its locks go at once, though no statement follows
/// on its connection, and leave nothing behind for the connection's next user; the connection
/// stays warm. It runs as a worker does, on an actix runtime, where the rollback is sent by a
/// task of its own before the connection goes home.
#[actix_web::test]
async fn a_transaction_dropped_uncommitted_leaves_its_warm_connection_clean_and_warm() {
    let app = TestApp::spawn().await;
    // This test's own count of failures: the outages other tests cause in this process are
    // their servers' (`db::Failures`), and do not make this connection suspect.
    upsertd::db::keep_warm(&app.pool, &Default::default());
    let backend = "SELECT pg_backend_pid()";
    let warm: i32 =
        sqlx::query_scalar(backend).fetch_one(&mut *upsertd::db::acquire(&app.pool).await.unwrap()).await.unwrap();
    let mut tx = upsertd::db::begin(&app.pool).await.unwrap();
    let in_tx: i32 = sqlx::query_scalar(backend).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(in_tx, warm, "the transaction runs on the warm connection");
    sqlx::query("CREATE TEMP TABLE left_behind (x int)").execute(&mut *tx).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(4242)").execute(&mut *tx).await.unwrap();
    drop(tx);
    let mut other = app.pool.acquire().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock(4242)").fetch_one(&mut *other).await.unwrap() {
        assert!(Instant::now() < deadline, "the dropped transaction still holds its lock after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::query("SELECT pg_advisory_unlock(4242)").execute(&mut *other).await.unwrap();
    drop(other);
    // The task that sent the rollback puts the connection home when the answer is back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = upsertd::db::acquire(&app.pool).await.unwrap();
    let (next_pid, table): (i32, Option<String>) =
        sqlx::query_as("SELECT pg_backend_pid(), to_regclass('pg_temp.left_behind')::text")
            .fetch_one(&mut *next)
            .await
            .unwrap();
    assert_eq!(table, None, "the dropped transaction was rolled back, not continued");
    assert_eq!(next_pid, warm, "and its connection stayed warm");
    // Another server's worker finds its database unreachable while this connection is out:
    // that is no reason to doubt this one.
    let pool = app.pool.clone();
    std::thread::spawn(move || {
        upsertd::db::keep_warm(&pool, &Default::default());
        let _ = upsertd::db::StoreError::from(sqlx::Error::PoolTimedOut);
    })
    .join()
    .unwrap();
    drop(next);
    let mut tx = upsertd::db::begin(&app.pool).await.unwrap();
    sqlx::query("CREATE TEMP TABLE kept (x int)").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    drop(tx);
    let (kept_pid, found): (i32, Option<String>) =
        sqlx::query_as("SELECT pg_backend_pid(), to_regclass('pg_temp.kept')::text")
            .fetch_one(&mut *upsertd::db::acquire(&app.pool).await.unwrap())
            .await
            .unwrap();
    assert_eq!((kept_pid, found.as_deref()), (warm, Some("kept")), "a committed one is kept, on the same connection");
}

#[tokio::test]
async fn every_route_the_app_serves_is_in_the_openapi_document_and_the_docs_page_is_local() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in upsertd::startup::ROUTES {
        assert!(paths.get(*path).and_then(|p| p.get(*method)).is_some(), "{method} {path} is not documented");
        // The table is what the app registered: each entry answers something other than 404/405.
        let concrete = path.replace("{session_id}", "s").replace("{id}", "0").replace("{token}", "t");
        let response =
            app.client.request(method.to_uppercase().parse().unwrap(), app.url(&concrete)).send().await.unwrap();
        assert_ne!(response.status(), 405, "{method} {path} is not served");
        let body = response.text().await.unwrap();
        assert!(!body.contains("no such route"), "{method} {path} is not registered");
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, upsertd::startup::ROUTES.len(), "the document lists no route the app lacks");
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger") && !html.contains("cdn"), "the docs page is served from the binary");
    assert_eq!(app.get("/docs/swagger-ui.css").await.status(), 200, "its assets too");
}

/// RFC 9110: a 405 carries `Allow` with the route's methods (§15.5.6), and every `GET` route
/// answers `HEAD` with the headers of its `GET` and no body (§9.3.2).
#[tokio::test]
async fn a_405_names_the_routes_methods_and_head_is_get_without_the_body() {
    let app = TestApp::spawn().await;
    let created = app.post_json("/api/chats", &serde_json::json!({"participants": ["a", "b"]})).await;
    let chat = format!("/api/chats/{}", created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap());
    let mut paths: Vec<&str> = upsertd::startup::ROUTES.iter().map(|(_, path)| *path).collect();
    paths.dedup();
    for path in paths {
        let mut methods: Vec<String> = upsertd::startup::ROUTES
            .iter()
            .filter(|(_, p)| *p == path)
            .flat_map(|(method, _)| match *method {
                "get" => vec!["GET".to_owned(), "HEAD".to_owned()],
                other => vec![other.to_uppercase()],
            })
            .collect();
        methods.sort();
        let concrete = path.replace("{session_id}", "s").replace("{id}", "0").replace("{token}", "t");
        for wrong in ["DELETE", "PUT", "PATCH"] {
            let response = app.client.request(wrong.parse().unwrap(), app.url(&concrete)).send().await.unwrap();
            assert_eq!(response.status(), 405, "{wrong} {path}");
            let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
            let mut allowed: Vec<String> =
                allow.unwrap_or_default().split(',').map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect();
            allowed.sort();
            assert_eq!(allowed, methods, "Allow of {wrong} {path}");
        }
    }
    for path in ["/healthz", "/api/conversations", chat.as_str(), "/api/chats/0"] {
        let get = app.get(path).await;
        let head = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(head.headers().get("content-type"), get.headers().get("content-type"), "HEAD {path}");
        assert!(!get.bytes().await.unwrap().is_empty(), "GET {path} has a body");
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path} has none");
    }
}

/// The document tells what the server answers: bearer auth and its 401 on every route behind
/// it (not on the public ones), 413/415 wherever a JSON body is read, a version mismatch only
/// where If-Match is taken, and every error as a problem document.
#[tokio::test]
async fn the_openapi_document_lists_the_problems_each_operation_can_answer() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let (name, responses) = (format!("{method} {path}"), operation["responses"].as_object().unwrap());
            let authenticated = path.starts_with("/api/") && !path.starts_with("/api/overlay/");
            assert_eq!(operation.get("security").is_some(), authenticated, "{name}: security");
            assert_eq!(responses.contains_key("401"), authenticated, "{name}: 401");
            if operation["requestBody"]["content"].get("application/json").is_some() {
                assert!(responses.contains_key("413") && responses.contains_key("415"), "{name}: 413/415");
            }
            let takes_if_match =
                operation["parameters"].as_array().into_iter().flatten().any(|p| p["name"] == "If-Match");
            let conflict = responses.get("409").map(|r| r["description"].as_str().unwrap().to_lowercase());
            assert_eq!(conflict.is_some_and(|d| d.contains("version")), takes_if_match, "{name}: 409");
            for (status, response) in responses.iter().filter(|(status, _)| !status.starts_with('2')) {
                let content = response["content"].as_object().unwrap();
                assert!(content.contains_key("application/problem+json"), "{name} {status}: a problem document");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, upsertd::startup::ROUTES.len());
}

/// One extractor per kind of id: a malformed id is 404 on every route that takes one, even with
/// a body that would be refused, and even when the route would create what it names.
#[tokio::test]
async fn a_malformed_id_in_a_path_is_not_found_on_every_route() {
    let app = TestApp::spawn().await;
    let mut checked = 0;
    for (method, path) in upsertd::startup::ROUTES.iter().filter(|(_, path)| path.contains('{')) {
        let malformed =
            path.replace("{session_id}", "no%20spaces").replace("{id}", "not-a-uuid").replace("{token}", "t");
        let request = app.client.request(method.to_uppercase().parse().unwrap(), app.url(&malformed));
        let response = request.header("content-type", "application/json").body("[").send().await.unwrap();
        assert_problem(response, 404, "not_found").await;
        checked += 1;
    }
    assert!(checked > 10, "the routes with ids were checked");
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 0, "nothing was created");
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0);
}

/// upsertd serves HTTP/1.1 only (actix-web is built without `http2`, README "Security notes"):
/// a client that opens with the HTTP/2 preface gets no HTTP/2 frame back, while the same
/// socket speaking HTTP/1.1 is answered in HTTP/1.1.
#[tokio::test]
async fn only_http_1_1_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    // The preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let settings_frame = answer.len() >= 9 && answer[3] == 4;
    assert!(!settings_frame, "no HTTP/2 SETTINGS frame: {:?}", String::from_utf8_lossy(&answer));
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&answer));

    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
}
