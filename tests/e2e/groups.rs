//! Consumer groups: competing workers, leases that expire, retry → park → replay, stream
//! ordering, and progress that survives a SIGKILL of the server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, error_code, event};

async fn create(server: &Server, group: &str, settings: Value) -> Value {
    let response = server
        .client
        .put(server.path(&format!("/subscriptions/{group}")))
        .json(&settings)
        .send()
        .await
        .expect("PUT is answered");
    let (status, body) = crate::support::decode(response).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Polls; `None` when the server did not answer (it is down).
async fn poll(
    server: &Server,
    group: &str,
    max: usize,
    wait_ms: u64,
    worker: &str,
) -> Option<Vec<Value>> {
    let response = server
        .client
        .post(server.path(&format!(
            "/subscriptions/{group}/poll?max={max}&wait_ms={wait_ms}&worker={worker}"
        )))
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .ok()?;
    let (status, body) = crate::support::decode(response).await;
    if status != StatusCode::OK {
        return None;
    }
    Some(body["messages"].as_array().cloned().unwrap_or_default())
}

fn leases_of(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["lease"].as_str().unwrap().to_owned())
        .collect()
}

/// Acks; the leases the server took (`None` when it did not answer).
async fn ack(server: &Server, group: &str, leases: &[String]) -> Option<HashSet<String>> {
    let response = server
        .client
        .post(server.path(&format!("/subscriptions/{group}/ack")))
        .json(&json!({ "leases": leases }))
        .send()
        .await
        .ok()?;
    let (status, body) = crate::support::decode(response).await;
    if status != StatusCode::OK {
        return None;
    }
    let expired: HashSet<String> = body["expired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        body["acked"].as_u64().unwrap() as usize + expired.len(),
        leases.len(),
        "{body}"
    );
    Some(
        leases
            .iter()
            .filter(|l| !expired.contains(*l))
            .cloned()
            .collect(),
    )
}

/// Appends `count` events over `streams` streams, in batches.
async fn fill(server: &Server, count: usize, streams: usize) {
    let mut i = 0;
    while i < count {
        let stream = format!("order-{}", (i / 50) % streams);
        let batch: Vec<Value> = (i..(i + 50).min(count))
            .map(|n| event("OrderPlaced", json!({ "n": n })))
            .collect();
        i += batch.len();
        server.append_ok(&stream, &Value::Array(batch)).await;
    }
}

