//! Restart and memory on a large log (`--restart`; 10 million events by default,
//! `--restart-events N` to change it).
//!
//! 1. This process builds the log in a temporary store: bank-account events appended
//!    in-process, 100 per append (as `modules.rs` does), printing progress; then the store's
//!    size on disk per event.
//! 2. A child process deploys bank-account under 10 names and lets all 10 rebuild from the
//!    whole log, printing its resident memory at every tenth of the way; then shuts the
//!    registry down and closes the store.
//! 3. This process times the real server: `refold serve` on that folder, from spawning the
//!    process until `/projections` lists all 10 modules running with no lag; then reads the
//!    whole log through `/all`, printing the server's resident memory at every tenth.
//! 4. A child process appends another tenth of the log with the modules running (so the
//!    next open, like the first, follows a stretch of writing), then a child process times
//!    the restart in-process, split into its parts: opening the store, then the engine and
//!    the registry, until every module reports `running` with its checkpoint at the head.
//! 5. A child process reads the whole log through the store's `/all` path
//!    (`EventStore::read_all`, pages of 10,000) and prints its memory at every tenth.
//!
//! Children are this benchmark run again with `--restart-phase NAME --restart-dir DIR`, so
//! each phase's memory (VmRSS now, VmHWM the peak) is its own and starts from a fresh
//! process; a phase can be run alone that way on a kept log.
//!
//! Flags: `--restart-dir DIR` keeps the log in DIR (reused, without building, if it already
//! holds a store with modules); `--cache-mib N` sets the store's page cache as `refold serve
//! --cache-mib` does (default 256); `--cold` also times a restart after dropping the OS page
//! cache (root only: it writes `/proc/sys/vm/drop_caches`, emptying the whole machine's page
//! cache).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use refold::engine::{ModuleLimits, WasmEngine};
use refold::modules::{Activation, ModuleRegistry, ModuleSettings, Status};
use refold::store::{EventFilter, EventLog, SledStore, StoreConfig};
use serde_json::Value;

use super::{disk_usage, memory_mib, modules, report};

/// How many modules the restart carries.
pub const MODULES: usize = 10;

/// bank-account, deployed under these names (the same component, ten separate modules
/// with ten separate states and runners).
fn module_names() -> Vec<String> {
    (0..MODULES).map(|i| format!("bank-{i}")).collect()
}

/// The store's page cache in MiB (`--cache-mib`, default 256 as for `refold serve`).
fn cache_mib() -> u64 {
    super::arg("--cache-mib", 256)
}

fn open_store(dir: &Path) -> Arc<SledStore> {
    let mut config = StoreConfig::new(dir.join("store"));
    config.cache_bytes = cache_mib() * 1024 * 1024;
    Arc::new(SledStore::open(&config).expect("the store opens"))
}

fn open_registry(dir: &Path, store: &Arc<SledStore>) -> Arc<ModuleRegistry> {
    let engine = Arc::new(WasmEngine::new().expect("the engine"));
    ModuleRegistry::open(
        engine,
        store.clone(),
        Some(store.clone()),
        store.clone(),
        dir.join("compiled"),
        ModuleLimits::default(),
        2,
    )
    .expect("the registry opens")
}

/// glibc's heap: (bytes in use by the program, bytes held from the system), in MiB, so
/// that a growing RSS can be told apart into what the program keeps and what the
/// allocator keeps for it (fragmentation). Wasm linear memories are mapped outside it.
fn heap_mib() -> (f64, f64) {
    #[repr(C)]
    #[derive(Default)]
    struct Mallinfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    unsafe extern "C" {
        fn mallinfo2() -> Mallinfo2;
    }
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { mallinfo2() };
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    (
        mib(info.uordblks + info.hblkhd),
        mib(info.arena + info.hblkhd),
    )
}

/// A line of resident-memory samples, in the report's columns.
fn print_series(name: &str, samples: &[f64]) {
    let values: Vec<String> = samples.iter().map(|s| format!("{s:.0}")).collect();
    println!("{name:<52} {} MiB", values.join(" "));
}

