//! A server in this process, on an ephemeral port: state queries keep being answered fast
//! while a verify of a million-event module runs, and while a new version rebuilds and
//! takes over. Figures are printed; the bound asserted is 50 ms at the 99th percentile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use refold::engine::ModuleLimits;
use refold::http::Limits;
use refold::server::{RunningServer, ServerConfig};
use refold::store::{ExpectedRevision, ProposedEvent, StreamName};
use serde_json::Value;

use crate::support::{example, test_guest};

const EVENTS: u64 = 1_000_000;
const ACCOUNTS: u64 = 10_000;
const P99_BOUND: Duration = Duration::from_millis(50);

async fn start(dir: &std::path::Path) -> RunningServer {
    refold::server::start(ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        limits: Limits::default(),
        module_limits: ModuleLimits::default(),
        keep_versions: 1,
        tokens: Arc::default(),
        insecure: false,
        cache_bytes: 256 * 1024 * 1024,
        deploy: Vec::new(),
        cluster: None,
    })
    .await
    .expect("the server starts in this process")
}

/// `EVENTS` deposits over `ACCOUNTS` accounts, appended straight to the store.
async fn fill(server: &RunningServer) {
    let per_stream = EVENTS / ACCOUNTS;
    let appends = (0..ACCOUNTS).map(|account| {
        let events = (0..per_stream)
            .map(|i| ProposedEvent {
                id: uuid::Uuid::new_v4(),
                id_from_client: false,
                event_type: "Deposited".into(),
                data: format!("{{\"amount\":{}}}", i + 1),
                metadata: "{}".into(),
            })
            .collect();
        let stream = StreamName::parse(&format!("account-{account}")).unwrap();
        server.store.append(stream, ExpectedRevision::Any, events)
    });
    let appended: Vec<_> = futures::future::join_all(appends).await;
    assert!(appended.iter().all(Result::is_ok));
}

async fn get(client: &reqwest::Client, url: &str) -> (reqwest::StatusCode, Value) {
    let response = client.get(url).send().await.expect("a response");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_current(client: &reqwest::Client, base: &str, version: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, body) = get(client, &format!("{base}/projections/bank")).await;
        let current = version.is_none_or(|v| body["version"] == v);
        if current && body["status"] == "running" && body["lag"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "not caught up: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Queries account states one after another until told to stop; their latencies.
fn query_loop(
    client: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            let url = format!(
                "{base}/projections/bank/streams/account-{}",
                i * 7919 % ACCOUNTS
            );
            let started = Instant::now();
            let (status, body) = get(&client, &url).await;
            latencies.push(started.elapsed());
            assert_eq!(status, 200, "{body}");
            assert!(body["state"]["balance"].as_i64().unwrap_or(0) > 0, "{body}");
            i += 1;
        }
        latencies
    })
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort();
    let at = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
    latencies[at]
}

fn report(what: &str, mut latencies: Vec<Duration>, took: Duration) -> Duration {
    let p50 = percentile(&mut latencies, 0.50);
    let p99 = percentile(&mut latencies, 0.99);
    let max = latencies.last().copied().unwrap_or_default();
    println!(
        "{what}: {} queries in {took:.2?}: p50 {p50:.2?}, p99 {p99:.2?}, max {max:.2?}",
        latencies.len()
    );
    p99
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_queries_wait_neither_on_a_verify_nor_on_a_deploys_switch() {
    let _quiet = crate::QUIET.write();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let base = format!("http://{}", server.address);
    let client = reqwest::Client::new();
    fill(&server).await;
    let deployed = client
        .put(format!("{base}/projections/bank"))
        .header("content-type", "application/wasm")
        .body(example("bank-account.wasm"))
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), 201);
    wait_current(&client, &base, None).await;

    // A verify of the million events, with queries all along.
    let stop = Arc::new(AtomicBool::new(false));
    let queries = query_loop(client.clone(), base.clone(), stop.clone());
    let started = Instant::now();
    let response = client
        .post(format!("{base}/projections/bank/verify"))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Release);
    let latencies = queries.await.unwrap();
    let (status, verification): (_, Value) = (response.status(), response.json().await.unwrap());
    assert_eq!(status, 200, "{verification}");
    assert_eq!(verification["matches"], true, "{verification}");
    assert_eq!(verification["position"], EVENTS, "{verification}");
    let p99 = report("during a verify of 1 M events", latencies, took);
    assert!(p99 <= P99_BOUND, "a verify delayed queries: p99 {p99:?}");

    // A new version rebuilds the million events and takes over, queries all along.
    let stop = Arc::new(AtomicBool::new(false));
    let queries = query_loop(client.clone(), base.clone(), stop.clone());
    let started = Instant::now();
    let response = client
        .put(format!("{base}/projections/bank"))
        .header("content-type", "application/wasm")
        .body(test_guest("bank-account-fee"))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let version = body["version"].as_str().expect("a version").to_owned();
    wait_current(&client, &base, Some(&version)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Release);
    let latencies = queries.await.unwrap();
    let p99 = report("during a deploy's rebuild and switch", latencies, took);
    assert!(
        p99 <= P99_BOUND,
        "a deploy's switch delayed queries: p99 {p99:?}"
    );
    server.stop().await.expect("a clean stop");
}