#[derive(Default)]
struct Tally {
    /// Per position: how many times the group took an ack for it.
    acked: HashMap<u64, u32>,
    /// Per position: deliveries seen.
    delivered: HashMap<u64, u32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_a_group_and_a_dead_workers_leases_go_to_the_others() {
    const EVENTS: usize = 20_000;
    let server = Server::start().await;
    fill(&server, EVENTS, 200).await;
    create(&server, "inventory", json!({"ack_timeout_ms": 1500})).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let abandoned = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let mut workers = Vec::new();
    for w in 0..3 {
        let server = Server::attach(&server);
        let tally = tally.clone();
        let abandoned = abandoned.clone();
        workers.push(tokio::spawn(async move {
            let name = format!("worker-{w}");
            let mut batches = 0;
            loop {
                let messages = poll(&server, "inventory", 100, 2000, &name)
                    .await
                    .expect("a poll");
                if messages.is_empty() {
                    return;
                }
                {
                    let mut t = tally.lock();
                    for m in &messages {
                        *t.delivered
                            .entry(m["event"]["position"].as_u64().unwrap())
                            .or_default() += 1;
                    }
                }
                batches += 1;
                if w == 2 && batches == 20 {
                    // This worker dies holding a batch: nothing of it is acked.
                    abandoned.lock().extend(
                        messages
                            .iter()
                            .map(|m| m["event"]["position"].as_u64().unwrap()),
                    );
                    return;
                }
                let leases = leases_of(&messages);
                let taken = ack(&server, "inventory", &leases).await.expect("an ack");
                let mut t = tally.lock();
                for m in &messages {
                    if taken.contains(m["lease"].as_str().unwrap()) {
                        *t.acked
                            .entry(m["event"]["position"].as_u64().unwrap())
                            .or_default() += 1;
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let t = tally.lock();
    let abandoned = abandoned.lock();
    assert_eq!(abandoned.len(), 100);
    assert_eq!(t.acked.len(), EVENTS, "every event acked");
    assert!(t.acked.values().all(|n| *n == 1), "no event acked twice");
    for (position, deliveries) in &t.delivered {
        if *deliveries > 1 {
            assert!(
                abandoned.contains(position),
                "event {position} delivered {deliveries} times, but its worker did not die"
            );
        }
    }
    for position in abandoned.iter() {
        assert_eq!(
            t.delivered[position], 2,
            "the dead worker's event {position} went to another worker"
        );
    }
    let (_, status) = server.get("/subscriptions/inventory").await;
    assert_eq!(status["position"], EVENTS as u64);
    assert_eq!(status["lag"], 0);
    assert_eq!(status["in_flight"], 0);
    assert_eq!(status["acked"], EVENTS as u64);
    assert_eq!(status["delivered"], EVENTS as u64 + 100);
    assert_eq!(status["workers"].as_array().unwrap().len(), 3, "{status}");
    let metrics = server.metrics_text().await;
    for line in [
        format!("refold_group_acked_total{{group=\"inventory\"}} {EVENTS}"),
        "refold_group_lag{group=\"inventory\"} 0".to_owned(),
        "refold_group_worker_acked_total{group=\"inventory\",worker=\"worker-2\"} 1900".to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_stream_ordering_one_event_of_a_stream_is_in_flight_and_acks_follow_revisions() {
    let server = Server::start().await;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..20 {
        for s in 0..30 {
            let stream = format!("cart-{s}");
            server
                .append_ok(
                    &stream,
                    &json!([
                        event("ItemAdded", json!({"round": round})),
                        event("ItemAdded", json!({"round": round}))
                    ]),
                )
                .await;
            *expected.entry(stream).or_default() += 2;
        }
    }
    create(
        &server,
        "pricing",
        json!({"ordering": "stream", "source": {"category": "cart"}}),
    )
    .await;
    let in_flight = Arc::new(Mutex::new(HashSet::<String>::new()));
    let acked: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let server = Server::attach(&server);
        let (in_flight, acked, violations) = (in_flight.clone(), acked.clone(), violations.clone());
        workers.push(tokio::spawn(async move {
            let name = format!("w{w}");
            let mut round = 0u64;
            loop {
                let messages = poll(&server, "pricing", 7, 1000, &name).await.expect("a poll");
                if messages.is_empty() {
                    return;
                }
                let mut streams = HashSet::new();
                for m in &messages {
                    let stream = m["event"]["stream"].as_str().unwrap().to_owned();
                    if !in_flight.lock().insert(stream.clone()) || !streams.insert(stream.clone()) {
                        violations.lock().push(format!("{stream} had two events in flight"));
                    }
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(round % 3)).await;
                for m in &messages {
                    in_flight.lock().remove(m["event"]["stream"].as_str().unwrap());
                }
                // Every fifth batch asks for a retry of its first event.
                let (retry, rest) = if round % 5 == 0 {
                    messages.split_at(1)
                } else {
                    messages.split_at(0)
                };
                if !retry.is_empty() {
                    let (status, body) = server
                        .post("/subscriptions/pricing/nack", &json!({"leases": leases_of(retry), "action": "retry", "reason": "not yet"}))
                        .await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    assert_eq!(body["nacked"], 1);
                }
                // Recorded before the ack is sent: the next event of a stream cannot be
                // handed out before the server has taken this ack, so this is the order
                // the server settles them in (recording after the answer would race with
                // the worker that gets the next one).
                {
                    let mut acked = acked.lock();
                    for m in rest {
                        acked
                            .entry(m["event"]["stream"].as_str().unwrap().to_owned())
                            .or_default()
                            .push(m["event"]["revision"].as_u64().unwrap());
                    }
                }
                let taken = ack(&server, "pricing", &leases_of(rest)).await.expect("an ack");
                assert_eq!(taken.len(), rest.len(), "no lease expired (the timeout is 30 s)");
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(violations.lock().is_empty(), "{:?}", violations.lock());
    let acked = acked.lock();
    assert_eq!(acked.len(), expected.len());
    for (stream, revisions) in acked.iter() {
        let want: Vec<u64> = (0..expected[stream]).collect();
        assert_eq!(
            revisions, &want,
            "{stream}'s acks in revision order, each once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_sigkill_mid_run_loses_no_unacked_event_and_redelivers_only_what_was_in_flight() {
    const EVENTS: usize = 6_000;
    let mut server = Server::start().await;
    fill(&server, EVENTS, 60).await;
    create(&server, "payment", json!({"ack_timeout_ms": 60000})).await;
    // Acks answered before the kill: these must never come back.
    let settled_before = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let acked_after: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let delivered_after = Arc::new(Mutex::new(Vec::<u64>::new()));
    // Acks sent when the server died: taken or not, nobody heard.
    let unanswered = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..2 {
        let client = Server::attach(&server);
        let (settled_before, acked_after, delivered_after, unanswered, killed) = (
            settled_before.clone(),
            acked_after.clone(),
            delivered_after.clone(),
            unanswered.clone(),
            killed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let name = format!("w{w}");
            let started = Instant::now();
            loop {
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "the run took too long"
                );
                let was_killed = killed.load(Ordering::SeqCst);
                let Some(messages) = poll(&client, "payment", 100, 1000, &name).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if messages.is_empty() {
                    if killed.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                let positions: Vec<u64> = messages
                    .iter()
                    .map(|m| m["event"]["position"].as_u64().unwrap())
                    .collect();
                if was_killed {
                    delivered_after.lock().extend(&positions);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                let Some(taken) = ack(&client, "payment", &leases_of(&messages)).await else {
                    unanswered.lock().extend(&positions);
                    continue;
                };
                for (m, position) in messages.iter().zip(&positions) {
                    if taken.contains(m["lease"].as_str().unwrap()) {
                        if was_killed {
                            *acked_after.lock().entry(*position).or_default() += 1;
                        } else {
                            settled_before.lock().insert(*position);
                        }
                    }
                }
            }
        }));
    }
    while settled_before.lock().len() < EVENTS / 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    killed.store(true, Ordering::SeqCst);
    let at_kill = settled_before.lock().len();
    server.restart().await;
    for worker in workers {
        worker.await.unwrap();
    }
    let settled_before = settled_before.lock();
    let acked_after = acked_after.lock();
    let delivered_after = delivered_after.lock();
    let unanswered = unanswered.lock();
    assert!(
        unanswered.len() <= 200,
        "only the acks in flight at the kill went unanswered"
    );
    let again: Vec<&u64> = delivered_after
        .iter()
        .filter(|p| settled_before.contains(p))
        .collect();
    assert!(
        again.is_empty(),
        "acked before the kill, delivered again: {again:?}"
    );
    for position in 0..EVENTS as u64 {
        assert!(
            settled_before.contains(&position)
                || acked_after.contains_key(&position)
                || unanswered.contains(&position),
            "event {position} was never acked: lost"
        );
    }
    let (_, status) = server.get("/subscriptions/payment").await;
    assert_eq!(status["position"], EVENTS as u64, "{status}");
    println!(
        "server SIGKILLed after {at_kill} acks; afterwards {} events delivered, none acked before",
        delivered_after.len()
    );
}

#[tokio::test]
async fn a_failing_event_is_retried_then_parked_then_replayed() {
    let server = Server::start().await;
    server
        .append_ok(
            "invoice-1",
            &json!([
                event("InvoiceIssued", json!({})),
                event("InvoiceIssued", json!({})),
                event("InvoiceIssued", json!({}))
            ]),
        )
        .await;
    create(
        &server,
        "billing",
        json!({"max_deliveries": 3, "types": ["InvoiceIssued"]}),
    )
    .await;
    // Event 0 fails three times and is parked; event 1 is parked on request; 2 is skipped.
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let messages = poll(&server, "billing", 1, 0, "w").await.unwrap();
        assert_eq!(messages[0]["event"]["position"], 0);
        deliveries.push(messages[0]["delivery"].as_u64().unwrap());
        let (status, body) = server
            .post("/subscriptions/billing/nack", &json!({"leases": leases_of(&messages), "action": "retry", "reason": "tax service down"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(deliveries, vec![1, 2, 3]);
    let messages = poll(&server, "billing", 10, 0, "w").await.unwrap();
    let positions: Vec<u64> = messages
        .iter()
        .map(|m| m["event"]["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![1, 2], "event 0 is parked, not delivered");
    let (_, body) = server
        .post("/subscriptions/billing/nack", &json!({"leases": leases_of(&messages[..1]), "action": "park", "reason": "bad address"}))
        .await;
    assert_eq!(body["nacked"], 1);
    let (_, body) = server
        .post(
            "/subscriptions/billing/nack",
            &json!({"leases": leases_of(&messages[1..]), "action": "skip"}),
        )
        .await;
    assert_eq!(body["nacked"], 1);
    let (status, parked) = server.get("/subscriptions/billing/parked").await;
    assert_eq!(status, StatusCode::OK);
    let parked = parked["parked"].as_array().unwrap().clone();
    assert_eq!(parked.len(), 2);
    assert_eq!(parked[0]["event"]["position"], 0);
    assert_eq!(parked[0]["deliveries"], 3);
    assert!(
        parked[0]["reason"]
            .as_str()
            .unwrap()
            .contains("tax service down"),
        "{}",
        parked[0]
    );
    assert_eq!(parked[1]["reason"], "bad address");
    let (_, status) = server.get("/subscriptions/billing").await;
    assert_eq!(
        status["position"], 3,
        "parked and skipped events are settled: {status}"
    );
    assert_eq!(status["parked"], 2);
    // Paging through parked events.
    let (_, page) = server.get("/subscriptions/billing/parked?limit=1").await;
    assert_eq!(page["next"], 1);
    let (_, page) = server
        .get("/subscriptions/billing/parked?limit=1&from=1")
        .await;
    assert_eq!(page["parked"][0]["event"]["position"], 1);
    assert_eq!(page["next"], Value::Null);
    // Replay: back for delivery, counts reset.
    let (status, body) = server
        .post("/subscriptions/billing/parked/replay", &json!(null))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replayed"], 2);
    let messages = poll(&server, "billing", 10, 0, "w").await.unwrap();
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| m["delivery"] == 1));
    let taken = ack(&server, "billing", &leases_of(&messages))
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    let (_, status) = server.get("/subscriptions/billing").await;
    assert_eq!(
        (status["position"].as_u64(), status["parked"].as_u64()),
        (Some(3), Some(0))
    );
}

#[tokio::test]
async fn a_lease_not_acked_in_time_is_delivered_again_and_its_ack_is_refused() {
    let server = Server::start().await;
    server
        .append_ok("job-1", &event("JobQueued", json!({})))
        .await;
    create(&server, "jobs", json!({"ack_timeout_ms": 200})).await;
    let first = poll(&server, "jobs", 1, 0, "slow").await.unwrap();
    assert_eq!(first.len(), 1);
    // Waits for the lease to run out, then gets the event again.
    let started = Instant::now();
    let second = poll(&server, "jobs", 1, 5000, "fast").await.unwrap();
    assert_eq!(second.len(), 1, "delivered again after the lease expired");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(second[0]["delivery"], 2);
    let late = leases_of(&first);
    let (status, body) = server
        .post("/subscriptions/jobs/ack", &json!({"leases": late}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["acked"], 0);
    assert_eq!(body["expired"], json!(late));
    let taken = ack(&server, "jobs", &leases_of(&second)).await.unwrap();
    assert_eq!(taken.len(), 1);
}

#[tokio::test]
async fn groups_start_where_asked_follow_new_events_and_can_be_removed() {
    let server = Server::start().await;
    server
        .append_ok("user-1", &event("Registered", json!({})))
        .await;
    server
        .append_ok("user-2", &event("Registered", json!({})))
        .await;
    let body = create(
        &server,
        "mailer",
        json!({"from": "end", "source": {"stream": "user-3"}}),
    )
    .await;
    assert_eq!(body["position"], 2);
    assert_eq!(body["source"], json!({"stream": "user-3"}));
    let waiting = {
        let server = Server::attach(&server);
        tokio::spawn(async move { poll(&server, "mailer", 10, 10_000, "w").await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server
        .append_ok("user-1", &event("Renamed", json!({})))
        .await;
    server
        .append_ok("user-3", &event("Registered", json!({})))
        .await;
    let messages = waiting.await.unwrap();
    assert_eq!(
        messages.len(),
        1,
        "the long poll woke for user-3's event only"
    );
    assert_eq!(messages[0]["event"]["stream"], "user-3");
    let from_position = create(&server, "audit", json!({"from": 1})).await;
    assert_eq!(from_position["position"], 1);
    let messages = poll(&server, "audit", 10, 0, "w").await.unwrap();
    let positions: Vec<u64> = messages
        .iter()
        .map(|m| m["event"]["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![1, 2, 3]);
    // Updating keeps the position; listing shows both.
    let response = server
        .client
        .put(server.path("/subscriptions/audit"))
        .json(&json!({"from": "start", "ack_timeout_ms": 5000}))
        .send()
        .await
        .unwrap();
    let (status, body) = crate::support::decode(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ack_timeout_ms"], 5000);
    assert_eq!(
        body["from"], 1,
        "where a group starts is fixed when it is created"
    );
    let (_, list) = server.get("/subscriptions").await;
    let names: Vec<&str> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["audit", "mailer"]);
    let response = server
        .client
        .delete(server.path("/subscriptions/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = server.get("/subscriptions/audit").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "group_not_found");
}

#[tokio::test]
async fn bad_group_requests_get_clear_errors() {
    let server = Server::start().await;
    server.append_ok("a-1", &event("A", json!({}))).await;
    for (method, path) in [
        ("GET", "/subscriptions/ghost"),
        ("DELETE", "/subscriptions/ghost"),
        ("POST", "/subscriptions/ghost/poll"),
        ("POST", "/subscriptions/ghost/ack"),
        ("POST", "/subscriptions/ghost/nack"),
        ("GET", "/subscriptions/ghost/parked"),
        ("POST", "/subscriptions/ghost/parked/replay"),
    ] {
        let response = server
            .client
            .request(method.parse().unwrap(), server.path(path))
            .json(&json!({"leases": []}))
            .send()
            .await
            .unwrap();
        let (status, body) = crate::support::decode(response).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(error_code(&body), "group_not_found", "{method} {path}");
    }
    create(&server, "g", json!({})).await;
    for (body, code) in [
        ("{", "invalid_json"),
        ("[]", "invalid_settings"),
        (r#"{"source": {"table": "x"}}"#, "invalid_settings"),
        (r#"{"max_deliveries": 0}"#, "invalid_settings"),
        (r#"{"ordering": "fifo"}"#, "invalid_settings"),
    ] {
        let response = server
            .client
            .put(server.path("/subscriptions/g2"))
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, answer) = crate::support::decode(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(error_code(&answer), code, "{body}: {answer}");
    }
    let response = server
        .client
        .put(server.path("/subscriptions/No%20Spaces"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (status, answer) = crate::support::decode(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer), "invalid_group_name");
    for path in [
        "/subscriptions/g/poll?max=0",
        "/subscriptions/g/poll?max=1001",
        "/subscriptions/g/poll?wait_ms=40000",
        "/subscriptions/g/poll?max=x",
    ] {
        let (status, answer) = server.post(path, &json!(null)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_eq!(error_code(&answer), "invalid_query");
    }
    for body in ["{", r#"{"leases": "x"}"#, r#"{"leases": [1]}"#, r#"{}"#] {
        let (status, answer) = server.post_raw("/subscriptions/g/ack", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    let (status, answer) = server
        .post(
            "/subscriptions/g/nack",
            &json!({"leases": [], "action": "explode"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // Made-up, malformed and foreign leases are listed as expired, never acked.
    let mine = poll(&server, "g", 1, 0, "w").await.unwrap();
    create(&server, "other", json!({})).await;
    let theirs = poll(&server, "other", 1, 0, "w").await.unwrap();
    let bogus = vec![
        "0.0000000000000000".to_owned(),
        "not-a-lease".to_owned(),
        leases_of(&theirs)[0].clone(),
    ];
    let (status, body) = server
        .post("/subscriptions/g/ack", &json!({"leases": bogus}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["acked"], 0);
    assert_eq!(body["expired"].as_array().unwrap().len(), 3);
    assert_eq!(ack(&server, "g", &leases_of(&mine)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_cli_creates_lists_and_consumes_a_group() {
    let server = Server::start().await;
    for n in 0..3 {
        server
            .append_ok(
                &format!("order-{n}"),
                &event("OrderPlaced", json!({"n": n})),
            )
            .await;
    }
    let out = server.cli(&[
        "group",
        "create",
        "shipping",
        "--source",
        "category:order",
        "--ordering",
        "stream",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&[
        "group", "consume", "shipping", "--count", "2", "--worker", "cli-test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.lines().count(), 2, "{printed}");
    assert!(
        printed.contains("order-0") && printed.contains("order-1"),
        "{printed}"
    );
    let out = server.cli(&[
        "group", "consume", "shipping", "--count", "1", "--nack", "park",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["group", "ls", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let group = &listed["subscriptions"][0];
    assert_eq!(group["group"], "shipping");
    assert_eq!(group["acked"], 2);
    assert_eq!(group["parked"], 1);
    assert_eq!(group["position"], 3);
    let out = server.cli(&["group", "show", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("group_not_found"));
}
