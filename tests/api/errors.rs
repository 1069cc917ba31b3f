use crate::helpers::{assert_problem, TestApp};
use serde_json::json;

enum Body {
    Json(serde_json::Value),
    Raw(&'static str, &'static str),
    Empty,
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case { name, method, path, body, status, code, field }
}

#[tokio::test]
async fn bad_requests_get_problem_documents_with_stable_codes() {
    use Body::*;
    let app = TestApp::spawn_with(&["--max-json-bytes", "2048"]).await;
    let long = "x".repeat(129);
    let cases = vec![
        case(
            "save-analysis without session_id",
            "POST",
            "/api/save-analysis",
            Json(json!({"transcript": "t"})),
            422,
            "validation_failed",
            Some("session_id"),
        ),
        case(
            "save-analysis with null session_id",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": null})),
            422,
            "validation_failed",
            Some("session_id"),
        ),
        case(
            "save-analysis with empty session_id",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": ""})),
            422,
            "validation_failed",
            Some("session_id"),
        ),
        case(
            "session_id with a space",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": "a b"})),
            422,
            "validation_failed",
            Some("session_id"),
        ),
        case(
            "session_id too long",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": long})),
            422,
            "validation_failed",
            Some("session_id"),
        ),
        case(
            "session_id of the wrong type",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": 42})),
            400,
            "malformed_request",
            Some("session_id"),
        ),
        case(
            "analysis that is not an object",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": "s", "analysis": [1]})),
            400,
            "malformed_request",
            Some("analysis"),
        ),
        case(
            "NUL inside analysis",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": "s", "analysis": {"k": "a\u{0}"}})),
            422,
            "validation_failed",
            Some("analysis.k"),
        ),
        case(
            "NUL in a transcript",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": "s", "transcript": "\u{0}"})),
            422,
            "validation_failed",
            Some("transcript"),
        ),
        case(
            "body that is not JSON",
            "POST",
            "/api/save-analysis",
            Raw("application/json", "{nope"),
            400,
            "malformed_request",
            None,
        ),
        case(
            "top-level array",
            "POST",
            "/api/save-analysis",
            Raw("application/json", "[1,2]"),
            400,
            "malformed_request",
            None,
        ),
        case(
            "form-encoded body",
            "POST",
            "/api/save-analysis",
            Raw("application/x-www-form-urlencoded", "session_id=a"),
            415,
            "unsupported_media_type",
            None,
        ),
        case(
            "JSON body over the limit",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": "s", "transcript": "y".repeat(4000)})),
            413,
            "payload_too_large",
            None,
        ),
        case(
            "create with a bad session_id",
            "POST",
            "/api/conversations",
            Json(json!({"session_id": "ü"})),
            422,
            "validation_failed",
            Some("session_id"),
        ),
        case(
            "language too long",
            "POST",
            "/api/conversations",
            Json(json!({"language": "l".repeat(36)})),
            422,
            "validation_failed",
            Some("language"),
        ),
        case(
            "append with no messages",
            "POST",
            "/api/conversations/s/messages",
            Json(json!({"messages": []})),
            422,
            "validation_failed",
            Some("messages"),
        ),
        case(
            "append without the messages field",
            "POST",
            "/api/conversations/s/messages",
            Json(json!({})),
            422,
            "validation_failed",
            Some("messages"),
        ),
        case(
            "message with an unknown role",
            "POST",
            "/api/conversations/s/messages",
            Json(json!({"messages": [{"role": "admin", "text": "x"}]})),
            422,
            "validation_failed",
            Some("messages[0].role"),
        ),
        case(
            "message without text",
            "POST",
            "/api/conversations/s/messages",
            Json(json!({"messages": [{"role": "user"}]})),
            422,
            "validation_failed",
            Some("messages[0].text"),
        ),
        case(
            "message id that is not a UUID",
            "POST",
            "/api/conversations/s/messages",
            Json(json!({"messages": [{"id": "x", "role": "user", "text": "t"}]})),
            422,
            "validation_failed",
            Some("messages[0].id"),
        ),
        case(
            "the same message id twice",
            "POST",
            "/api/conversations/s/messages",
            Json(json!({"messages": [
            {"id": "0190b9d2-0000-7000-8000-000000000001", "role": "user", "text": "a"},
            {"id": "0190b9d2-0000-7000-8000-000000000001", "role": "user", "text": "b"}]})),
            422,
            "validation_failed",
            Some("messages[1].id"),
        ),
        case(
            "51 messages",
            "POST",
            "/api/conversations/s/messages",
            Json(json!({"messages": vec![json!({"role": "user", "text": "t"}); 51]})),
            422,
            "validation_failed",
            Some("messages"),
        ),
        case(
            "message audio_id that does not exist",
            "POST",
            "/api/conversations/s/messages",
            Json(
                json!({"messages": [{"role": "user", "text": "t", "audio_id": "0190b9d2-0000-7000-8000-000000000009"}]}),
            ),
            422,
            "validation_failed",
            Some("messages[].audio_id"),
        ),
        case("list limit 0", "GET", "/api/conversations?limit=0", Empty, 422, "validation_failed", Some("limit")),
        case("list limit 201", "GET", "/api/conversations?limit=201", Empty, 422, "validation_failed", Some("limit")),
        case("forged cursor", "GET", "/api/conversations?cursor=abc", Empty, 422, "validation_failed", Some("cursor")),
        case(
            "NUL in user_id",
            "GET",
            "/api/conversations?user_id=a%00b",
            Empty,
            422,
            "validation_failed",
            Some("user_id"),
        ),
        case("unknown conversation", "GET", "/api/conversations/nobody", Empty, 404, "not_found", None),
        case("unknown audio id", "GET", "/api/audio/not-a-uuid", Empty, 404, "not_found", None),
        case("unknown route", "GET", "/api/nothing-here", Empty, 404, "not_found", None),
        case("wrong method", "DELETE", "/api/save-analysis", Empty, 405, "method_not_allowed", None),
        case(
            "upload that is not multipart",
            "POST",
            "/api/upload-audio",
            Raw("application/json", "{}"),
            415,
            "unsupported_media_type",
            None,
        ),
        case(
            "upload without an audio part",
            "POST",
            "/api/upload-audio",
            Raw(
                "multipart/form-data; boundary=X",
                "--X\r\nContent-Disposition: form-data; name=\"session_id\"\r\n\r\nabc\r\n--X--\r\n",
            ),
            422,
            "validation_failed",
            Some("audio"),
        ),
        case(
            "bad If-Match",
            "POST",
            "/api/save-analysis",
            Json(json!({"session_id": "s"})),
            400,
            "malformed_request",
            Some("If-Match"),
        ),
    ];
    for case in cases {
        let mut request = app.client.request(case.method.parse().unwrap(), app.url(case.path));
        if case.name == "bad If-Match" {
            request = request.header("if-match", "yesterday");
        }
        request = match case.body {
            Body::Json(value) => request.json(&value),
            Body::Raw(content_type, raw) => request.header("content-type", content_type).body(raw),
            Body::Empty => request,
        };
        let response = request.send().await.unwrap();
        let problem = assert_problem(response, case.status, case.code).await;
        if let Some(field) = case.field {
            assert_eq!(problem["errors"][0]["field"], field, "{}: {problem}", case.name);
        }
    }
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 0, "no bad request wrote anything");
}

