//! Making versions: a version over its state, and an owner to run it, wired to tell the
//! registry when it catches up.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use parking_lot::Mutex;

use super::super::error::ModuleError;
use super::super::model::{Progress, Status};
use super::super::owner::{CaughtUp, Owner};
use super::super::runner::Emitter;
use super::super::state::ModuleState;
use super::super::version::{Code, DeployedModule, Identity};
use super::entry::{ModuleEntry, Slot, state_space};
use super::records::{ModuleRecord, Records, VersionRecord};
use crate::engine::{CompiledModule, ModuleKind, ModuleLimits, WasmEngine};
use crate::store::{EventLog, Keyspaces};

/// What the registry's housekeeping thread is told.
pub(super) enum Notice {
    /// Promote this candidate once it has caught up.
    Watch(String, String),
    /// Some version caught up: look at the candidates now.
    CaughtUp,
}

/// What every new version needs.
pub(super) struct Launcher {
    pub engine: Arc<WasmEngine>,
    pub log: Arc<dyn EventLog>,
    pub keyspaces: Arc<dyn Keyspaces>,
    /// Where processors append; none when the modules run over a log they cannot write.
    pub emitter: Option<Arc<Emitter>>,
    pub defaults: ModuleLimits,
    pub notices: Mutex<Sender<Notice>>,
}

impl Launcher {
    pub(super) fn notify(&self, notice: Notice) {
        let _ = self.notices.lock().send(notice);
    }

    /// A version over its state, not running.
    pub(super) fn version(
        &self,
        name: &str,
        record: &VersionRecord,
        compiled: Arc<CompiledModule>,
    ) -> Result<Arc<DeployedModule>, ModuleError> {
        let state = ModuleState::new(self.keyspaces.open(&state_space(name, &record.version))?);
        let checkpoint = state.checkpoint()?;
        let status = if checkpoint >= self.log.head() {
            Status::Running
        } else {
            Status::Rebuilding
        };
        Ok(Arc::new(DeployedModule::new(
            Identity {
                name: name.to_owned(),
                version: record.version.clone(),
                deployed_at: record.deployed_at.clone(),
                size_bytes: record.size_bytes,
            },
            record.settings.clone(),
            record.settings.limits(&self.defaults),
            state,
            Code {
                engine: self.engine.clone(),
                emitter: (compiled.kind == ModuleKind::Processor)
                    .then(|| self.emitter.clone())
                    .flatten(),
                compiled,
            },
            Progress {
                checkpoint,
                status,
                fault: None,
            },
        )))
    }

    /// A version with its owner: following the log, or paused.
    pub(super) fn start(
        &self,
        name: &str,
        record: &VersionRecord,
        compiled: Arc<CompiledModule>,
        paused: bool,
    ) -> Result<Slot, ModuleError> {
        let module = self.version(name, record, compiled)?;
        let owner = self.own(&module, paused)?;
        Ok(Slot {
            module,
            owner: Some(owner),
        })
    }

    pub(super) fn own(
        &self,
        module: &Arc<DeployedModule>,
        paused: bool,
    ) -> Result<Arc<Owner>, ModuleError> {
        let notices = self.notices.lock().clone();
        let caught_up: CaughtUp = Arc::new(move || {
            let _ = notices.send(Notice::CaughtUp);
        });
        Ok(Arc::new(Owner::start(
            module.clone(),
            self.log.clone(),
            paused,
            caught_up,
        )?))
    }

    /// A module's versions as `record` has them: current and candidate running (unless
    /// paused), kept ones stopped.
    pub(super) fn entry(
        &self,
        record: &ModuleRecord,
        records: &Records,
    ) -> anyhow::Result<ModuleEntry> {
        let compiled = |v: &VersionRecord| -> anyhow::Result<Arc<CompiledModule>> {
            let compiled = records.load_compiled(&v.version).map_err(|e| {
                e.context(format!(
                    "loading module {} version {}",
                    record.name, v.version
                ))
            })?;
            Ok(Arc::new(compiled))
        };
        let start = |v: &VersionRecord| -> anyhow::Result<Slot> {
            Ok(self.start(&record.name, v, compiled(v)?, v.paused)?)
        };
        let mut entry = ModuleEntry::new(start(&record.current)?, record.activation);
        entry.candidate = record.candidate.as_ref().map(start).transpose()?;
        for v in &record.kept {
            let module = self.version(&record.name, v, compiled(v)?)?;
            entry.kept.push(Slot {
                module,
                owner: None,
            });
        }
        entry.paused = std::iter::once(&record.current)
            .chain(record.candidate.iter())
            .filter(|v| v.paused)
            .map(|v| v.version.clone())
            .collect();
        Ok(entry)
    }
}
