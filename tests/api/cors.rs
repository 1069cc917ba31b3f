//! CORS on the real server: preflights pass bearer auth and the idempotency layer by, every
//! answer to a listed origin carries the CORS headers (problem documents too), and nothing
//! changes for anyone else. The browser's own view: browser.rs.

use crate::helpers::{assert_problem, TestApp};
use reqwest::{Method, Response};
use serde_json::json;

const PAGE: &str = "https://app.example.com";

fn header(response: &Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn cors_headers(response: &Response) -> Vec<String> {
    let names = response.headers().keys().map(|name| name.as_str().to_owned());
    names.filter(|name| name.starts_with("access-control-")).collect()
}

fn assert_granted(response: &Response, what: &str) {
    assert_eq!(header(response, "access-control-allow-origin").as_deref(), Some(PAGE), "{what}");
    let exposed = header(response, "access-control-expose-headers").unwrap_or_default().to_ascii_lowercase();
    for name in ["upsert-outcome", "idempotent-replayed", "etag", "location", "retry-after", "x-request-id"] {
        assert!(exposed.contains(name), "{what}: {name} is not exposed ({exposed})");
    }
}

impl TestApp {
    /// A browser's preflight for a keyed, authorised JSON POST to `path`, from `origin`. It
    /// carries an `Idempotency-Key` too, as a confused client might: nothing may claim it.
    async fn preflight(&self, path: &str, origin: &str) -> Response {
        self.client
            .request(Method::OPTIONS, self.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,idempotency-key")
            .header("idempotency-key", "preflight-key")
            .send()
            .await
            .expect("request reaches the server")
    }
}

#[tokio::test]
async fn preflights_need_no_token_and_claim_no_key() {
    let app = TestApp::spawn_with(&["--api-tokens", "secret", "--cors-origins", PAGE]).await;
    for path in ["/api/save-analysis", "/api/upload-audio", "/api/conversations/s-1/messages", "/api/no-such-route"] {
        let response = app.preflight(path, PAGE).await;
        assert_eq!(response.status(), 200, "{path}: answered without a token");
        assert_eq!(header(&response, "access-control-allow-origin").as_deref(), Some(PAGE), "{path}");
        assert!(header(&response, "x-request-id").is_some(), "{path}: a preflight is one request like any");
        let refused = app.preflight(path, "https://evil.example").await;
        assert_eq!(refused.status(), 400, "{path}: another origin's preflight");
        assert_eq!(cors_headers(&refused), Vec::<String>::new(), "{path}");
    }
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0, "no preflight touched a key");

    // The call itself: without a token, a 401 the page can read; with one, the write.
    let body = json!({"session_id": "s-1", "analysis": {"score": 7}});
    let send = |token: Option<&str>| {
        let request = app.client.post(app.url("/api/save-analysis")).header("origin", PAGE);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        request.header("idempotency-key", "k-1").json(&body).send()
    };
    let refused = send(None).await.unwrap();
    assert_granted(&refused, "401");
    assert_problem(refused, 401, "unauthorized").await;
    for replayed in [None, Some("true")] {
        let saved = send(Some("secret")).await.unwrap();
        assert_eq!(saved.status(), 201);
        assert_granted(&saved, "201");
        assert_eq!(header(&saved, "location").as_deref(), Some("/api/conversations/s-1"));
        assert_eq!(header(&saved, "idempotent-replayed").as_deref(), replayed);
    }
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 1, "the POST's key, once");

    // Another origin's request is served as without CORS, and nothing in its answer is for it.
    let read = app.client.get(app.url("/api/conversations/s-1")).header("origin", "https://evil.example");
    let read = read.bearer_auth("secret").send().await.unwrap();
    assert_eq!((read.status().as_u16(), cors_headers(&read)), (200, Vec::new()));
}

#[tokio::test]
async fn problem_documents_carry_the_cors_headers() {
    let app = TestApp::spawn_with(&["--cors-origins", PAGE]).await;
    let post =
        |path: &str, body: serde_json::Value| app.client.post(app.url(path)).header("origin", PAGE).json(&body).send();
    let malformed = post("/api/save-analysis", json!({"session_id": "s-1", "analysis": 5})).await.unwrap();
    assert_granted(&malformed, "400 from the extractor");
    assert_problem(malformed, 400, "malformed_request").await;
    let missing = post("/api/no-such-route", json!({})).await.unwrap();
    assert_granted(&missing, "404 from the router");
    assert_problem(missing, 404, "not_found").await;
    // local_only refuses a Host that is not this server's, before any route.
    let request = app.client.post(app.url("/api/save-analysis")).header("origin", PAGE).header("host", "evil.example");
    let forbidden = request.json(&json!({"session_id": "s-1"})).send().await.unwrap();
    assert_granted(&forbidden, "403 from local_only");
    assert_problem(forbidden, 403, "forbidden").await;
}

#[tokio::test]
async fn without_cors_origins_no_cors_header_is_sent() {
    let app = TestApp::spawn().await;
    let preflight = app.preflight("/api/save-analysis", PAGE).await;
    assert_eq!(cors_headers(&preflight), Vec::<String>::new());
    assert_problem(preflight, 405, "method_not_allowed").await;
    let page = "http://127.0.0.1:1";
    let request = app.client.post(app.url("/api/save-analysis")).header("origin", page);
    let refused = request.json(&json!({"session_id": "s-1"})).send().await.unwrap();
    assert_eq!(cors_headers(&refused), Vec::<String>::new());
    assert_problem(refused, 403, "forbidden").await;
    let same_origin = app.client.post(app.url("/api/save-analysis")).header("origin", app.address.clone());
    let saved = same_origin.json(&json!({"session_id": "s-1"})).send().await.unwrap();
    assert_eq!((saved.status().as_u16(), cors_headers(&saved)), (201, Vec::<String>::new()));
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0);
}
