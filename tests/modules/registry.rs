//! The registry, its version owners and their runners over [`MemoryStore`] and
//! [`MemoryKeyspaces`]: blue/green switching, reset during a rebuild, skip, verify, pause,
//! and what a crash leaves of a checkpoint and its state.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use refold::engine::{ModuleLimits, WasmEngine};
use refold::modules::{Activation, ModuleRegistry, ModuleSettings, Point, Role, Status};
use refold::store::{
    EventLog, EventStore, ExpectedRevision, MemoryKeyspaces, MemoryStore, ProposedEvent,
    StreamName, StreamRead,
};
use serde_json::{Value, json};

use crate::support::{example, test_guest};

fn open(log: &Arc<MemoryStore>, spaces: Arc<MemoryKeyspaces>, dir: &Path) -> Arc<ModuleRegistry> {
    ModuleRegistry::open(
        Arc::new(WasmEngine::new().expect("the engine")),
        log.clone(),
        Some(log.clone()),
        spaces,
        dir.join("compiled"),
        ModuleLimits::default(),
        2,
    )
    .expect("the registry opens")
}

/// Appends `events` (type, data) to `stream`.
fn append(log: &MemoryStore, stream: &str, events: &[(&str, Value)]) {
    let events = events
        .iter()
        .map(|(event_type, data)| ProposedEvent {
            id: uuid::Uuid::new_v4(),
            id_from_client: false,
            event_type: (*event_type).to_owned(),
            data: data.to_string(),
            metadata: "{}".into(),
        })
        .collect();
    let stream = StreamName::parse(stream).expect("a stream name");
    futures::executor::block_on(log.append(stream, ExpectedRevision::Any, events))
        .expect("the append");
}

/// Balance and transactions per account, as bank-account should fold them.
type Model = BTreeMap<String, (i64, u64)>;

/// Deposits of 1..=n cents spread over `accounts` accounts, added to `model`.
fn deposits(log: &MemoryStore, n: u64, accounts: u64, model: &mut Model) {
    for i in 1..=n {
        let stream = format!("account-{}", i % accounts);
        append(log, &stream, &[("Deposited", json!({ "amount": i }))]);
        let entry = model.entry(stream).or_default();
        entry.0 += i as i64;
        entry.1 += 1;
    }
}

/// Waits until `check` holds, or fails saying `what`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn caught_up(registry: &ModuleRegistry, log: &MemoryStore) -> bool {
    let progress = registry.resolve("bank", None).expect("deployed").progress();
    progress.status == Status::Running && progress.checkpoint == log.head()
}

/// Every account's state in module `bank`'s current version equals `model`.
fn assert_balances(registry: &ModuleRegistry, model: &Model) {
    let module = registry.resolve("bank", None).expect("deployed");
    for (stream, (balance, transactions)) in model {
        let state = module
            .state
            .stream_state(stream)
            .expect("a read")
            .unwrap_or_else(|| panic!("{stream} has a state"));
        let state: Value = serde_json::from_slice(&state.bytes).expect("JSON state");
        let folded = (&state["balance"], &state["transactions"]);
        assert_eq!(folded, (&json!(balance), &json!(transactions)), "{stream}");
    }
}

/// A registry over an in-memory log and keyspaces, in a folder of its own, with the model
/// of what it was given; it holds [`crate::QUIET`] for reading.
struct Fixture {
    _quiet: std::sync::RwLockReadGuard<'static, ()>,
    dir: tempfile::TempDir,
    log: Arc<MemoryStore>,
    spaces: Arc<MemoryKeyspaces>,
    registry: Arc<ModuleRegistry>,
    model: Model,
}

impl Fixture {
    /// A registry with `n` deposits over `accounts` accounts in its log.
    fn with_deposits(n: u64, accounts: u64) -> Self {
        let quiet = crate::QUIET.read().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(MemoryStore::default());
        let spaces = Arc::new(MemoryKeyspaces::default());
        let registry = open(&log, spaces.clone(), dir.path());
        let mut model = Model::new();
        deposits(&log, n, accounts, &mut model);
        Self {
            _quiet: quiet,
            dir,
            log,
            spaces,
            registry,
            model,
        }
    }

    fn deposit(&mut self, n: u64, accounts: u64) {
        deposits(&self.log, n, accounts, &mut self.model);
    }

    /// Deploys `bytes` as `bank`; its version.
    fn deploy(&self, bytes: &[u8], activation: Activation) -> String {
        self.registry
            .deploy("bank", bytes, ModuleSettings::default(), activation)
            .expect("the deploy")
            .module
            .version
            .clone()
    }

    fn deploy_bank(&self) -> String {
        self.deploy(&example("bank-account.wasm"), Activation::Auto)
    }

