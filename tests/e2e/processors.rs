//! Processors (guest contract 0.2): the `shipping-policy` example turns `OrderPaid` into
//! `ShipmentRequested`, and the `shipment-ledger` test guest (a 0.2 reducer) folds what it
//! emits. Checked against a model built from the log itself: every paid order has exactly
//! one shipment request, caused by its first payment, whatever SIGKILLs hit the server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, error_code, example, language_example, test_guest};

/// What the log says should have been emitted: per order id, the id, position and amount
/// of its first `OrderPaid`.
async fn paid_orders(server: &Server) -> BTreeMap<String, (String, u64, i64)> {
    let mut first = BTreeMap::new();
    for event in server.read_all_fully().await {
        if event["type"] != "OrderPaid" {
            continue;
        }
        let order = event["stream"]
            .as_str()
            .and_then(|s| s.strip_prefix("order-"))
            .expect("an order stream")
            .to_owned();
        first.entry(order).or_insert((
            event["id"].as_str().expect("id").to_owned(),
            event["position"].as_u64().expect("position"),
            event["data"]["amount"].as_i64().expect("amount"),
        ));
    }
    first
}

/// Checks every emitted event against the model: one `ShipmentRequested` per paid order,
/// in `shipment-<order>`, caused by the first payment; none for anything else. Returns how
/// many there are.
async fn check_emissions(server: &Server, round: &str) -> usize {
    let model = paid_orders(server).await;
    let mut emitted: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in server.read_all_fully().await {
        if event["type"] == "ShipmentRequested" {
            let order = event["data"]["order"].as_str().expect("order").to_owned();
            emitted.entry(order).or_default().push(event);
        }
    }
    assert_eq!(
        emitted.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>(),
        "{round}: the orders with a shipment request are the paid ones"
    );
    for (order, (payment, _, amount)) in &model {
        let events = &emitted[order];
        assert_eq!(events.len(), 1, "{round}: order {order}: {events:?}");
        let shipment = &events[0];
        assert_eq!(shipment["stream"], format!("shipment-{order}"));
        assert_eq!(shipment["revision"], 0);
        assert_eq!(shipment["data"]["amount"], *amount);
        assert_eq!(
            shipment["metadata"]["$causation_id"],
            payment.as_str(),
            "{round}"
        );
        assert_eq!(
            shipment["metadata"]["$correlation_id"],
            format!("corr-{order}"),
            "{round}: the payment's correlation id is carried over"
        );
    }
    model.len()
}

