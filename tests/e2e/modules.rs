//! Reducers and projections end to end: the example modules, built for wasm, deployed into
//! the real server, checked against an independent computation of their state.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::model::{self, Banks, Orders};
use crate::support::{Server, append_planned, error_code, event, example, models_from_log};

async fn assert_reducer_matches(server: &Server, module: &str, banks: &Banks) {
    assert!(!banks.accounts.is_empty());
    for stream in banks.accounts.keys() {
        let (status, body) = server
            .get(&format!("/projections/{module}/streams/{stream}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{module} {stream}: {body}");
        assert_eq!(body["state"], banks.expected(stream), "{module} {stream}");
        assert_eq!(body["stream"], stream.as_str());
    }
}

async fn assert_projection_matches(server: &Server, module: &str, orders: &Orders) {
    let actual = server.projection_state(module).await;
    let expected = orders.expected();
    assert!(!expected.is_empty());
    assert_eq!(actual, expected, "{module}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_deployed_late_catch_up_keep_up_live_and_match_an_independent_computation() {
    let server = Arc::new(Server::start().await);
    // Events that exist before any module does.
    append_planned(&server, &model::random_events(2_000, 40, 60), 1).await;
    for (name, file) in [
        ("bank-account", "bank-account.wasm"),
        ("order-summary", "order-summary.wasm"),
        ("bank-account-core", "bank-account.core.wasm"),
        ("order-summary-core", "order-summary.core.wasm"),
    ] {
        let (status, body) = server.deploy(name, example(file)).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
    }
    // Live appends from several writers while the modules catch up and keep up.
    append_planned(&server, &model::random_events(4_000, 40, 60), 8).await;
    for name in [
        "bank-account",
        "order-summary",
        "bank-account-core",
        "order-summary-core",
    ] {
        server.wait_caught_up(name).await;
    }
    let (banks, orders) = models_from_log(&server).await;
    assert_reducer_matches(&server, "bank-account", &banks).await;
    assert_reducer_matches(&server, "bank-account-core", &banks).await;
    assert_projection_matches(&server, "order-summary", &orders).await;
    assert_projection_matches(&server, "order-summary-core", &orders).await;

    let (_, listing) = server.get("/projections").await;
    let listed = listing["projections"].as_array().unwrap();
    assert_eq!(listed.len(), 4);
    for module in listed {
        assert_eq!(
            (module["status"].as_str(), module["lag"].as_u64()),
            (Some("running"), Some(0)),
            "{module}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn module_state_survives_sigkill_mid_stream_and_equals_a_fresh_replay() {
    let mut server = Server::start().await;
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    server
        .deploy("order-summary", example("order-summary.wasm"))
        .await;
    for _round in 0..3 {
        let shared = Arc::new(Server::attach(&server));
        let load = {
            let shared = shared.clone();
            tokio::spawn(async move {
                // Appending until the server dies under us.
                for planned in model::random_events(20_000, 30, 40).chunks(5) {
                    let (stream, event_type, data) = &planned[0];
                    let response = shared
                        .client
                        .post(shared.path(&format!("/streams/{stream}")))
                        .json(&event(event_type, data.clone()))
                        .send()
                        .await;
                    if response.is_err() {
                        return;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..900))).await;
        server.kill9();
        load.await.unwrap();
        server.restart().await;
    }
    server.wait_caught_up("bank-account").await;
    server.wait_caught_up("order-summary").await;
    let (banks, orders) = models_from_log(&server).await;
    assert_reducer_matches(&server, "bank-account", &banks).await;
    assert_projection_matches(&server, "order-summary", &orders).await;

    // A fresh replay of the same log gives byte-for-byte the same answers.
    server
        .deploy("bank-account-replay", example("bank-account.core.wasm"))
        .await;
    server
        .deploy("order-summary-replay", example("order-summary.core.wasm"))
        .await;
    server.wait_caught_up("bank-account-replay").await;
    server.wait_caught_up("order-summary-replay").await;
    assert_eq!(
        server.projection_state("order-summary").await,
        server.projection_state("order-summary-replay").await
    );
    for stream in banks.accounts.keys() {
        let (_, live) = server
            .get(&format!("/projections/bank-account/streams/{stream}"))
            .await;
        let (_, replay) = server
            .get(&format!(
                "/projections/bank-account-replay/streams/{stream}"
            ))
            .await;
        assert_eq!(live, replay);
    }
}

#[tokio::test]
async fn a_read_after_an_append_position_sees_the_callers_own_write_every_time() {
    let server = Server::start().await;
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    server
        .deploy("order-summary", example("order-summary.wasm"))
        .await;
    for i in 0..150u64 {
        let (_, ack) = server
            .post(
                "/streams/account-1",
                &event("Deposited", json!({"amount": 2})),
            )
            .await;
        let position = ack["last_position"].as_u64().unwrap();
        let (status, body) = server
            .get(&format!(
                "/projections/bank-account/streams/account-1?after={position}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"]["transactions"], i + 1);
        assert_eq!(body["state"]["balance"], (i + 1) * 2);
        assert_eq!(body["revision"], i);

        let order = format!("order-{i}");
        let (_, ack) = server
            .post(
                &format!("/streams/{order}"),
                &event("OrderPlaced", json!({"customer": "ann", "total": 1})),
            )
            .await;
        let position = ack["last_position"].as_u64().unwrap();
        let (status, body) = server
            .get(&format!(
                "/projections/order-summary/state/order/{order}?after={position}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["value"]["status"], "placed");
    }
    // Waiting for a position nobody has appended times out with the module's position.
    let (status, body) = server
        .get("/projections/bank-account/streams/account-1?after=1000000&wait_ms=50")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::GATEWAY_TIMEOUT, "not_caught_up")
    );
    assert_eq!(body["error"]["position"], 300);
}

#[tokio::test]
async fn deploys_are_versioned_by_content_and_bad_uploads_are_refused_with_the_cause() {
    let server = Server::start().await;
    let bytes = example("bank-account.wasm");
    let version = hex::encode(Sha256::digest(&bytes));
    let (status, body) = server.deploy("bank-account", bytes.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body,
        json!({"name": "bank-account", "version": version, "kind": "reducer", "status": "running", "current": true})
    );
    let (status, body) = server.deploy("bank-account", bytes).await;
    assert_eq!(
        (status, body["version"].as_str()),
        (StatusCode::OK, Some(version.as_str()))
    );

    let cases: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            "plain",
            b"hello".to_vec(),
            StatusCode::BAD_REQUEST,
            "not_wasm",
            "not WebAssembly",
        ),
        (
            "empty",
            vec![],
            StatusCode::BAD_REQUEST,
            "not_wasm",
            "not WebAssembly",
        ),
        (
            "core",
            b"\0asm\x01\0\0\0".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "incompatible_module",
            "implements no Refold world",
        ),
        (
            "component",
            b"\0asm\x0d\0\x01\0".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "incompatible_module",
            "implements no Refold world",
        ),
        (
            "truncated",
            example("order-summary.wasm")[..1000].to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "incompatible_module",
            "not valid",
        ),
        (
            "Bad Name",
            example("order-summary.wasm"),
            StatusCode::BAD_REQUEST,
            "invalid_module_name",
            "a-z",
        ),
    ];
    for (name, bytes, want_status, want_code, needle) in cases {
        let (status, body) = server.deploy(&name.replace(' ', "%20"), bytes).await;
        assert_eq!(
            (status, error_code(&body)),
            (want_status, want_code),
            "{name}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{name}: {message}");
    }
    let (_, listing) = server.get("/projections").await;
    assert_eq!(
        listing["projections"].as_array().unwrap().len(),
        1,
        "refused uploads deploy nothing"
    );

    server
        .deploy("order-summary", example("order-summary.wasm"))
        .await;
    server
        .post(
            "/streams/order-1",
            &event("OrderPlaced", json!({"customer": "ann", "total": 5})),
        )
        .await;
    server.wait_caught_up("order-summary").await;
    let (status, body) = server
        .get("/projections/order-summary/streams/order-1")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "wrong_module_kind")
    );
    let (status, body) = server.get("/projections/bank-account/state/x").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "wrong_module_kind")
    );
    let (status, body) = server
        .get("/projections/order-summary/state/order%2Fmissing")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "key_not_found")
    );
    let (status, body) = server
        .get("/projections/order-summary/state/order%2Forder-1")
        .await;
    assert_eq!(
        (status, body["key"].as_str()),
        (StatusCode::OK, Some("order/order-1"))
    );
    let (status, body) = server
        .get("/projections/bank-account/streams/account-9")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "stream_not_found")
    );
    let (status, body) = server
        .get("/projections/order-summary/state?prefix=customer/")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"items": [{"key": "customer/ann", "value": {"orders": 1, "spent": 0}}], "next": null})
    );
    let (status, body) = server.get("/projections/order-summary/logs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["lines"].is_array());

    let response = server
        .client
        .delete(server.path("/projections/order-summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for path in [
        "/projections/order-summary",
        "/projections/order-summary/state/order%2Forder-1",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::NOT_FOUND, "module_not_found")
        );
    }
    let response = server
        .client
        .delete(server.path("/projections/order-summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deployed_modules_come_back_after_a_restart_without_upload_or_recompilation() {
    let mut server = Server::start().await;
    let (_, body) = server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    let version = body["version"].as_str().unwrap().to_owned();
    server
        .post(
            "/streams/account-1",
            &event("Deposited", json!({"amount": 7})),
        )
        .await;
    server.wait_caught_up("bank-account").await;
    assert!(server.terminate().success());
    assert!(
        server
            .data_dir()
            .join("store")
            .join("compiled")
            .join(format!("{version}.cwasm"))
            .exists()
    );
    server.restart().await;
    let (_, ack) = server
        .post(
            "/streams/account-1",
            &event("Deposited", json!({"amount": 5})),
        )
        .await;
    let position = ack["last_position"].as_u64().unwrap();
    let (status, body) = server
        .get(&format!(
            "/projections/bank-account/streams/account-1?after={position}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"]["balance"], 12);
    assert!(
        !server.log().contains("compiling again"),
        "the compiled form was reused"
    );
}

#[tokio::test]
async fn a_graceful_shutdown_mid_rebuild_keeps_the_checkpoint_it_reached() {
    let mut server = Server::start().await;
    const ACCOUNTS: u64 = 50;
    const REQUESTS: u64 = 400;
    for request in 0..REQUESTS {
        let batch: Vec<_> = (0..1_000)
            .map(|i| event("Deposited", json!({"amount": i})))
            .collect();
        server
            .append_ok(&format!("account-{}", request % ACCOUNTS), &json!(batch))
            .await;
    }
    let head = server.head().await;
    let (status, body) = server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Stop the server once the rebuild has committed part of the log.
    let body = server
        .wait_module("bank-account", "part-way", |body| {
            assert_ne!(body["status"], "faulted", "{body}");
            body["position"].as_u64().is_some_and(|p| p > 0)
        })
        .await;
    let reached = body["position"].as_u64().unwrap();
    assert!(reached < head, "stopped mid-rebuild: {reached} of {head}");
    assert!(server.terminate().success());

    server.restart().await;
    server.wait_caught_up("bank-account").await;
    // After the restart the module processed at most what lay beyond the checkpoint it
    // had reached before the shutdown: nothing committed was lost, nothing done twice.
    let (_, details) = server.get("/projections/bank-account").await;
    let processed = details["counters"]["events_processed"].as_u64().unwrap();
    assert!(
        processed <= head - reached,
        "{processed} events processed after the restart; {} were left",
        head - reached
    );
    let per_request: u64 = (0..1_000).sum();
    for account in 0..ACCOUNTS {
        let (_, body) = server
            .get(&format!(
                "/projections/bank-account/streams/account-{account}"
            ))
            .await;
        let requests = REQUESTS / ACCOUNTS;
        assert_eq!(body["state"]["balance"], requests * per_request);
        assert_eq!(body["state"]["transactions"], requests * 1_000);
    }
}
