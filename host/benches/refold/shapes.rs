//! Rebuild rate by the log's shape: bank-account (wasm, guest contract 0.1 and 0.2) and
//! the same fold in native Rust
//! over logs of 1 M (and, with `--shapes-large`, 10 M) events spread over 10,000 and over
//! 100,000 streams, each measured in-process from the deploy to the checkpoint reaching the
//! head. A log's events are appended round-robin over its streams (an account's events are
//! far apart in the log, as in a live system), up to 100 per append.

use std::sync::Arc;
use std::time::Instant;

use refold::modules::state::ModuleState;
use refold::store::{EventLog, Keyspaces, SledStore, StoreConfig};
use serde_json::json;

use super::modules::{
    build_examples, deploy_and_rebuild, fill_appends, native_bank_fold, open_registry, proposed,
    repo_root,
};

/// One shape: events and streams.
struct Shape {
    events: u64,
    streams: u64,
}

/// Appends `shape.events` bank-account events over `shape.streams` streams.
async fn fill(store: &Arc<SledStore>, shape: &Shape) {
    let per_append = (shape.events / shape.streams).clamp(1, 100);
    let streams = shape.streams;
    let make = move |n: u64, i: u64| {
        let event = match (n / streams, i) {
            (0, 0) => proposed("AccountOpened", json!({"owner": format!("owner-{n}")})),
            (_, i) if i % 3 == 0 => proposed("Withdrawn", json!({"amount": 3 + i})),
            (_, i) => proposed("Deposited", json!({"amount": 10 + i})),
        };
        (format!("account-{}", n % streams), event)
    };
    fill_appends(store, 0..shape.events / per_append, per_append, make).await;
}

/// `streams`: only the shapes over this many streams (0: all).
pub async fn run(large: bool, streams: u64) {
    let root = repo_root();
    build_examples(&root);
    let bank_v02 =
        std::fs::read(root.join("examples/dist/bank-account.wasm")).expect("bank-account.wasm");
    let bank_v01 = std::fs::read(root.join("examples/dist/bank-account.v0.1.wasm"))
        .expect("bank-account.v0.1.wasm");
    let mut shapes = vec![
        Shape {
            events: 1_000_000,
            streams: 10_000,
        },
        Shape {
            events: 1_000_000,
            streams: 100_000,
        },
    ];
    if large {
        shapes.push(Shape {
            events: 10_000_000,
            streams: 10_000,
        });
        shapes.push(Shape {
            events: 10_000_000,
            streams: 100_000,
        });
    }
    shapes.retain(|shape| streams == 0 || shape.streams == streams);
    println!(
        "| events | streams | fill events/s | wasm 0.1 rebuild events/s | wasm 0.2 rebuild events/s | native events/s | native / 0.2 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for shape in &shapes {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store =
            Arc::new(SledStore::open(&StoreConfig::new(dir.path().join("store"))).expect("store"));
        let started = Instant::now();
        fill(&store, shape).await;
        let fill_rate = store.head() as f64 / started.elapsed().as_secs_f64();
        let tree = store.open("bench/native").expect("keyspace");
        let started = Instant::now();
        let folded = native_bank_fold(&store, &ModuleState::new(tree));
        let native = folded as f64 / started.elapsed().as_secs_f64();
        let registry = open_registry(&store, dir.path());
        let rebuilt = deploy_and_rebuild(&registry, &store, "bank-account", &bank_v01).await;
        let v01 = store.head() as f64 / rebuilt.rebuild.as_secs_f64();
        let rebuilt = deploy_and_rebuild(&registry, &store, "bank-account-v2", &bank_v02).await;
        let v02 = store.head() as f64 / rebuilt.rebuild.as_secs_f64();
        registry.shutdown();
        println!(
            "| {} | {} | {fill_rate:.0} | {v01:.0} | {v02:.0} | {native:.0} | {:.2} |",
            shape.events,
            shape.streams,
            native / v02
        );
    }
}
