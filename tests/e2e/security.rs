//! Who may do what: bearer tokens with the roles read < write < admin, on every route of
//! the API (taken from the server's own OpenAPI document), and the production basics:
//! metrics, request ids, no tokens in logs, refusing to serve the network unprotected.

use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Server, error_code, event, refold_binary};

const TOKENS: [(&str, &str); 3] = [
    ("read", "rf_reader_secret"),
    ("write", "rf_writer_secret"),
    ("admin", "rf_admin_secret"),
];

fn rank(role: &str) -> u8 {
    match role {
        "public" => 0,
        "read" => 1,
        "write" => 2,
        _ => 3,
    }
}

/// A server whose token file holds one token per role.
async fn secured() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let lines: Vec<String> = TOKENS
        .iter()
        .map(|(role, token)| {
            format!(
                "{role} {} {role}-token",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()))
            )
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let server = Server::start_with(&["--tokens-file", file.to_str().unwrap()]).await;
    (server, dir)
}

/// Sends `method path` with `token`; only the status matters (streams are not read).
async fn status_of(
    server: &Server,
    method: &Method,
    path: &str,
    token: Option<&str>,
) -> StatusCode {
    let mut request = server
        .client
        .request(method.clone(), server.path(path))
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if *method == Method::POST && path.starts_with("/streams/") {
        request = request.json(&event("Probe", json!({})));
    }
    request.send().await.expect("answered").status()
}

#[tokio::test]
async fn each_role_can_do_exactly_what_it_should_on_every_route() {
    let (server, _dir) = secured().await;
    let (status, document) = server.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{stream}", "probe-1")
            .replace("{name}", "nobody")
            .replace("{version}", "0123456789abcdef")
            .replace("{key}", "some/key")
            .replace("{action}", "pause");
        for (method, operation) in operations.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let needed = operation["x-refold-role"].as_str().unwrap();
            let anonymous = status_of(&server, &method, &concrete, None).await;
            let forged = status_of(&server, &method, &concrete, Some("rf_not_a_token")).await;
            if needed == "public" {
                assert!(
                    anonymous.is_success(),
                    "{method} {path} is public: {anonymous}"
                );
                continue;
            }
            assert_eq!(
                anonymous,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token"
            );
            assert_eq!(
                forged,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with a forged token"
            );
            for (role, token) in TOKENS {
                let status = status_of(&server, &method, &concrete, Some(token)).await;
                if rank(role) < rank(needed) {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} as {role}");
                } else {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{method} {path} as {role} was refused: {status}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "every protected route was checked: {checked}"
    );
    // The error bodies follow the contract's shape.
    let response = server.client.get(server.path("/all")).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (_, body) = crate::support::decode(response).await;
    assert_eq!(error_code(&body), "unauthorized");
    let response = server
        .client
        .post(server.path("/streams/s-1"))
        .bearer_auth("rf_reader_secret")
        .json(&event("E", json!(1)))
        .send()
        .await
        .unwrap();
    let (status, body) = crate::support::decode(response).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert_eq!(body["error"]["required_role"], "write");
}

#[tokio::test]
async fn the_cli_sends_its_token_and_no_token_reaches_the_logs() {
    let (mut server, _dir) = secured().await;
    let run = |args: &[&str], token: &str| {
        Command::new(refold_binary())
            .args(args)
            .env("REFOLD_SERVER", &server.url)
            .env("REFOLD_TOKEN", token)
            .output()
            .unwrap()
    };
    let denied = run(
        &["append", "account-1", "--type", "Deposited", "--data", "1"],
        "rf_reader_secret",
    );
    assert!(!denied.status.success());
    let allowed = run(
        &["append", "account-1", "--type", "Deposited", "--data", "1"],
        "rf_writer_secret",
    );
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let read = run(&["read", "account-1"], "rf_reader_secret");
    assert!(read.status.success());
    server.terminate();
    let log = server.log();
    assert!(
        log.contains("refold is serving"),
        "the log was captured: {log}"
    );
    for (_, token) in TOKENS {
        assert!(!log.contains(token), "a token appeared in the log");
    }
}

#[tokio::test]
async fn without_tokens_the_server_refuses_to_serve_the_network_unless_told_it_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(refold_binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tokens-file") && stderr.contains("--insecure"),
        "{stderr}"
    );
    let server = Server::start_with(&["--insecure"]).await;
    let (status, _) = server.get("/health").await;
    assert_eq!(status, StatusCode::OK);
}

fn sample(metrics: &prometheus_parse::Scrape, name: &str, module: Option<&str>) -> f64 {
    metrics
        .samples
        .iter()
        .find(|s| s.metric == name && module.is_none_or(|m| s.labels.get("module") == Some(m)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.last().map_or(0.0, |b| b.count)
            }
            _ => 0.0,
        })
        .unwrap_or_else(|| panic!("no sample {name} {module:?}"))
}

async fn scrape(server: &Server) -> prometheus_parse::Scrape {
    let text = server.metrics_text().await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("the metrics parse as Prometheus text")
}

#[tokio::test]
async fn metrics_parse_and_their_counters_move() {
    let server = Server::start().await;
    server
        .deploy("bank-account", crate::support::example("bank-account.wasm"))
        .await;
    let before = scrape(&server).await;
    for i in 0..5 {
        server
            .post(
                "/streams/account-1",
                &json!([
                    event("Deposited", json!({"amount": i})),
                    event("Deposited", json!({"amount": 1}))
                ]),
            )
            .await;
    }
    server
        .post(
            "/streams/account-1?expected_revision=0",
            &event("Deposited", json!({"amount": 1})),
        )
        .await;
    server.wait_caught_up("bank-account").await;
    let after = scrape(&server).await;
    assert_eq!(
        sample(&after, "refold_appends_total", None)
            - sample(&before, "refold_appends_total", None),
        5.0
    );
    assert_eq!(sample(&after, "refold_events_appended_total", None), 10.0);
    assert_eq!(sample(&after, "refold_append_conflicts_total", None), 1.0);
    assert_eq!(sample(&after, "refold_log_head", None), 10.0);
    assert_eq!(
        sample(&after, "refold_module_checkpoint", Some("bank-account")),
        10.0
    );
    assert_eq!(
        sample(&after, "refold_module_lag", Some("bank-account")),
        0.0
    );
    assert_eq!(
        sample(
            &after,
            "refold_module_events_processed_total",
            Some("bank-account")
        ),
        10.0
    );
    assert_eq!(
        sample(&after, "refold_module_faulted", Some("bank-account")),
        0.0
    );
    let response = server
        .client
        .get(server.path("/health"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        "req-42",
        "request ids are propagated"
    );
    let response = server
        .client
        .get(server.path("/health"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers().contains_key("x-request-id"),
        "a request id is made when absent"
    );
    let _: Value = serde_json::from_str(
        &server
            .client
            .get(server.path("/openapi.json"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
}
