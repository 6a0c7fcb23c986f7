//! Redeploying without downtime, version history, rollback, diffs, and asking what the
//! state was at any point in time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::model::{Banks, Orders};
use crate::support::{Server, error_code, event, example, test_guest};

const ACCOUNTS: usize = 12;

/// Appends a deposit or withdrawal to a random account; every third account never
/// withdraws, so that a rule about withdrawals leaves it alone.
async fn random_movement(server: &Server) {
    let (account, withdraw, amount) = {
        let mut rng = rand::rng();
        let account = rng.random_range(0..ACCOUNTS);
        (
            account,
            account % 3 != 0 && rng.random_bool(0.4),
            rng.random_range(1..100),
        )
    };
    let event_type = if withdraw { "Withdrawn" } else { "Deposited" };
    let (status, body) = server
        .post(
            &format!("/streams/account-{account}"),
            &event(event_type, json!({"amount": amount})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn version_of(server: &Server, name: &str, role: &str) -> Option<String> {
    let (_, body) = server.get(&format!("/projections/{name}/versions")).await;
    body["versions"]
        .as_array()?
        .iter()
        .find(|v| v["role"] == role)
        .and_then(|v| v["version"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redeploy_under_load_never_fails_a_query_nor_goes_back_in_time() {
    let server = Arc::new(Server::start().await);
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    for _ in 0..3_000 {
        random_movement(&server).await;
    }
    server.wait_caught_up("bank-account").await;
    let v1 = version_of(&server, "bank-account", "current")
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                random_movement(&server).await;
            }
        })
    };
    // Readers: every query answers, and no account's transaction count ever goes down.
    let reader = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<usize, u64> = HashMap::new();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for account in 0..ACCOUNTS {
                    let (status, body) = server
                        .get(&format!(
                            "/projections/bank-account/streams/account-{account}"
                        ))
                        .await;
                    assert_eq!(
                        status,
                        StatusCode::OK,
                        "a query failed during the redeploy: {body}"
                    );
                    let transactions = body["state"]["transactions"].as_u64().unwrap();
                    let before = seen.insert(account, transactions).unwrap_or(0);
                    assert!(
                        transactions >= before,
                        "account-{account} went back from {before} to {transactions}"
                    );
                    reads += 1;
                }
            }
            reads
        })
    };
    let (status, body) = server
        .deploy("bank-account", test_guest("bank-account-fee"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["current"], false,
        "the new version rebuilds beside the current one"
    );
    let v2 = body["version"].as_str().unwrap().to_owned();
    // The old version serves while the new one rebuilds (unless the rebuild was quicker
    // than this request), and the rebuild shows its progress.
    let (_, details) = server.get("/projections/bank-account").await;
    if details["version"] == v1.as_str() && !details["rebuild"].is_null() {
        let rebuild = &details["rebuild"];
        assert_eq!(rebuild["version"], v2.as_str());
        assert!(rebuild["progress"]["percent"].is_number(), "{rebuild}");
        assert!(rebuild["progress"]["events_per_second"].is_number());
    } else {
        assert_eq!(details["version"], v2.as_str(), "{details}");
    }
    server
        .wait_module("bank-account", "switched to the new version", |b| {
            b["version"] == v2.as_str()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    appender.await.unwrap();
    let reads = reader.await.unwrap();
    assert!(reads > 100, "the readers really read: {reads}");

    // The new logic is served: balances include the fee of every withdrawal.
    server.wait_caught_up("bank-account").await;
    let log = server.read_all_fully().await;
    for account in 0..ACCOUNTS {
        let stream = format!("account-{account}");
        let (mut balance, mut count) = (0i64, 0u64);
        for e in log.iter().filter(|e| e["stream"] == stream.as_str()) {
            let amount = e["data"]["amount"].as_i64().unwrap();
            balance += if e["type"] == "Withdrawn" {
                -(amount + 1)
            } else {
                amount
            };
            count += 1;
        }
        let (_, body) = server
            .get(&format!("/projections/bank-account/streams/{stream}"))
            .await;
        assert_eq!(body["state"]["balance"], balance, "{stream}");
        assert_eq!(body["state"]["transactions"], count, "{stream}");
    }
    assert_eq!(
        version_of(&server, "bank-account", "kept").await.as_deref(),
        Some(v1.as_str())
    );
}

#[tokio::test]
async fn a_diff_names_exactly_the_affected_keys_and_rollback_needs_no_rebuild() {
    let server = Server::start().await;
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    for _ in 0..500 {
        random_movement(&server).await;
    }
    server.wait_caught_up("bank-account").await;
    let v1 = version_of(&server, "bank-account", "current")
        .await
        .unwrap();
    let (status, body) = server
        .deploy(
            "bank-account?activate=manual",
            test_guest("bank-account-fee"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let v2 = body["version"].as_str().unwrap().to_owned();
    server
        .wait_module("bank-account", "caught up on the candidate", |b| {
            b["rebuild"]["lag"] == 0 && b["rebuild"]["status"] == "running"
        })
        .await;
    // Manual activation: the caught-up candidate waits for an operator.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        version_of(&server, "bank-account", "current")
            .await
            .as_deref(),
        Some(v1.as_str())
    );
    // A query can address the candidate explicitly.
    let (status, body) = server
        .get(&format!(
            "/projections/bank-account/streams/account-1?version={v2}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, diff) = server
        .get(&format!(
            "/projections/bank-account/versions/{}/diff",
            &v2[..12]
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    let log = server.read_all_fully().await;
    let mut with_withdrawals: Vec<String> = log
        .iter()
        .filter(|e| e["type"] == "Withdrawn")
        .map(|e| format!("stream {}", e["stream"].as_str().unwrap()))
        .collect();
    with_withdrawals.sort();
    with_withdrawals.dedup();
    let mut changed: Vec<String> = diff["samples"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_owned())
        .collect();
    changed.sort();
    assert_eq!(changed, with_withdrawals, "{diff}");
    assert_eq!(diff["changed"], with_withdrawals.len());
    assert_eq!(
        (diff["added"].as_u64(), diff["removed"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(diff["compared"], ACCOUNTS);

    let (status, _) = server
        .client
        .post(server.path(&format!("/projections/bank-account/versions/{v2}/activate")))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        version_of(&server, "bank-account", "current")
            .await
            .as_deref(),
        Some(v2.as_str())
    );
    // Rollback: the kept version comes back at once, catching up from its own checkpoint.
    random_movement(&server).await;
    let response = server
        .client
        .post(server.path(&format!("/projections/bank-account/versions/{v1}/activate")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let head = server.head().await;
    let (status, body) = server
        .get(&format!(
            "/projections/bank-account/streams/account-0?after={}",
            head - 1
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, details) = server.get("/projections/bank-account").await;
    assert_eq!(details["version"], v1.as_str());
    // It processed the 500 events once, before the candidate, and only the new ones since.
    let processed = details["counters"]["events_processed"].as_u64().unwrap();
    assert!(processed <= 510, "no rebuild: {processed} events processed");
    let (status, body) = server
        .get("/projections/bank-account/versions/0000000000/diff")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "version_not_found")
    );
}

/// The bank model of one stream's first `upto` events (inclusive revision).
fn bank_state_at(events: &[Value], upto: u64) -> Value {
    let mut banks = Banks::default();
    for e in events.iter().take(upto as usize + 1) {
        banks.apply(
            e["stream"].as_str().unwrap(),
            e["type"].as_str().unwrap(),
            &e["data"],
        );
    }
    banks.expected(events[0]["stream"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_states_by_revision_and_by_time_match_an_independent_replay() {
    let server = Server::start().await;
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    for i in 0..3_000 {
        let stream = format!("account-{}", i % 4);
        let kind = if i % 5 == 0 { "Withdrawn" } else { "Deposited" };
        server
            .post(
                &format!("/streams/{stream}"),
                &event(kind, json!({"amount": i})),
            )
            .await;
    }
    server.wait_caught_up("bank-account").await;
    let mut rng = rand::rng();
    for account in 0..4 {
        let stream = format!("account-{account}");
        let events = server.read_stream_fully(&stream).await;
        for _ in 0..15 {
            let revision = rng.random_range(0..events.len() as u64);
            let expected = bank_state_at(&events, revision);
            let (status, body) = server
                .get(&format!(
                    "/projections/bank-account/streams/{stream}?revision={revision}"
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(
                (body["revision"].as_u64(), &body["state"]),
                (Some(revision), &expected),
                "{stream}@{revision}"
            );
            // The same point by time: the recorded time of that event.
            let at = events[revision as usize]["recorded_at"].as_str().unwrap();
            let (status, body) = server
                .get(&format!(
                    "/projections/bank-account/streams/{stream}?at={}",
                    at.replace('+', "%2B")
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let reached = body["revision"].as_u64().unwrap();
            assert!(reached >= revision, "{stream} at {at}");
            assert_eq!(
                events[reached as usize]["recorded_at"].as_str(),
                Some(at),
                "same group commit"
            );
            assert_eq!(body["state"], bank_state_at(&events, reached));
        }
    }
    let (status, body) = server
        .get("/projections/bank-account/streams/account-0?at=1999-01-01T00:00:00Z")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "stream_not_found")
    );
    let (status, body) = server
        .get("/projections/bank-account/streams/account-0?at=yesterday")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_a_long_stream_to_any_revision_replays_a_bounded_number_of_events() {
    let server = Server::start().await;
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    const EVENTS: u64 = 100_000;
    for chunk in 0..(EVENTS / 1_000) {
        let batch: Vec<Value> = (0..1_000)
            .map(|i| event("Deposited", json!({"amount": chunk * 1_000 + i})))
            .collect();
        let (status, _) = server.post("/streams/account-long", &json!(batch)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    server.wait_caught_up("bank-account").await;
    // Snapshots are taken every 1,000 revisions, at the end of a guest call of at most
    // 2,000 events, so no answer needs more than 3,000 events fed through the module.
    const MOST_REPLAYED: u64 = 3_000;
    let mut replayed = BTreeMap::new();
    for revision in [10, 999, 1_000, 50_500, 77_777, 99_998, 99_999] {
        let (status, body) = server
            .get(&format!(
                "/projections/bank-account/streams/account-long?revision={revision}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["revision"], revision);
        let expected: u64 = (0..=revision).sum();
        assert_eq!(body["state"]["balance"], expected);
        assert_eq!(body["state"]["transactions"], revision + 1);
        replayed.insert(revision, body["replayed"].as_u64().unwrap());
    }
    assert_eq!(
        replayed[&10], 11,
        "no snapshot before revision 999: {replayed:?}"
    );
    assert!(
        replayed.values().all(|&n| n <= MOST_REPLAYED),
        "replay from the nearest snapshot: {replayed:?}"
    );
    // The current state needs no replay at all.
    let (_, current) = server
        .get("/projections/bank-account/streams/account-long")
        .await;
    assert_eq!(current["revision"], EVENTS - 1);
    assert!(current.get("replayed").is_none());

    // A stream of mostly unwanted events, appended one at a time, is snapshotted too:
    // one event in seven is a deposit, so 1,000 revisions hold at most 143 of them.
    for revision in 0..3_000u64 {
        let kind = if revision % 7 == 0 {
            "Deposited"
        } else {
            "Noted"
        };
        let (status, _) = server
            .post(
                "/streams/account-sparse",
                &event(kind, json!({"amount": revision})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    server.wait_caught_up("bank-account").await;
    let (status, body) = server
        .get("/projections/bank-account/streams/account-sparse?revision=2999")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deposits: Vec<u64> = (0..3_000).filter(|r| r % 7 == 0).collect();
    assert_eq!(body["state"]["balance"], deposits.iter().sum::<u64>());
    assert_eq!(body["state"]["transactions"], deposits.len());
    let replayed = body["replayed"].as_u64().unwrap();
    assert!(replayed <= 143, "{replayed} events replayed");
}

#[tokio::test]
async fn a_projection_replay_is_queryable_like_a_version_until_it_expires() {
    let server = Server::start().await;
    server
        .deploy("order-summary", example("order-summary.wasm"))
        .await;
    let mut midpoint = 0;
    for i in 0..40 {
        let (_, ack) = server
            .post(
                &format!("/streams/order-{}", i % 15),
                &event(
                    if i < 15 { "OrderPlaced" } else { "OrderPaid" },
                    json!({"customer": format!("c{}", i % 3), "total": i + 1}),
                ),
            )
            .await;
        if i == 24 {
            midpoint = ack["last_position"].as_u64().unwrap() + 1;
        }
    }
    server.wait_caught_up("order-summary").await;
    let response = server
        .client
        .post(server.path(&format!("/projections/order-summary/replay?to={midpoint}")))
        .send()
        .await
        .unwrap();
    let (status, replay) = crate::support::decode(response).await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    assert_eq!(replay["position"], midpoint);
    let id = replay["version"].as_str().unwrap().to_owned();
    // The model of the log below the midpoint.
    let mut orders = Orders::default();
    for e in server.read_all_fully().await.iter().take(midpoint as usize) {
        orders.apply(
            e["stream"].as_str().unwrap(),
            e["type"].as_str().unwrap(),
            &e["data"],
        );
    }
    let mut replayed = BTreeMap::new();
    let (status, body) = server
        .get(&format!(
            "/projections/order-summary/state?limit=1000&version={id}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for item in body["items"].as_array().unwrap() {
        replayed.insert(
            item["key"].as_str().unwrap().to_owned(),
            item["value"].clone(),
        );
    }
    assert_eq!(replayed, orders.expected());
    // The live read model is untouched and further along.
    assert_ne!(server.projection_state("order-summary").await, replayed);
    let (status, body) = server
        .client
        .post(server.path("/projections/order-summary/replay"))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
}
