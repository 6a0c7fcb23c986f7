//! Per-language figures (`--only languages`, or `--languages` beside the other sections):
//! for each example module, in Rust, JavaScript, Python and C, its size, the time a deploy
//! takes to compile it (cold), the time a restart takes to load its cached compiled form,
//! the time to its first instance, and its rebuild rate over one shared log.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use refold::engine::sandbox::GuestLog;
use refold::engine::{Guest, ModuleLimits, WasmEngine};
use refold::modules::ModuleRegistry;
use refold::store::{EventLog, SledStore, StoreConfig};

use super::modules::{
    bank_event, build_examples_with, deploy_and_rebuild, fill, open_registry, order_event,
    repo_root,
};

/// One example module: its folder, language and built file under `examples/dist/`.
struct Example {
    name: &'static str,
    language: &'static str,
    file: &'static str,
}

const EXAMPLES: [Example; 6] = [
    Example {
        name: "bank-account",
        language: "Rust",
        file: "bank-account.wasm",
    },
    Example {
        name: "bank-account-js",
        language: "JavaScript",
        file: "bank-account-js.wasm",
    },
    Example {
        name: "bank-account-py",
        language: "Python",
        file: "bank-account-py.wasm",
    },
    Example {
        name: "bank-account-c",
        language: "C",
        file: "bank-account-c.core.wasm",
    },
    Example {
        name: "order-summary",
        language: "Rust",
        file: "order-summary.wasm",
    },
    Example {
        name: "order-summary-js",
        language: "JavaScript",
        file: "order-summary-js.wasm",
    },
];

struct Figures {
    bytes: usize,
    deploy: Duration,
    cached_load: Duration,
    first_call: Duration,
    rebuild_rate: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Builds every language's examples, fills one log with `events` bank-account events and
/// half as many order events, and measures each example alone on it.
pub async fn run(events: u64) {
    let root = repo_root();
    build_examples_with(&root, &["--lang", "all"]);
    let dist = root.join("examples/dist");

    let dir = tempfile::tempdir().expect("a temporary folder");
    let store =
        Arc::new(SledStore::open(&StoreConfig::new(dir.path().join("store"))).expect("store"));
    fill(&store, events, bank_event).await;
    let bank_events = store.head();
    fill(&store, events / 2, order_event).await;
    let order_events = store.head() - bank_events;
    println!(
        "(log: {bank_events} bank-account events, then {order_events} order events; each \
         module rebuilds alone, the rate counts the events it wants)"
    );

    let registry = open_registry(&store, dir.path());
    let engine = Arc::new(WasmEngine::new().expect("engine"));
    let compiled_dir = dir.path().join("compiled");
    println!(
        "{:<18} {:<11} {:>9} {:>11} {:>11} {:>11} {:>13}",
        "module", "language", "size KiB", "deploy ms", "cached ms", "1st call ms", "rebuild ev/s"
    );
    for example in &EXAMPLES {
        let bytes = std::fs::read(dist.join(example.file))
            .unwrap_or_else(|err| panic!("reading {}: {err}", example.file));
        let wanted = if example.name.starts_with("bank") {
            bank_events
        } else {
            order_events
        };
        let figures = measure(
            &engine,
            &registry,
            &store,
            &compiled_dir,
            example,
            &bytes,
            wanted,
        )
        .await;
        println!(
            "{:<18} {:<11} {:>9.0} {:>11.1} {:>11.1} {:>11.1} {:>13.0}",
            example.name,
            example.language,
            figures.bytes as f64 / 1024.0,
            ms(figures.deploy),
            ms(figures.cached_load),
            ms(figures.first_call),
            figures.rebuild_rate
        );
    }
    registry.shutdown();
}

async fn measure(
    engine: &Arc<WasmEngine>,
    registry: &ModuleRegistry,
    store: &SledStore,
    compiled_dir: &Path,
    example: &Example,
    bytes: &[u8],
    wanted: u64,
) -> Figures {
    // A deploy: componentize if needed, compile, check the world and imports, store the
    // bytes and the compiled form, start the runner.
    let rebuilt = deploy_and_rebuild(registry, store, example.name, bytes).await;
    let deployed = rebuilt.deployed;
    let rebuild_rate = wanted as f64 / rebuilt.rebuild.as_secs_f64();

    // What a restart does instead of compiling: load the cached compiled form.
    let cached = compiled_dir.join(format!("{}.cwasm", deployed.module.version));
    let started = Instant::now();
    let compiled = engine
        .load_compiled(&cached)
        .expect("the cached compiled form");
    let cached_load = started.elapsed();

    // A fresh instance's first call: instantiation (a JavaScript or Python runtime starts
    // here) and `filter()`.
    let mut guest = Guest::new(
        engine.clone(),
        Arc::new(compiled),
        ModuleLimits::default(),
        GuestLog::new(64 * 1024),
    );
    let started = Instant::now();
    guest.filter().expect("filter");
    let first_call = started.elapsed();

    registry.remove(example.name).expect("remove");
    Figures {
        bytes: bytes.len(),
        deploy: rebuilt.deploy,
        cached_load,
        first_call,
        rebuild_rate,
    }
}
