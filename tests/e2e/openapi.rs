//! The OpenAPI document against the live server: schemathesis (from PyPI) generates
//! requests for every operation and checks that no answer is a server error and every
//! answer matches the document. Server-sent-event routes never end, and the module upload
//! takes WebAssembly, so those are left out.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::support::{Server, event, example, python_venv};

/// schemathesis's `st`, installed on first use into its own virtual environment.
fn schemathesis() -> PathBuf {
    python_venv("schemathesis-venv", &["schemathesis==4.32.5"]).join("bin/st")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_api_matches_its_openapi_document() {
    let st = tokio::task::spawn_blocking(schemathesis).await.unwrap();
    let server = Server::start().await;
    // Real data, so that generated requests reach more than 404s.
    server
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    server
        .deploy("order-summary", example("order-summary.wasm"))
        .await;
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
                &event("OrderPlaced", json!({"customer": "ann", "total": i})),
            )
            .await;
    }
    let schema = server.path("/openapi.json");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args(["run", &schema])
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance",
            ])
            .args(["--exclude-path-regex", "^/subscribe/"])
            .args(["--exclude-operation-id", "put_projections_name"])
            .args(["--max-examples", "25", "--seed", "1"])
            .env("NO_COLOR", "1")
            // It keeps a cache in its working folder.
            .current_dir(std::env::temp_dir())
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    assert!(
        !server.log().contains("panicked"),
        "the server never panicked"
    );
}
