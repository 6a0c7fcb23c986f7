//! Time-travel figures (`--only history`): the cost of asking a reducer for a stream's
//! state at a past revision or time on a 100,000-event stream. Snapshots every 1,000
//! revisions bound the replay, so the cost should not grow with the revision asked for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use refold::modules::Point;
use refold::store::{EventLog, EventStore, ExpectedRevision, SledStore, StoreConfig, StreamName};
use serde_json::json;

use super::modules::{build_examples, deploy_and_rebuild, open_registry, proposed, repo_root};

const EVENTS: u64 = 100_000;
/// Queries per point; the median is reported.
const REPEATS: usize = 5;

pub async fn run() {
    let root = repo_root();
    build_examples(&root);
    let bank_wasm =
        std::fs::read(root.join("examples/dist/bank-account.wasm")).expect("bank-account.wasm");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store =
        Arc::new(SledStore::open(&StoreConfig::new(dir.path().join("store"))).expect("store"));
    let stream = StreamName::parse("account-long").expect("a stream name");
    for chunk in 0..EVENTS / 1_000 {
        let events = (0..1_000)
            .map(|i| proposed("Deposited", json!({"amount": chunk * 1_000 + i})))
            .collect();
        store
            .append(stream.clone(), ExpectedRevision::Any, events)
            .await
            .expect("append");
    }
    let registry = open_registry(&store, dir.path());
    deploy_and_rebuild(&registry, &store, "bank-account", &bank_wasm).await;

    let recorded_at = |revision: u64| {
        store
            .read_stream(
                &stream,
                refold::store::StreamRead::forward(Some(revision), 1),
            )
            .expect("read")
            .and_then(|s| s.events.first().map(|e| e.recorded_at_micros))
            .expect("the event")
    };
    let mut points: Vec<(String, Point)> = [10, 998, 1_000, 25_000, 50_499, 99_998, 99_999]
        .into_iter()
        .map(|r| (format!("revision {r}"), Point::Revision(r)))
        .collect();
    points.push((
        "at the time of revision 75,000".into(),
        Point::At(recorded_at(75_000)),
    ));
    println!(
        "{:<44} {:>9} {:>8} {:>16}",
        format!("past state of a {EVENTS}-event stream"),
        "revision",
        "ms",
        "events replayed"
    );
    for (label, point) in points {
        let mut took = Vec::new();
        let (mut replayed, mut revision) = (0, 0);
        for _ in 0..REPEATS {
            let started = Instant::now();
            let past = registry
                .stream_state_at("bank-account", None, &stream, point)
                .expect("replay")
                .expect("a state");
            took.push(started.elapsed());
            (replayed, revision) = (past.replayed, past.revision);
        }
        took.sort();
        let median: Duration = took[REPEATS / 2];
        println!(
            "{:<44} {:>9} {:>8.2} {:>16}",
            format!("  {label}"),
            revision,
            median.as_secs_f64() * 1e3,
            replayed
        );
    }
    registry.shutdown();
}
