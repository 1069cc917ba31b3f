use crate::helpers::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test]
async fn appending_with_client_ids_is_idempotent() {
    let app = TestApp::spawn().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let body = json!({"messages": [
        {"id": a, "role": "user", "text": "hello", "phonemes": [{"p": "h"}]},
        {"id": b, "role": "bot", "text": "hi", "translation": "salut"}
    ]});
    let first = app.append_messages("chat-1", &body).await;
    assert_eq!(first.status(), 201, "the conversation is created and the messages inserted");
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["conversation"]["message_count"], 2);
    assert_eq!(first["conversation"]["version"], 1, "creating and appending in one request is one change");
    let again = app.append_messages("chat-1", &body).await;
    assert_eq!(again.status(), 200, "nothing new was stored");
    assert_eq!(again.headers()["upsert-outcome"], "unchanged");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["messages"], first["messages"], "the stored messages are returned as stored");
    assert_eq!(again["conversation"]["message_count"], 2);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 2);
}

#[tokio::test]
async fn concurrent_appends_lose_nothing_and_pages_cover_every_message_once_in_order() {
    let app = TestApp::spawn().await;
    let results = app
        .concurrently(60, 16, |i| {
            app.append_messages(
                "busy",
                json!({"messages": [
                    {"role": "user", "text": format!("{i}-a")},
                    {"role": "bot", "text": format!("{i}-b")}
                ]}),
            )
        })
        .await;
    assert!(results.iter().all(|(s, _)| *s == 201), "every append inserted");
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 120);
    assert_eq!(app.count("SELECT message_count FROM conversations WHERE session_id = 'busy'").await, 120);

    let texts: Vec<String> = app
        .all_pages("/api/conversations/busy/messages?limit=7")
        .await
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.len(), 120, "every message exactly once");
    let unique: std::collections::HashSet<_> = texts.iter().collect();
    assert_eq!(unique.len(), 120);
    for pair in texts.chunks(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(a.trim_end_matches("-a"), b.trim_end_matches("-b"), "a request's messages stay together, in order");
    }
}

#[tokio::test]
async fn messages_keep_their_order_across_requests() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.append_messages("ordered", json!({"messages": [{"role": "user", "text": i.to_string()}]})).await;
    }
    let page: Value = app.get("/api/conversations/ordered/messages").await.json().await.unwrap();
    let texts: Vec<&str> = page["items"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["0", "1", "2", "3", "4"], "oldest first");
    assert_eq!(page["next_cursor"], Value::Null);
}
