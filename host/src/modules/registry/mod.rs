//! The registry: every deployed module with its versions and their roles, persisted
//! ([`records`]), made ([`launch`]) and held in memory ([`entry`]).
//!
//! Longer than most files, on purpose: it is the one place where roles change, and each
//! change (deploy, activate, promote, remove, retire) is written out whole, so that the
//! order of locking, persisting and stopping can be checked in one reading.
//!
//! A module has one **current** version (the one queries see), at most one **candidate**
//! (a new version rebuilding from position 0 in the background), **kept** earlier versions
//! whose state is retained for rollback (stopped; `keep_versions` of them), and temporary
//! **replays** (read models built up to a past point). With automatic activation a
//! candidate becomes current, atomically, once it has caught up with the log and with the
//! current version; with manual activation an operator decides.
//!
//! Each running version has an [`Owner`] that does everything to it; the registry only
//! decides roles. Its map is locked only to look up or swap entries: stopping owners,
//! persisting, compiling and running guests happen outside that lock, so a query's
//! [`ModuleRegistry::resolve`] never waits for them. Changes (deploys, activations, operator
//! actions) are serialized by a second lock that queries never take.

mod entry;
mod launch;
mod records;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use self::entry::{ModuleEntry, Slot, state_space, version_matches};
pub use self::entry::{Role, VersionView};
use self::launch::{Launcher, Notice};
pub use self::records::Activation;
use self::records::{ModuleRecord, Records, VersionRecord};
use super::compare::{self, Diff};
use super::error::ModuleError;
use super::history::{self, PastState, Point};
use super::model::{ModuleSettings, Status, now_rfc3339, validate_name};
use super::owner::Owner;
use super::runner::Emitter;
use super::state::ModuleState;
use super::verify::{self, Scratch, Verification};
use super::version::{DeployedModule, Identity};
use crate::engine::{ModuleKind, ModuleLimits, UploadError, WasmEngine};
use crate::store::{EventLog, EventStore, GlobalPosition, Keyspaces, StreamName};

/// The outcome of a deploy.
pub struct Deployed {
    pub module: Arc<DeployedModule>,
    /// `false` when the same bytes with the same settings were already deployed.
    pub changed: bool,
}

/// How long a replay's read model stays queryable.
pub const REPLAY_TTL: Duration = Duration::from_secs(15 * 60);
/// How often a candidate waiting to become current is looked at.
const PROMOTE_CHECK: Duration = Duration::from_millis(100);
/// How often expired replays are looked for.
const EXPIRY_CHECK: Duration = Duration::from_secs(10);

/// Every deployed module, and what they share.
pub struct ModuleRegistry {
    launcher: Launcher,
    records: Records,
    /// Earlier versions whose state is kept for rollback.
    keep_versions: usize,
    modules: RwLock<BTreeMap<String, ModuleEntry>>,
    /// Deploys, removals, activations and operator actions one at a time.
    changes: Mutex<()>,
}

impl ModuleRegistry {
    /// Opens the registry and starts every persisted version that should run.
    ///
    /// # Errors
    /// Storage failures, or a persisted module that no longer loads.
    pub fn open(
        engine: Arc<WasmEngine>,
        log: Arc<dyn EventLog>,
        appender: Option<Arc<dyn EventStore>>,
        keyspaces: Arc<dyn Keyspaces>,
        compiled_dir: PathBuf,
        defaults: ModuleLimits,
        keep_versions: usize,
    ) -> anyhow::Result<Arc<Self>> {
        let records = Records::open(&*keyspaces, engine.clone(), compiled_dir)?;
        let (notices, inbox) = channel();
        let registry = Arc::new(Self {
            launcher: Launcher {
                engine,
                log,
                keyspaces,
                emitter: appender.map(|store| Arc::new(Emitter::new(store))),
                defaults,
                notices: Mutex::new(notices),
            },
            records,
            keep_versions,
            modules: RwLock::new(BTreeMap::new()),
            changes: Mutex::new(()),
        });
        for record in registry.records.modules()? {
            registry.load(&record)?;
        }
        let weak = Arc::downgrade(&registry);
        std::thread::Builder::new()
            .name("module-registry".into())
            .spawn(move || housekeeping(&weak, &inbox))?;
        Ok(registry)
    }

