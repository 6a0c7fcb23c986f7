//! One deployed module version as everyone but its owner sees it: its identity, code and
//! settings, its state (read directly by queries), its guest log, and the progress its
//! owner publishes.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::model::{Counters, Fault, ModuleSettings, Progress, Rebuild, Status};
use super::runner::Emitter;
use super::state::ModuleState;
use crate::engine::sandbox::GuestLog;
use crate::engine::{CompiledModule, Contract, Guest, ModuleKind, ModuleLimits, WasmEngine};
use crate::store::GlobalPosition;

/// Who a version is and what it runs, as persisted and shown.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub version: String,
    pub deployed_at: String,
    pub size_bytes: usize,
}

/// The code a version runs: compiled once, instantiated by whoever needs a guest.
#[derive(Clone)]
pub(super) struct Code {
    pub engine: Arc<WasmEngine>,
    pub compiled: Arc<CompiledModule>,
    /// Where a processor's emissions are appended.
    pub emitter: Option<Arc<Emitter>>,
}

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
    code: Code,
    progress: watch::Sender<Progress>,
    /// When the version last started processing, and from which checkpoint: for rates.
    run_started: Mutex<(Instant, GlobalPosition)>,
}

impl DeployedModule {
    pub(super) fn new(
        identity: Identity,
        settings: ModuleSettings,
        limits: ModuleLimits,
        state: ModuleState,
        code: Code,
        progress: Progress,
    ) -> Self {
        Self {
            name: identity.name,
            version: identity.version,
            kind: code.compiled.kind,
            deployed_at: identity.deployed_at,
            size_bytes: identity.size_bytes,
            log: GuestLog::new(limits.log_bytes),
            settings,
            limits,
            state,
            counters: Counters::default(),
            code,
            run_started: Mutex::new((Instant::now(), progress.checkpoint)),
            progress: watch::Sender::new(progress),
        }
    }

    /// This version's code and settings over another state, starting from position 0: the
    /// scratch rebuild of `verify`, or a replay.
    pub(super) fn rebuilding_copy(&self, identity: Identity, state: ModuleState) -> Arc<Self> {
        Arc::new(Self::new(
            identity,
            self.settings.clone(),
            self.limits.clone(),
            state,
            self.code.clone(),
            Progress {
                checkpoint: 0,
                status: Status::Rebuilding,
                fault: None,
            },
        ))
    }

    pub fn identity(&self) -> Identity {
        Identity {
            name: self.name.clone(),
            version: self.version.clone(),
            deployed_at: self.deployed_at.clone(),
            size_bytes: self.size_bytes,
        }
    }

    pub(super) fn code(&self) -> &Code {
        &self.code
    }

    /// A fresh instance of this version's code, with its limits and log.
    /// Which guest contract the version implements.
    pub fn contract(&self) -> Contract {
        self.code.compiled.contract
    }

    pub(super) fn emitter(&self) -> Option<Arc<Emitter>> {
        self.code.emitter.clone()
    }

    pub(super) fn new_guest(&self) -> Guest {
        Guest::new(
            self.code.engine.clone(),
            self.code.compiled.clone(),
            self.limits.clone(),
            self.log.clone(),
        )
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// What the version is doing (without copying the rest of its progress).
    pub fn status(&self) -> Status {
        self.progress.borrow().status
    }

    pub fn watch_progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Changes the published progress (its owner's job).
    pub(super) fn publish(&self, change: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(change);
    }

    pub(super) fn set_status(&self, status: Status, fault: Option<Fault>) {
        self.publish(|p| {
            p.status = status;
            p.fault = fault;
        });
    }

    /// Marks the start of a run, for [`DeployedModule::rebuild`]'s rate.
    pub(super) fn started_run(&self) {
        *self.run_started.lock() = (Instant::now(), self.progress.borrow().checkpoint);
    }

    /// Progress towards `head` since the version last started.
    pub fn rebuild(&self, head: GlobalPosition) -> Rebuild {
        let checkpoint = self.progress.borrow().checkpoint;
        let (since, from) = *self.run_started.lock();
        Rebuild::measure(from, checkpoint, head, since.elapsed().as_secs_f64())
    }
}
