//! A route is a route however its URL is spelled (API.md §1): auth and idempotency follow
//! the route the router picks, never the path string. Requests go out over a raw socket,
//! because an HTTP client library would normalise `.`, `..` and `%2e` before sending them.

use crate::helpers::TestApp;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response as read off the socket.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }
}

/// Sends one HTTP/1.1 request exactly as written (`Connection: close`; `Host` is the server's
/// unless `headers` has one) and reads the answer.
pub async fn raw(app: &TestApp, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Raw {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("the server accepts");
    let mut request = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    Raw { status, head, body: answer[split + 4..].to_vec() }
}

/// Other spellings of `path` (which starts with `/api/`): a percent-encoded letter of the
/// fixed part and of the id (the `index`th segment), with lower- and uppercase hex, `%2F` for
/// a slash, `.`, `..` and `%2e` segments, doubled and trailing slashes, and `/API`.
fn spellings(path: &str, id_segment: Option<usize>) -> Vec<String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let encode_first_letter = |segment: &str, upper: bool| -> String {
        let at = segment.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(0);
        let byte = segment.as_bytes()[at];
        let hex = if upper { format!("%{byte:02X}") } else { format!("%{byte:02x}") };
        format!("{}{hex}{}", &segment[..at], &segment[at + 1..])
    };
    let with = |index: usize, replacement: String| -> String {
        let mut changed: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
        changed[index] = replacement;
        format!("/{}", changed.join("/"))
    };
    let mut out = BTreeSet::new();
    for upper in [false, true] {
        out.insert(with(0, encode_first_letter(segments[0], upper)));
        out.insert(with(segments.len() - 1, encode_first_letter(segments[segments.len() - 1], upper)));
        out.insert(with(1, encode_first_letter(segments[1], upper)));
        if let Some(id) = id_segment {
            out.insert(with(id, encode_first_letter(segments[id], upper)));
        }
    }
    let rest = &path["/api".len()..];
    out.insert(format!("/api%2F{}", &rest[1..]));
    out.insert(format!("/api%2f{}", &rest[1..]));
    out.insert(format!("/api/.{rest}"));
    out.insert(format!("/api/%2e{rest}"));
    out.insert(format!("/api/x/..{rest}"));
    out.insert(format!("/api/x/%2E%2E{rest}"));
    out.insert(format!("/api/{}/..{rest}", segments[1]));
    out.insert(format!("/api/{rest}"));
    out.insert(format!("{path}/"));
    out.insert(format!("/API{rest}"));
    out.insert(path.replacen('/', "//", 2).replacen("//", "/", 1));
    out.remove(path);
    out.into_iter().collect()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const TOKEN: (&str, &str) = ("authorization", "Bearer tok1");

/// One route family: a method, a plain path and a body.
struct Case {
    method: &'static str,
    path: String,
    id_segment: Option<usize>,
    body: Value,
}

async fn cases(app: &TestApp, auth: &[(&str, &str)]) -> Vec<Case> {
    let mut headers = vec![JSON];
    headers.extend_from_slice(auth);
    let created = raw(app, "POST", "/api/participations", &headers, br#"{"campaign_id":"c","streamer_id":"s"}"#).await;
    assert!(created.status == 201, "setup: {created:?}");
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let chat = raw(app, "POST", "/api/chats", &headers, br#"{"participants":["a","b"]}"#).await;
    let chat_id = chat.json()["id"].as_str().unwrap().to_owned();
    let saved = raw(app, "POST", "/api/save-analysis", &headers, br#"{"session_id":"s:1"}"#).await;
    assert!(saved.status == 201, "setup: {saved:?}");
    let case = |method, path: String, id_segment, body| Case { method, path, id_segment, body };
    let mut out = vec![
        case("POST", "/api/conversations".into(), None, json!({"session_id": "new-1"})),
        case("GET", "/api/conversations".into(), None, Value::Null),
        case("GET", "/api/conversations/s:1".into(), Some(2), Value::Null),
        case("GET", "/api/conversations/s:1/messages".into(), Some(2), Value::Null),
        case(
            "POST",
            "/api/conversations/s:1/messages".into(),
            Some(2),
            json!({"messages": [{"role": "user", "text": "hi"}]}),
        ),
        case("POST", "/api/save-analysis".into(), None, json!({"session_id": "s:1", "analysis": {"n": 1}})),
        case("POST", "/api/chats".into(), None, json!({"participants": ["x", "y"]})),
        case("GET", format!("/api/chats/{chat_id}"), Some(2), Value::Null),
        case("POST", "/api/participations".into(), None, json!({"campaign_id": "c2", "streamer_id": "s"})),
        case("GET", format!("/api/participations/{id}"), Some(2), Value::Null),
        case("POST", format!("/api/participations/{id}/chat-command"), Some(2), json!({})),
        case("POST", format!("/api/participations/{id}/qr-code"), Some(2), Value::Null),
    ];
    for counter in ["impressions", "clicks", "earnings", "viewer-samples"] {
        let body = match counter {
            "earnings" => json!({"amount": "1.5"}),
            "viewer-samples" => json!({"viewer_count": 3}),
            _ => json!({}),
        };
        out.push(case("POST", format!("/api/participations/{id}/{counter}"), Some(2), body));
    }
    out
}

fn body_bytes(body: &Value) -> Vec<u8> {
    if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    }
}

#[tokio::test]
async fn no_spelling_of_an_api_url_gets_past_bearer_auth() {
    let app = TestApp::spawn_with(&["--api-tokens", "tok1"]).await;
    let mut tried = 0;
    for case in cases(&app, &[TOKEN]).await {
        let plain = raw(&app, case.method, &case.path, &[JSON], &body_bytes(&case.body)).await;
        assert_eq!(plain.status, 401, "{} {} without a token", case.method, case.path);
        for spelling in spellings(&case.path, case.id_segment) {
            let key = uuid::Uuid::new_v4().to_string();
            let answer =
                raw(&app, case.method, &spelling, &[JSON, ("idempotency-key", &key)], &body_bytes(&case.body)).await;
            assert!(
                !(200..400).contains(&answer.status),
                "{} {spelling} without a token answered {}: {}",
                case.method,
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
            tried += 1;
        }
    }
    assert!(tried > 200, "only {tried} spellings tried");
    // Nothing without a token claimed or stored a key.
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0);
}

/// The counter, message count or row count a POST moves.
async fn effect(app: &TestApp, path: &str) -> i64 {
    let sql = if path.ends_with("/messages") {
        "SELECT count(*) FROM messages".to_owned()
    } else if path.starts_with("/api/participations/") {
        // Every write of a participation moves updated_at (now(): one per transaction).
        let id = path.split('/').nth(3).unwrap();
        format!("SELECT (extract(epoch FROM updated_at) * 1000000)::bigint FROM participations WHERE id = '{id}'")
    } else {
        "SELECT ((SELECT count(*) FROM conversations) + (SELECT count(*) FROM chats)
              + (SELECT count(*) FROM participations) + (SELECT coalesce(sum(version), 0) FROM conversations))::bigint"
            .to_owned()
    };
    app.count(&sql).await
}

#[tokio::test]
async fn one_key_takes_effect_once_whatever_the_spelling() {
    let app = TestApp::spawn().await;
    let (mut replays, mut same_route) = (0, 0);
    for case in cases(&app, &[]).await.into_iter().filter(|c| c.method == "POST") {
        for spelling in spellings(&case.path, case.id_segment) {
            // Fresh values per try, so that a second effect would show.
            let body = match &case.body {
                Value::Object(o) if o.contains_key("participants") => {
                    json!({"participants": ["x", uuid::Uuid::new_v4().to_string()]})
                }
                Value::Object(o) if o.contains_key("campaign_id") => {
                    json!({"campaign_id": uuid::Uuid::new_v4().to_string(), "streamer_id": "s"})
                }
                Value::Object(o) if o.contains_key("analysis") => {
                    json!({"session_id": "s:1", "analysis": {"n": uuid::Uuid::new_v4().to_string()}})
                }
                Value::Object(o) if o.contains_key("session_id") => json!({"session_id": uuid::Uuid::new_v4()}),
                other => other.clone(),
            };
            // A percent-encoded letter reaches the same route with the same parameters.
            let encoded_letter = spelling.contains('%') && !spelling.to_ascii_lowercase().contains("%2");
            same_route += usize::from(encoded_letter);
            let key = uuid::Uuid::new_v4().to_string();
            let headers = [JSON, ("idempotency-key", key.as_str())];
            let before = effect(&app, &case.path).await;
            let first = raw(&app, case.method, &case.path, &headers, &body_bytes(&body)).await;
            assert!(first.status < 300, "{} {}: {first:?}", case.method, case.path);
            let after_first = effect(&app, &case.path).await;
            assert!(after_first > before, "{} {} had no effect to count", case.method, case.path);
            let again = raw(&app, case.method, &spelling, &headers, &body_bytes(&body)).await;
            assert!(again.status < 500 && again.status != 409, "{} {spelling}: {again:?}", case.method);
            assert_eq!(
                effect(&app, &case.path).await,
                after_first,
                "{} {spelling} with the key of {} took effect again: {again:?}",
                case.method,
                case.path
            );
            if again.header("idempotent-replayed").is_some() {
                assert_eq!(again.body, first.body, "{spelling}: a replay repeats the first answer");
                assert_eq!(again.status, first.status, "{spelling}");
                replays += 1;
            } else {
                assert!(!encoded_letter, "{spelling} reaches the route of {} but was not a replay", case.path);
            }
        }
    }
    assert!(same_route > 30, "the table has only {same_route} spellings of the same routes");
    assert_eq!(replays, same_route, "exactly the spellings of the same route are replays");
}

#[tokio::test]
async fn a_spelling_alone_with_a_fresh_key_is_answered() {
    let app = TestApp::spawn_with(&["--idempotency-lease", "60s"]).await;
    for case in cases(&app, &[]).await.into_iter().filter(|c| c.method == "POST") {
        for spelling in spellings(&case.path, case.id_segment) {
            let key = uuid::Uuid::new_v4().to_string();
            let headers = [JSON, ("idempotency-key", key.as_str())];
            for attempt in 0..2 {
                let answer = raw(&app, case.method, &spelling, &headers, &body_bytes(&case.body)).await;
                assert!(
                    answer.status < 500 && answer.status != 409,
                    "{} {spelling} (attempt {attempt}): {answer:?}",
                    case.method
                );
            }
        }
    }
}

#[tokio::test]
async fn a_percent_encoded_colon_is_the_same_conversation_and_key() {
    let app = TestApp::spawn().await;
    let body = br#"{"messages":[{"role":"user","text":"once"}]}"#;
    let headers = [JSON, ("idempotency-key", "append-once")];
    let first = raw(&app, "POST", "/api/conversations/s:1/messages", &headers, body).await;
    assert_eq!(first.status, 201);
    for spelling in ["/api/conversations/s%3A1/messages", "/api/conversations/s%3a1/messages"] {
        let again = raw(&app, "POST", spelling, &headers, body).await;
        assert_eq!(again.status, 201, "{spelling}");
        assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"), "{spelling}");
        assert_eq!(again.body, first.body);
    }
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 1);
}
