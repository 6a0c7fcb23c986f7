//! Modules in other languages and contract versions: the `bank-account` reducer written in
//! JavaScript, Python and C, and the `order-summary` projection in JavaScript (all guest
//! contract 0.1), and both Rust examples built for contract 0.1 as well, deployed into one
//! server beside the Rust originals (contract 0.2), hold the same state as the Rust ones and
//! as the independent model, and pass `verify` (a rebuild gives the same state).

use reqwest::StatusCode;
use serde_json::Value;

use crate::model;
use crate::support::{Server, append_planned, language_example, models_from_log};

/// Module name and built file: the Rust original first, then its ports.
const REDUCERS: [(&str, &str); 5] = [
    ("bank-account", "bank-account.wasm"),
    ("bank-account-v01", "bank-account.v0.1.wasm"),
    ("bank-account-js", "bank-account-js.wasm"),
    ("bank-account-py", "bank-account-py.wasm"),
    ("bank-account-c", "bank-account-c.core.wasm"),
];
const PROJECTIONS: [(&str, &str); 3] = [
    ("order-summary", "order-summary.wasm"),
    ("order-summary-v01", "order-summary.v0.1.wasm"),
    ("order-summary-js", "order-summary-js.wasm"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_in_javascript_python_and_c_keep_the_same_state_as_rust_and_the_model() {
    let server = Server::start().await;
    let modules = || REDUCERS.iter().chain(&PROJECTIONS);
    for (name, file) in modules() {
        let (status, body) = server.deploy(name, language_example(file)).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
    }
    append_planned(&server, &model::random_events(6_000, 50, 80), 8).await;
    for (name, _) in modules() {
        server.wait_caught_up(name).await;
    }
    let (banks, orders) = models_from_log(&server).await;

    assert!(!banks.accounts.is_empty());
    for stream in banks.accounts.keys() {
        let [(rust, _), ports @ ..] = &REDUCERS;
        let expected = reducer_state(&server, rust, stream).await;
        assert_eq!(expected, banks.expected(stream), "{rust} {stream}");
        for (port, _) in ports {
            let state = reducer_state(&server, port, stream).await;
            assert_eq!(state, expected, "{port} differs from {rust} on {stream}");
        }
    }
    let expected = orders.expected();
    assert!(!expected.is_empty());
    for (name, _) in PROJECTIONS {
        assert_eq!(server.projection_state(name).await, expected, "{name}");
    }
    // Deterministic in every language: a rebuild into scratch space gives the same state.
    for (name, _) in modules() {
        let (status, verification) = server.action(name, "verify").await;
        assert_eq!(status, StatusCode::OK, "{name}: {verification}");
        assert_eq!(verification["matches"], true, "{name}: {verification}");
        assert!(verification["compared"].as_u64().unwrap() > 0, "{name}");
    }
}

async fn reducer_state(server: &Server, module: &str, stream: &str) -> Value {
    let (status, body) = server
        .get(&format!("/projections/{module}/streams/{stream}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{module} {stream}: {body}");
    body["state"].clone()
}
