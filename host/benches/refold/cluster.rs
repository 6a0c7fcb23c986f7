//! Cluster mode against the embedded store and against JetStream itself: single and
//! batched appends and a module rebuild on (a) the embedded sled store, (b) one NATS node,
//! (c) a 3-node JetStream cluster (R3); and, as the engine's own ceiling, raw JetStream
//! publishes with expected-sequence checks from the same client library at the same
//! concurrency, so that Refold's overhead is a visible ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use serde_json::Value;

use super::{Server, append_load, percentile};

#[path = "../../../tests/cluster/nats_cluster.rs"]
#[allow(dead_code)]
mod nats_cluster;
use nats_cluster::NatsCluster;

/// Concurrent clients of the single-event loads, Refold's and raw JetStream's alike.
const CLIENTS: usize = 64;
/// Events per request of the batched load, and its clients.
const BATCH: usize = 100;
const BATCH_CLIENTS: usize = 16;

struct Figures {
    single: f64,
    single_p99_ms: f64,
    batched: f64,
    rebuild: f64,
    rebuilt_events: u64,
}

pub async fn run(seconds: f64) {
    let mut rows: Vec<(String, Figures)> = Vec::new();
    {
        let server = Server::start_with(&[]).await;
        rows.push((
            "embedded sled store".into(),
            measure(&server, seconds).await,
        ));
    }
    let mut raw = Vec::new();
    for nodes in [1usize, 3] {
        let nats = NatsCluster::start(nodes);
        let urls = nats.urls();
        let server = Server::start_with(&["--nats", &urls]).await;
        let label = if nodes == 1 {
            "1 NATS node (R1)"
        } else {
            "3-node JetStream cluster (R3)"
        };
        rows.push((
            format!("Refold on {label}"),
            measure(&server, seconds).await,
        ));
        drop(server);
        raw.push((label, raw_publish(&nats, nodes, seconds).await));
    }
    println!();
    println!(
        "| backend | single appends/s ({CLIENTS} clients) | p99 | batched appends/s ({BATCH_CLIENTS} × {BATCH}) | rebuild events/s |"
    );
    println!("|---|---|---|---|---|");
    for (name, f) in &rows {
        println!(
            "| {name} | {:.0} | {:.1} ms | {:.0} | {:.0} ({} events) |",
            f.single, f.single_p99_ms, f.batched, f.rebuild, f.rebuilt_events
        );
    }
    for (label, rate) in &raw {
        println!("| raw JetStream publish, {label} | {rate:.0} | | | |");
    }
    println!();
    for ((label, rate), (_, refold)) in raw.iter().zip(rows.iter().skip(1)) {
        let ratio = refold.single / rate;
        println!(
            "Refold / raw JetStream, {label}, single appends at {CLIENTS}: {ratio:.2} (target ≥ 0.5) {}",
            if ratio >= 0.5 { "ok" } else { "BELOW TARGET" }
        );
    }
}

async fn measure(server: &Server, seconds: f64) -> Figures {
    let (single, latencies) = append_load(&server.url, CLIENTS, 1, false, seconds).await;
    let single_p99_ms = percentile(&latencies, 0.99).as_secs_f64() * 1e3;
    let (batched, _) = append_load(&server.url, BATCH_CLIENTS, BATCH, false, seconds).await;
    let (rebuild, rebuilt_events) = rebuild(server).await;
    println!(
        "  {}: single {single:.0}/s (p99 {single_p99_ms:.1} ms), batched {batched:.0}/s, rebuild {rebuild:.0}/s",
        server.url
    );
    Figures {
        single,
        single_p99_ms,
        batched,
        rebuild,
        rebuilt_events,
    }
}

/// Deploys bank-account over the log the loads left and times it catching up.
async fn rebuild(server: &Server) -> (f64, u64) {
    let client = reqwest::Client::new();
    let health: Value = client
        .get(format!("{}/health", server.url))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("JSON");
    let head = health["head"].as_u64().expect("a head");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();
    let wasm = std::fs::read(root.join("examples/dist/bank-account.wasm"))
        .expect("examples/dist/bank-account.wasm (scripts/setup.sh builds it)");
    let started = Instant::now();
    let response = client
        .put(format!("{}/projections/bank-account", server.url))
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await
        .expect("deploy answered");
    assert!(response.status().is_success(), "deploy failed");
    loop {
        let module: Value = client
            .get(format!("{}/projections/bank-account", server.url))
            .send()
            .await
            .expect("module answered")
            .json()
            .await
            .expect("JSON");
        if module["position"].as_u64().is_some_and(|p| p >= head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (head as f64 / started.elapsed().as_secs_f64(), head)
}

/// Raw JetStream: `CLIENTS` tasks publishing one message at a time, each to its own
/// subjects with the subject's expected last sequence, like Refold's single appends.
async fn raw_publish(nats: &NatsCluster, replicas: usize, seconds: f64) -> f64 {
    let urls: Vec<async_nats::ServerAddr> = nats
        .urls()
        .split(',')
        .map(|u| u.parse().expect("a URL"))
        .collect();
    let client = async_nats::connect(urls.as_slice())
        .await
        .expect("NATS answers");
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .expect("a stream");
    let payload = bytes::Bytes::from_static(
        br#"{"id":"6f1c9a52-5d0c-4f5e-8a44-1c7e0f3a9b21","stream":"account-4711","revision":12,"type":"Deposited","data":{"amount":100,"note":"benchmark"},"metadata":{}}"#,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (js, stop, published, payload) =
            (js.clone(), stop.clone(), published.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = [0u64; 16];
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let k = n % last.len();
                n += 1;
                let message = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(uuid::Uuid::new_v4().to_string())
                    .expected_last_subject_sequence(last[k]);
                let ack = js
                    .send_publish(format!("raw.{c}.{k}"), message)
                    .await
                    .expect("published")
                    .await
                    .expect("acknowledged");
                last[k] = ack.sequence;
                published.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a publisher");
    }
    let rate = published.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("  raw JetStream, R{replicas}: {rate:.0} publishes/s");
    rate
}
