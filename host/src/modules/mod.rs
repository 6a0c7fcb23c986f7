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

mod history;
mod prefetch;
mod registry;
mod runner;
pub mod state;
mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::engine::sandbox::{GuestLog, LogLine};
use crate::engine::{CompiledModule, GuestErrorKind, ModuleKind, ModuleLimits, UploadError};
use crate::store::GlobalPosition;
pub use history::{PastState, Point};
pub use registry::{Activation, ModuleRegistry, Role, VersionView};
use state::ModuleState;
pub use verify::{Diff, Verification};

/// Now, as module records and faults show it: RFC 3339 in UTC, to the millisecond.
fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

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
            ..defaults.clone()
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
    /// Time per batch handed to the guest.
    pub batch_duration: crate::metrics::Histogram,
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

/// One deployed module version: its compiled code, its state, and (while it runs) its
/// runner.
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
    /// When the current runner started, and from which checkpoint: for rates and ETAs.
    run_started: Mutex<(Instant, GlobalPosition)>,
    /// Set once the version is dropped, so that watchers of its progress stop.
    retired: AtomicBool,
}

/// How fast a version is catching up.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rebuild {
    /// Share of the log processed, 0–100.
    pub percent: f64,
    pub events_per_second: f64,
    /// Seconds until caught up at the current rate (none when unknown).
    pub eta_seconds: Option<f64>,
}

impl DeployedModule {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: String,
        version: String,
        deployed_at: String,
        size_bytes: usize,
        settings: ModuleSettings,
        defaults: &ModuleLimits,
        state: ModuleState,
        compiled: Arc<CompiledModule>,
        progress: Progress,
    ) -> Self {
        let limits = settings.limits(defaults);
        Self {
            name,
            version,
            kind: compiled.kind,
            deployed_at,
            size_bytes,
            log: GuestLog::new(limits.log_bytes),
            settings,
            limits,
            state,
            counters: Counters::default(),
            compiled,
            run_started: Mutex::new((Instant::now(), progress.checkpoint)),
            progress: watch::Sender::new(progress),
            runner: Mutex::new(None),
            retired: AtomicBool::new(false),
        }
    }

    /// This module's code and settings over another state tree, starting from position
    /// 0: the scratch rebuild of `verify`, or a replay.
    fn rebuilding_copy(
        &self,
        version: String,
        deployed_at: String,
        state: ModuleState,
    ) -> Arc<Self> {
        Arc::new(Self::new(
            self.name.clone(),
            version,
            deployed_at,
            self.size_bytes,
            self.settings.clone(),
            &self.limits,
            state,
            self.compiled.clone(),
            Progress {
                checkpoint: 0,
                status: Status::Rebuilding,
                fault: None,
            },
        ))
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn watch_progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Progress towards `head` since the runner started.
    pub fn rebuild(&self, head: GlobalPosition) -> Rebuild {
        let checkpoint = self.progress.borrow().checkpoint;
        let (since, from) = *self.run_started.lock();
        let seconds = since.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            checkpoint.saturating_sub(from) as f64 / seconds
        } else {
            0.0
        };
        let left = head.saturating_sub(checkpoint) as f64;
        Rebuild {
            percent: if head == 0 {
                100.0
            } else {
                (checkpoint.min(head) as f64 * 100.0 / head as f64 * 10.0).round() / 10.0
            },
            events_per_second: rate.round(),
            eta_seconds: if left == 0.0 {
                Some(0.0)
            } else if rate > 0.0 {
                Some((left / rate * 10.0).round() / 10.0)
            } else {
                None
            },
        }
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

    fn is_running(&self) -> bool {
        self.runner.lock().is_some()
    }

    fn set_status(&self, status: Status, fault: Option<Fault>) {
        self.progress.send_modify(|p| {
            p.status = status;
            p.fault = fault;
        });
    }

    /// Marks the version dropped and wakes whoever watches it.
    fn mark_retired(&self) {
        self.retired.store(true, Ordering::Release);
        self.progress.send_modify(|_| {});
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
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
    #[error("module {0:?} has no version {1:?}")]
    VersionNotFound(String, String),
    /// `skip` when the module is not faulted at an event.
    #[error("{0}")]
    NotFaulted(String),
    /// The module changed under the operation (a new version, a reset): try it again.
    #[error("{0}")]
    Conflict(String),
    /// The operation needs another kind of module (history of a projection).
    #[error("{0}")]
    WrongKind(String),
    /// `POST /projections/{name}/{action}` with an action that does not exist.
    #[error("unknown action {0:?}; use pause, resume, reset, skip or verify")]
    UnknownAction(String),
    /// The guest failed while the host ran it on demand (a past-state query, a replay, a
    /// verify): a trap, a time or memory limit, an error result, a broken contract.
    #[error("{during}: {error}")]
    Guest {
        /// What the host was doing (`replaying stream account-1`).
        during: String,
        error: crate::engine::GuestError,
    },
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
