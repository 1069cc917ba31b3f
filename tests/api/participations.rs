use crate::helpers::{assert_problem, TestApp};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Every counter equals the sum of its ledger rows.
pub async fn assert_ledger_matches(app: &TestApp) {
    let mismatches = app
        .count(
            "SELECT count(*) FROM participations p,
               LATERAL (SELECT coalesce(sum(impressions), 0) AS impressions, coalesce(sum(clicks), 0) AS clicks,
                               coalesce(sum(chat_clicks), 0) AS chat_clicks, coalesce(sum(qr_scans), 0) AS qr_scans,
                               coalesce(sum(link_clicks), 0) AS link_clicks, coalesce(sum(earnings), 0) AS earnings,
                               count(*) FILTER (WHERE kind = 'viewer_sample') AS samples
                        FROM participation_events e WHERE e.participation_id = p.id) AS e
             WHERE (p.impressions, p.clicks, p.chat_clicks, p.qr_scans, p.link_clicks, p.estimated_earnings, p.viewer_samples)
                   IS DISTINCT FROM
                   (e.impressions, e.clicks, e.chat_clicks, e.qr_scans, e.link_clicks, e.earnings, e.samples)",
        )
        .await;
    assert_eq!(mismatches, 0, "every counter equals the sum of its events");
}

#[tokio::test]
async fn a_hundred_concurrent_creates_return_one_participation_with_one_token() {
    let app = TestApp::spawn().await;
    let results = app
        .concurrently(100, 64, |_| {
            app.post_json("/api/participations", json!({"campaign_id": "c", "streamer_id": "s"}))
        })
        .await;
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1);
    assert!(results.iter().all(|(s, _)| s.is_success()), "no errors");
    let ids: HashSet<_> = results.iter().map(|(_, b)| b["id"].clone()).collect();
    let tokens: HashSet<_> = results.iter().map(|(_, b)| b["browser_source_token"].clone()).collect();
    assert_eq!((ids.len(), tokens.len()), (1, 1));
    let token = tokens.into_iter().next().unwrap();
    let token = token.as_str().unwrap();
    assert!(token.len() == 64 && token.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(app.count("SELECT count(*) FROM participations").await, 1);
}

#[tokio::test]
async fn concurrent_creates_of_existing_participations_each_get_their_own() {
    let pairs: Vec<Value> = (0..20).map(|g| json!({"campaign_id": format!("c{g}"), "streamer_id": "s"})).collect();
    let key_of = |p: &Value| p["campaign_id"].as_str().unwrap().to_owned();
    let app = TestApp::spawn().await;
    app.creates_of_existing_each_get_their_own("/api/participations", &pairs, key_of, "participations").await;
}

#[tokio::test]
async fn thirty_two_clients_times_five_hundred_mixed_clicks_count_exactly() {
    let app = TestApp::spawn().await;
    let id = app.participation("summer", "streamer_1").await["id"].as_str().unwrap().to_owned();
    let types = ["direct", "chat", "qr", "link"];
    let path = format!("/api/participations/{id}/clicks");
    let results = app.concurrently(32 * 500, 32, |i| app.post_json(&path, json!({"type": types[i % 4]}))).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "every click answered 200");
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(stored["clicks"], 16_000);
    assert_eq!(
        (stored["chat_clicks"].as_i64(), stored["qr_scans"].as_i64(), stored["link_clicks"].as_i64()),
        (Some(4000), Some(4000), Some(4000))
    );
    assert_ledger_matches(&app).await;
    // Clicks that arrived while a write was in flight went out together: one transaction (one
    // ledger timestamp) holds several of them.
    let transactions = app.count("SELECT count(DISTINCT created_at) FROM participation_events").await;
    assert!(transactions < 16_000, "concurrent clicks were coalesced ({transactions} transactions)");
}

