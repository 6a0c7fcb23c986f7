//! Deployed modules (reducers and projections, served under `/projections`): the registry
//! that deploys, persists, operates and removes them, and one runner per module that keeps
//! its state current.
//!
//! - [`state`]: a module version's state tree and atomic commits with its checkpoint.
//! - [`runner`]: the thread that feeds the log through the guest.
//! - [`verify`]: rebuilding into scratch space and comparing with the live state.
//!
//! What is persisted, in the `modules` tree: `module/<name>` → the module's record (JSON:
//! version, settings, paused), `wasm/<version>` → its component bytes. The compiled form is
//! cached in `<data>/compiled/<version>.cwasm`, so a restart neither needs a re-upload nor
//! recompiles.

mod runner;
pub mod state;
mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};

use crate::engine::sandbox::{GuestLog, LogLine};
use crate::engine::{
    CompiledModule, Guest, GuestErrorKind, ModuleKind, ModuleLimits, UploadError, WasmEngine,
};
use crate::store::{EventStore, GlobalPosition, SledStore};
use runner::{Runner, RunnerOptions};
use state::{Changes, DeadLetter, ModuleState};
pub use verify::Verification;

/// What a module is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Caught up with the log, and keeping up.
    Running,
    /// Catching up after a deploy or reset.
    Rebuilding,
    /// Stopped by an operator.
    Paused,
    /// Stopped by a failure; see its [`Fault`].
    Faulted,
}

/// What a module does when an event fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultPolicy {
    /// Stop at the event, faulted, until an operator acts.
    #[default]
    Halt,
    /// Record the event as a dead letter and go on.
    Skip,
}

/// Per-module settings given at deploy time; unset limits take the server's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModuleSettings {
    pub memory_bytes: Option<usize>,
    pub call_timeout_ms: Option<u64>,
    pub max_state_bytes: Option<usize>,
    pub max_call_write_bytes: Option<usize>,
    pub log_bytes: Option<usize>,
    pub on_error: FaultPolicy,
}

impl ModuleSettings {
    pub fn limits(&self, defaults: &ModuleLimits) -> ModuleLimits {
        ModuleLimits {
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            table_elements: defaults.table_elements,
            call_timeout: self
                .call_timeout_ms
                .map_or(defaults.call_timeout, Duration::from_millis),
            max_state_bytes: self.max_state_bytes.unwrap_or(defaults.max_state_bytes),
            max_call_write_bytes: self
                .max_call_write_bytes
                .unwrap_or(defaults.max_call_write_bytes),
            log_bytes: self.log_bytes.unwrap_or(defaults.log_bytes),
        }
    }
}

/// Where and why a module stopped.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// The global position of the event that failed (none if the module failed before any).
    pub position: Option<GlobalPosition>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub stream: Option<String>,
    pub kind: GuestErrorKind,
    /// The guest's message, or the host's account of the trap or limit.
    pub message: String,
    /// The last lines the guest printed.
    pub log_tail: Vec<LogLine>,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// A module's progress, published by its runner.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Every position below it is processed.
    pub checkpoint: GlobalPosition,
    pub status: Status,
    pub fault: Option<Fault>,
}

/// Work counters, for status and metrics.
#[derive(Default)]
pub struct Counters {
    pub events: AtomicU64,
    pub batches: AtomicU64,
    pub busy_micros: AtomicU64,
    pub dead_letters: AtomicU64,
}

/// How the registry tells one runner thread to stop.
#[derive(Default)]
struct RunnerControl {
    stop: AtomicBool,
    wake: Notify,
}

impl RunnerControl {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        // A stored permit: a runner about to wait wakes at once.
        self.wake.notify_one();
    }
}

/// A running runner thread.
struct RunnerHandle {
    control: Arc<RunnerControl>,
    thread: JoinHandle<()>,
}

/// The persisted record of a module.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ModuleRecord {
    name: String,
    version: String,
    kind: ModuleKind,
    deployed_at: String,
    size_bytes: usize,
    #[serde(default)]
    settings: ModuleSettings,
    #[serde(default)]
    paused: bool,
}

/// One deployed module version.
pub struct DeployedModule {
    pub name: String,
    pub version: String,
    pub kind: ModuleKind,
    pub deployed_at: String,
    pub size_bytes: usize,
    pub settings: ModuleSettings,
    pub limits: ModuleLimits,
    pub state: ModuleState,
    pub log: GuestLog,
    pub counters: Counters,
    compiled: Arc<CompiledModule>,
    progress: watch::Sender<Progress>,
    runner: Mutex<Option<RunnerHandle>>,
}

