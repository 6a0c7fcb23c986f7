//! The HTTP contract through several hosts of one cluster: optimistic concurrency and
//! idempotent ids decided cluster-wide, every host reading every host's writes, paging,
//! filters, subscriptions and modules.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::nats::{NatsCluster, hosts};
use crate::support::{SseReader, error_code, event, example};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_host_serves_the_contract_on_one_log() {
    let _serial = crate::SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let hosts = hosts(&nats, 3, &[]).await;
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);

    // Expected revisions are decided by JetStream, whichever host appends.
    let first = a
        .append_ok("account-1", &event("Deposited", json!({"amount": 10})))
        .await;
    assert_eq!(
        (
            first["first_revision"].as_u64(),
            first["first_position"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let (status, body) = b
        .post(
            "/streams/account-1?expected_revision=no_stream",
            &event("Deposited", json!({"amount": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "wrong_expected_revision");
    assert_eq!(body["error"]["current_revision"], 0);
    let pair = json!([
        event("Deposited", json!({"amount": 5})),
        event("Deposited", json!({"amount": 7}))
    ]);
    let (status, ack) = b
        .post("/streams/account-1?expected_revision=0", &pair)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ack}");
    assert_eq!(
        (
            ack["first_revision"].as_u64(),
            ack["last_revision"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(
        (
            ack["first_position"].as_u64(),
            ack["last_position"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let (status, body) = c
        .post(
            "/streams/account-1?expected_revision=0",
            &event("Deposited", json!({"amount": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["current_revision"], 2);
    let (status, ack) = c
        .post(
            "/streams/account-1?expected_revision=2",
            &event("Withdrawn", json!({"amount": 4})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ack}");

    // A read through any host sees every append acknowledged before it began.
    let events = c.read_stream_fully("account-1").await;
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, [0, 1, 2, 3]);

    // Idempotent ids: a retry through another host, of one event and of a batch.
    let ids = [uuid(), uuid()];
    let batch = json!([
        {"type": "OrderPlaced", "data": {"total": 3}, "id": ids[0]},
        {"type": "OrderShipped", "data": {}, "id": ids[1]},
    ]);
    let original = a.append_ok("order-7", &batch).await;
    let retried = b.append_ok("order-7", &batch).await;
    assert_eq!(original, retried, "a retry answers the original positions");
    let single = json!({"type": "OrderPlaced", "data": {"total": 1}, "id": uuid()});
    let original = c.append_ok("order-8", &single).await;
    let retried = a.append_ok("order-8", &single).await;
    assert_eq!(original, retried);
    let (status, body) = b
        .post(
            "/streams/order-9",
            &json!([{"type": "X", "data": {}, "id": ids[0]}]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "duplicate_event_id");
    assert_eq!(
        a.read_stream_fully("order-7").await.len(),
        2,
        "the retry appended nothing"
    );

    // Paging through another host than the writer.
    let many: Vec<Value> = (0..25).map(|i| event("Tick", json!({"i": i}))).collect();
    b.append_ok("clock-1", &json!(many)).await;
    let (_, page) = c.get("/streams/clock-1?limit=10").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 10);
    assert_eq!(page["next"], 10);
    let (_, page) = c.get("/streams/clock-1?from=20&limit=10").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 5);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = a.get("/streams/clock-1?direction=backward&limit=2").await;
    assert_eq!(page["events"][0]["revision"], 24);

    // The global log: gapless positions, filters, the stream listing.
    let all = a.read_all_fully().await;
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (0..all.len() as u64).collect::<Vec<_>>());
    let (_, orders) = b.get("/all?category=order").await;
    assert_eq!(orders["events"].as_array().unwrap().len(), 3);
    let (_, withdrawals) = c.get("/all?type=Withdrawn").await;
    assert_eq!(withdrawals["events"].as_array().unwrap().len(), 1);
    let (_, listing) = c.get("/streams?prefix=order-").await;
    let names: Vec<&str> = listing["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["order-7", "order-8"]);

    // A subscription on one host receives what another host appends.
    let mut live = SseReader::open(c, "/subscribe/streams/sse-1", None).await;
    let mut everything =
        SseReader::open(b, &format!("/subscribe/all?from={}", all.len()), None).await;
    a.append_ok("sse-1", &event("Ping", json!({"n": 1}))).await;
    let got = live
        .next(Duration::from_secs(10))
        .await
        .expect("the event arrives");
    assert!(got.data.contains("\"Ping\""), "{}", got.data);
    let got = everything
        .next(Duration::from_secs(10))
        .await
        .expect("the event arrives");
    assert_eq!(got.id.as_deref(), Some(all.len().to_string().as_str()));

    // Modules: deployed through one host, run on one host, queried through every host
    // with read-your-writes.
    let (status, body) = c.deploy("bank-account", example("bank-account.wasm")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ack = a
        .append_ok("account-1", &event("Deposited", json!({"amount": 100})))
        .await;
    let after = ack["last_position"].as_u64().unwrap();
    for host in [a, b, c] {
        let (status, state) = host
            .get(&format!(
                "/projections/bank-account/streams/account-1?after={after}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{state}");
        assert_eq!(state["state"]["balance"], 10 + 5 + 7 - 4 + 100, "{state}");
        assert_eq!(state["revision"], 4);
    }
    let (status, past) = b
        .get("/projections/bank-account/streams/account-1?revision=2")
        .await;
    assert_eq!(status, StatusCode::OK, "{past}");
    assert_eq!(past["state"]["balance"], 22);
    let (status, body) = a.action("bank-account", "pause").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, module) = c.get("/projections/bank-account").await;
    assert_eq!(module["status"], "paused", "{module}");
    let (status, body) = b.action("bank-account", "resume").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // GET /cluster: every host, which one runs the module (hosts publish what they run
    // every second), the NATS servers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let cluster = loop {
        let (status, cluster) = b.get("/cluster").await;
        assert_eq!(status, StatusCode::OK, "{cluster}");
        let running = cluster["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| {
                h["modules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m == "bank-account")
            })
            .count();
        if running == 1 {
            break cluster;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no host runs the module: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(cluster["id"], "host-2");
    let hosts_seen = cluster["hosts"].as_array().unwrap();
    assert_eq!(hosts_seen.len(), 3, "{cluster}");
    assert!(hosts_seen.iter().all(|h| h["alive"] == true), "{cluster}");
    let servers = cluster["nats"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    assert!(servers.iter().all(|s| s["connected"] == true), "{cluster}");

    // Consumer groups: created through one host, polled through another, acked through a
    // third; they run where the modules run.
    let response = a
        .client
        .put(a.path("/subscriptions/audit"))
        .json(&json!({"source": {"category": "account"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let (status, polled) = b
        .post("/subscriptions/audit/poll?max=1000&worker=b", &Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK, "{polled}");
    let messages = polled["messages"].as_array().unwrap();
    assert!(!messages.is_empty());
    let leases: Vec<&Value> = messages.iter().map(|m| &m["lease"]).collect();
    let (status, acked) = c
        .post("/subscriptions/audit/ack", &json!({ "leases": leases }))
        .await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["acked"].as_u64(), Some(messages.len() as u64));
    let (_, group) = a.get("/subscriptions/audit").await;
    assert_eq!(
        group["acked"].as_u64(),
        Some(messages.len() as u64),
        "{group}"
    );
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A backup of a single node, imported through one host of a cluster, exported again
/// through another: the same file, byte for byte (ids, positions, recording times).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_into_a_cluster_exactly() {
    let _serial = crate::SERIAL.lock().await;
    let single = crate::support::Server::start().await;
    for i in 0..30 {
        let batch: Vec<Value> = (0..(1 + i % 4))
            .map(|j| event("Deposited", json!({"amount": j, "note": "é \"quoted\""})))
            .collect();
        single
            .append_ok(&format!("account-{}", i % 7), &json!(batch))
            .await;
    }
    let folder = tempfile::tempdir().unwrap();
    let backup = folder.path().join("backup.ndjson");
    let again = folder.path().join("again.ndjson");
    let run = |server: &crate::support::Server, args: &[&str]| {
        let output = server.cli(args);
        assert!(
            output.status.success(),
            "refold {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&single, &["export", "--out", backup.to_str().unwrap()]);
    let nats = NatsCluster::start(3);
    let hosts = hosts(&nats, 2, &[]).await;
    run(&hosts[0], &["import", backup.to_str().unwrap()]);
    run(&hosts[1], &["export", "--out", again.to_str().unwrap()]);
    let (first, second) = (
        std::fs::read(&backup).unwrap(),
        std::fs::read(&again).unwrap(),
    );
    assert!(!first.is_empty());
    assert!(
        first == second,
        "the cluster's export differs from the backup it restored"
    );
    // The log goes on after the import, through either host.
    let ack = hosts[1]
        .append_ok("account-0", &event("Deposited", json!({"amount": 1})))
        .await;
    assert_eq!(ack["first_position"].as_u64(), Some(single.head().await));
}
