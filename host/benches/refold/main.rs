//! Refold's benchmark: starts the real server and measures it over HTTP, printing each
//! figure beside its target from the design contract.
//!
//! `cargo bench -p refold --bench refold` runs the HTTP and module sections. Flags (after
//! `--`):
//!
//! - `--seconds N`: length of each timed phase (default 5).
//! - `--events N`: events in the module rebuild log (default 1,000,000).
//! - `--peer postgres`: also run the HTTP section's append workloads against PostgreSQL
//!   (started by the benchmark on a temporary folder; see `peer.rs`), with ratios.
//! - `--restart`: also the restart and memory section on a large log (see `restart.rs`;
//!   it builds 10 million events, which takes minutes); `--restart-events N` to change that.
//! - `--languages`: also the per-language section (see `languages.rs`: the examples in
//!   Rust, JavaScript, Python and C; the first run installs their toolchains);
//!   `--language-events N` for its log (default 200,000).
//! - `--cluster`: also cluster mode (see `cluster.rs`: appends and a rebuild on the embedded
//!   store, one NATS node and a 3-node JetStream cluster, beside raw JetStream publishes;
//!   the first run installs nats-server from PyPI).
//! - `--shapes`: also rebuild rates by the log's shape (1 M events over 10,000 and over
//!   100,000 streams; `--shapes-large` adds 10 M events; `--shapes-streams N` keeps the
//!   shapes over N streams alone), wasm beside native.
//! - `--only http|groups|modules|history|languages|restart|cluster|shapes`: one section alone
//!   (`--modules-only` is `--only modules`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod cluster;
mod groups;
mod history;
mod languages;
mod modules;
mod peer;
mod restart;
mod shapes;

