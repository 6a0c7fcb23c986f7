//! Module figures, measured in-process on the real store and runners: rebuild rate beside
//! the same fold in native Rust over the same storage, and live lag from append
//! acknowledgement to module checkpoint.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use refold::engine::{ModuleLimits, WasmEngine};
use refold::modules::state::{ModuleState, StreamState};
use refold::modules::{Activation, Deployed, ModuleRegistry, ModuleSettings, Status};
use refold::store::{
    EventLog, EventStore, ExpectedRevision, Keyspaces, ProposedEvent, SledStore, StoreConfig,
    StreamName,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{percentile, report};

const ACCOUNTS: u64 = 10_000;
const ORDERS: u64 = 20_000;

/// The repository's top folder.
pub fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Builds the Rust example modules into `examples/dist/`.
pub fn build_examples(root: &Path) {
    build_examples_with(root, &[]);
}

/// Runs `examples/build.sh` with `args` (see its usage).
pub fn build_examples_with(root: &Path, args: &[&str]) {
    let status = std::process::Command::new("bash")
        .arg(root.join("examples/build.sh"))
        .args(args)
        .env("CARGO_TARGET_DIR", root.join("examples/target"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("examples/build.sh runs");
    assert!(status.success(), "examples/build.sh failed");
}

pub fn proposed(event_type: &str, data: serde_json::Value) -> ProposedEvent {
    ProposedEvent {
        id: uuid::Uuid::new_v4(),
        id_from_client: false,
        event_type: event_type.to_owned(),
        data: data.to_string(),
        metadata: "{}".to_owned(),
    }
}

/// Appends `count` events, 100 per append, from 32 concurrent tasks.
pub async fn fill(
    store: &Arc<SledStore>,
    count: u64,
    make: fn(u64, u64) -> (String, ProposedEvent),
) {
    fill_appends(store, 0..count / 100, 100, make).await;
}

/// Makes the appends numbered `appends` (`per_append` events each, `make(append, i)` gives
/// the stream and the i-th event) from 32 concurrent tasks. Numbering lets a large log be
/// built in slices that continue one another.
pub async fn fill_appends<F>(
    store: &Arc<SledStore>,
    appends: std::ops::Range<u64>,
    per_append: u64,
    make: F,
) where
    F: Fn(u64, u64) -> (String, ProposedEvent) + Copy + Send + 'static,
{
    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let store = store.clone();
            let appends = appends.clone();
            tokio::spawn(async move {
                let mut n = appends.start + task;
                while n < appends.end {
                    let (stream, _) = make(n, 0);
                    let events = (0..per_append).map(|i| make(n, i).1).collect();
                    store
                        .append(
                            StreamName::parse(&stream).unwrap(),
                            ExpectedRevision::Any,
                            events,
                        )
                        .await
                        .expect("append");
                    n += 32;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("fill task");
    }
}

/// The bank-account workload: 10,000 `account-*` streams, each opened once, then
/// deposits and withdrawals.
pub fn bank_event(append: u64, i: u64) -> (String, ProposedEvent) {
    let stream = format!("account-{}", append % ACCOUNTS);
    let event = match (append / ACCOUNTS, i) {
        (0, 0) => proposed("AccountOpened", json!({"owner": format!("owner-{append}")})),
        (_, i) if i % 3 == 0 => proposed("Withdrawn", json!({"amount": 3 + i})),
        (_, i) => proposed("Deposited", json!({"amount": 10 + i})),
    };
    (stream, event)
}

pub fn order_event(append: u64, i: u64) -> (String, ProposedEvent) {
    let order = (append * 25 + i / 4) % ORDERS;
    let stream = format!("order-{order}");
    let event = match i % 4 {
        0 => proposed(
            "OrderPlaced",
            json!({"customer": format!("c-{}", order % 500), "total": 20 + i}),
        ),
        1 => proposed("OrderPaid", json!({})),
        2 => proposed("OrderShipped", json!({})),
        _ => proposed("OrderCancelled", json!({})),
    };
    (stream, event)
}

#[derive(Default, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: i64,
    transactions: u64,
}

#[derive(Deserialize)]
struct Opened {
    owner: String,
}

#[derive(Deserialize)]
struct Movement {
    amount: i64,
}

/// The bank-account fold in native Rust, over the same log and the same kind of state
/// storage and commit policy as the module runner.
pub fn native_bank_fold(store: &SledStore, state: &ModuleState) -> u64 {
    let mut accounts: HashMap<String, (u64, Account)> = HashMap::new();
    let mut dirty: HashMap<String, ()> = HashMap::new();
    let mut folded = 0u64;
    let mut since_commit = 0u64;
    let mut next = 0;
    let head = store.head();
    while next < head {
        next = store
            .scan(next..head, &mut |e| {
                if !e.stream.starts_with("account-") {
                    return true;
                }
                let (revision, account) = accounts.entry(e.stream.to_owned()).or_default();
                *revision = e.revision;
                match e.event_type {
                    "AccountOpened" => {
                        account.owner = serde_json::from_str::<Opened>(e.data).ok().map(|o| o.owner)
                    }
                    "Deposited" | "Withdrawn" => {
                        let amount =
                            serde_json::from_str::<Movement>(e.data).map_or(0, |m| m.amount);
                        account.balance += if e.event_type == "Deposited" {
                            amount
                        } else {
                            -amount
                        };
                        account.transactions += 1;
                    }
                    _ => return true,
                }
                dirty.insert(e.stream.to_owned(), ());
                folded += 1;
                since_commit += 1;
                since_commit < 50_000
            })
            .expect("scan");
        let mut changes = refold::modules::state::Changes::default();
        for stream in dirty.keys() {
            let (revision, account) = &accounts[stream];
            let bytes = serde_json::to_vec(account).expect("json");
            changes.put_stream_state(
                stream,
                &StreamState {
                    revision: *revision,
                    bytes,
                },
            );
        }
        changes.commit(state, next).expect("commit");
        dirty.clear();
        since_commit = 0;
    }
    folded
}

/// Rebuild rounds of bank-account, each native then wasm.
const REBUILD_ROUNDS: usize = 3;

/// A module registry over `store`, with its compiled forms under `dir`.
pub fn open_registry(store: &Arc<SledStore>, dir: &Path) -> Arc<ModuleRegistry> {
    let engine = Arc::new(WasmEngine::new().expect("engine"));
    ModuleRegistry::open(
        engine,
        store.clone(),
        Some(store.clone()),
        store.clone(),
        dir.join("compiled"),
        ModuleLimits::default(),
        2,
    )
    .expect("registry")
}

/// A deploy, timed: the `PUT` itself, then the rebuild up to the log's head.
pub struct Rebuilt {
    pub deployed: Deployed,
    pub deploy: Duration,
    pub rebuild: Duration,
}

/// Deploys `wasm` as `name` and waits until it has processed the log up to its head.
pub async fn deploy_and_rebuild(
    registry: &ModuleRegistry,
    store: &SledStore,
    name: &str,
    wasm: &[u8],
) -> Rebuilt {
    let started = Instant::now();
    let deployed = registry
        .deploy(name, wasm, ModuleSettings::default(), Activation::Auto)
        .unwrap_or_else(|err| panic!("deploying {name}: {err}"));
    let deploy = started.elapsed();
    let started = Instant::now();
    let head = store.head();
    let progress = deployed
        .module
        .watch_progress()
        .wait_for(|p| p.checkpoint >= head || p.status == Status::Faulted)
        .await
        .expect("the runner publishes progress")
        .clone();
    assert!(
        progress.status != Status::Faulted,
        "{name} faulted: {:?}",
        progress.fault
    );
    Rebuilt {
        deployed,
        deploy,
        rebuild: started.elapsed(),
    }
}

/// How long a deploy took, and then its rebuild.
async fn rebuild(
    registry: &ModuleRegistry,
    store: &SledStore,
    name: &str,
    wasm: &[u8],
) -> (Duration, Duration) {
    let rebuilt = deploy_and_rebuild(registry, store, name, wasm).await;
    (rebuilt.deploy, rebuilt.rebuild)
}

pub async fn rebuild_and_lag(events: u64, seconds: f64) {
    let root = repo_root();
    build_examples(&root);
    let bank_wasm =
        std::fs::read(root.join("examples/dist/bank-account.wasm")).expect("bank-account.wasm");
    let orders_wasm =
        std::fs::read(root.join("examples/dist/order-summary.wasm")).expect("order-summary.wasm");

    let dir = tempfile::tempdir().expect("a temporary folder");
    let store =
        Arc::new(SledStore::open(&StoreConfig::new(dir.path().join("store"))).expect("store"));
    let filled = Instant::now();
    fill(&store, events, bank_event).await;
    println!(
        "(log: {} bank-account events written in {:.1} s)",
        store.head(),
        filled.elapsed().as_secs_f64()
    );

    let registry = open_registry(&store, dir.path());
    // Rounds alternate native and wasm, so that a noisy stretch of the machine hits both;
    // the best round of each is reported. The last wasm round stays deployed as
    // `bank-account` for the live-lag figure.
    let (mut native_rates, mut wasm_rates) = (Vec::new(), Vec::new());
    let mut put_rates = Vec::new();
    for round in 0..REBUILD_ROUNDS {
        let tree = store
            .open(&format!("bench/native-{round}"))
            .expect("keyspace");
        let started = Instant::now();
        let folded = native_bank_fold(&store, &ModuleState::new(tree));
        native_rates.push(folded as f64 / started.elapsed().as_secs_f64());
        let last = round + 1 == REBUILD_ROUNDS;
        let name = if last {
            "bank-account".to_owned()
        } else {
            format!("bank-account-{round}")
        };
        let (deploying, took) = rebuild(&registry, &store, &name, &bank_wasm).await;
        wasm_rates.push(store.head() as f64 / took.as_secs_f64());
        put_rates.push(store.head() as f64 / (deploying + took).as_secs_f64());
        if !last {
            registry.remove(&name).expect("remove");
        }
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    let (native_rate, wasm_rate) = (best(&native_rates), best(&wasm_rates));
    let rounds = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{:.2}", r / 1e6))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "(rebuild rounds, M events/s: wasm {}; native {})",
        rounds(&wasm_rates),
        rounds(&native_rates)
    );
    println!(
        "(the same rounds timed from the deploy's start, compiling included: {})",
        rounds(&put_rates)
    );
    if std::env::var_os("REFOLD_BENCH_DETAIL").is_some() {
        let module = registry.get("bank-account").expect("deployed");
        let busy = module
            .counters
            .busy_micros
            .load(std::sync::atomic::Ordering::Relaxed);
        println!("(guest calls in the last round: {busy} µs)");
    }
    report(
        "rebuild bank-account (wasm module, best round)",
        wasm_rate,
        "events/s",
        "≥ 1,000,000",
    );
    report(
        "  same fold in native Rust, same storage, best round",
        native_rate,
        "events/s",
        "",
    );
    println!(
        "{:<52} {:>14.2} {:<10} target ≤ 3",
        "  native / wasm",
        native_rate / wasm_rate,
        "×"
    );

    let before = store.head();
    fill(&store, events / 2, order_event).await;
    let order_events = store.head() - before;
    let (_, took) = rebuild(&registry, &store, "order-summary", &orders_wasm).await;
    report(
        &format!(
            "rebuild order-summary ({order_events} of {} events wanted)",
            store.head()
        ),
        order_events as f64 / took.as_secs_f64(),
        "events/s",
        "",
    );

    live_lag(&registry, &store, seconds).await;
    call_overhead(&bank_wasm);
    registry.shutdown();
}

/// A steady append load; for each acknowledged event, the time until bank-account's
/// committed checkpoint passes it.
async fn live_lag(registry: &ModuleRegistry, store: &Arc<SledStore>, seconds: f64) {
    let module = registry.get("bank-account").expect("deployed");
    let acks: Arc<parking_lot::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let appenders: Vec<_> = (0..8u64)
        .map(|task| {
            let (store, acks) = (store.clone(), acks.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                while Instant::now() < stop {
                    tick.tick().await;
                    let stream =
                        StreamName::parse(&format!("account-{}", (task * 1_000 + n) % ACCOUNTS))
                            .unwrap();
                    let outcome = store
                        .append(
                            stream,
                            ExpectedRevision::Any,
                            vec![proposed("Deposited", json!({"amount": 1}))],
                        )
                        .await
                        .expect("append");
                    acks.lock().push((outcome.last_position, Instant::now()));
                    n += 1;
                }
            })
        })
        .collect();
    let mut progress = module.watch_progress();
    let mut lags = Vec::new();
    let mut measured = 0usize;
    let watcher_deadline = stop + Duration::from_secs(5);
    while Instant::now() < watcher_deadline {
        if tokio::time::timeout(Duration::from_millis(100), progress.changed())
            .await
            .is_err()
        {
            if Instant::now() > stop {
                break;
            }
            continue;
        }
        let checkpoint = progress.borrow().checkpoint;
        let now = Instant::now();
        let mut acks = acks.lock();
        acks.sort_unstable_by_key(|(p, _)| *p);
        let done = acks.partition_point(|(p, _)| *p < checkpoint);
        for (_, acked) in acks.drain(..done) {
            lags.push(now.saturating_duration_since(acked));
            measured += 1;
        }
    }
    for task in appenders {
        task.await.expect("appender");
    }
    lags.sort_unstable();
    println!(
        "{:<52} {:>14.2} {:<10} target",
        format!("live lag, ack → checkpoint ({measured} events, ~4,000/s)"),
        percentile(&lags, 0.50).as_secs_f64() * 1e3,
        "ms p50"
    );
    println!(
        "{:<52} {:>14.2} {:<10} target < 20 ms",
        "",
        percentile(&lags, 0.99).as_secs_f64() * 1e3,
        "ms p99"
    );
}

/// The cost of entering the guest with limits on (epoch deadline, memory limiter): an empty
/// call, a call with one event, and the per-event cost of a call with 1,000.
pub fn call_overhead(bank_wasm: &[u8]) {
    use refold::engine::Guest;
    use refold::engine::bindings::{Event, StreamBatch};
    use refold::engine::sandbox::GuestLog;

    let engine = Arc::new(WasmEngine::new().expect("engine"));
    let component = WasmEngine::to_component(bank_wasm).expect("a component");
    let compiled = Arc::new(engine.compile(&component).expect("compiles"));
    let mut guest = Guest::new(
        engine,
        compiled,
        ModuleLimits::default(),
        GuestLog::new(64 * 1024),
    );
    let event = |revision: u64| Event {
        id: uuid::Uuid::new_v4().to_string(),
        stream_id: "account-1".into(),
        revision,
        position: revision,
        event_type: "Deposited".into(),
        data: r#"{"amount":5}"#.into(),
        metadata: "{}".into(),
        recorded_at: 0,
    };
    let calls = 20_000u32;
    let started = Instant::now();
    for _ in 0..calls {
        guest.filter().expect("filter");
    }
    let empty = started.elapsed() / calls;
    let mut state: Option<Vec<u8>> = None;
    let started = Instant::now();
    for revision in 0..u64::from(calls) {
        let batch = StreamBatch {
            stream_id: "account-1".into(),
            state: state.take(),
            events: vec![event(revision)],
        };
        state = Some(
            guest
                .apply(&[batch])
                .expect("apply")
                .remove(0)
                .expect("accepted"),
        );
    }
    let single = started.elapsed() / calls;
    let events: Vec<Event> = (0..1_000).map(event).collect();
    let started = Instant::now();
    for _ in 0..20 {
        let batch = StreamBatch {
            stream_id: "account-1".into(),
            state: state.take(),
            events: events.clone(),
        };
        state = Some(
            guest
                .apply(&[batch])
                .expect("apply")
                .remove(0)
                .expect("accepted"),
        );
    }
    let per_event = started.elapsed() / 20_000;
    println!(
        "{:<52} {:>14.2} {:<10}",
        "guest call, empty (limits on)",
        empty.as_secs_f64() * 1e6,
        "µs"
    );
    println!(
        "{:<52} {:>14.2} {:<10}",
        "guest call, apply 1 event",
        single.as_secs_f64() * 1e6,
        "µs"
    );
    println!(
        "{:<52} {:>14.0} {:<10}",
        "guest call, apply 1,000 events: per event",
        per_event.as_secs_f64() * 1e9,
        "ns"
    );
}
