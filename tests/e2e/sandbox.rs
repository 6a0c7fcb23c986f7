//! Code you did not write: hostile modules are stopped within their limits and fault alone,
//! with the exact event and a useful message, while a well-behaved module beside them
//! stays current and appends keep being acknowledged. Operator actions, dead letters,
//! determinism and `verify`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, error_code, event, example, test_guest};

/// Appends one event and returns its position.
async fn append(server: &Server, stream: &str, event_type: &str) -> u64 {
    let (status, ack) = server
        .post(&format!("/streams/{stream}"), &event(event_type, json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ack}");
    ack["last_position"].as_u64().unwrap()
}

/// The positions of module `name`'s dead letters (the first page).
async fn dead_letter_positions(server: &Server, name: &str) -> Vec<u64> {
    let (_, letters) = server
        .get(&format!("/projections/{name}/dead-letters"))
        .await;
    letters["dead_letters"]
        .as_array()
        .unwrap_or_else(|| panic!("{letters}"))
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect()
}

fn is_faulted(body: &Value) -> bool {
    body["status"] == "faulted"
}

/// Appends to `account-*` streams until stopped, counting acknowledgements; panics on any
/// failed append.
fn background_appends(
    server: Arc<Server>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let (status, body) = server
                .post(
                    &format!("/streams/account-{}", n % 5),
                    &event("Deposited", json!({"amount": 1})),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "an append failed during the hostile suite: {body}"
            );
            acked.fetch_add(1, Ordering::Relaxed);
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The well-behaved module is current: it has processed everything appended so far.
async fn assert_current(server: &Server) {
    let position = server.head().await - 1;
    let (status, body) = server
        .get(&format!(
            "/projections/bank-account/streams/account-0?after={position}&wait_ms=3000"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "bank-account fell behind: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_modules_fault_alone_within_their_limits_while_the_rest_keeps_going() {
    let server = Arc::new(Server::start().await);
    let (status, body) = server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .deploy(
            "hostile?timeout_ms=500&memory_mb=32&max_state_bytes=100000&log_bytes=20000",
            test_guest("hostile"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let appender = background_appends(server.clone(), stop.clone(), acked.clone());

    let cases = [
        ("Loop", "time limit", 5),
        ("Grow", "memory", 5),
        ("Recurse", "stack", 5),
        ("Panic", "hostile panic at position", 5),
        ("Fail", "hostile failure at position", 5),
        ("BadState", "not JSON", 5),
        ("HugeState", "limit is 100000 bytes", 5),
        ("Sleep", "wait", 5),
    ];
    let mut skipped = Vec::new();
    for (trigger, needle, within_secs) in cases {
        append(&server, "hostile-1", "Ok").await;
        let position = append(&server, "hostile-1", trigger).await;
        let started = Instant::now();
        let body = server.wait_module("hostile", "faulted", is_faulted).await;
        assert!(
            started.elapsed() < Duration::from_secs(within_secs),
            "{trigger} took {:?}",
            started.elapsed()
        );
        let fault = &body["fault"];
        assert_eq!(fault["position"], position, "{trigger}: {body}");
        assert_eq!(fault["event_type"], trigger, "{trigger}: {body}");
        assert_eq!(fault["stream"], "hostile-1");
        assert!(
            fault["event_id"].as_str().is_some_and(|id| id.len() == 36),
            "{body}"
        );
        let message = fault["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{trigger}: the message names the cause: {message}"
        );
        assert_eq!(body["error"], fault["message"]);
        if trigger == "Grow" {
            // Recognised by the limiter's typed error, not by wasmtime's wording.
            assert_eq!(fault["kind"], "memory_limit", "{body}");
            assert!(message.contains("limit is 33554432 bytes"), "{message}");
        }
        // Everything before the faulting event was committed.
        assert_eq!(body["position"], position, "{trigger}: {body}");
        let (_, listing) = server.get("/projections").await;
        let faulted: Vec<_> = listing["projections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| is_faulted(m))
            .collect();
        assert_eq!(
            faulted.len(),
            1,
            "only the hostile module is faulted: {listing}"
        );

        assert_current(&server).await;
        let (status, body) = server.action("hostile", "skip").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        skipped.push(position);
        server
            .wait_module("hostile", "running past the skipped event", |b| {
                b["status"] == "running" && b["position"].as_u64() > Some(position)
            })
            .await;
    }
    let (status, body) = server.action("hostile", "skip").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "not_faulted")
    );

    // A flood of output does not fault the module; its log stays bounded.
    let position = append(&server, "hostile-1", "Spam").await;
    let (status, body) = server
        .get(&format!(
            "/projections/hostile/streams/hostile-1?after={position}&wait_ms=10000"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, logs) = server.get("/projections/hostile/logs?limit=10000").await;
    let kept: usize = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().len())
        .sum();
    assert!(
        kept <= 20_000,
        "the log keeps at most its limit: {kept} bytes"
    );
    assert!(logs["dropped"].as_u64().unwrap() > 0);
    // Paging by line number: `from` the first kept line, five at a time.
    let first = logs["first"].as_u64().unwrap();
    let (_, page) = server
        .get(&format!("/projections/hostile/logs?from={first}&limit=5"))
        .await;
    assert_eq!(page["lines"].as_array().unwrap().len(), 5, "{page}");
    assert_eq!(page["lines"][0], logs["lines"][0]);
    assert_eq!(page["next"].as_u64(), Some(first + 5));
    assert_eq!(page["written"], logs["written"]);

    // Reading the clock and randomness in a loop is allowed, and deterministic.
    let position = append(&server, "hostile-2", "Clock").await;
    let (status, body) = server
        .get(&format!(
            "/projections/hostile/streams/hostile-2?after={position}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, verification) = server.action("hostile", "verify").await;
    assert_eq!(status, StatusCode::OK, "{verification}");
    assert_eq!(verification["matches"], true, "{verification}");

    // Every skipped event is listed as a dead letter.
    assert_eq!(dead_letter_positions(&server, "hostile").await, skipped);
    let (_, letters) = server.get("/projections/hostile/dead-letters").await;
    assert!(
        letters["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["by"] == "operator")
    );

    stop.store(true, Ordering::Relaxed);
    appender.await.unwrap();
    assert!(
        acked.load(Ordering::Relaxed) > 50,
        "appends kept being acknowledged throughout"
    );
    assert_current(&server).await;
}

#[tokio::test]
async fn the_skip_policy_dead_letters_failing_events_and_carries_on() {
    let server = Server::start().await;
    let (status, body) = server
        .deploy(
            "hostile?on_error=skip&timeout_ms=500",
            test_guest("hostile"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut failing = Vec::new();
    for trigger in ["Ok", "Fail", "Ok", "Panic", "Loop", "Ok"] {
        let position = append(&server, "hostile-1", trigger).await;
        if trigger != "Ok" {
            failing.push(position);
        }
    }
    let head = server.head().await;
    let (status, body) = server
        .get(&format!(
            "/projections/hostile/streams/hostile-1?after={}&wait_ms=10000",
            head - 1
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"]["count"], 3);
    let (_, details) = server.get("/projections/hostile").await;
    assert_eq!(details["status"], "running");
    assert_eq!(details["counters"]["dead_letters"], 3);
    let (_, letters) = server
        .get("/projections/hostile/dead-letters?limit=2")
        .await;
    let page: Vec<u64> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect();
    assert_eq!(page, failing[..2]);
    assert_eq!(letters["next"], failing[2]);
    assert_eq!(letters["dead_letters"][0]["by"], "policy");
    assert!(
        letters["dead_letters"][1]["message"]
            .as_str()
            .unwrap()
            .contains("hostile panic")
    );
}

#[tokio::test]
async fn a_failure_deep_in_a_rebuild_is_found_and_nothing_around_it_is_lost() {
    let server = Server::start().await;
    // 10,000 deposits over 10 accounts, in requests of 500, with one bad amount deep in
    // the log: a rebuild reaches it several guest calls past its last commit.
    const ACCOUNTS: u64 = 10;
    const BAD: u64 = 7_777;
    for request in 0..20u64 {
        let batch: Vec<Value> = (0..500)
            .map(|i| {
                let position = request * 500 + i;
                let amount = if position == BAD {
                    json!("x")
                } else {
                    json!(1)
                };
                event("Deposited", json!({ "amount": amount }))
            })
            .collect();
        server
            .append_ok(&format!("account-{}", request % ACCOUNTS), &json!(batch))
            .await;
    }
    let (status, body) = server
        .deploy("bank-account?on_error=skip", example("bank-account.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.wait_caught_up("bank-account").await;

    assert_eq!(dead_letter_positions(&server, "bank-account").await, [BAD]);
    for account in 0..ACCOUNTS {
        let (_, body) = server
            .get(&format!(
                "/projections/bank-account/streams/account-{account}"
            ))
            .await;
        // Two requests of 500 per account; the bad event was in account 5's second.
        let expected = if account == (BAD / 500) % ACCOUNTS {
            999
        } else {
            1_000
        };
        assert_eq!(
            body["state"]["balance"], expected,
            "account-{account}: {body}"
        );
        assert_eq!(body["state"]["transactions"], expected);
    }
    // Under `halt` the module stops exactly there, with everything before it applied.
    let (status, body) = server
        .deploy("bank-account-halt", example("bank-account.core.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let body = server
        .wait_module("bank-account-halt", "faulted", is_faulted)
        .await;
    assert_eq!(body["fault"]["position"], BAD, "{body}");
    assert_eq!(body["position"], BAD, "{body}");
}

#[tokio::test]
async fn new_settings_for_a_paused_module_leave_it_paused() {
    let mut server = Server::start().await;
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    let (status, _) = server.action("bank-account", "pause").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .deploy("bank-account?memory_mb=64", example("bank-account.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = server
        .post(
            "/streams/account-1",
            &event("Deposited", json!({"amount": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, details) = server.get("/projections/bank-account").await;
    assert_eq!(details["status"], "paused", "{details}");
    assert_eq!(
        details["position"], 0,
        "a paused module does not move: {details}"
    );
    server.terminate();
    server.restart().await;
    let (_, details) = server.get("/projections/bank-account").await;
    assert_eq!(
        details["status"], "paused",
        "still paused after a restart: {details}"
    );
    let (status, _) = server.action("bank-account", "resume").await;
    assert_eq!(status, StatusCode::OK);
    server.wait_caught_up("bank-account").await;
    let (_, body) = server
        .get("/projections/bank-account/streams/account-1")
        .await;
    assert_eq!(body["state"]["balance"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_actions_are_safe_while_appends_continue() {
    let mut server = Server::start().await;
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    for i in 0..100 {
        server
            .post(
                &format!("/streams/account-{}", i % 4),
                &event("Deposited", json!({"amount": i})),
            )
            .await;
    }
    server.wait_caught_up("bank-account").await;
    let (_, before) = server
        .get("/projections/bank-account/streams/account-1")
        .await;

    let (status, body) = server.action("bank-account", "pause").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    let paused_at = body["position"].as_u64().unwrap();
    for _ in 0..10 {
        server
            .post(
                "/streams/account-1",
                &event("Deposited", json!({"amount": 1})),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = server.get("/projections/bank-account").await;
    assert_eq!(
        (body["status"].as_str(), body["position"].as_u64()),
        (Some("paused"), Some(paused_at))
    );
    assert_eq!(body["lag"], 10);
    // A pause survives a restart.
    server.terminate();
    server.restart().await;
    let (_, body) = server.get("/projections/bank-account").await;
    assert_eq!(body["status"], "paused");

    let (status, _) = server.action("bank-account", "resume").await;
    assert_eq!(status, StatusCode::OK);
    server.wait_caught_up("bank-account").await;
    let (_, after) = server
        .get("/projections/bank-account/streams/account-1")
        .await;
    assert_eq!(
        after["state"]["transactions"],
        before["state"]["transactions"].as_u64().unwrap() + 10
    );

    // Reset rebuilds from position 0 to the same state, while appends go on.
    let server = Arc::new(server);
    let appends = {
        let server = server.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                server
                    .post(
                        "/streams/account-2",
                        &event("Deposited", json!({"amount": 1})),
                    )
                    .await;
            }
        })
    };
    let (status, body) = server.action("bank-account", "reset").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    appends.await.unwrap();
    server.wait_caught_up("bank-account").await;
    let (_, rebuilt) = server
        .get("/projections/bank-account/streams/account-1")
        .await;
    assert_eq!(rebuilt, after);
    let (_, verification) = server.action("bank-account", "verify").await;
    assert_eq!(verification["matches"], true, "{verification}");
    let (status, body) = server.action("bank-account", "explode").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = server.action("nobody", "pause").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "module_not_found")
    );
}

#[tokio::test]
async fn verify_passes_for_the_examples_and_catches_a_module_with_hidden_state() {
    let server = Server::start().await;
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    server
        .deploy("order-summary", example("order-summary.wasm"))
        .await;
    server.deploy("counter", test_guest("hostile")).await;
    for i in 0..20 {
        server
            .post(
                &format!("/streams/account-{}", i % 3),
                &event("Deposited", json!({"amount": i})),
            )
            .await;
        server
            .post(
                &format!("/streams/order-{i}"),
                &json!([
                    event("OrderPlaced", json!({"customer": "ann", "total": i})),
                    event("OrderPaid", json!({}))
                ]),
            )
            .await;
        // One event per call for the counter: its hidden call count ends up in its state.
        server
            .post("/streams/hostile-1", &event("Counter", json!({})))
            .await;
        server.wait_caught_up("counter").await;
    }
    for name in ["bank-account", "order-summary"] {
        server.wait_caught_up(name).await;
        let (status, verification) = server.action(name, "verify").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(verification["matches"], true, "{name}: {verification}");
        assert_eq!(verification["differences"], 0);
        assert!(verification["compared"].as_u64().unwrap() > 0);
    }
    let (_, verification) = server.action("counter", "verify").await;
    assert_eq!(verification["matches"], false, "{verification}");
    assert_eq!(verification["first_difference"]["key"], "stream hostile-1");
    assert_ne!(
        verification["first_difference"]["live"],
        verification["first_difference"]["rebuilt"]
    );
    // Verifying does not disturb the module.
    let (_, body) = server.get("/projections/counter").await;
    assert_eq!(body["status"], "running");
}

#[tokio::test]
async fn the_sandbox_grants_no_files_no_environment_and_refuses_sockets() {
    let server = Server::start().await;
    let (status, body) = server.deploy("probe", test_guest("sandbox-probe")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let position = append(&server, "probe-1", "Probe").await;
    let (status, body) = server
        .get(&format!(
            "/projections/probe/streams/probe-1?after={position}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let state = &body["state"];
    for access in ["read", "write", "read_dir"] {
        assert!(
            state[access].as_str().unwrap().starts_with("error"),
            "{access} must fail: {state}"
        );
    }
    assert_eq!(state["env_vars"], 0, "{state}");

    let (status, body) = server.deploy("sockets", test_guest("socket-user")).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "incompatible_module")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wasi:sockets"),
        "{body}"
    );
}

#[tokio::test]
async fn an_upload_over_the_size_limit_is_refused_and_deploys_nothing() {
    let server = Server::start_with(&["--max-module-bytes", "100000"]).await;
    let (status, body) = server.deploy("too-big", test_guest("hostile")).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{body}"
    );
    // The server answered before reading the whole body and closed that connection.
    let fresh = Server::attach(&server).with_new_client();
    let (_, listing) = fresh.get("/projections").await;
    assert_eq!(listing["projections"], json!([]));
    // Event appends keep their own, smaller limit.
    let (status, _) = fresh.post("/streams/s-1", &event("E", json!(1))).await;
    assert_eq!(status, StatusCode::CREATED);
}
