//! Consumer groups: delivered-and-acked events/s with 4 workers polling 100 at a time,
//! beside the append rate in the same run: first over a log filled beforehand (catch-up),
//! then live, with appends and workers running together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Server, append_load};

const WORKERS: usize = 4;
const BATCH: usize = 100;
/// Events in the log before the catch-up phase.
const BACKLOG_SECONDS_OF_APPENDS: f64 = 2.0;
const TARGET: f64 = 100_000.0;

pub async fn run(seconds: f64) {
    let server = Server::start().await;
    let (append_rate, _) =
        append_load(&server.url, 16, 100, false, BACKLOG_SECONDS_OF_APPENDS).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .expect("an HTTP client");
    let head: u64 = client
        .get(format!("{}/health", server.url))
        .send()
        .await
        .expect("health")
        .json::<Value>()
        .await
        .expect("health JSON")["head"]
        .as_u64()
        .expect("a head");
    let created = client
        .put(format!("{}/subscriptions/bench", server.url))
        .json(&json!({"ack_timeout_ms": 60000}))
        .send()
        .await
        .expect("create answered");
    assert!(created.status().is_success(), "the group was not created");

    // Catch-up: the backlog, as fast as 4 workers go.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers = start_workers(&client, &server.url, &acked, &stop);
    while acked.load(Ordering::Relaxed) < head && started.elapsed().as_secs_f64() < seconds * 4.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let caught_up = acked.load(Ordering::Relaxed);
    let catch_up_rate = caught_up as f64 / started.elapsed().as_secs_f64();

    // Live: appends and the same workers together.
    let before = acked.load(Ordering::Relaxed);
    let live_started = Instant::now();
    let (live_append_rate, _) = append_load(&server.url, 16, 100, false, seconds).await;
    let live_rate =
        (acked.load(Ordering::Relaxed) - before) as f64 / live_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("a worker");
    }
    let status: Value = client
        .get(format!("{}/subscriptions/bench", server.url))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("status JSON");
    println!(
        "| phase | appended events/s | delivered and acked events/s ({WORKERS} workers × {BATCH}) |"
    );
    println!("|---|---|---|");
    println!(
        "| catch-up over {head} events | {append_rate:.0} (filling the backlog) | {catch_up_rate:.0} ({caught_up} events) |"
    );
    println!("| live, appending meanwhile | {live_append_rate:.0} | {live_rate:.0} |");
    println!(
        "group at the end: position {}, lag {}, in flight {}, acked {}",
        status["position"], status["lag"], status["in_flight"], status["acked"]
    );
    println!(
        "consumer groups: {catch_up_rate:.0} delivered and acked events/s (target ≥ {TARGET:.0}) {}",
        if catch_up_rate >= TARGET {
            "ok"
        } else {
            "BELOW TARGET"
        }
    );
}

/// What a worker reads of a poll's answer (the events are skipped, not built).
#[derive(serde::Deserialize)]
struct Polled {
    messages: Vec<Message>,
}

#[derive(serde::Deserialize)]
struct Message {
    lease: String,
}

fn start_workers(
    client: &reqwest::Client,
    url: &str,
    acked: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WORKERS)
        .map(|w| {
            let (client, url, acked, stop) =
                (client.clone(), url.to_owned(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer: Polled = client
                        .post(format!(
                            "{url}/subscriptions/bench/poll?max={BATCH}&wait_ms=100&worker=w{w}"
                        ))
                        .send()
                        .await
                        .expect("poll answered")
                        .json()
                        .await
                        .expect("poll JSON");
                    let leases: Vec<String> =
                        answer.messages.into_iter().map(|m| m.lease).collect();
                    if leases.is_empty() {
                        continue;
                    }
                    let settled: Value = client
                        .post(format!("{url}/subscriptions/bench/ack"))
                        .json(&json!({ "leases": leases }))
                        .send()
                        .await
                        .expect("ack answered")
                        .json()
                        .await
                        .expect("ack JSON");
                    acked.fetch_add(settled["acked"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
            })
        })
        .collect()
}
