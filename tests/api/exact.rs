//! Exact answers (issue 13): every coalesced counter write is answered with the row as its own
//! write left it, and no write fails for another's fault.

use crate::helpers::{assert_problem, TestApp};
use crate::participations::assert_ledger_matches;
use futures_util::{stream, StreamExt};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

/// One answer as the client saw it.
#[derive(Debug, Clone)]
struct Sent {
    status: u16,
    body: Vec<u8>,
    replayed: bool,
}

impl Sent {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON answer")
    }
}

/// One POST, with a key or without; a key still in flight (409) is retried as a client would,
/// for at most 30 s: a key stuck in flight fails the test instead of hanging it.
async fn send(client: &reqwest::Client, url: &str, key: Option<&str>, body: &Value) -> Sent {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut request = client.post(url).json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        if key.is_some() && response.status() == 409 {
            assert!(std::time::Instant::now() < deadline, "{url}: the key stayed in flight for 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
        return Sent { status: response.status().as_u16(), body: response.bytes().await.unwrap().to_vec(), replayed };
    }
}

/// Sends `n` logical writes 64 at a time: the even ones without a key, the odd ones keyed, and
/// a third of the keyed ones twice (at the same moment, or after the first answer). Returns
/// every answer of each logical write, by its index.
async fn fire(app: &TestApp, path: &str, n: usize, body: impl Fn(usize) -> Value) -> Vec<(usize, Vec<Sent>)> {
    let url = app.url(path);
    stream::iter(0..n)
        .map(|i| {
            let (client, url, body) = (app.client.clone(), url.clone(), body(i));
            async move {
                if i % 2 == 0 {
                    return (i, vec![send(&client, &url, None, &body).await]);
                }
                let key = format!("exact-{i}-{}", uuid::Uuid::new_v4());
                let copies = if i % 6 == 3 { 2 } else { 1 };
                let answers = if i % 4 == 1 {
                    futures_util::future::join_all((0..copies).map(|_| send(&client, &url, Some(&key), &body))).await
                } else {
                    let mut answers = Vec::new();
                    for _ in 0..copies {
                        answers.push(send(&client, &url, Some(&key), &body).await);
                    }
                    answers
                };
                (i, answers)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// The answer of each logical write that ran (every copy of it answered 200 with its bytes),
/// with the request's index.
fn originals(sent: &[(usize, Vec<Sent>)]) -> Vec<(usize, Value)> {
    sent.iter()
        .map(|(i, copies)| {
            let ran: Vec<&Sent> = copies.iter().filter(|s| !s.replayed).collect();
            assert_eq!(ran.len(), 1, "write {i} ran exactly once: {copies:?}");
            for copy in copies {
                assert_eq!(copy.status, 200, "write {i}: {}", String::from_utf8_lossy(&copy.body));
                assert_eq!(copy.body, ran[0].body, "a replay of write {i} repeats its original's bytes");
            }
            (*i, ran[0].json())
        })
        .collect()
}

/// The answers' values of `field`, which must be exactly `from..from + n`, each once; returns
/// the request index of each, in counter order.
fn contiguous(answers: &[(usize, Value)], field: &str, from: i64) -> Vec<usize> {
    let mut by_value: Vec<(i64, usize)> = answers.iter().map(|(i, a)| (a[field].as_i64().unwrap(), *i)).collect();
    by_value.sort();
    let values: Vec<i64> = by_value.iter().map(|(v, _)| *v).collect();
    let expected: Vec<i64> = (from..from + answers.len() as i64).collect();
    assert_eq!(values, expected, "{field}: every answer its own count, none twice, none missing");
    by_value.into_iter().map(|(_, i)| i).collect()
}

async fn ledger(app: &TestApp, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(&app.pool).await.unwrap()
}

#[tokio::test]
async fn five_hundred_concurrent_clicks_are_answered_one_to_five_hundred() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let sent = fire(&app, &format!("/api/participations/{id}/clicks"), 500, |_| json!({"type": "chat"})).await;
    assert!(sent.iter().map(|(_, copies)| copies.len()).sum::<usize>() > 530, "retries were sent");
    let answers = originals(&sent);
    contiguous(&answers, "clicks", 1);
    contiguous(&answers, "chat_clicks", 1);
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!((stored["clicks"].as_i64(), stored["chat_clicks"].as_i64()), (Some(500), Some(500)));
    assert_eq!(app.count("SELECT count(*) FROM participation_events").await, 500);
    let batches = app.count("SELECT count(DISTINCT created_at) FROM participation_events").await;
    assert!(batches < 500, "the clicks were coalesced ({batches} statements), and still answered one by one");
    assert_ledger_matches(&app).await;
}

#[tokio::test]
async fn concurrent_impressions_are_answered_with_their_own_prefix_of_the_earnings() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let cost = |i: usize| format!("0.{:06}", 10_000 + i * 7 % 997);
    let sent = fire(&app, &format!("/api/participations/{id}/impressions"), 400, |i| json!({"cost": cost(i)})).await;
    let answers = originals(&sent);
    let order = contiguous(&answers, "impressions", 1);
    let events = ledger(&app, "SELECT earnings::text FROM participation_events ORDER BY id").await;
    let mut earned = Decimal::ZERO;
    for (n, i) in order.iter().enumerate() {
        let event = Decimal::from_str(&events[n]).unwrap();
        assert_eq!(event, Decimal::from_str(&cost(*i)).unwrap(), "ledger row {n} is the write answered {}", n + 1);
        earned += event;
        let answer = &answers.iter().find(|(j, _)| j == i).unwrap().1;
        assert_eq!(
            Decimal::from_str(answer["estimated_earnings"].as_str().unwrap()).unwrap(),
            earned,
            "the answer of impression {} holds the earnings of the ledger up to it, to the micro-unit",
            n + 1
        );
    }
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(Decimal::from_str(stored["estimated_earnings"].as_str().unwrap()).unwrap(), earned);
    assert_ledger_matches(&app).await;
}

#[tokio::test]
async fn concurrent_viewer_samples_are_answered_with_the_mean_and_peak_up_to_them() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let viewers = |i: usize| (i * 37 % 1000) as i64;
    let path = format!("/api/participations/{id}/viewer-samples");
    let sent = fire(&app, &path, 300, |i| json!({"viewer_count": viewers(i)})).await;
    let answers = originals(&sent);
    let order = contiguous(&answers, "viewer_samples", 1);
    let events = ledger(&app, "SELECT viewer_count::text FROM participation_events ORDER BY id").await;
    let (mut total, mut peak) = (0_i64, 0_i64);
    for (n, i) in order.iter().enumerate() {
        let sample: i64 = events[n].parse().unwrap();
        assert_eq!(sample, viewers(*i), "ledger row {n} is the sample answered {}", n + 1);
        (total, peak) = (total + sample, peak.max(sample));
        let answer = &answers.iter().find(|(j, _)| j == i).unwrap().1;
        assert_eq!(answer["avg_viewer_count"].as_f64().unwrap(), total as f64 / (n + 1) as f64, "mean up to it");
        assert_eq!(answer["peak_viewer_count"].as_i64().unwrap(), peak, "peak up to it");
        assert_eq!(answer["impressions"].as_i64().unwrap(), total, "each sample adds its viewers to impressions");
    }
    assert_ledger_matches(&app).await;
}

/// Moves a participation's counters by an `import` ledger row, so the ledger stays in step.
async fn import_counts(app: &TestApp, id: &str, impressions: i64, clicks: i64, earnings: &str) {
    let id = uuid::Uuid::parse_str(id).unwrap();
    let earnings = Decimal::from_str(earnings).unwrap();
    sqlx::query(
        "WITH moved AS (
             UPDATE participations SET impressions = impressions + $2, clicks = clicks + $3,
                 estimated_earnings = estimated_earnings + $4
             WHERE id = $1 RETURNING id)
         INSERT INTO participation_events (participation_id, kind, impressions, clicks, earnings)
         SELECT id, 'import', $2, $3, $4 FROM moved",
    )
    .bind(id)
    .bind(impressions)
    .bind(clicks)
    .bind(earnings)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_write_that_would_overflow_is_refused_alone_and_the_writes_beside_it_count() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let start = i64::MAX - 1_000_000;
    import_counts(&app, &id, start, 0, "99999999990000").await;
    let url = app.url(&format!("/api/participations/{id}/impressions"));
    let valid = json!({"count": 1, "cost": "0.01"});
    // Each would fit an empty participation; here each takes its column past the limit.
    let refused = [
        (json!({"count": 2_000_000}), "count"),
        (json!({"cost": "10000"}), "cost"),
        (json!({"count": i64::MAX, "cost": "1"}), "count"),
    ];
    let (rounds, per_round) = (8, 120);
    let mut answered = Vec::new();
    for round in 0..rounds {
        // The bad writes go out among the good ones, so they land in batches at any position.
        let sent: Vec<(Option<&str>, Sent)> = stream::iter(0..per_round + refused.len())
            .map(|n| {
                let (client, url) = (app.client.clone(), url.clone());
                let (body, field) = match n.checked_sub(per_round / 2).filter(|k| *k < refused.len()) {
                    Some(k) => (refused[k].0.clone(), Some(refused[k].1)),
                    None => (valid.clone(), None),
                };
                let key = (n % 3 == 0).then(|| format!("overflow-{round}-{n}"));
                async move { (field, send(&client, &url, key.as_deref(), &body).await) }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for (field, answer) in sent {
            match field {
                None => {
                    assert_eq!(answer.status, 200, "round {round}: {}", String::from_utf8_lossy(&answer.body));
                    answered.push(answer.json());
                }
                Some(field) => {
                    let problem = answer.json();
                    assert_eq!((answer.status, problem["code"].as_str()), (422, Some("validation_failed")));
                    assert_eq!(problem["errors"][0]["field"], field, "round {round}: {problem}");
                }
            }
        }
    }
    let valid_writes = (rounds * per_round) as i64;
    let answers: Vec<(usize, Value)> = answered.into_iter().enumerate().collect();
    contiguous(&answers, "impressions", start + 1);
    let stored: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(stored["impressions"].as_i64(), Some(start + valid_writes), "every valid write counted, no other");
    assert_eq!(stored["estimated_earnings"], "99999999990009.600000");
    assert_eq!(app.count("SELECT count(*) FROM participation_events").await, 1 + valid_writes);
    assert_ledger_matches(&app).await;
    let recorded = app.count("SELECT count(*) FROM idempotency_keys WHERE response_status = 200").await;
    let keyed_valid = (0..per_round + refused.len()).filter(|n| n % 3 == 0 && !(60..63).contains(n)).count();
    assert_eq!(recorded, (rounds * keyed_valid) as i64, "a refused write has no success record");

    // The refusal is an answer like any 4xx: a retry of a refused keyed write replays it.
    let retried = send(&app.client, &url, Some("overflow-0-60"), &refused[0].0).await;
    assert_eq!((retried.status, retried.replayed), (422, true));

    // A click on a full counter: the counter itself is named, since a click carries no amount.
    import_counts(&app, &id, 0, i64::MAX, "0").await;
    let clicked = app.post_json(&format!("/api/participations/{id}/clicks"), json!({})).await;
    let problem = assert_problem(clicked, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "clicks");
    let unchanged: Value = app.get(&format!("/api/participations/{id}")).await.json().await.unwrap();
    assert_eq!(unchanged["clicks"].as_i64(), Some(i64::MAX));
}

#[tokio::test]
async fn amounts_too_large_for_their_column_are_refused_at_the_edge() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    let p = |route: &str| format!("/api/participations/{id}/{route}");
    let cases = [
        (p("impressions"), r#"{"count": 9223372036854775808}"#, "count"),
        (p("impressions"), r#"{"cost": 100000000000000}"#, "cost"),
        (p("earnings"), r#"{"amount": "100000000000000"}"#, "amount"),
        (p("viewer-samples"), r#"{"viewer_count": 99999999999999999999}"#, "viewer_count"),
    ];
    for (path, body, field) in cases {
        let body: Value = serde_json::from_str(body).unwrap();
        let problem = assert_problem(app.post_json(&path, &body).await, 422, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{path} {body}");
    }
    // The largest count that fits an empty counter is counted.
    let full: Value = app.post_json(&p("impressions"), json!({"count": i64::MAX})).await.json().await.unwrap();
    assert_eq!(full["impressions"].as_i64(), Some(i64::MAX));
    let next = app.post_json(&p("impressions"), json!({})).await;
    assert_eq!(assert_problem(next, 422, "validation_failed").await["errors"][0]["field"], "count");
    assert_eq!(app.count("SELECT count(*) FROM participation_events").await, 1);
    let kinds: BTreeSet<String> = ledger(&app, "SELECT kind FROM participation_events").await.into_iter().collect();
    assert_eq!(kinds, BTreeSet::from(["impressions".to_owned()]));
}

/// The database refuses one write of a coalesced statement for a reason nothing checks before
/// (here a CHECK added for the test, standing in for any such reason): that write alone gets
/// the error; the writes that shared its statement are applied and answered as if alone.
#[tokio::test]
async fn a_write_the_database_refuses_fails_alone_not_the_writes_coalesced_with_it() {
    let app = TestApp::spawn().await;
    let id = app.participation("c", "s").await["id"].as_str().unwrap().to_owned();
    for refusal in [
        "ALTER TABLE conversations ADD CONSTRAINT test_refuses CHECK (transcript IS DISTINCT FROM 'refused')",
        "ALTER TABLE idempotency_keys ADD CONSTRAINT test_refuses CHECK (key <> 'refused')",
        "ALTER TABLE participation_events ADD CONSTRAINT test_refuses CHECK (earnings <> 0.424242)",
    ] {
        sqlx::query(refusal).execute(&app.pool).await.unwrap();
    }
    let (n, refused_at) = (150, 75);
    let answers: Vec<(usize, [u16; 4])> = stream::iter(0..n)
        .map(|i| {
            let (client, app) = (app.client.clone(), &app);
            let refused = i == refused_at;
            let transcript = if refused { "refused".to_owned() } else { format!("t{i}") };
            let key = if refused { "refused".to_owned() } else { format!("key-{i}") };
            let cost = if refused { "0.424242" } else { "0.01" };
            let id = id.clone();
            async move {
                let saved = app.save_analysis(json!({"session_id": format!("s-{i}"), "transcript": &transcript}));
                let saved_keyed = client
                    .post(app.url("/api/save-analysis"))
                    .header("idempotency-key", format!("key-{i}"))
                    .json(&json!({"session_id": format!("ks-{i}"), "transcript": &transcript}))
                    .send();
                let keyed = client
                    .post(app.url("/api/conversations"))
                    .header("idempotency-key", key)
                    .json(&json!({"session_id": format!("k-{i}")}))
                    .send();
                let impressions = format!("/api/participations/{id}/impressions");
                let counted = app.post_json(&impressions, json!({"cost": cost}));
                let (saved, saved_keyed, keyed, counted) = tokio::join!(saved, saved_keyed, keyed, counted);
                let status = |r: &reqwest::Response| r.status().as_u16();
                (i, [status(&saved), status(&saved_keyed.unwrap()), status(&keyed.unwrap()), status(&counted)])
            }
        })
        .buffer_unordered(48)
        .collect()
        .await;
    for (i, statuses) in answers {
        if i == refused_at {
            assert!(statuses.iter().all(|&status| status >= 500), "the refused writes get their error: {statuses:?}");
        } else {
            assert_eq!(statuses, [201, 201, 201, 200], "write {i} is answered as if it came alone");
        }
    }
    let others = (n - 1) as i64;
    assert_eq!(app.count("SELECT count(*) FROM conversations WHERE session_id LIKE 's-%'").await, others);
    assert_eq!(app.count("SELECT count(*) FROM conversations WHERE session_id LIKE 'k-%'").await, others);
    assert_eq!(app.count("SELECT count(*) FROM conversations WHERE session_id LIKE 'ks-%'").await, others);
    let stored = "SELECT count(*) FROM idempotency_keys WHERE path = '/api/save-analysis' AND response_status = 201";
    assert_eq!(app.count(stored).await, others, "each keyed upsert that counted has its answer stored");
    assert_eq!(app.count("SELECT impressions FROM participations").await, others);
    assert_ledger_matches(&app).await;
}