/// The downstream reducer's state for every shipment equals the model.
async fn check_ledger(server: &Server) {
    server.wait_caught_up("shipping-policy").await;
    server.wait_caught_up("shipment-ledger").await;
    for (order, (payment, _, amount)) in paid_orders(server).await {
        let (status, body) = server
            .get(&format!(
                "/projections/shipment-ledger/streams/shipment-{order}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["state"],
            json!({"requests": 1, "amount": amount, "caused_by": [payment]}),
            "shipment-{order}"
        );
    }
}

fn order_paid(order: u64, amount: i64) -> Value {
    json!({
        "type": "OrderPaid",
        "data": {"amount": amount},
        "metadata": {"$correlation_id": format!("corr-{order}")},
    })
}

#[tokio::test]
async fn a_processor_emits_once_per_source_with_causation_and_drives_a_downstream_reducer() {
    let server = Server::start().await;
    for (name, bytes) in [
        ("shipping-policy", example("shipping-policy.wasm")),
        ("shipment-ledger", test_guest("shipment-ledger")),
    ] {
        let (status, body) = server.deploy(name, bytes).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, listed) = server.get("/projections").await;
    let policy = listed["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["name"] == "shipping-policy"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(policy["kind"], "processor", "{listed}");
    assert_eq!(policy["contract"], "0.2", "{listed}");
    for order in 0..200u64 {
        server
            .append_ok(
                &format!("order-{order}"),
                &order_paid(order, 100 + order as i64),
            )
            .await;
    }
    // Paid twice: the policy remembers, and requests nothing more.
    server.append_ok("order-7", &order_paid(7, 1)).await;
    server.wait_caught_up("shipping-policy").await;
    assert_eq!(check_emissions(&server, "first run").await, 200);
    check_ledger(&server).await;
    let (_, body) = server.get("/projections/shipping-policy").await;
    assert_eq!(body["counters"]["emitted"], 200, "{body}");
    assert!(
        server
            .metrics_text()
            .await
            .contains("refold_module_emitted_total{module=\"shipping-policy\"} 200")
    );

    // A reset rebuilds the policy's state from the start; its past emissions stay, and
    // nothing is emitted twice.
    let (status, body) = server.action("shipping-policy", "reset").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.append_ok("order-500", &order_paid(500, 5)).await;
    server.wait_caught_up("shipping-policy").await;
    assert_eq!(check_emissions(&server, "after a reset").await, 201);
    check_ledger(&server).await;

    // An emission whose expected revision does not hold faults the processor at its source.
    server
        .append_ok(
            "shipment-900",
            &json!({"type": "ShipmentRequested", "data": {"order": "x", "amount": 0}}),
        )
        .await;
    let position =
        server.append_ok("order-900", &order_paid(900, 9)).await["first_position"].clone();
    let body = server
        .wait_module("shipping-policy", "faulted", |m| m["status"] == "faulted")
        .await;
    assert_eq!(body["fault"]["position"], position, "{body}");
    let message = body["fault"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("wrong_expected_revision") || message.contains("expected"),
        "{message}"
    );
    let (status, body) = server.action("shipping-policy", "skip").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_processor_on_a_log_it_cannot_write_is_refused_and_bad_emissions_fault() {
    let server = Server::start().await;
    // A processor's upload is checked like any module's.
    let (status, body) = server
        .deploy("policy", example("shipping-policy.wasm")[..100].to_vec())
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(!error_code(&body).is_empty(), "{body}");
    // A payment without an amount faults the policy at that event, emitting nothing.
    let (status, body) = server
        .deploy("policy", example("shipping-policy.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let position = server
        .append_ok("order-1", &json!({"type": "OrderPaid", "data": {}}))
        .await["first_position"]
        .clone();
    let body = server
        .wait_module("policy", "faulted", |m| m["status"] == "faulted")
        .await;
    assert_eq!(body["fault"]["position"], position, "{body}");
    assert!(server.read_stream_fully("shipment-1").await.is_empty());
}

#[tokio::test]
async fn the_javascript_processor_emits_and_keeps_what_the_rust_one_does() {
    let mut read_models = Vec::new();
    for file in ["shipping-policy.wasm", "shipping-policy-js.wasm"] {
        let server = Server::start().await;
        for (name, bytes) in [
            ("shipping-policy", language_example(file)),
            ("shipment-ledger", test_guest("shipment-ledger")),
        ] {
            let (status, body) = server.deploy(name, bytes).await;
            assert_eq!(status, StatusCode::CREATED, "{file}: {body}");
        }
        for order in 0..50u64 {
            let mut paid = order_paid(order, 10 * order as i64);
            if order % 3 == 0 {
                paid["data"]["address"] = json!(format!("{order} Main St"));
            }
            server.append_ok(&format!("order-{order}"), &paid).await;
        }
        server.append_ok("order-4", &order_paid(4, 1)).await;
        server.wait_caught_up("shipping-policy").await;
        assert_eq!(check_emissions(&server, file).await, 50);
        check_ledger(&server).await;
        let mut shipments: Vec<Value> = server
            .read_all_fully()
            .await
            .into_iter()
            .filter(|e| e["type"] == "ShipmentRequested")
            .map(|e| json!([e["stream"], e["data"]]))
            .collect();
        // Emissions to different streams are appended side by side: compare them by stream.
        shipments.sort_by_key(|s| s[0].to_string());
        // The read model: each order's first payment (positions differ between the two
        // servers: emissions land between the payments).
        let expected: BTreeMap<String, Value> = paid_orders(&server)
            .await
            .into_iter()
            .map(|(order, (_, position, _))| {
                (format!("shipped/{order}"), json!({"paid_at": position}))
            })
            .collect();
        assert_eq!(
            server.projection_state("shipping-policy").await,
            expected,
            "{file}"
        );
        read_models.push(shipments);
    }
    assert_eq!(read_models[0], read_models[1]);
}

/// How long the kill test runs appends before each kill.
fn kill_pause() -> Duration {
    Duration::from_millis(rand::rng().random_range(150..900))
}

#[tokio::test]
async fn under_sigkills_a_processor_emits_each_event_exactly_once() {
    let kills: usize = std::env::var("REFOLD_PROCESSOR_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let started = Instant::now();
    let mut server = Server::start().await;
    for (name, bytes) in [
        ("shipping-policy", example("shipping-policy.wasm")),
        ("shipment-ledger", test_guest("shipment-ledger")),
    ] {
        let (status, body) = server.deploy(name, bytes).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let next_order = Arc::new(AtomicU64::new(0));
    let mut emitted = 0;
    for round in 0..kills {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (url, stop, next_order) =
                    (server.url.clone(), stop.clone(), next_order.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        // Some orders are paid twice (a retry with a new id).
                        let n = next_order.fetch_add(1, Ordering::Relaxed);
                        let order = if n % 10 == 9 { n - 1 } else { n };
                        let sent = client
                            .post(format!("{url}/streams/order-{order}"))
                            .json(&order_paid(order, (order % 1000) as i64))
                            .send()
                            .await;
                        if sent.is_err() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(kill_pause()).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        server.restart().await;
        server.wait_caught_up("shipping-policy").await;
        emitted = check_emissions(&server, &format!("round {round}")).await;
    }
    check_ledger(&server).await;
    let (status, verdict) = server.action("shipment-ledger", "verify").await;
    assert_eq!(status, StatusCode::OK, "{verdict}");
    assert_eq!(verdict["matches"], true, "{verdict}");
    assert!(emitted > 0, "the writers got orders through");
    println!(
        "processor under {kills} SIGKILLs: {emitted} paid orders, each emitted once, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