impl DeployedModule {
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn watch_progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Stops the runner after its current batch (which it commits); waits for it.
    fn stop_runner(&self) {
        let handle = self.runner.lock().take();
        if let Some(handle) = handle {
            handle.control.request_stop();
            if handle.thread.join().is_err() {
                tracing::error!(module = %self.name, "a module runner panicked");
            }
        }
    }

    fn set_status(&self, status: Status, fault: Option<Fault>) {
        self.progress.send_modify(|p| {
            p.status = status;
            p.fault = fault;
        });
    }
}

/// The outcome of a deploy.
pub struct Deployed {
    pub module: Arc<DeployedModule>,
    /// `false` when the same bytes with the same settings were already deployed.
    pub changed: bool,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{0}")]
    InvalidName(String),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("no module named {0:?} is deployed")]
    NotFound(String),
    /// The operation does not fit the module's state (skip when not faulted).
    #[error("{0}")]
    Conflict(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<sled::Error> for ModuleError {
    fn from(err: sled::Error) -> Self {
        Self::Internal(err.into())
    }
}

/// Checks a module name: 1–64 of `a-z 0-9 - _`, starting with a letter or digit.
///
/// # Errors
/// A sentence saying what is allowed.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "module name {name:?} is not valid: use 1 to 64 characters of a-z, 0-9, - and _, starting with a letter or digit"
        ))
    }
}

/// Every deployed module, and what they share.
pub struct ModuleRegistry {
    engine: Arc<WasmEngine>,
    store: Arc<SledStore>,
    records: sled::Tree,
    compiled_dir: PathBuf,
    defaults: ModuleLimits,
    modules: RwLock<BTreeMap<String, Arc<DeployedModule>>>,
    /// Deploys, removals and operator actions one at a time.
    changes: Mutex<()>,
}

fn state_tree_name(name: &str, version: &str) -> String {
    format!("state/{name}/{version}")
}

fn record_key(name: &str) -> String {
    format!("module/{name}")
}