/// API.md §1 for every JSON field of every route: a value of the wrong JSON type is 400
/// `malformed_request`, one of the right type that is not valid is 422 `validation_failed`, each
/// naming the field; neither writes anything.
#[tokio::test]
async fn every_json_field_is_400_for_the_wrong_type_and_422_for_a_bad_value() {
    let app = TestApp::spawn().await;
    assert_eq!(app.create_conversation(json!({"session_id": "rules"})).await.status(), 201);
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let p = |route: &str| format!("/api/participations/{id}/{route}");
    let m = "/api/conversations/rules/messages".to_owned();
    let message = |field: &str, value: serde_json::Value| {
        let mut one = json!({"role": "user", "text": "t"});
        one[field] = value;
        json!({"messages": [one]})
    };
    let long = "x".repeat(300);
    let s = |path: &str| path.to_owned();
    let table: Vec<(String, serde_json::Value, u16, &str)> = vec![
        (s("/api/conversations"), json!({"session_id": 5}), 400, "session_id"),
        (s("/api/conversations"), json!({"session_id": "no spaces"}), 422, "session_id"),
        (s("/api/conversations"), json!({"user_id": []}), 400, "user_id"),
        (s("/api/conversations"), json!({"user_id": long}), 422, "user_id"),
        (s("/api/conversations"), json!({"language": true}), 400, "language"),
        (s("/api/conversations"), json!({"language": long}), 422, "language"),
        (s("/api/save-analysis"), json!({"session_id": {}}), 400, "session_id"),
        (s("/api/save-analysis"), json!({"session_id": "no spaces"}), 422, "session_id"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "transcript": 1}), 400, "transcript"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "transcript": "a\u{0}"}), 422, "transcript"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "analysis": 5}), 400, "analysis"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "analysis": "text"}), 400, "analysis"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "analysis": [1]}), 400, "analysis"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "analysis": {"k": "\u{0}"}}), 422, "analysis.k"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "language": 7}), 400, "language"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "language": long}), 422, "language"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "user_id": 7}), 400, "user_id"),
        (s("/api/save-analysis"), json!({"session_id": "rules", "user_id": long}), 422, "user_id"),
        (m.clone(), json!({"messages": {}}), 400, "messages"),
        (m.clone(), json!({"messages": []}), 422, "messages"),
        (m.clone(), json!({"messages": [5]}), 400, "messages[0]"),
        (m.clone(), message("role", json!(1)), 400, "messages[0].role"),
        (m.clone(), message("role", json!("cat")), 422, "messages[0].role"),
        (m.clone(), message("text", json!(5)), 400, "messages[0].text"),
        (m.clone(), message("text", json!("a\u{0}")), 422, "messages[0].text"),
        (m.clone(), message("id", json!(5)), 400, "messages[0].id"),
        (m.clone(), message("id", json!("not-a-uuid")), 422, "messages[0].id"),
        (m.clone(), message("audio_id", json!(false)), 400, "messages[0].audio_id"),
        (m.clone(), message("audio_id", json!("not-a-uuid")), 422, "messages[0].audio_id"),
        (m.clone(), message("translation", json!(1)), 400, "messages[0].translation"),
        (m.clone(), message("translation", json!("a\u{0}")), 422, "messages[0].translation"),
        (m.clone(), message("grammar_suggestion", json!([])), 400, "messages[0].grammar_suggestion"),
        (m.clone(), message("grammar_suggestion", json!("\u{0}")), 422, "messages[0].grammar_suggestion"),
        (m.clone(), message("phonemes", json!({"\u{0}": 1})), 422, "messages[0].phonemes"),
        (m.clone(), message("feedback", serde_json::from_str("[1e200000]").unwrap()), 422, "messages[0].feedback[0]"),
        (s("/api/chats"), json!({"participants": "a"}), 400, "participants"),
        (s("/api/chats"), json!({"participants": ["a"]}), 422, "participants"),
        (s("/api/chats"), json!({"participants": ["a", 2]}), 400, "participants[1]"),
        (s("/api/chats"), json!({"participants": ["a", "b,c"]}), 422, "participants[1]"),
        (s("/api/participations"), json!({"campaign_id": 7, "streamer_id": "s"}), 400, "campaign_id"),
        (s("/api/participations"), json!({"campaign_id": "c,d", "streamer_id": "s"}), 422, "campaign_id"),
        (s("/api/participations"), json!({"campaign_id": "c", "streamer_id": ["s"]}), 400, "streamer_id"),
        (s("/api/participations"), json!({"campaign_id": "c", "streamer_id": ""}), 422, "streamer_id"),
        (p("impressions"), json!({"count": "5"}), 400, "count"),
        (p("impressions"), json!({"count": 0}), 422, "count"),
        (p("impressions"), json!({"cost": true}), 400, "cost"),
        (p("impressions"), json!({"cost": "lots"}), 422, "cost"),
        (p("clicks"), json!({"type": 1}), 400, "type"),
        (p("clicks"), json!({"type": "telepathy"}), 422, "type"),
        (p("viewer-samples"), json!({"viewer_count": "many"}), 400, "viewer_count"),
        (p("viewer-samples"), json!({"viewer_count": -1}), 422, "viewer_count"),
        (p("earnings"), json!({"amount": [1]}), 400, "amount"),
        (p("earnings"), json!({"amount": "0"}), 422, "amount"),
        (p("chat-command"), json!({"command": 5}), 400, "command"),
        (p("chat-command"), json!({"command": ""}), 422, "command"),
    ];
    for (path, body, status, field) in &table {
        let code = if *status == 400 { "malformed_request" } else { "validation_failed" };
        let response = app.post_json(path, body).await;
        let problem = assert_problem(response, *status, code).await;
        assert_eq!(problem["errors"][0]["field"], *field, "{path} {body}: {problem}");
    }
    let written = app.count("SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM chats)").await;
    assert_eq!(written, 0, "no refused request wrote anything");
    assert_eq!(app.count("SELECT count(*) FROM participation_events").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
}
