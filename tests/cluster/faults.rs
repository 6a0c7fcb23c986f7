//! Faults under load: the NATS node leading the log killed while hosts append, the host
//! running the modules killed, and the whole cluster stopped and started again. Each test
//! prints its figures.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::nats::{NatsCluster, hosts};
use crate::support::{Server, example};

/// What the writers were told: each acknowledged event's id and position.
#[derive(Default)]
struct Acknowledged {
    positions: HashMap<String, u64>,
    refused: u64,
}

/// Appends from `per_host` writers on each of `targets` until `stop`: 1 to 3 deposits with
/// client-chosen ids per request, to `account-<n>` streams.
fn start_writers(
    targets: &[&Server],
    per_host: usize,
    stop: &Arc<AtomicBool>,
    acknowledged: &Arc<Mutex<Acknowledged>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (h, host) in targets.iter().enumerate() {
        for w in 0..per_host {
            let host = Server::attach(host);
            let (stop, acknowledged, counter) =
                (stop.clone(), acknowledged.clone(), counter.clone());
            writers.push(tokio::spawn(async move {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let count = 1 + (n % 3) as usize;
                    let ids: Vec<String> = (0..count)
                        .map(|_| uuid::Uuid::new_v4().to_string())
                        .collect();
                    let body: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"type": "Deposited", "data": {"amount": 1}, "id": id}))
                        .collect();
                    let stream = format!("account-{}", (h * 100 + w * 10) as u64 + k % 10);
                    let response = host
                        .client
                        .post(host.path(&format!("/streams/{stream}")))
                        .json(&body)
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await;
                    let Ok(response) = response else {
                        acknowledged.lock().refused += 1;
                        continue;
                    };
                    if response.status() != StatusCode::CREATED {
                        acknowledged.lock().refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let ack: Value = response.json().await.expect("an ack");
                    let first = ack["first_position"].as_u64().expect("a position");
                    let mut acknowledged = acknowledged.lock();
                    for (i, id) in ids.into_iter().enumerate() {
                        acknowledged.positions.insert(id, first + i as u64);
                    }
                }
            }));
        }
    }
    writers
}