#[tokio::test]
async fn three_hundred_impressions_of_one_cent_earn_exactly_three() {
    let app = TestApp::spawn().await;
    let id = app.participation("summer", "streamer_1").await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/participations/{id}/impressions");
    let results = app
        .concurrently(300, 32, |_| app.post_json(&path, serde_json::from_str::<Value>(r#"{"cost": 0.01}"#).unwrap()))
        .await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(stored["estimated_earnings"], "3.000000");
    assert_eq!(stored["impressions"], 300);
    let more: Value = app.post_json(&path, json!({"count": 5, "cost": "1.5"})).await.json().await.unwrap();
    assert_eq!((more["impressions"].as_i64(), more["estimated_earnings"].as_str()), (Some(305), Some("4.500000")));
    let earned: Value = app
        .post_json(&format!("/api/participations/{id}/earnings"), json!({"amount": "0.000001"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(earned["estimated_earnings"], "4.500001");
    assert_ledger_matches(&app).await;
}

#[tokio::test]
async fn concurrent_viewer_samples_give_the_exact_mean_and_peak() {
    let app = TestApp::spawn().await;
    let id = app.participation("summer", "streamer_1").await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/participations/{id}/viewer-samples");
    let samples: Vec<i64> = (0..200).map(|i| (i * 37) % 1000).collect();
    let results =
        app.concurrently(samples.len(), 32, |i| app.post_json(&path, json!({"viewer_count": samples[i]}))).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    let total: i64 = samples.iter().sum();
    assert_eq!(stored["viewer_samples"], 200);
    assert_eq!(stored["avg_viewer_count"].as_f64().unwrap(), total as f64 / 200.0, "mean = total / samples exactly");
    assert_eq!(stored["peak_viewer_count"], *samples.iter().max().unwrap());
    assert_eq!(stored["impressions"], total, "each sample adds its viewers to impressions");
    assert_ledger_matches(&app).await;
}

/// What JSON Schema calls valid is valid here (the OpenAPI document is what clients generate
/// from): `12.0` is the integer 12, and a `null` body is no body, which counts as `{}`.
#[tokio::test]
async fn an_integer_with_a_zero_fraction_counts_and_a_null_body_is_an_empty_one() {
    let app = TestApp::spawn().await;
    let created = app.participation("integers", "streamer_1").await;
    let id = created["id"].as_str().unwrap();
    let sample =
        app.post_json(&format!("/api/participations/{id}/viewer-samples"), json!({"viewer_count": 12.0})).await;
    assert_eq!(sample.status(), 200);
    let impressions = app.post_json(&format!("/api/participations/{id}/impressions"), json!({"count": 2e0})).await;
    assert_eq!(impressions.status(), 200);
    let click = app.post_json(&format!("/api/participations/{id}/clicks"), Value::Null).await;
    assert_eq!(click.status(), 200, "null counts as {{}}: a direct click");
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!((stored["peak_viewer_count"].as_i64(), stored["impressions"].as_i64()), (Some(12), Some(14)));
    assert_eq!(stored["clicks"], 1);
    let half = app.post_json(&format!("/api/participations/{id}/viewer-samples"), json!({"viewer_count": 12.5})).await;
    assert_eq!(half.status(), 422, "a fraction is still no whole number");
    assert_ledger_matches(&app).await;
}

#[tokio::test]
async fn the_token_never_changes_and_the_overlay_finds_it() {
    let app = TestApp::spawn_with(&["--public-base-url", "https://ads.example.com/"]).await;
    let created = app.participation("summer", "streamer_1").await;
    let (id, token) = (created["id"].as_str().unwrap(), created["browser_source_token"].as_str().unwrap());
    let writes = [
        ("impressions", json!({"count": 2, "cost": 0.5})),
        ("clicks", json!({"type": "qr"})),
        ("viewer-samples", json!({"viewer_count": 10})),
        ("earnings", json!({"amount": 1})),
        ("chat-command", json!({})),
        ("qr-code", json!({})),
    ];
    for (route, body) in writes {
        let after: Value =
            app.post_json(&format!("/api/participations/{id}/{route}"), body).await.json().await.unwrap();
        assert_eq!(after["browser_source_token"], token, "{route} must not touch the token");
    }
    let again = app.participation("summer", "streamer_1").await;
    assert_eq!(again["browser_source_token"], token, "create-or-get returns the same token");
    assert_eq!(again["chat_command"], "!summer", "the default chat command");
    assert_eq!(again["tracking_url"], format!("https://ads.example.com/api/overlay/{token}"));
    let qr = app.get(&format!("/api/participations/{id}/qr-code.png")).await;
    assert_eq!(qr.headers()["content-type"], "image/png");
    assert_eq!(&qr.bytes().await.unwrap()[..4], b"\x89PNG");
    let custom: Value = app
        .post_json(&format!("/api/participations/{id}/chat-command"), json!({"command": "!play"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(custom["chat_command"], "!play");

    let overlay: Value = app.get(&format!("/api/overlay/{token}")).await.json().await.unwrap();
    assert_eq!((overlay["campaign_id"].as_str(), overlay["chat_command"].as_str()), (Some("summer"), Some("!play")));
    assert_problem(app.get(&format!("/api/overlay/{}", "0".repeat(64))).await, 404, "not_found").await;
    assert_problem(app.get("/api/overlay/not-even-hex").await, 404, "not_found").await;
    assert_eq!(app.count("SELECT count(DISTINCT browser_source_token) FROM participations").await, 1);
}

#[tokio::test]
async fn bad_participation_requests_are_rejected_and_change_nothing() {
    let app = TestApp::spawn().await;
    let id = app.participation("summer", "streamer_1").await["id"].as_str().unwrap().to_owned();
    let unknown = uuid::Uuid::now_v7();
    let p = |route: &str| format!("/api/participations/{id}/{route}");
    let cases: Vec<(String, Value, u16, &str, Option<&str>)> = vec![
        ("/api/participations".into(), json!({"streamer_id": "s"}), 422, "validation_failed", Some("campaign_id")),
        (
            "/api/participations".into(),
            json!({"campaign_id": "c,d", "streamer_id": "s"}),
            422,
            "validation_failed",
            Some("campaign_id"),
        ),
        (
            "/api/participations".into(),
            json!({"campaign_id": 7, "streamer_id": "s"}),
            400,
            "malformed_request",
            Some("campaign_id"),
        ),
        (p("impressions"), json!({"count": 0}), 422, "validation_failed", Some("count")),
        (p("impressions"), json!({"count": 1.5}), 422, "validation_failed", Some("count")),
        (p("impressions"), json!({"cost": -0.01}), 422, "validation_failed", Some("cost")),
        (p("impressions"), json!({"cost": "0.0000001"}), 422, "validation_failed", Some("cost")),
        (p("impressions"), json!({"cost": "lots"}), 422, "validation_failed", Some("cost")),
        (p("clicks"), json!({"type": "telepathy"}), 422, "validation_failed", Some("type")),
        (p("viewer-samples"), json!({"viewer_count": 3.5}), 422, "validation_failed", Some("viewer_count")),
        (p("viewer-samples"), json!({"viewer_count": -1}), 422, "validation_failed", Some("viewer_count")),
        (p("viewer-samples"), json!({}), 422, "validation_failed", Some("viewer_count")),
        (p("viewer-samples"), json!({"viewer_count": "many"}), 400, "malformed_request", Some("viewer_count")),
        (p("earnings"), json!({"amount": 0}), 422, "validation_failed", Some("amount")),
        (p("earnings"), json!({"amount": -5}), 422, "validation_failed", Some("amount")),
        (p("chat-command"), json!({"command": ""}), 422, "validation_failed", Some("command")),
        (format!("/api/participations/{unknown}/clicks"), json!({}), 404, "not_found", None),
        (format!("/api/participations/{unknown}/qr-code"), json!({}), 404, "not_found", None),
        ("/api/participations/nope/earnings".into(), json!({"amount": 1}), 404, "not_found", None),
    ];
    for (path, body, status, code, field) in cases {
        let problem = assert_problem(app.post_json(&path, body.clone()).await, status, code).await;
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{path} {body}");
        }
    }
    assert_problem(app.get(&format!("/api/participations/{unknown}")).await, 404, "not_found").await;
    assert_problem(app.get(&format!("/api/participations/{id}/qr-code.png")).await, 404, "not_found").await;
    assert_eq!(app.count("SELECT count(*) FROM participation_events").await, 0, "no bad request moved a counter");
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!((stored["impressions"].as_i64(), stored["clicks"].as_i64()), (Some(0), Some(0)));
}