/// Runs this benchmark again as a child for one phase, and waits for it.
fn run_phase(phase: &str, dir: &Path) {
    let status = Command::new(std::env::current_exe().expect("the benchmark's path"))
        .args(["--restart-phase", phase, "--restart-dir"])
        .arg(dir)
        .args(["--cache-mib", &cache_mib().to_string()])
        .env("RUST_LOG", "warn")
        .status()
        .expect("the phase starts");
    assert!(status.success(), "restart phase {phase} failed");
}

/// The whole section (steps 1 to 5 above).
pub async fn run(events: u64) {
    let root = modules::repo_root();
    modules::build_examples(&root);
    let temporary = tempfile::tempdir().expect("a temporary folder");
    let kept: std::path::PathBuf = super::arg("--restart-dir", std::path::PathBuf::new());
    let dir = if kept.as_os_str().is_empty() {
        temporary.path()
    } else {
        &kept
    };
    println!("(cache {} MiB, log in {})", cache_mib(), dir.display());

    let reused = dir.join("compiled").is_dir();
    if reused {
        println!("(reusing the log and modules already there)");
    } else {
        build_log(dir, events).await;
        run_phase("rebuild", dir);
    }
    serve_restart(dir, "").await;
    run_phase("churn", dir);
    run_phase("restart", dir);
    if std::env::args().any(|a| a == "--cold") {
        run_phase("churn", dir);
        if drop_page_cache() {
            serve_restart(dir, ", cold OS cache").await;
        } else {
            println!("(--cold: cannot write /proc/sys/vm/drop_caches; run as root)");
        }
    }
    run_phase("scan", dir);
}

/// Empties the OS page cache (after a sync), so the next open reads from the disk.
fn drop_page_cache() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Runs one child phase.
pub async fn phase(name: &str, dir: &Path) {
    match name {
        "rebuild" => rebuild_phase(dir).await,
        "churn" => churn_phase(dir).await,
        "restart" => restart_phase(dir).await,
        "scan" => scan_phase(dir),
        other => panic!("unknown restart phase {other:?}"),
    }
}

/// Step 1: `events` bank-account events, 100 per append, in ten slices with progress.
async fn build_log(dir: &Path, events: u64) {
    let store = open_store(dir);
    let appends = events / 100;
    let started = Instant::now();
    for slice in 0..10 {
        let range = appends * slice / 10..appends * (slice + 1) / 10;
        modules::fill_appends(&store, range, 100, modules::bank_event).await;
        println!(
            "(building the log: {:>10} events, {:5.1} s)",
            store.head(),
            started.elapsed().as_secs_f64()
        );
    }
    let took = started.elapsed().as_secs_f64();
    let head = store.head();
    store.close();
    drop(store);
    report(
        "build the log in-process (100/append, 32 tasks)",
        head as f64 / took,
        "events/s",
        "",
    );
    let bytes = disk_usage(&dir.join("store"));
    report(
        &format!(
            "disk per event ({:.2} GiB store folder)",
            bytes as f64 / (1u64 << 30) as f64
        ),
        bytes as f64 / head.max(1) as f64,
        "bytes",
        "",
    );
}

