//! Deployed modules (reducers and projections, served under `/projections`): the registry
//! that deploys, persists and removes them, and one runner per module that keeps its state
//! current.
//!
//! - [`state`]: a module version's state tree and atomic commits with its checkpoint.
//! - [`runner`]: the thread that feeds the log through the guest.
//!
//! What is persisted, in the `modules` tree: `module/<name>` → the module's record (JSON),
//! `wasm/<version>` → its component bytes. The compiled form is cached in
//! `<data>/compiled/<version>.cwasm`, so a restart neither needs a re-upload nor recompiles.

mod runner;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

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
use state::ModuleState;

/// What a module is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Caught up with the log at least once, and keeping up.
    Running,
    /// Catching up from position 0 (or its checkpoint) after a deploy.
    Rebuilding,
    /// Stopped by an operator.
    Paused,
    /// Stopped by a failure; see its [`Fault`].
    Faulted,
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
}

/// How the registry talks to a runner.
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

/// The persisted record of a module.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ModuleRecord {
    name: String,
    version: String,
    kind: ModuleKind,
    deployed_at: String,
    size_bytes: usize,
}

/// One deployed module version with its live runner.
pub struct DeployedModule {
    pub name: String,
    pub version: String,
    pub kind: ModuleKind,
    pub deployed_at: String,
    pub size_bytes: usize,
    pub limits: ModuleLimits,
    pub state: ModuleState,
    pub log: GuestLog,
    pub counters: Counters,
    progress: watch::Sender<Progress>,
    control: RunnerControl,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl DeployedModule {
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn watch_progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn stop(&self) {
        self.control.request_stop();
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!(module = %self.name, "a module runner panicked");
            }
        }
    }
}

/// The outcome of a deploy.
pub struct Deployed {
    pub module: Arc<DeployedModule>,
    /// `false` when the same bytes were already deployed under this name.
    pub changed: bool,
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    InvalidName(String),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("{0:#}")]
    Internal(anyhow::Error),
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
    /// Deploys and removals one at a time.
    changes: Mutex<()>,
}

fn state_tree_name(name: &str, version: &str) -> String {
    format!("state/{name}/{version}")
}

impl ModuleRegistry {
    /// Opens the registry and starts a runner for every persisted module.
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
            let module = registry.start(record, compiled)?;
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

    fn start(
        &self,
        record: ModuleRecord,
        compiled: CompiledModule,
    ) -> anyhow::Result<Arc<DeployedModule>> {
        let tree = self
            .store
            .db()
            .open_tree(state_tree_name(&record.name, &record.version))?;
        let state = ModuleState::new(tree);
        let checkpoint = state.checkpoint()?;
        let status = if checkpoint >= self.store.head() {
            Status::Running
        } else {
            Status::Rebuilding
        };
        let log = GuestLog::new(self.defaults.log_bytes);
        let module = Arc::new(DeployedModule {
            name: record.name,
            version: record.version,
            kind: compiled.kind,
            deployed_at: record.deployed_at,
            size_bytes: record.size_bytes,
            limits: self.defaults.clone(),
            state,
            log: log.clone(),
            counters: Counters::default(),
            progress: watch::Sender::new(Progress {
                checkpoint,
                status,
                fault: None,
            }),
            control: RunnerControl::default(),
            thread: Mutex::new(None),
        });
        let guest = Guest::new(
            self.engine.clone(),
            Arc::new(compiled),
            self.defaults.clone(),
            log,
        );
        let runner = runner::Runner::new(module.clone(), guest, self.store.clone());
        let thread = std::thread::Builder::new()
            .name(format!("module-{}", module.name))
            .spawn(move || runner.run())
            .context("starting the module runner")?;
        *module.thread.lock() = Some(thread);
        Ok(module)
    }

    /// Deploys `bytes` as module `name`. The same bytes again change nothing; new bytes
    /// replace the module, whose new version rebuilds from position 0.
    ///
    /// # Errors
    /// An invalid name, bytes that are not a usable component, or a storage failure.
    pub fn deploy(&self, name: &str, bytes: &[u8]) -> Result<Deployed, DeployError> {
        validate_name(name).map_err(DeployError::InvalidName)?;
        let version = hex::encode(Sha256::digest(bytes));
        let _one_at_a_time = self.changes.lock();
        let existing = self.get(name);
        if let Some(module) = &existing {
            if module.version == version {
                return Ok(Deployed {
                    module: module.clone(),
                    changed: false,
                });
            }
        }
        let component = WasmEngine::to_component(bytes)?;
        let compiled = self.engine.compile(&component)?;
        let internal = |err: anyhow::Error| DeployError::Internal(err);
        let record = ModuleRecord {
            name: name.to_owned(),
            version: version.clone(),
            kind: compiled.kind,
            deployed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            size_bytes: bytes.len(),
        };
        self.write_compiled(&version, &compiled);
        let record_json = serde_json::to_vec(&record).map_err(|e| internal(e.into()))?;
        self.records
            .insert(format!("wasm/{version}"), component)
            .and_then(|_| self.records.insert(format!("module/{name}"), record_json))
            .and_then(|_| self.store.db().flush().map(|_| ()))
            .map_err(|e| internal(e.into()))?;
        if let Some(old) = existing {
            self.retire(&old);
        }
        let module = self.start(record, compiled).map_err(internal)?;
        self.modules.write().insert(name.to_owned(), module.clone());
        tracing::info!(module = name, %version, kind = ?module.kind, "deployed");
        Ok(Deployed {
            module,
            changed: true,
        })
    }

    /// Stops a module version and drops its state and artifacts.
    fn retire(&self, module: &DeployedModule) {
        module.stop();
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

    /// Removes module `name` and its state; `false` if there was none.
    ///
    /// # Errors
    /// Storage failures.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        let _one_at_a_time = self.changes.lock();
        let Some(module) = self.modules.write().remove(name) else {
            return Ok(false);
        };
        self.records.remove(format!("module/{name}"))?;
        self.retire(&module);
        self.store.db().flush()?;
        tracing::info!(module = name, "removed");
        Ok(true)
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

    /// Stops every runner (each finishes its current batch).
    pub fn shutdown(&self) {
        for module in self.list() {
            module.stop();
        }
    }
}