impl ModuleRegistry {
    /// Opens the registry and starts a runner for every persisted module not paused.
    ///
    /// # Errors
    /// Storage failures, or a persisted module that no longer loads.
    pub fn open(
        engine: Arc<WasmEngine>,
        store: Arc<SledStore>,
        compiled_dir: PathBuf,
        defaults: ModuleLimits,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&compiled_dir)
            .with_context(|| format!("creating {}", compiled_dir.display()))?;
        let records = store
            .db()
            .open_tree("modules")
            .context("opening the modules tree")?;
        let registry = Self {
            engine,
            store,
            records,
            compiled_dir,
            defaults,
            modules: RwLock::new(BTreeMap::new()),
            changes: Mutex::new(()),
        };
        for entry in registry.records.scan_prefix(b"module/") {
            let (_, value) = entry?;
            let record: ModuleRecord =
                serde_json::from_slice(&value).context("reading a module record")?;
            let compiled = registry
                .load_compiled(&record.version)
                .with_context(|| format!("loading module {}", record.name))?;
            let module = registry.start(record, Arc::new(compiled))?;
            registry.modules.write().insert(module.name.clone(), module);
        }
        Ok(registry)
    }

    fn compiled_path(&self, version: &str) -> PathBuf {
        self.compiled_dir.join(format!("{version}.cwasm"))
    }

    /// The compiled form from the cache, or compiled again from the stored component.
    fn load_compiled(&self, version: &str) -> anyhow::Result<CompiledModule> {
        let path = self.compiled_path(version);
        match self.engine.load_compiled(&path) {
            Ok(compiled) => Ok(compiled),
            Err(err) => {
                tracing::info!(version, %err, "compiled form unusable; compiling again");
                let bytes = self
                    .records
                    .get(format!("wasm/{version}"))?
                    .context("the module's component bytes are missing")?;
                let compiled = self.engine.compile(&bytes)?;
                self.write_compiled(version, &compiled);
                Ok(compiled)
            }
        }
    }

    fn write_compiled(&self, version: &str, compiled: &CompiledModule) {
        let path = self.compiled_path(version);
        let written = compiled.serialize().and_then(|bytes| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        });
        if let Err(err) = written {
            tracing::warn!(version, %err, "caching the compiled module failed");
        }
    }

    /// Makes a module from its record, and starts its runner unless it is paused.
    fn start(
        &self,
        record: ModuleRecord,
        compiled: Arc<CompiledModule>,
    ) -> anyhow::Result<Arc<DeployedModule>> {
        let tree = self
            .store
            .db()
            .open_tree(state_tree_name(&record.name, &record.version))?;
        let state = ModuleState::new(tree);
        let checkpoint = state.checkpoint()?;
        let status = if record.paused {
            Status::Paused
        } else if checkpoint >= self.store.head() {
            Status::Running
        } else {
            Status::Rebuilding
        };
        let limits = record.settings.limits(&self.defaults);
        let module = Arc::new(DeployedModule {
            name: record.name,
            version: record.version,
            kind: compiled.kind,
            deployed_at: record.deployed_at,
            size_bytes: record.size_bytes,
            log: GuestLog::new(limits.log_bytes),
            settings: record.settings,
            limits,
            state,
            counters: Counters::default(),
            compiled,
            progress: watch::Sender::new(Progress {
                checkpoint,
                status,
                fault: None,
            }),
            runner: Mutex::new(None),
        });
        if !record.paused {
            self.spawn_runner(&module)?;
        }
        Ok(module)
    }

    fn new_guest(&self, module: &DeployedModule) -> Guest {
        Guest::new(
            self.engine.clone(),
            module.compiled.clone(),
            module.limits.clone(),
            module.log.clone(),
        )
    }

    fn spawn_runner(&self, module: &Arc<DeployedModule>) -> anyhow::Result<()> {
        let control = Arc::new(RunnerControl::default());
        let runner = Runner::new(
            module.clone(),
            control.clone(),
            self.new_guest(module),
            self.store.clone(),
            RunnerOptions {
                policy: module.settings.on_error,
                until: None,
                skip: BTreeSet::new(),
            },
        );
        let thread = std::thread::Builder::new()
            .name(format!("module-{}", module.name))
            .spawn(move || runner.run())
            .context("starting the module runner")?;
        *module.runner.lock() = Some(RunnerHandle { control, thread });
        Ok(())
    }

    /// Deploys `bytes` as module `name` with `settings`. The same bytes and settings again
    /// change nothing; new settings restart the module keeping its state; new bytes replace
    /// it with a new version that rebuilds from position 0.
    ///
    /// # Errors
    /// An invalid name, bytes that are not a usable component, or a storage failure.
    pub fn deploy(
        &self,
        name: &str,
        bytes: &[u8],
        settings: ModuleSettings,
    ) -> Result<Deployed, ModuleError> {
        validate_name(name).map_err(ModuleError::InvalidName)?;
        let version = hex::encode(Sha256::digest(bytes));
        let _one_at_a_time = self.changes.lock();
        let existing = self.get(name);
        if let Some(module) = &existing {
            if module.version == version && module.settings == settings {
                return Ok(Deployed {
                    module: module.clone(),
                    changed: false,
                });
            }
        }
        let same_version = existing.as_ref().is_some_and(|m| m.version == version);
        let compiled = match &existing {
            Some(module) if same_version => module.compiled.clone(),
            _ => {
                let component = WasmEngine::to_component(bytes)?;
                let compiled = self.engine.compile(&component)?;
                self.write_compiled(&version, &compiled);
                self.records.insert(format!("wasm/{version}"), component)?;
                Arc::new(compiled)
            }
        };
        let record = ModuleRecord {
            name: name.to_owned(),
            version: version.clone(),
            kind: compiled.kind,
            deployed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            size_bytes: bytes.len(),
            settings,
            paused: false,
        };
        self.save(&record)?;
        if let Some(old) = existing {
            if same_version {
                old.stop_runner();
            } else {
                self.retire(&old);
            }
        }
        let module = self.start(record, compiled)?;
        self.modules.write().insert(name.to_owned(), module.clone());
        tracing::info!(module = name, %version, kind = ?module.kind, "deployed");
        Ok(Deployed {
            module,
            changed: true,
        })
    }

    fn save(&self, record: &ModuleRecord) -> Result<(), ModuleError> {
        let json = serde_json::to_vec(record).context("encoding a module record")?;
        self.records.insert(record_key(&record.name), json)?;
        self.store.db().flush()?;
        Ok(())
    }

    fn record(&self, name: &str) -> Result<ModuleRecord, ModuleError> {
        let bytes = self
            .records
            .get(record_key(name))?
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        Ok(serde_json::from_slice(&bytes).context("reading a module record")?)
    }

    /// Stops a module version and drops its state and artifacts.
    fn retire(&self, module: &DeployedModule) {
        module.stop_runner();
        let tree = state_tree_name(&module.name, &module.version);
        if let Err(err) = self.store.db().drop_tree(tree) {
            tracing::warn!(module = %module.name, %err, "dropping module state failed");
        }
        let still_used = self
            .modules
            .read()
            .values()
            .any(|m| m.version == module.version && m.name != module.name);
        if !still_used {
            let _ = self.records.remove(format!("wasm/{}", module.version));
            let _ = std::fs::remove_file(self.compiled_path(&module.version));
        }
    }

    /// Removes module `name` and its state.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn remove(&self, name: &str) -> Result<(), ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let module = self
            .modules
            .write()
            .remove(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        self.records.remove(record_key(name))?;
        self.retire(&module);
        self.store.db().flush()?;
        tracing::info!(module = name, "removed");
        Ok(())
    }

    fn find(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.get(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))
    }

    fn set_paused(&self, name: &str, paused: bool) -> Result<(), ModuleError> {
        let mut record = self.record(name)?;
        if record.paused != paused {
            record.paused = paused;
            self.save(&record)?;
        }
        Ok(())
    }

    /// Stops a module after its current batch; it stays stopped across restarts.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn pause(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let module = self.find(name)?;
        self.set_paused(name, true)?;
        module.stop_runner();
        module.set_status(Status::Paused, None);
        Ok(module)
    }

    /// Starts a paused or faulted module again (a faulted one retries its failed event).
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn resume(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let module = self.find(name)?;
        self.set_paused(name, false)?;
        self.restart(&module)?;
        Ok(module)
    }

    fn restart(&self, module: &Arc<DeployedModule>) -> Result<(), ModuleError> {
        module.stop_runner();
        let caught_up = module.progress().checkpoint >= self.store.head();
        let status = if caught_up {
            Status::Running
        } else {
            Status::Rebuilding
        };
        module.set_status(status, None);
        self.spawn_runner(module)?;
        Ok(())
    }

    /// Drops a module's state and dead letters and rebuilds it from position 0 (unless it
    /// is paused: then it rebuilds when resumed).
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn reset(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let module = self.find(name)?;
        let paused = self.record(name)?.paused;
        module.stop_runner();
        module.state.clear()?;
        module.progress.send_modify(|p| p.checkpoint = 0);
        if paused {
            module.set_status(Status::Paused, None);
        } else {
            self.restart(&module)?;
        }
        tracing::info!(module = name, "reset");
        Ok(module)
    }

    /// Steps a faulted module over the event it stopped at, recording it as a dead letter,
    /// and starts it again.
    ///
    /// # Errors
    /// [`ModuleError::Conflict`] if the module is not faulted at an event.
    pub fn skip(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let module = self.find(name)?;
        let progress = module.progress();
        let fault = match (&progress.status, &progress.fault) {
            (Status::Faulted, Some(fault)) if fault.position.is_some() => fault.clone(),
            _ => {
                return Err(ModuleError::Conflict(format!(
                    "module {name} is not stopped at an event (it is {}); skip steps over the event a faulted module stopped at",
                    serde_json::to_value(progress.status).unwrap_or_default()
                )));
            }
        };
        let position = fault.position.unwrap_or_default();
        module.stop_runner();
        let mut changes = Changes::default();
        changes.put_dead_letter(&DeadLetter {
            position,
            event_id: fault.event_id.unwrap_or_default(),
            event_type: fault.event_type.unwrap_or_default(),
            stream: fault.stream.unwrap_or_default(),
            kind: fault.kind,
            message: fault.message,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            by: "operator".into(),
        });
        changes.commit(&module.state, position + 1)?;
        module.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
        module.progress.send_modify(|p| p.checkpoint = position + 1);
        if self.record(name)?.paused {
            module.set_status(Status::Paused, None);
        } else {
            self.restart(&module)?;
        }
        tracing::info!(module = name, position, "event skipped by an operator");
        Ok(module)
    }

    /// Rebuilds module `name` into scratch space up to its checkpoint and compares the
    /// result with its live state. The module pauses while this runs.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn verify(&self, name: &str) -> Result<Verification, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let module = self.find(name)?;
        let was_running = module.runner.lock().is_some();
        module.stop_runner();
        let result = verify::verify(self, &module);
        if was_running {
            let status = module.progress().status;
            if status != Status::Faulted {
                self.spawn_runner(&module)?;
            }
        }
        result
    }

    pub fn get(&self, name: &str) -> Option<Arc<DeployedModule>> {
        self.modules.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<DeployedModule>> {
        self.modules.read().values().cloned().collect()
    }

    /// The log head, for lag.
    pub fn head(&self) -> GlobalPosition {
        self.store.head()
    }

    /// Stops every runner (each commits its current work).
    pub fn shutdown(&self) {
        for module in self.list() {
            module.stop_runner();
        }
    }
}
