//! The web console in a real browser: Debian's Chromium driven by Playwright
//! (`tests/console/console_test.py`) clicks through every page against a real server with
//! authentication on, real modules (one of them faulted) and real events, and saves a
//! screenshot of each page in `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, example, examples, python_venv, repo_root, test_guest};

const ADMIN_TOKEN: &str = "rf_console_admin";
/// A token whose role cannot change anything: the console must say so.
const READ_TOKEN: &str = "rf_console_reader";

/// Python with Playwright, in its own virtual environment under `target/`.
fn playwright_python() -> PathBuf {
    let requirements = repo_root().join("tests/console/requirements.txt");
    let requirements = requirements.to_str().expect("a UTF-8 path");
    python_venv("console-venv", &["-r", requirements]).join("bin/python")
}

/// A server with an admin and a read token, and a client that sends the admin token.
async fn secured_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let hash = |token: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let lines = format!(
        "admin {} console-admin\nread {} console-reader\n",
        hash(ADMIN_TOKEN),
        hash(READ_TOKEN)
    );
    std::fs::write(&file, lines).unwrap();
    let mut server = Server::start_with(&["--tokens-file", file.to_str().unwrap()]).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    server.client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    (server, dir)
}

#[tokio::test]
async fn the_console_shows_every_page_with_real_data_in_a_real_browser() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed (scripts/setup.sh installs it)"
    );
    let python = playwright_python();
    let (server, _tokens) = secured_server().await;
    for (name, bytes) in [
        ("bank-account", example("bank-account.wasm")),
        ("order-summary", example("order-summary.wasm")),
        ("hostile", test_guest("hostile")),
    ] {
        let (status, body) = server.deploy(name, bytes).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let planned = crate::model::random_events(400, 8, 8);
    crate::support::append_planned(&server, &planned, 4).await;
    for account in 1..=3 {
        let stream = format!("/streams/account-{account}");
        let opened =
            json!({"type": "AccountOpened", "data": {"owner": format!("owner-{account}")}});
        assert_eq!(server.post(&stream, &opened).await.0, StatusCode::CREATED);
        let deposit = json!({"type": "Deposited", "data": {"amount": 100 * account}});
        assert_eq!(server.post(&stream, &deposit).await.0, StatusCode::CREATED);
    }
    let hostile: Vec<Value> = ["Ok", "Ok", "Panic", "Ok"]
        .iter()
        .map(|t| json!({"type": t, "data": {}}))
        .collect();
    let (status, body) = server.post("/streams/hostile-1", &json!(hostile)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server
        .wait_module("hostile", "faulted", |m| m["status"] == "faulted")
        .await;
    server.wait_caught_up("bank-account").await;
    server.wait_caught_up("order-summary").await;

    let screenshots = repo_root().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots).unwrap();
    let url = server.url.clone();
    let wasm = examples().join("bank-account.wasm");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo_root().join("tests/console/console_test.py"))
            .args([
                "--url",
                &url,
                "--token",
                ADMIN_TOKEN,
                "--read-token",
                READ_TOKEN,
            ])
            .arg("--screenshots")
            .arg(&screenshots)
            .arg("--wasm")
            .arg(&wasm)
            .output()
            .expect("the browser test runs")
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the browser test failed:\n{said}");
    let taken = std::fs::read_dir(repo_root().join("target/console-screenshots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert!(taken >= 10, "a screenshot of every page: {taken}\n{said}");
}