/// Every acknowledged event is in the log read through `host`, at its position; positions
/// are gapless and no id appears twice. Returns the number of events in the log.
async fn check_log(host: &Server, acknowledged: &Acknowledged) -> usize {
    let all = host.read_all_fully().await;
    let mut by_id: HashMap<&str, u64> = HashMap::new();
    for (i, event) in all.iter().enumerate() {
        assert_eq!(
            event["position"].as_u64(),
            Some(i as u64),
            "positions are gapless"
        );
        let id = event["id"].as_str().expect("an id");
        assert!(
            by_id.insert(id, i as u64).is_none(),
            "event id {id} is in the log twice"
        );
    }
    let mut lost = 0;
    for (id, position) in &acknowledged.positions {
        match by_id.get(id.as_str()) {
            Some(found) => assert_eq!(found, position, "event {id} moved"),
            None => lost += 1,
        }
    }
    assert_eq!(lost, 0, "acknowledged events lost");
    all.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_continue_when_the_leading_nats_node_dies_and_nothing_acknowledged_is_lost() {
    let _serial = crate::SERIAL.lock().await;
    let mut nats = NatsCluster::start(3);
    let hosts = hosts(&nats, 2, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let writers = start_writers(&[&hosts[0], &hosts[1]], 4, &stop, &acknowledged);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The node leading the log's stream dies; the others elect a new leader.
    let leader = nats.leader_of("REFOLD_EVENTS").await;
    let before = acknowledged.lock().positions.len();
    nats.kill9(leader);
    let killed = Instant::now();
    // Appends resume once JetStream has a new leader.
    let resumed = loop {
        if acknowledged.lock().positions.len() > before + 100 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "appends did not resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_outage = acknowledged.lock().positions.len() - before;
    nats.restart(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer");
    }
    let elapsed = started.elapsed();
    let acknowledged = acknowledged.lock();
    let total = check_log(&hosts[0], &acknowledged).await;
    assert_eq!(check_log(&hosts[1], &acknowledged).await, total);
    println!(
        "the NATS node leading the log killed under load: {} events acknowledged in {:.1} s \
         ({during_outage} while the node was down; 100 more acknowledged {:.1} s after the \
         kill), {} requests refused or unanswered (not \
         acknowledged), lost 0; the log holds {total} events, gapless, no id twice",
        acknowledged.positions.len(),
        elapsed.as_secs_f64(),
        resumed.as_secs_f64(),
        acknowledged.refused,
    );
}

/// The host running `module`, as `GET /cluster` on `host` says.
async fn runner_of(host: &Server, module: &str) -> Option<String> {
    let (status, cluster) = host.get("/cluster").await;
    if status != StatusCode::OK {
        return None;
    }
    cluster["hosts"]
        .as_array()?
        .iter()
        .find(|h| {
            h["alive"] == true
                && h["modules"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m == module))
        })
        .and_then(|h| h["id"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_resume_on_another_host_within_ten_seconds_exactly_once() {
    let _serial = crate::SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let mut hosts = hosts(&nats, 3, &[]).await;
    let (status, body) = hosts[0]
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let runner = loop {
        if let Some(runner) = runner_of(&hosts[0], "bank-account").await {
            break runner;
        }
        assert!(Instant::now() < deadline, "no host runs the module");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let victim = runner
        .strip_prefix("host-")
        .and_then(|n| n.parse::<usize>().ok())
        .expect("a host id")
        - 1;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let writers = start_writers(
        &[&hosts[survivors[0]], &hosts[survivors[1]]],
        3,
        &stop,
        &acknowledged,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, before) = hosts[survivors[0]].get("/projections/bank-account").await;
    assert!(
        before["position"].as_u64().unwrap_or(0) > 0,
        "the module runs: {before}"
    );
    hosts[victim].kill9();
    let killed = Instant::now();
    // Moved: another host runs it and answers for it.
    let observer = &hosts[survivors[0]];
    let moved_after = loop {
        let elsewhere = runner_of(observer, "bank-account")
            .await
            .is_some_and(|r| r != runner);
        let (status, _) = observer
            .get("/projections/bank-account/streams/account-0")
            .await;
        if elsewhere && status == StatusCode::OK {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the module did not move within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer");
    }
    let total = check_log(observer, &acknowledged.lock()).await;
    observer.wait_caught_up("bank-account").await;
    // Exactly once: every account's balance is the number of its deposits.
    let (_, listing) = observer.get("/streams?prefix=account-&limit=1000").await;
    let streams = listing["streams"].as_array().expect("streams");
    for stream in streams {
        let name = stream["stream"].as_str().unwrap();
        let deposits = stream["last_revision"].as_u64().unwrap() + 1;
        let (status, state) = hosts[survivors[1]]
            .get(&format!("/projections/bank-account/streams/{name}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{state}");
        assert_eq!(
            state["state"]["balance"].as_u64(),
            Some(deposits),
            "{name}: {state}"
        );
    }
    let (status, verdict) = observer.action("bank-account", "verify").await;
    assert_eq!(status, StatusCode::OK, "{verdict}");
    assert_eq!(
        verdict["matches"], true,
        "the moved module differs from a fresh replay: {verdict}"
    );
    println!(
        "the host running bank-account killed under load: it ran again on another host after \
         {:.2} s (from its checkpoint at or past {}); {} events acknowledged, lost 0, {} streams' \
         balances equal their deposits, verify matches a fresh replay of {total} events",
        moved_after.as_secs_f64(),
        before["position"],
        acknowledged.lock().positions.len(),
        streams.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_comes_back_after_the_whole_cluster_restarts() {
    let _serial = crate::SERIAL.lock().await;
    let mut nats = NatsCluster::start(3);
    let mut hosts = hosts(&nats, 2, &[]).await;
    let (status, body) = hosts[1]
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let writers = start_writers(&[&hosts[0], &hosts[1]], 3, &stop, &acknowledged);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer");
    }
    hosts[0].wait_caught_up("bank-account").await;
    let (_, before) = hosts[0].get("/streams?prefix=account-&limit=1000").await;
    // A consumer group with 100 events acked: its progress comes back too.
    let response = hosts[0]
        .client
        .put(hosts[0].path("/subscriptions/billing"))
        .json(&json!({"source": {"category": "account"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let (_, polled) = hosts[1]
        .post("/subscriptions/billing/poll?max=100", &json!(null))
        .await;
    let leases: Vec<&serde_json::Value> = polled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["lease"])
        .collect();
    assert_eq!(leases.len(), 100);
    let acked_positions: Vec<u64> = polled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"]["position"].as_u64().unwrap())
        .collect();
    let (_, acked) = hosts[0]
        .post("/subscriptions/billing/ack", &json!({ "leases": leases }))
        .await;
    assert_eq!(acked["acked"], 100, "{acked}");
    let mut stopping = Vec::new();
    for host in &mut hosts {
        let started = Instant::now();
        let status = host.terminate();
        assert!(status.success(), "a host stops cleanly: {status}");
        stopping.push(started.elapsed());
    }
    assert!(
        stopping.iter().all(|t| *t < Duration::from_secs(15)),
        "{stopping:?}"
    );
    for node in 0..3 {
        nats.kill9(node);
    }
    for node in 0..3 {
        nats.restart(node);
    }
    for host in &mut hosts {
        host.restart().await;
    }
    let total = check_log(&hosts[1], &acknowledged.lock()).await;
    let (_, after) = hosts[1].get("/streams?prefix=account-&limit=1000").await;
    assert_eq!(before, after);
    hosts[0].wait_caught_up("bank-account").await;
    for stream in after["streams"].as_array().unwrap() {
        let name = stream["stream"].as_str().unwrap();
        let (status, state) = hosts[0]
            .get(&format!("/projections/bank-account/streams/{name}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{state}");
        assert_eq!(
            state["state"]["balance"].as_u64(),
            Some(stream["last_revision"].as_u64().unwrap() + 1)
        );
    }
    let (status, group) = hosts[1].get("/subscriptions/billing").await;
    assert_eq!(status, StatusCode::OK, "{group}");
    assert_eq!(group["acked"], 100, "{group}");
    let (_, polled) = hosts[0]
        .post("/subscriptions/billing/poll?max=1000", &json!(null))
        .await;
    let again = polled["messages"].as_array().unwrap();
    assert!(!again.is_empty());
    assert!(
        again
            .iter()
            .all(|m| !acked_positions.contains(&m["event"]["position"].as_u64().unwrap())),
        "nothing acked before the restart comes again"
    );
    let ack = hosts[0]
        .append_ok(
            "account-restarted",
            &json!({"type": "Deposited", "data": {"amount": 1}}),
        )
        .await;
    assert_eq!(ack["first_position"].as_u64(), Some(total as u64));
    println!(
        "the whole cluster restarted: {total} events and every module state back; hosts \
         stopped in {stopping:?}"
    );
}
