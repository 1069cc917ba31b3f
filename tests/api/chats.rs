use crate::helpers::{assert_problem, TestApp};
use serde_json::{json, Value};
use std::collections::HashSet;

#[tokio::test]
async fn two_hundred_concurrent_creates_of_one_group_return_one_chat() {
    let app = TestApp::spawn().await;
    let group = ["alice", "bob_smith", "carol@example.com", "dave:1"];
    let results = app
        .concurrently(200, 64, |i| {
            let mut participants: Vec<&str> = group.to_vec();
            participants.rotate_left(i % group.len());
            if i % 2 == 1 {
                participants.reverse();
                participants.push("alice"); // repeats do not make another group
            }
            app.post_json("/api/chats", json!({"participants": participants}))
        })
        .await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let server_errors = results.iter().filter(|(s, _)| s.is_server_error()).count();
    let ids: HashSet<_> = results.iter().map(|(_, body)| body["id"].clone()).collect();
    assert_eq!((created, server_errors, ids.len()), (1, 0, 1), "one 201, no 5xx, one id");
    assert_eq!(app.count("SELECT count(*) FROM chats").await, 1);
    let (_, chat) = &results[0];
    assert_eq!(chat["participants_key"], "alice,bob_smith,carol@example.com,dave:1");
}

#[tokio::test]
async fn concurrent_creates_of_existing_chats_each_get_their_own() {
    let groups: Vec<Value> = (0..20).map(|g| json!({"participants": [format!("p{g}"), format!("q{g}")]})).collect();
    let key_of = |chat: &Value| chat["participants_key"].as_str().unwrap().to_owned();
    TestApp::spawn().await.creates_of_existing_each_get_their_own("/api/chats", &groups, key_of, "chats").await;
}

#[tokio::test]
async fn groups_that_an_underscore_key_would_confuse_are_two_chats() {
    let app = TestApp::spawn().await;
    let first: Value = app.post_json("/api/chats", json!({"participants": ["a_b", "c"]})).await.json().await.unwrap();
    let second: Value = app.post_json("/api/chats", json!({"participants": ["a", "b_c"]})).await.json().await.unwrap();
    assert_ne!(first["id"], second["id"]);
    assert_eq!(app.count("SELECT count(*) FROM chats").await, 2);
}

#[tokio::test]
async fn chats_are_listed_by_participant_across_pages_and_fetched_by_id() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.post_json("/api/chats", json!({"participants": ["me", format!("friend{i}")]})).await;
    }
    app.post_json("/api/chats", json!({"participants": ["x", "y"]})).await;
    let ids: Vec<String> = app
        .all_pages("/api/chats?participant=me&limit=2")
        .await
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5, "every chat of `me` once, none of the others");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5);
    let one = app.get(&format!("/api/chats/{}", ids[0])).await;
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.unwrap();
    assert!(one["participants"].as_array().unwrap().contains(&json!("me")));
}

#[tokio::test]
async fn bad_chat_requests_are_rejected_with_their_codes() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({}), 422, "participants"),
        (json!({"participants": ["solo"]}), 422, "participants"),
        (json!({"participants": ["same", "same"]}), 422, "participants"),
        (json!({"participants": ["a,b", "c"]}), 422, "participants[0]"),
        (json!({"participants": ["ok", ""]}), 422, "participants[1]"),
        (json!({"participants": (0..33).map(|i| format!("u{i}")).collect::<Vec<_>>()}), 422, "participants"),
        (json!({"participants": "a,b"}), 400, "participants"),
    ];
    for (body, status, field) in cases {
        let code = if status == 400 { "malformed_request" } else { "validation_failed" };
        let problem = assert_problem(app.post_json("/api/chats", body.clone()).await, status, code).await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    assert_problem(app.get("/api/chats").await, 422, "validation_failed").await;
    assert_problem(app.get("/api/chats/not-a-uuid").await, 404, "not_found").await;
    assert_problem(app.get(&format!("/api/chats/{}", uuid::Uuid::now_v7())).await, 404, "not_found").await;
    assert_eq!(app.count("SELECT count(*) FROM chats").await, 0);
}
