//! The client commands of the `refold` CLI against a running server.

use std::process::Command;

use serde_json::Value;

use crate::support::{Server, refold_binary};

/// Runs a client command with `--json` and returns (success, the JSON it printed, stderr).
fn refold(server: &Server, args: &[&str]) -> (bool, Value, String) {
    let (ok, stdout, stderr) = refold_human(server, &[args, &["--json"]].concat());
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (ok, json, stderr)
}

#[tokio::test]
async fn the_cli_appends_and_reads_against_a_running_server() {
    let server = Server::start().await;
    let (ok, body, err) = refold(
        &server,
        &[
            "append",
            "account-1",
            "--type",
            "Deposited",
            "--data",
            r#"{"amount":5}"#,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(body["first_position"], 0);
    let (ok, body, _) = refold(
        &server,
        &[
            "append",
            "account-1",
            "--type",
            "Withdrawn",
            "--data",
            r#"{"amount":2}"#,
            "--expected-revision",
            "0",
            "--metadata",
            r#"{"by":"cli"}"#,
        ],
    );
    assert!(ok);
    assert_eq!(body["first_revision"], 1);
    let (ok, body, err) = refold(
        &server,
        &[
            "append",
            "account-1",
            "--type",
            "X",
            "--data",
            "1",
            "--expected-revision",
            "0",
        ],
    );
    assert!(!ok, "a conflict exits non-zero");
    assert_eq!(body["error"]["code"], "wrong_expected_revision", "{err}");
    let (ok, _, err) = refold(
        &server,
        &["append", "account-1", "--type", "X", "--data", "{not json"],
    );
    assert!(!ok && err.contains("--data"), "{err}");

    let (ok, body, _) = refold(&server, &["read", "account-1"]);
    assert!(ok);
    assert_eq!(body["events"].as_array().unwrap().len(), 2);
    assert_eq!(body["events"][1]["metadata"]["by"], "cli");
    let (ok, body, _) = refold(
        &server,
        &["read", "account-1", "--backward", "--limit", "1"],
    );
    assert!(ok);
    assert_eq!(body["events"][0]["type"], "Withdrawn");
    let (ok, body, _) = refold(&server, &["read", "--all", "--from", "1"]);
    assert!(ok);
    assert_eq!(body["events"][0]["position"], 1);
    let (ok, _, err) = refold(&server, &["read", "nothing-here"]);
    assert!(!ok, "{err}");
}

#[tokio::test]
async fn the_cli_deploys_lists_and_queries_modules() {
    let server = Server::start().await;
    let wasm = crate::support::examples().join("bank-account.wasm");
    let (ok, body, err) = refold(&server, &["deploy", "bank-account", wasm.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(body["kind"], "reducer");
    let (ok, body, _) = refold(
        &server,
        &[
            "append",
            "account-1",
            "--type",
            "Deposited",
            "--data",
            r#"{"amount":5}"#,
        ],
    );
    assert!(ok);
    let position = body["last_position"].as_u64().unwrap().to_string();
    let (ok, body, err) = refold(
        &server,
        &[
            "state",
            "bank-account",
            "--stream",
            "account-1",
            "--after",
            &position,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(body["state"]["balance"], 5);
    let (ok, body, _) = refold(&server, &["projections"]);
    assert!(ok);
    assert_eq!(body["projections"][0]["name"], "bank-account");
    let (ok, body, _) = refold(&server, &["projections", "bank-account"]);
    assert!(ok);
    assert_eq!(body["counters"]["events_processed"], 1);
    let (ok, _, _) = refold(&server, &["deploy", "bank-account", "/nonexistent.wasm"]);
    assert!(!ok);
}

#[tokio::test]
async fn the_cli_redeploys_with_progress_compares_and_activates_versions() {
    let server = Server::start().await;
    let v1_file = crate::support::examples().join("bank-account.wasm");
    crate::support::test_guest("bank-account-fee");
    let v2_file = crate::support::repo_root().join("tests/guests/dist/bank-account-fee.wasm");
    let (ok, _, err) = refold(
        &server,
        &["deploy", "bank-account", v1_file.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    for amount in [5, 7] {
        refold(
            &server,
            &[
                "append",
                "account-1",
                "--type",
                "Withdrawn",
                "--data",
                &format!(r#"{{"amount":{amount}}}"#),
            ],
        );
    }
    let output = Command::new(refold_binary())
        .args([
            "deploy",
            "bank-account",
            v2_file.to_str().unwrap(),
            "--activate",
            "manual",
            "--wait",
        ])
        .env("REFOLD_SERVER", &server.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("refold activate bank-account"), "{stdout}");
    let (ok, body, _) = refold(&server, &["versions", "bank-account"]);
    assert!(ok);
    let candidate = body["versions"][1]["version"].as_str().unwrap().to_owned();
    assert_eq!(body["versions"][1]["role"], "candidate");
    let (ok, body, _) = refold(&server, &["diff", "bank-account", &candidate]);
    assert!(ok);
    assert_eq!(body["changed"], 1);
    assert_eq!(body["samples"]["changed"][0]["key"], "stream account-1");
    let (ok, body, err) = refold(&server, &["activate", "bank-account", &candidate]);
    assert!(ok, "{err}");
    assert_eq!(body["version"], candidate.as_str());
    let (_, body, _) = refold(&server, &["state", "bank-account", "--stream", "account-1"]);
    assert_eq!(body["state"]["balance"], -14, "the fee rule is live");
}

/// Runs a client command as a person would (tables) and returns (success, stdout, stderr).
fn refold_human(server: &Server, args: &[&str]) -> (bool, String, String) {
    let output = server.cli(args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test]
async fn people_get_tables_and_plain_errors() {
    let server = Server::start().await;
    let wasm = crate::support::examples().join("bank-account.wasm");
    let (ok, out, err) = refold_human(&server, &["deploy", "bank-account", wasm.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("name: bank-account") && out.contains("kind: reducer"),
        "{out}"
    );
    for (stream, amount) in [("account-1", "5"), ("account-22", "7")] {
        let (ok, _, err) = refold_human(
            &server,
            &[
                "append",
                stream,
                "--type",
                "Deposited",
                "--data",
                &format!(r#"{{"amount":{amount}}}"#),
            ],
        );
        assert!(ok, "{err}");
    }
    let (ok, out, _) = refold_human(&server, &["read", "--all"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("POSITION  STREAM"), "{out}");
    assert!(
        lines[2].starts_with("1         account-22  0         Deposited"),
        "{out}"
    );
    assert!(lines[2].ends_with(r#"{"amount":7}"#), "{out}");
    let (ok, out, _) = refold_human(&server, &["streams", "--prefix", "account-"]);
    assert!(ok);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "STREAM      LAST_REVISION",
            "account-1   0",
            "account-22  0"
        ]
    );
    server.wait_caught_up("bank-account").await;
    let (ok, out, _) = refold_human(&server, &["projections"]);
    assert!(ok);
    let header = out.lines().nth(1).unwrap_or_default();
    assert!(header.trim_start().starts_with("NAME"), "{out}");
    assert!(out.contains("bank-account  reducer"), "{out}");
    let (ok, _, err) = refold_human(&server, &["read", "nothing-here"]);
    assert!(!ok);
    assert!(
        err.contains("stream_not_found") && !err.contains('{'),
        "{err}"
    );
    let (ok, out, _) = refold_human(&server, &["completions", "bash"]);
    assert!(ok && out.contains("_refold()"), "{out}");
}

#[tokio::test]
async fn tail_prints_events_as_they_are_appended() {
    let server = Server::start().await;
    let (ok, _, _) = refold(
        &server,
        &["append", "old-1", "--type", "Old", "--data", "0"],
    );
    assert!(ok);
    let tail = std::process::Command::new(refold_binary())
        .args(["tail", "--count", "2", "--json"])
        .env("REFOLD_SERVER", &server.url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tail starts");
    // The tail starts at the head: it must not print the event appended before it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for i in 1..=2 {
        let (ok, _, err) = refold(
            &server,
            &[
                "append",
                "live-1",
                "--type",
                "New",
                "--data",
                &i.to_string(),
            ],
        );
        assert!(ok, "{err}");
    }
    let output = tokio::task::spawn_blocking(move || tail.wait_with_output())
        .await
        .unwrap()
        .expect("tail ends after two events");
    assert!(output.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["stream"], "live-1");
    assert_eq!(events[0]["data"], 1);
    assert_eq!(events[1]["position"], 2);
}