    fn wait_caught_up(&self) {
        eventually("module bank to catch up", || {
            caught_up(&self.registry, &self.log)
        });
    }

    fn assert_balances(&self) {
        assert_balances(&self.registry, &self.model);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.registry.shutdown();
    }
}

#[test]
fn a_new_version_rebuilds_beside_the_current_one_and_takes_over_once_caught_up() {
    let mut bank = Fixture::with_deposits(3_000, 30);
    let registry = bank.registry.clone();
    let first = bank.deploy_bank();
    bank.wait_caught_up();
    bank.assert_balances();

    // A second version (other bytes): a candidate until it has caught up, then current;
    // the first is kept, with its code, for a rollback.
    let second = bank.deploy(&test_guest("bank-account-fee"), Activation::Auto);
    assert_ne!(first, second);
    eventually("the second version to become current", || {
        registry.resolve("bank", None).unwrap().version == second
    });
    let roles: Vec<(String, Role)> = registry
        .versions("bank")
        .unwrap()
        .iter()
        .map(|v| (v.module.version.clone(), v.role))
        .collect();
    assert_eq!(
        roles,
        [(second.clone(), Role::Current), (first.clone(), Role::Kept)]
    );
    assert!(registry.keeps_code_of(&first));

    // Rolling back makes the kept version current again, without a rebuild from 0.
    bank.deposit(100, 30);
    registry.activate("bank", &first).expect("the rollback");
    bank.wait_caught_up();
    bank.assert_balances();

    // A candidate replaced by another before it became current is dropped, state and code.
    let third = bank.deploy(&test_guest("bank-account-fee"), Activation::Manual);
    assert_eq!(third, second, "the kept fee version, now a candidate again");
    let mut other = example("bank-account.wasm");
    other.extend_from_slice(&[0, 6, 4, b'n', b'o', b't', b'e', 1]); // a custom section
    let fourth = bank.deploy(&other, Activation::Manual);
    let candidate = registry
        .versions("bank")
        .unwrap()
        .into_iter()
        .find(|v| v.role == Role::Candidate)
        .expect("a candidate");
    assert_eq!(candidate.module.version, fourth);
    assert!(registry.resolve("bank", Some(&third)).is_err());
    assert!(
        !registry.keeps_code_of(&third),
        "the replaced candidate's code is gone"
    );
    assert!(registry.keeps_code_of(&first) && registry.keeps_code_of(&fourth));
}

#[test]
fn a_reset_during_a_rebuild_starts_over_and_ends_equal_to_the_log() {
    let bank = Fixture::with_deposits(200_000, 1_000);
    bank.deploy_bank();
    eventually("the rebuild to be under way", || {
        bank.registry
            .resolve("bank", None)
            .unwrap()
            .progress()
            .checkpoint
            > 0
    });
    let module = bank.registry.reset("bank").expect("the reset");
    assert!(
        module.progress().checkpoint < bank.log.head(),
        "the reset took effect before the rebuild ended"
    );
    bank.wait_caught_up();
    bank.assert_balances();
}

#[test]
fn skip_steps_over_the_failing_event_and_pause_stops_until_resumed() {
    let mut bank = Fixture::with_deposits(100, 10);
    let registry = bank.registry.clone();
    append(
        &bank.log,
        "account-3",
        &[("Deposited", json!({ "amount": "ten" }))],
    );
    let bad = bank.log.head() - 1;
    bank.deposit(100, 10);
    bank.deploy_bank();
    eventually("the fault", || {
        registry.resolve("bank", None).unwrap().progress().status == Status::Faulted
    });
    let progress = registry.resolve("bank", None).unwrap().progress();
    assert_eq!(
        progress.checkpoint, bad,
        "everything before the bad event is done"
    );
    assert_eq!(progress.fault.unwrap().position, Some(bad));

    registry.skip("bank").expect("the skip");
    bank.wait_caught_up();
    bank.assert_balances();
    let module = registry.resolve("bank", None).unwrap();
    let (letters, _) = module.state.dead_letters(0, 10).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].position, letters[0].by.as_str()),
        (bad, "operator")
    );
    let again = registry.skip("bank").err().expect("not faulted any more");
    assert!(
        matches!(again, refold::modules::ModuleError::NotFaulted(_)),
        "{again}"
    );

    // Paused, it processes nothing; resumed, it catches up; verify matches either way.
    registry.pause("bank").expect("the pause");
    let paused_at = module.progress().checkpoint;
    bank.deposit(50, 10);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(module.progress().status, Status::Paused);
    assert_eq!(module.progress().checkpoint, paused_at);
    let verification = registry.verify("bank").expect("verify while paused");
    assert!(verification.matches, "{verification:?}");
    registry.resume("bank").expect("the resume");
    bank.wait_caught_up();
    bank.assert_balances();
    let verification = registry.verify("bank").expect("verify while running");
    assert!(verification.matches, "{verification:?}");
    assert_eq!(verification.position, bank.log.head());
}