/// Step 2: ten modules rebuild from the whole log, with memory at every tenth.
async fn rebuild_phase(dir: &Path) {
    let store = open_store(dir);
    let head = store.head();
    let registry = open_registry(dir, &store);
    let wasm = std::fs::read(modules::repo_root().join("examples/dist/bank-account.wasm"))
        .expect("bank-account.wasm");
    let started = Instant::now();
    let deployed: Vec<_> = module_names()
        .iter()
        .map(|name| {
            let deployed = registry
                .deploy(name, &wasm, ModuleSettings::default(), Activation::Auto)
                .expect("deploy");
            // On a kept log (`--restart-phase rebuild --restart-dir DIR`) the modules are
            // there already: rebuild them from position 0.
            match deployed.changed {
                true => deployed.module,
                false => registry.reset(name).expect("reset"),
            }
        })
        .collect();
    // Each deploy compiles the component, and its runner starts at once: the rate below
    // counts only the events processed after the last deploy returned.
    let deploys_took = started.elapsed();
    let rebuild_started = Instant::now();
    let processed_before: u64 = deployed.iter().map(|m| m.progress().checkpoint).sum();
    println!(
        "(deployed {MODULES} modules in {:.1} s; they had processed {processed_before} events by then)",
        deploys_took.as_secs_f64()
    );
    // Sample every 50 ms; record memory each time the modules together pass a tenth.
    let mut samples = Vec::new();
    loop {
        let progress: Vec<_> = deployed.iter().map(|m| m.progress()).collect();
        if let Some(fault) = progress.iter().find_map(|p| p.fault.as_ref()) {
            panic!("a module faulted: {}", fault.message);
        }
        let done: u64 = progress.iter().map(|p| p.checkpoint.min(head)).sum();
        let tenths = done * 10 / (head * MODULES as u64).max(1);
        while (samples.len() as u64) < tenths {
            let (rss, _) = memory_mib("self");
            let (in_use, held) = heap_mib();
            samples.push(rss);
            println!(
                "(rebuilding {MODULES} modules: {:>3}%, {:5.1} s, RSS {rss:.0} MiB; heap in use \
                 {in_use:.0} MiB, held {held:.0} MiB)",
                samples.len() * 10,
                rebuild_started.elapsed().as_secs_f64()
            );
        }
        if progress
            .iter()
            .all(|p| p.status == Status::Running && p.checkpoint >= head)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = rebuild_started.elapsed().as_secs_f64();
    let processed = head * MODULES as u64 - processed_before;
    let (_, peak) = memory_mib("self");
    report(
        &format!("rebuild {MODULES} modules at once ({head} events each)"),
        processed as f64 / took,
        "events/s",
        "",
    );
    report(
        "  per module",
        processed as f64 / took / MODULES as f64,
        "events/s",
        "",
    );
    print_series("  RSS at each tenth of the rebuild", &samples);
    report(
        "  peak RSS while rebuilding (VmHWM)",
        peak,
        "MiB",
        "flat, no whole-log loads",
    );
    registry.shutdown();
    drop(deployed);
    drop(registry);
    store.close();
}

/// Step 4, first part: another tenth of the log appended with every module running, until
/// they have all caught up; then a clean close.
async fn churn_phase(dir: &Path) {
    let store = open_store(dir);
    let registry = open_registry(dir, &store);
    let before = store.head();
    let started = Instant::now();
    let appends = before / 100;
    modules::fill_appends(
        &store,
        appends..appends + appends / 10,
        100,
        modules::bank_event,
    )
    .await;
    let head = store.head();
    for module in registry.list() {
        let mut progress = module.watch_progress();
        progress
            .wait_for(|p| p.checkpoint >= head)
            .await
            .expect("the runner publishes progress");
    }
    println!(
        "(appended {} events with the {MODULES} modules live; all caught up after {:.1} s)",
        head - before,
        started.elapsed().as_secs_f64()
    );
    registry.shutdown();
    drop(registry);
    store.close();
}

/// Step 4, second part: open the store and registry; time until every module is running
/// at the head.
async fn restart_phase(dir: &Path) {
    let started = Instant::now();
    let store = open_store(dir);
    let store_opened = started.elapsed();
    let head = store.head();
    let registry = open_registry(dir, &store);
    let registry_opened = started.elapsed();
    let modules = registry.list();
    assert_eq!(modules.len(), MODULES, "every module is deployed");
    for module in &modules {
        let mut progress = module.watch_progress();
        tokio::time::timeout(
            Duration::from_secs(120),
            progress.wait_for(|p| p.status == Status::Running && p.checkpoint >= head),
        )
        .await
        .expect("modules catch up within 2 minutes")
        .expect("the runner publishes progress");
    }
    let caught_up = started.elapsed();
    let (rss, peak) = memory_mib("self");
    report(
        &format!("restart in-process: open → {MODULES} modules at head"),
        caught_up.as_secs_f64() * 1e3,
        "ms",
        "< 2,000",
    );
    report(
        "  of which: open the store",
        store_opened.as_secs_f64() * 1e3,
        "ms",
        "",
    );
    report(
        "  of which: engine + registry (10 modules)",
        (registry_opened - store_opened).as_secs_f64() * 1e3,
        "ms",
        "",
    );
    report(
        &format!("  RSS after the restart (peak {peak:.0})"),
        rss,
        "MiB",
        "",
    );
    registry.shutdown();
    drop(modules);
    drop(registry);
    store.close();
}

/// Step 3: the real server on the same folder: time to serving with every module caught
/// up, then the whole log through `/all`, with the server's memory at every tenth.
async fn serve_restart(dir: &Path, note: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_refold"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("refold starts");
    let pid = child.id().to_string();
    let mut first_answer = None;
    let serving = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the server did not catch up within 2 minutes"
        );
        if let Ok(response) = client.get(format!("{url}/projections")).send().await {
            first_answer.get_or_insert_with(|| started.elapsed());
            let body: Value = response.json().await.expect("JSON");
            let list = body["projections"].as_array().cloned().unwrap_or_default();
            if list.len() == MODULES
                && list
                    .iter()
                    .all(|m| m["status"] == "running" && m["lag"] == 0)
            {
                break started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let (rss, _) = memory_mib(&pid);
    report(
        &format!("restart `refold serve` → {MODULES} modules at head{note}"),
        serving.as_secs_f64() * 1e3,
        "ms",
        "< 2,000",
    );
    report(
        "  first HTTP answer",
        first_answer.unwrap_or(serving).as_secs_f64() * 1e3,
        "ms",
        "",
    );
    report("  server RSS once serving", rss, "MiB", "");

    if note.is_empty() {
        // The whole log over HTTP, as a client reading /all would.
        let head: u64 = client
            .get(format!("{url}/health"))
            .send()
            .await
            .expect("health")
            .json::<Value>()
            .await
            .expect("JSON")["head"]
            .as_u64()
            .unwrap_or(0);
        let read_started = Instant::now();
        let (mut from, mut total, mut samples) = (0u64, 0u64, Vec::new());
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
            while (samples.len() as u64) < total * 10 / head.max(1) {
                samples.push(memory_mib(&pid).0);
            }
            match body["next"].as_u64() {
                Some(next) => from = next,
                None => break,
            }
        }
        let took = read_started.elapsed().as_secs_f64();
        let (_, peak) = memory_mib(&pid);
        report(
            &format!("/all over HTTP, whole log ({total} events)"),
            total as f64 / took,
            "events/s",
            "",
        );
        print_series("  server RSS at each tenth of the read", &samples);
        report(
            "  server peak RSS (VmHWM)",
            peak,
            "MiB",
            "flat, no whole-log loads",
        );
    }
    // A graceful stop (SIGTERM), as an operator would.
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = child.wait();
}

/// Step 5: the whole log through the store's `/all` path, memory at every tenth.
fn scan_phase(dir: &Path) {
    let store = open_store(dir);
    let head = store.head();
    let filter = EventFilter::default();
    let started = Instant::now();
    let (mut from, mut total, mut samples) = (0u64, 0u64, Vec::new());
    while from < head {
        let page = store
            .read_all(from, 10_000, usize::MAX, &filter)
            .expect("read");
        total += page.events.len() as u64;
        from = page.scanned_to;
        while (samples.len() as u64) < total * 10 / head.max(1) {
            samples.push(memory_mib("self").0);
        }
    }
    let took = started.elapsed().as_secs_f64();
    let (_, peak) = memory_mib("self");
    report(
        &format!("/all path in-process, whole log ({total} events)"),
        total as f64 / took,
        "events/s",
        "",
    );
    print_series("  RSS at each tenth of the read", &samples);
    report(
        "  peak RSS while reading (VmHWM)",
        peak,
        "MiB",
        "flat, no whole-log loads",
    );
    store.close();
}