struct Server {
    url: String,
    child: Child,
    _data: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A server with extra `serve` arguments.
    async fn start_with(args: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let data = tempfile::tempdir().expect("a temporary folder");
        let child = Command::new(env!("CARGO_BIN_EXE_refold"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data.path().join("store"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("refold starts");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..500 {
            if client.get(format!("{url}/health")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            url,
            child,
            _data: data,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, value: f64, unit: &str, target: &str) {
    println!("{name:<52} {value:>14.0} {unit:<10} target {target}");
}

/// A ratio between two figures, in the same columns as [`report`].
fn ratio(name: &str, value: f64) {
    println!("{name:<52} {value:>14.2} {:<10}", "×");
}

/// Size on disk of a file or folder, as `du` counts it (allocated blocks).
fn disk_usage(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if meta.is_dir() {
        let inside: u64 = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| disk_usage(&entry.path()))
            .sum();
        own + inside
    } else {
        own
    }
}

/// Resident memory of process `pid` ("self" for this one): (VmRSS, VmHWM) in MiB, from
/// `/proc/<pid>/status`. VmHWM is the peak resident size so far.
fn memory_mib(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The HTTP section's figures that the peer comparison sets beside its own.
#[derive(Default)]
pub struct AppendFigures {
    pub single_rate: f64,
    pub single_p99_micros: f64,
    pub batch_rate: f64,
    /// Events in the store after both loads, and the store's size on disk.
    pub events: u64,
    pub disk_bytes: u64,
}

/// `clients` tasks append `batch` events per request to random streams for `seconds`.
/// Returns events/s and the sorted request latencies.
/// Appends from `clients` concurrent clients, `batch` events per request, for `seconds`;
/// with `ids`, every event carries a new client-chosen id (so the store checks each one
/// against every id in the log). Returns events/s and the request latencies.
async fn append_load(
    url: &str,
    clients: usize,
    batch: usize,
    ids: bool,
    seconds: f64,
) -> (f64, Vec<Duration>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("an HTTP client");
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, stop, events, url) =
            (client.clone(), stop.clone(), events.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            let make_body = || {
                let event = |i: usize| {
                    let mut event =
                        json!({"type": "Deposited", "data": {"amount": i, "note": "benchmark"}});
                    if ids {
                        event["id"] = json!(uuid::Uuid::new_v4().to_string());
                    }
                    event
                };
                let body: Value = if batch == 1 {
                    event(100)
                } else {
                    json!((0..batch).map(event).collect::<Vec<_>>())
                };
                serde_json::to_vec(&body).expect("JSON")
            };
            let fixed = make_body();
            while !stop.load(Ordering::Relaxed) {
                let body = if ids { make_body() } else { fixed.clone() };
                let stream = format!("account-{}", (c as u64 * 7919 + n * 104_729) % 10_000);
                n += 1;
                let sent = Instant::now();
                let response = client
                    .post(format!("{url}/streams/{stream}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("append answered");
                assert_eq!(response.status(), 201, "append failed");
                let _ = response.bytes().await;
                latencies.push(sent.elapsed());
                events.fetch_add(batch as u64, Ordering::Relaxed);
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    (events.load(Ordering::Relaxed) as f64 / elapsed, latencies)
}

/// Reads the whole log through `/all` in pages of 10,000; returns events/s.
async fn read_all(url: &str) -> (f64, u64) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut from = 0u64;
    let mut total = 0u64;
    loop {
        let body: Value = client
            .get(format!("{url}/all?from={from}&limit=10000"))
            .send()
            .await
            .expect("read answered")
            .json()
            .await
            .expect("JSON page");
        total += body["events"].as_array().map_or(0, |e| e.len() as u64);
        match body["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    (total as f64 / started.elapsed().as_secs_f64(), total)
}

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The event store over HTTP: both append loads and a full `/all` read, on a fresh server.
async fn http_section(seconds: f64) -> AppendFigures {
    println!("## Event store over HTTP");
    let server = Server::start().await;
    let mut figures = AppendFigures::default();

    let (rate, latencies) = append_load(&server.url, 64, 1, false, seconds).await;
    figures.single_rate = rate;
    figures.single_p99_micros = percentile(&latencies, 0.99).as_secs_f64() * 1e6;
    report(
        "durable single-event appends, 64 clients",
        rate,
        "events/s",
        "≥ 20,000",
    );
    report(
        "  append latency p50",
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        "µs",
        "",
    );
    report("  append latency p99", figures.single_p99_micros, "µs", "");

    let (rate, latencies) = append_load(&server.url, 16, 100, false, seconds).await;
    figures.batch_rate = rate;
    report(
        "durable batched appends (100/request), 16 clients",
        rate,
        "events/s",
        "≥ 300,000",
    );
    report(
        "  request latency p50",
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        "µs",
        "",
    );
    report(
        "  request latency p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        "µs",
        "",
    );

    // The same loads with a client-chosen id on every event: each is checked against every
    // id in the log (the id index), so this shows what the check costs.
    let (rate, latencies) = append_load(&server.url, 64, 1, true, seconds).await;
    report(
        "  the same, every event with a client id",
        rate,
        "events/s",
        "≥ 20,000",
    );
    report(
        "    append latency p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        "µs",
        "",
    );
    let (rate, latencies) = append_load(&server.url, 16, 100, true, seconds).await;
    report(
        "  batched, every event with a client id",
        rate,
        "events/s",
        "≥ 300,000",
    );
    report(
        "    request latency p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        "µs",
        "",
    );

    let (rate, total) = read_all(&server.url).await;
    report(
        &format!("/all read ({total} events, pages of 10,000)"),
        rate,
        "events/s",
        "",
    );
    figures.events = total;
    figures.disk_bytes = disk_usage(server._data.path());
    figures
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: f64 = arg("--seconds", 5.0);
    let events: u64 = arg("--events", 1_000_000);
    let restart_events: u64 = arg("--restart-events", 10_000_000);
    // The restart section runs some of its phases in child processes of this benchmark, so
    // that each phase's memory figures are its own.
    let phase: String = arg("--restart-phase", String::new());
    if !phase.is_empty() {
        let dir: std::path::PathBuf = arg("--restart-dir", std::path::PathBuf::new());
        restart::phase(&phase, &dir).await;
        return;
    }
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let only: String = if flag("--modules-only") {
        "modules".into()
    } else {
        arg("--only", String::new())
    };
    let peer: String = arg("--peer", String::new());
    let section = |name: &str| only.is_empty() || only == name;
    println!(
        "Refold benchmark ({} cores, {seconds} s per timed phase)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if section("http") {
        println!();
        let figures = http_section(seconds).await;
        match peer.as_str() {
            "" => {}
            "postgres" | "postgresql" => {
                println!();
                println!("## Peer: PostgreSQL as an event store, same append workloads");
                peer::compare_postgres(&figures, seconds).await;
            }
            other => println!("unknown peer {other:?}: the one supported is `--peer postgres`"),
        }
    }
    if section("groups") {
        println!();
        println!("## Consumer groups");
        groups::run(seconds).await;
    }
    if section("modules") {
        println!();
        println!("## Modules");
        modules::rebuild_and_lag(events, seconds).await;
    }
    if section("history") {
        println!();
        println!("## Time travel: a reducer's past state on a long stream");
        history::run().await;
    }
    if only == "languages" || (only.is_empty() && flag("--languages")) {
        println!();
        println!("## Languages: the examples in Rust, JavaScript, Python and C");
        languages::run(arg("--language-events", 200_000)).await;
    }
    if only == "cluster" || (only.is_empty() && flag("--cluster")) {
        println!();
        println!("## Cluster mode: the embedded store, one NATS node, a 3-node JetStream cluster");
        cluster::run(seconds).await;
    }
    if only == "shapes" || (only.is_empty() && flag("--shapes")) {
        println!();
        println!("## Rebuild by the log's shape (events × streams)");
        shapes::run(flag("--shapes-large"), arg("--shapes-streams", 0)).await;
    }
    if only == "restart" || (only.is_empty() && flag("--restart")) {
        println!();
        println!(
            "## Restart and memory, {restart_events} events, {} modules",
            restart::MODULES
        );
        restart::run(restart_events).await;
    }
}