#[test]
fn verify_runs_beside_appends_and_matches_a_module_that_keeps_up() {
    let mut bank = Fixture::with_deposits(50_000, 500);
    bank.deploy_bank();
    bank.wait_caught_up();
    let writer = {
        let log = bank.log.clone();
        std::thread::spawn(move || {
            let mut model = Model::new();
            deposits(&log, 20_000, 500, &mut model);
            model
        })
    };
    let verification = bank.registry.verify("bank").expect("verify");
    assert!(verification.matches, "{verification:?}");
    assert!(verification.position >= 50_000);
    for (stream, (balance, count)) in writer.join().unwrap() {
        let entry = bank.model.entry(stream).or_default();
        entry.0 += balance;
        entry.1 += count;
    }
    bank.wait_caught_up();
    bank.assert_balances();
}

#[test]
fn a_crash_at_any_moment_leaves_state_and_checkpoint_together() {
    let bank = Fixture::with_deposits(100_000, 2_000);
    bank.deploy_bank();
    // What a process that died at five moments of the rebuild (and once caught up) would
    // have left: each, reopened, must end equal to the log, with nothing applied twice.
    let mut crashes = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(40));
        crashes.push(bank.spaces.snapshot());
    }
    bank.wait_caught_up();
    crashes.push(bank.spaces.snapshot());
    bank.registry.shutdown();
    let checkpoints: Vec<u64> = crashes
        .into_iter()
        .enumerate()
        .map(|(i, crashed)| {
            let folder = bank.dir.path().join(i.to_string());
            let reopened = open(&bank.log, Arc::new(crashed), &folder);
            let from = reopened
                .resolve("bank", None)
                .unwrap()
                .progress()
                .checkpoint;
            eventually("the reopened module to catch up", || {
                caught_up(&reopened, &bank.log)
            });
            assert_balances(&reopened, &bank.model);
            reopened.shutdown();
            from
        })
        .collect();
    assert!(
        checkpoints.windows(2).all(|w| w[0] <= w[1]),
        "checkpoints only move forward: {checkpoints:?}"
    );
    assert_eq!(checkpoints.last(), Some(&bank.log.head()));
}

#[test]
fn past_states_and_replays_fold_the_same_log_through_the_same_code() {
    let bank = Fixture::with_deposits(0, 1);
    let registry = bank.registry.clone();
    for amount in 1..=2_500i64 {
        append(
            &bank.log,
            "account-1",
            &[("Deposited", json!({ "amount": amount }))],
        );
        append(
            &bank.log,
            "account-2",
            &[("Deposited", json!({ "amount": 1 }))],
        );
    }
    bank.deploy_bank();
    bank.wait_caught_up();
    let stream = StreamName::parse("account-1").unwrap();
    let balance = |bytes: &[u8]| -> i64 {
        let state: Value = serde_json::from_slice(bytes).unwrap();
        state["balance"].as_i64().unwrap()
    };

    // After revision 1,499: the deposits 1..=1,500, from the snapshot at revision 999 on.
    let past = registry
        .stream_state_at("bank", None, &stream, Point::Revision(1_499))
        .unwrap()
        .expect("a past state");
    assert_eq!(past.revision, 1_499);
    assert_eq!(balance(&past.bytes), 1_500 * 1_501 / 2);
    assert!(past.replayed <= 1_000, "replayed {}", past.replayed);

    // At the time revision 2,000 was recorded: that revision, or a later one recorded in
    // the same microsecond.
    let slice = bank
        .log
        .read_stream(&stream, StreamRead::forward(Some(2_000), 1))
        .unwrap()
        .unwrap();
    let at = slice.events[0].recorded_at_micros;
    let past = registry
        .stream_state_at("bank", None, &stream, Point::At(at))
        .unwrap()
        .unwrap();
    assert!(past.revision >= 2_000);
    let n = past.revision as i64 + 1;
    assert_eq!(balance(&past.bytes), n * (n + 1) / 2);

    // A replay up to position 1,000 (500 events of each stream) is a queryable version.
    let replay = registry.replay("bank", 1_000).unwrap();
    assert_eq!(replay.progress().checkpoint, 1_000);
    let found = registry.resolve("bank", Some(&replay.version)).unwrap();
    let state = found.state.stream_state("account-1").unwrap().unwrap();
    assert_eq!(
        (state.revision, balance(&state.bytes)),
        (499, 500 * 501 / 2)
    );
    let roles: Vec<Role> = registry
        .versions("bank")
        .unwrap()
        .iter()
        .map(|v| v.role)
        .collect();
    assert_eq!(roles, [Role::Current, Role::Replay]);
}