    fn load(&self, record: &ModuleRecord) -> anyhow::Result<()> {
        let entry = self.launcher.entry(record, &self.records)?;
        let watch = entry
            .candidate
            .as_ref()
            .filter(|_| record.activation == Activation::Auto)
            .map(|c| c.module.version.clone());
        self.modules.write().insert(record.name.clone(), entry);
        if let Some(version) = watch {
            self.launcher
                .notify(Notice::Watch(record.name.clone(), version));
        }
        Ok(())
    }

    /// Writes module `name`'s record as the map has it now.
    fn persist(&self, name: &str) -> Result<(), ModuleError> {
        let record = self.modules.read().get(name).map(|e| e.record(name));
        match record {
            Some(record) => self.records.save(&record),
            None => Ok(()),
        }
    }

    /// Changes module `name`'s entry under the map lock (briefly: no I/O or guest code).
    fn edit<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut ModuleEntry) -> T,
    ) -> Result<T, ModuleError> {
        let mut modules = self.modules.write();
        let entry = modules
            .get_mut(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        Ok(change(entry))
    }

    fn entry(&self, name: &str) -> Result<ModuleEntry, ModuleError> {
        self.modules
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))
    }

    /// Deploys `bytes` as module `name`. The same bytes and settings again change nothing;
    /// new settings restart the version keeping its state; new bytes start a candidate that
    /// rebuilds from position 0 (or from its kept state) while the current one serves.
    ///
    /// # Errors
    /// An invalid name, bytes that are not a usable component, or a storage failure.
    pub fn deploy(
        &self,
        name: &str,
        bytes: &[u8],
        settings: ModuleSettings,
        activation: Activation,
    ) -> Result<Deployed, ModuleError> {
        validate_name(name).map_err(ModuleError::InvalidName)?;
        let version = hex::encode(Sha256::digest(bytes));
        let _one_at_a_time = self.changes.lock();
        let existing = self.modules.read().get(name).cloned();
        if let Some(entry) = &existing {
            let live = std::iter::once(&entry.current).chain(entry.candidate.iter());
            if let Some(slot) = live.into_iter().find(|s| s.module.version == version)
                && slot.module.settings == settings
                && entry.activation == activation
            {
                return Ok(Deployed {
                    module: slot.module.clone(),
                    changed: false,
                });
            }
        }
        let reusable = existing.as_ref().and_then(|e| {
            e.all()
                .find(|(s, role)| s.module.version == version && *role != Role::Replay)
                .map(|(s, _)| s.module.code().compiled.clone())
        });
        let compiled = match reusable {
            Some(compiled) => compiled,
            None => Arc::new(self.records.compile(&version, bytes)?),
        };
        if compiled.kind == ModuleKind::Processor && self.launcher.emitter.is_none() {
            return Err(ModuleError::Upload(UploadError::Incompatible(
                "the component is a processor, but these modules run over a log they cannot \
                 append to: processors need a store that takes appends"
                    .into(),
            )));
        }
        let record = VersionRecord {
            version: version.clone(),
            kind: compiled.kind,
            deployed_at: now_rfc3339(),
            size_bytes: bytes.len(),
            settings,
            paused: false,
        };
        // Every change is persisted before the version it adds starts running.
        let module = self.launcher.version(name, &record, compiled)?;
        let idle = Slot {
            module: module.clone(),
            owner: None,
        };
        let Some(entry) = existing else {
            // A first deploy is current at once.
            let mut entry = ModuleEntry::new(idle, activation);
            self.records.save(&entry.record(name))?;
            entry.current.owner = Some(self.launcher.own(&module, false)?);
            self.modules.write().insert(name.to_owned(), entry);
            tracing::info!(module = name, %version, "deployed");
            return Ok(Deployed {
                module,
                changed: true,
            });
        };
        let mut next = entry.clone();
        next.activation = activation;
        if entry.current.module.version == version {
            // New settings for the current version: restart it, keeping its state (and
            // leave it paused if an operator paused it).
            next.current = idle;
            self.records.save(&next.record(name))?;
            let old = entry.current.clone();
            old.stop();
            let owner = self
                .launcher
                .own(&module, entry.paused.contains(&version))?;
            let slot = Slot {
                module: module.clone(),
                owner: Some(owner),
            };
            self.edit(name, |e| {
                e.current = slot;
                e.activation = activation;
            })?;
            return Ok(Deployed {
                module,
                changed: true,
            });
        }
        // A candidate: a new version, or a kept one catching up from its checkpoint. A
        // candidate of the same version stops first: the two would share a state.
        next.kept.retain(|s| s.module.version != version);
        next.candidate = Some(idle);
        self.records.save(&next.record(name))?;
        if let Some(old) = entry
            .candidate
            .as_ref()
            .filter(|c| c.module.version == version)
        {
            old.stop();
        }
        let slot = Slot {
            module: module.clone(),
            owner: Some(self.launcher.own(&module, false)?),
        };
        let replaced = self.edit(name, |e| {
            e.activation = activation;
            e.kept.retain(|s| s.module.version != version);
            e.candidate.replace(slot)
        })?;
        // A replaced candidate of another version goes, with its state and code.
        if let Some(old) = replaced.filter(|old| old.module.version != version) {
            self.retire(&old);
        }
        if activation == Activation::Auto {
            self.launcher
                .notify(Notice::Watch(name.to_owned(), version.clone()));
        }
        tracing::info!(module = name, %version, "deployed a new version; rebuilding beside the current one");
        Ok(Deployed {
            module,
            changed: true,
        })
    }

    /// Makes `version` (a candidate or a kept version) current, without rebuilding: a kept
    /// version catches up from its own checkpoint.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`] / [`ModuleError::VersionNotFound`].
    pub fn activate(&self, name: &str, version: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let entry = self.entry(name)?;
        let (target, role) = entry
            .all()
            .find(|(s, role)| *role != Role::Replay && version_matches(&s.module.version, version))
            .map(|(s, role)| (s.clone(), role))
            .ok_or_else(|| ModuleError::VersionNotFound(name.to_owned(), version.to_owned()))?;
        if role == Role::Current {
            return Ok(target.module);
        }
        let target = match target.owner {
            Some(_) => target,
            None => Slot {
                owner: Some(self.launcher.own(&target.module, false)?),
                module: target.module,
            },
        };
        self.switch(name, target.clone())?;
        tracing::info!(module = name, version = %target.module.version, "activated");
        Ok(target.module)
    }

    /// Makes `next` current, persists it, then stops the old current and retires what falls
    /// out of retention.
    fn switch(&self, name: &str, next: Slot) -> Result<(), ModuleError> {
        let keep = self.keep_versions;
        let (old, dropped) = self.edit(name, |e| e.swap_in(next, keep))?;
        self.persist(name)?;
        old.stop();
        for slot in dropped {
            self.retire(&slot);
        }
        Ok(())
    }

    /// Makes candidate `version` of `name` current if it still is the candidate and has
    /// caught up with the current version. `true` when there is nothing more to wait for.
    fn promote_if_caught_up(&self, name: &str, version: &str) -> bool {
        let _one_at_a_time = self.changes.lock();
        let Ok(entry) = self.entry(name) else {
            return true;
        };
        let Some(candidate) = entry.candidate.filter(|c| c.module.version == version) else {
            return true;
        };
        let progress = candidate.module.progress();
        if progress.status != Status::Running
            || progress.checkpoint < entry.current.module.progress().checkpoint
        {
            return false;
        }
        if let Err(err) = self.switch(name, candidate) {
            tracing::error!(%err, "making a caught-up version current failed");
            return false;
        }
        tracing::info!(module = name, version, "new version is current");
        true
    }

    /// Every version of module `name`: current first, then candidate, kept, replays.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`].
    pub fn versions(&self, name: &str) -> Result<Vec<VersionView>, ModuleError> {
        let modules = self.modules.read();
        let entry = modules
            .get(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        Ok(entry
            .all()
            .map(|(s, role)| VersionView {
                module: s.module.clone(),
                role,
            })
            .collect())
    }

    /// The version queries of module `name` address: the current one, or `version` (a full
    /// version or a prefix of at least 8 characters, or a replay's id).
    ///
    /// # Errors
    /// [`ModuleError::NotFound`] / [`ModuleError::VersionNotFound`].
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<DeployedModule>, ModuleError> {
        let modules = self.modules.read();
        let entry = modules
            .get(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        let Some(version) = version else {
            return Ok(entry.current.module.clone());
        };
        entry
            .all()
            .find(|(s, _)| version_matches(&s.module.version, version))
            .map(|(s, _)| s.module.clone())
            .ok_or_else(|| ModuleError::VersionNotFound(name.to_owned(), version.to_owned()))
    }

    /// Compares `version`'s state with the current version's.
    ///
    /// # Errors
    /// Unknown module or version, or storage failures.
    pub fn diff(&self, name: &str, version: &str) -> Result<Diff, ModuleError> {
        let current = self.resolve(name, None)?;
        let other = self.resolve(name, Some(version))?;
        compare::diff(&other, &current)
    }

    /// `stream`'s state in module `name` (or `version`) at `point`, replayed on demand.
    ///
    /// # Errors
    /// Unknown module or version, not a reducer, or the replay failed.
    pub fn stream_state_at(
        &self,
        name: &str,
        version: Option<&str>,
        stream: &StreamName,
        point: Point,
    ) -> Result<Option<PastState>, ModuleError> {
        let module = self.resolve(name, version)?;
        history::stream_state_at(&*self.launcher.log, &module, stream, point)
    }

    /// Builds a temporary read model of module `name` (its current code) from position 0
    /// up to `to`, queryable as a version (`version=<its id>`) for [`REPLAY_TTL`].
    ///
    /// # Errors
    /// Unknown module, or the rebuild failed.
    pub fn replay(
        &self,
        name: &str,
        to: GlobalPosition,
    ) -> Result<Arc<DeployedModule>, ModuleError> {
        let current = self.resolve(name, None)?;
        let id = format!("replay-{}", uuid::Uuid::new_v4().simple());
        let state = ModuleState::new(self.launcher.keyspaces.open(&state_space(name, &id))?);
        let identity = Identity {
            version: id,
            deployed_at: now_rfc3339(),
            ..current.identity()
        };
        let replay = current.rebuilding_copy(identity, state);
        let slot = Slot {
            module: replay.clone(),
            owner: None,
        };
        let to = to.min(self.launcher.log.head());
        let skip = current.state.dead_letter_positions()?;
        if let Err(err) = verify::rebuild_until(&self.launcher.log, &replay, to, skip, "replaying")
        {
            self.retire(&slot);
            return Err(err);
        }
        replay.set_status(Status::Running, None);
        let listed = self.edit(name, |e| {
            e.replays.push((slot.clone(), Instant::now() + REPLAY_TTL));
        });
        if let Err(err) = listed {
            // The module was removed meanwhile: so is its replay.
            self.retire(&slot);
            return Err(err);
        }
        Ok(replay)
    }

    /// Retires replays past their time.
    fn expire_replays(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for entry in self.modules.write().values_mut() {
            entry.replays.retain(|(slot, until)| {
                let keep = *until > now;
                if !keep {
                    expired.push(slot.clone());
                }
                keep
            });
        }
        for slot in expired {
            self.retire(&slot);
        }
    }

    /// Stops a version for good and drops its state (and its code, if nothing else uses
    /// it). Called without the map lock.
    fn retire(&self, slot: &Slot) {
        slot.stop();
        let module = &slot.module;
        if let Err(err) = self
            .launcher
            .keyspaces
            .remove(&state_space(&module.name, &module.version))
        {
            tracing::warn!(module = %module.name, %err, "dropping module state failed");
        }
        if module.version.starts_with("replay-") {
            return;
        }
        let still_used = self.modules.read().values().any(|e| {
            e.all()
                .any(|(s, _)| s.module.version == module.version && !Arc::ptr_eq(&s.module, module))
        });
        if !still_used && let Err(err) = self.records.forget_version(&module.version) {
            tracing::warn!(module = %module.name, %err, "dropping a version's code failed");
        }
    }

    /// Whether the code of `version` (its component and compiled form) is still kept.
    pub fn keeps_code_of(&self, version: &str) -> bool {
        self.records.has_compiled(version)
    }

    /// Removes module `name`, every version and its state.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn remove(&self, name: &str) -> Result<(), ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let entry = self
            .modules
            .write()
            .remove(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        for (slot, _) in entry.all() {
            self.retire(slot);
        }
        self.records.remove(name)?;
        tracing::info!(module = name, "removed");
        Ok(())
    }

    /// Runs `action` on the owner of module `name`'s current version, then records whether
    /// it is paused.
    fn operate(
        &self,
        name: &str,
        paused: Option<bool>,
        action: impl FnOnce(&Owner) -> Result<(), ModuleError>,
    ) -> Result<Arc<DeployedModule>, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let current = self.entry(name)?.current;
        action(current.owner()?)?;
        if let Some(paused) = paused {
            let version = current.module.version.clone();
            self.edit(name, |e| match paused {
                true => e.paused.insert(version),
                false => e.paused.remove(&version),
            })?;
            self.persist(name)?;
        }
        Ok(current.module)
    }

    /// Stops the current version after its current batch; it stays stopped across restarts.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn pause(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.operate(name, Some(true), Owner::pause)
    }

    /// Starts a paused or faulted current version again (a faulted one retries its event).
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn resume(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.operate(name, Some(false), Owner::resume)
    }

    /// Drops the current version's state and dead letters and rebuilds it from position 0
    /// (when resumed, if it is paused).
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn reset(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.operate(name, None, Owner::reset)
    }

    /// Steps a faulted current version over the event it stopped at, recording it as a
    /// dead letter, and starts it again.
    ///
    /// # Errors
    /// [`ModuleError::NotFaulted`] if it is not faulted at an event.
    pub fn skip(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.operate(name, None, Owner::skip)
    }

    /// Rebuilds the current version into scratch space up to its checkpoint and compares
    /// the result with its live state. The rebuild runs on the caller's thread while the
    /// version keeps going; only the last stretch and the comparison stop it.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], [`ModuleError::Conflict`] if another version became
    /// current meanwhile, guest or storage failures.
    pub fn verify(&self, name: &str) -> Result<Verification, ModuleError> {
        let current = self.entry(name)?.current;
        let module = &current.module;
        let mut scratch = Scratch::new(
            self.launcher.log.clone(),
            self.launcher.keyspaces.clone(),
            module,
        )?;
        scratch.rebuild_to(module, module.state.checkpoint()?)?;
        // Through whichever version is current now: a new one refuses the scratch.
        self.entry(name)?.current.owner()?.finish_verify(scratch)
    }

    /// The current version of module `name`.
    pub fn get(&self, name: &str) -> Option<Arc<DeployedModule>> {
        self.modules
            .read()
            .get(name)
            .map(|e| e.current.module.clone())
    }

    /// The current version of every module.
    pub fn list(&self) -> Vec<Arc<DeployedModule>> {
        self.modules
            .read()
            .values()
            .map(|e| e.current.module.clone())
            .collect()
    }

    /// The log head, for lag.
    pub fn head(&self) -> GlobalPosition {
        self.launcher.log.head()
    }

    /// Stops every version (each commits its current work).
    pub fn shutdown(&self) {
        let slots: Vec<Slot> = self
            .modules
            .read()
            .values()
            .flat_map(|e| e.all().map(|(s, _)| s.clone()).collect::<Vec<_>>())
            .collect();
        for slot in slots {
            slot.stop();
        }
    }
}

/// The registry's own thread: promotes candidates once they have caught up, and retires
/// expired replays. Ends with the registry.
fn housekeeping(registry: &Weak<ModuleRegistry>, inbox: &Receiver<Notice>) {
    let mut watched: BTreeSet<(String, String)> = BTreeSet::new();
    let mut expiry = Instant::now();
    loop {
        let wait = if watched.is_empty() {
            EXPIRY_CHECK
        } else {
            PROMOTE_CHECK
        };
        match inbox.recv_timeout(wait) {
            Ok(Notice::Watch(name, version)) => {
                watched.insert((name, version));
            }
            Ok(Notice::CaughtUp) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(registry) = registry.upgrade() else {
            return;
        };
        watched.retain(|(name, version)| !registry.promote_if_caught_up(name, version));
        if expiry.elapsed() >= EXPIRY_CHECK {
            registry.expire_replays();
            expiry = Instant::now();
        }
    }
}
