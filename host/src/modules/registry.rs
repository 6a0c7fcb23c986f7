//! The registry: every deployed module with its versions, persisted in the `modules` tree.
//!
//! A module has one **current** version (the one queries see), at most one **candidate**
//! (a new version rebuilding from position 0 in the background), **kept** earlier versions
//! whose state is retained for rollback (stopped; `keep_versions` of them), and temporary
//! **replays** (read models built up to a past point). With automatic activation a
//! candidate becomes current, atomically, once it has caught up with the log and with the
//! current version; with manual activation an operator decides.
//!
//! Persisted: `module/<name>` → [`ModuleRecord`] (JSON), `wasm/<version>` → component
//! bytes. The compiled form is cached in `<data>/compiled/<version>.cwasm`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::runner::{Runner, RunnerOptions};
use super::state::{Changes, DeadLetter, ModuleState};
use super::verify::{self, Diff, Verification};
use super::{
    Deployed, DeployedModule, ModuleError, ModuleSettings, Progress, RunnerControl, RunnerHandle,
    Status, now_rfc3339, validate_name,
};
use crate::engine::{CompiledModule, Guest, ModuleKind, ModuleLimits, WasmEngine};
use crate::store::{EventStore, GlobalPosition, SledStore};

/// When a new version replaces the current one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// As soon as it has caught up.
    #[default]
    Auto,
    /// When an operator activates it.
    Manual,
}

/// A version's place in its module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Current,
    Candidate,
    Kept,
    Replay,
}

/// A version with its role.
pub struct VersionView {
    pub module: Arc<DeployedModule>,
    pub role: Role,
}

/// What an activation leaves to stop and to drop.
struct Superseded {
    old: Arc<DeployedModule>,
    dropped: Vec<Arc<DeployedModule>>,
}

/// How long a replay's read model stays queryable.
const REPLAY_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct VersionRecord {
    version: String,
    kind: ModuleKind,
    deployed_at: String,
    size_bytes: usize,
    settings: ModuleSettings,
    paused: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ModuleRecord {
    name: String,
    current: VersionRecord,
    candidate: Option<VersionRecord>,
    kept: Vec<VersionRecord>,
    activation: Activation,
}

struct ModuleEntry {
    current: Arc<DeployedModule>,
    candidate: Option<Arc<DeployedModule>>,
    /// Newest first.
    kept: Vec<Arc<DeployedModule>>,
    activation: Activation,
    replays: Vec<(Arc<DeployedModule>, Instant)>,
    /// Whether each version is paused (persisted).
    paused: BTreeSet<String>,
}

impl ModuleEntry {
    fn all(&self) -> impl Iterator<Item = (&Arc<DeployedModule>, Role)> {
        std::iter::once((&self.current, Role::Current))
            .chain(self.candidate.iter().map(|m| (m, Role::Candidate)))
            .chain(self.kept.iter().map(|m| (m, Role::Kept)))
            .chain(self.replays.iter().map(|(m, _)| (m, Role::Replay)))
    }

    fn record(&self, name: &str) -> ModuleRecord {
        let version = |m: &DeployedModule| VersionRecord {
            version: m.version.clone(),
            kind: m.kind,
            deployed_at: m.deployed_at.clone(),
            size_bytes: m.size_bytes,
            settings: m.settings.clone(),
            paused: self.paused.contains(&m.version),
        };
        ModuleRecord {
            name: name.to_owned(),
            current: version(&self.current),
            candidate: self.candidate.as_deref().map(version),
            kept: self.kept.iter().map(|m| version(m)).collect(),
            activation: self.activation,
        }
    }
}

fn state_tree_name(name: &str, version: &str) -> String {
    format!("state/{name}/{version}")
}

fn record_key(name: &str) -> String {
    format!("module/{name}")
}

/// Every deployed module, and what they share.
pub struct ModuleRegistry {
    engine: Arc<WasmEngine>,
    pub(super) store: Arc<SledStore>,
    records: sled::Tree,
    compiled_dir: PathBuf,
    defaults: ModuleLimits,
    /// Earlier versions whose state is kept for rollback.
    keep_versions: usize,
    modules: RwLock<BTreeMap<String, ModuleEntry>>,
    /// Deploys, removals, activations and operator actions one at a time.
    changes: Mutex<()>,
    this: Weak<ModuleRegistry>,
}

impl ModuleRegistry {
    /// Opens the registry and starts every persisted version that should run.
    ///
    /// # Errors
    /// Storage failures, or a persisted module that no longer loads.
    pub fn open(
        engine: Arc<WasmEngine>,
        store: Arc<SledStore>,
        compiled_dir: PathBuf,
        defaults: ModuleLimits,
        keep_versions: usize,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&compiled_dir)
            .with_context(|| format!("creating {}", compiled_dir.display()))?;
        let records = store
            .db()
            .open_tree("modules")
            .context("opening the modules tree")?;
        let registry = Arc::new_cyclic(|this| Self {
            engine,
            store,
            records,
            compiled_dir,
            defaults,
            keep_versions,
            modules: RwLock::new(BTreeMap::new()),
            changes: Mutex::new(()),
            this: this.clone(),
        });
        for entry in registry.records.scan_prefix(b"module/") {
            let (_, value) = entry?;
            let record: ModuleRecord =
                serde_json::from_slice(&value).context("reading a module record")?;
            registry.load(record)?;
        }
        Ok(registry)
    }

    fn load(&self, record: ModuleRecord) -> anyhow::Result<()> {
        let paused: BTreeSet<String> = std::iter::once(&record.current)
            .chain(record.candidate.iter())
            .filter(|v| v.paused)
            .map(|v| v.version.clone())
            .collect();
        let current = self.make_version(&record.name, &record.current)?;
        if !paused.contains(&current.version) {
            self.spawn_runner(&current)?;
        }
        let candidate = match &record.candidate {
            Some(v) => {
                let candidate = self.make_version(&record.name, v)?;
                self.spawn_runner(&candidate)?;
                Some(candidate)
            }
            None => None,
        };
        let kept = record
            .kept
            .iter()
            .map(|v| self.make_version(&record.name, v))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // The entry goes in before the watcher starts: a watcher that finds no entry
        // takes the candidate for gone and never promotes it.
        let watch = match (&candidate, record.activation) {
            (Some(candidate), Activation::Auto) => Some(candidate.clone()),
            _ => None,
        };
        self.modules.write().insert(
            record.name.clone(),
            ModuleEntry {
                current,
                candidate,
                kept,
                activation: record.activation,
                replays: Vec::new(),
                paused,
            },
        );
        if let Some(candidate) = watch {
            self.watch_candidate(candidate);
        }
        Ok(())
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

    fn make_version(
        &self,
        name: &str,
        record: &VersionRecord,
    ) -> anyhow::Result<Arc<DeployedModule>> {
        let compiled = Arc::new(
            self.load_compiled(&record.version)
                .with_context(|| format!("loading module {name} version {}", record.version))?,
        );
        self.version_from(name, record, compiled)
    }

    fn version_from(
        &self,
        name: &str,
        record: &VersionRecord,
        compiled: Arc<CompiledModule>,
    ) -> anyhow::Result<Arc<DeployedModule>> {
        let tree = self
            .store
            .db()
            .open_tree(state_tree_name(name, &record.version))?;
        let state = ModuleState::new(tree);
        let checkpoint = state.checkpoint()?;
        let status = if record.paused {
            Status::Paused
        } else if checkpoint >= self.store.head() {
            Status::Running
        } else {
            Status::Rebuilding
        };
        Ok(Arc::new(DeployedModule::new(
            name.to_owned(),
            record.version.clone(),
            record.deployed_at.clone(),
            record.size_bytes,
            record.settings.clone(),
            &self.defaults,
            state,
            compiled,
            Progress {
                checkpoint,
                status,
                fault: None,
            },
        )))
    }

    pub(super) fn new_guest(&self, module: &DeployedModule) -> Guest {
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
        *module.run_started.lock() = (Instant::now(), module.progress().checkpoint);
        let thread = std::thread::Builder::new()
            .name(format!("module-{}", module.name))
            .spawn(move || runner.run())
            .context("starting the module runner")?;
        *module.runner.lock() = Some(RunnerHandle { control, thread });
        Ok(())
    }

    /// Promotes `candidate` once it has caught up (automatic activation).
    fn watch_candidate(&self, candidate: Arc<DeployedModule>) {
        let registry = self.this.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("activate-{}", candidate.name))
            .spawn(move || {
                let mut progress = candidate.watch_progress();
                loop {
                    if candidate.is_retired() {
                        return;
                    }
                    let caught_up = progress.borrow_and_update().status == Status::Running;
                    if caught_up {
                        let Some(registry) = registry.upgrade() else {
                            return;
                        };
                        if registry.promote_if_caught_up(&candidate) {
                            return;
                        }
                    }
                    if futures::executor::block_on(progress.changed()).is_err() {
                        return;
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot watch a candidate version");
        }
    }

    /// Makes `candidate` current if it still is the candidate and has caught up with the
    /// current version. `true` when there is nothing more to wait for.
    fn promote_if_caught_up(&self, candidate: &Arc<DeployedModule>) -> bool {
        let _one_at_a_time = self.changes.lock();
        let mut modules = self.modules.write();
        let Some(entry) = modules.get_mut(&candidate.name) else {
            return true;
        };
        if !entry
            .candidate
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, candidate))
        {
            return true;
        }
        let ready = candidate.progress().checkpoint >= entry.current.progress().checkpoint;
        if !ready {
            return false;
        }
        let superseded = self.swap_in(entry, candidate.clone());
        if let Err(err) = self.save_entry(&candidate.name, entry) {
            tracing::error!(%err, "persisting an activation failed");
        }
        drop(modules);
        self.finish(superseded);
        tracing::info!(module = %candidate.name, version = %candidate.version, "new version is current");
        true
    }

    /// Makes `next` current; the old current is kept for rollback. Returns what the
    /// caller must stop (the old current) and retire (kept versions past retention) once it
    /// no longer holds the modules lock, so queries never wait on a runner.
    fn swap_in(&self, entry: &mut ModuleEntry, next: Arc<DeployedModule>) -> Superseded {
        if entry
            .candidate
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &next))
        {
            entry.candidate = None;
        }
        entry.kept.retain(|m| !Arc::ptr_eq(m, &next));
        let old = std::mem::replace(&mut entry.current, next);
        entry.paused.remove(&old.version);
        entry.kept.insert(0, old.clone());
        let dropped = entry
            .kept
            .split_off(self.keep_versions.min(entry.kept.len()));
        Superseded { old, dropped }
    }

    fn finish(&self, superseded: Superseded) {
        superseded.old.stop_runner();
        for module in superseded.dropped {
            self.retire(&module);
        }
    }

    fn save_entry(&self, name: &str, entry: &ModuleEntry) -> Result<(), ModuleError> {
        let json = serde_json::to_vec(&entry.record(name)).context("encoding a module record")?;
        self.records.insert(record_key(name), json)?;
        self.store.db().flush()?;
        Ok(())
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
        let reusable = {
            let modules = self.modules.read();
            if let Some(entry) = modules.get(name) {
                let live = std::iter::once(&entry.current).chain(entry.candidate.iter());
                if let Some(module) = live.into_iter().find(|m| m.version == version) {
                    if module.settings == settings && entry.activation == activation {
                        return Ok(Deployed {
                            module: module.clone(),
                            changed: false,
                        });
                    }
                }
            }
            modules.get(name).and_then(|e| {
                e.all()
                    .find(|(m, role)| m.version == version && *role != Role::Replay)
                    .map(|(m, _)| m.compiled.clone())
            })
        };
        let record = VersionRecord {
            version: version.clone(),
            kind: ModuleKind::Reducer,
            deployed_at: now_rfc3339(),
            size_bytes: bytes.len(),
            settings,
            paused: false,
        };
        // Compiling takes a while: no lock that queries need is held meanwhile.
        let compiled = match reusable {
            Some(compiled) => compiled,
            None => {
                let component = WasmEngine::to_component(bytes)?;
                let compiled = self.engine.compile(&component)?;
                self.write_compiled(&version, &compiled);
                self.records.insert(format!("wasm/{version}"), component)?;
                Arc::new(compiled)
            }
        };
        let record = VersionRecord {
            kind: compiled.kind,
            ..record
        };
        let mut modules = self.modules.write();
        let Some(entry) = modules.get_mut(name) else {
            // A first deploy is current at once.
            let module = self.version_from(name, &record, compiled)?;
            self.spawn_runner(&module)?;
            let entry = ModuleEntry {
                current: module.clone(),
                candidate: None,
                kept: Vec::new(),
                activation,
                replays: Vec::new(),
                paused: BTreeSet::new(),
            };
            self.save_entry(name, &entry)?;
            modules.insert(name.to_owned(), entry);
            tracing::info!(module = name, %version, "deployed");
            return Ok(Deployed {
                module,
                changed: true,
            });
        };
        entry.activation = activation;
        if entry.current.version == version {
            // New settings for the current version: restart it, keeping its state (and
            // leave it paused if an operator paused it).
            let module = self.version_from(name, &record, compiled)?;
            entry.current.stop_runner();
            entry.current.mark_retired();
            if entry.paused.contains(&version) {
                module.set_status(Status::Paused, None);
            } else {
                self.spawn_runner(&module)?;
            }
            entry.current = module.clone();
            self.save_entry(name, entry)?;
            return Ok(Deployed {
                module,
                changed: true,
            });
        }
        // A candidate: a new version, or a kept one catching up from its checkpoint.
        if let Some(old) = entry.candidate.take() {
            if old.version == version {
                old.stop_runner();
                old.mark_retired();
            } else {
                self.retire(&old);
            }
        }
        entry.kept.retain(|m| m.version != version);
        let module = self.version_from(name, &record, compiled)?;
        self.spawn_runner(&module)?;
        entry.candidate = Some(module.clone());
        self.save_entry(name, entry)?;
        if activation == Activation::Auto {
            self.watch_candidate(module.clone());
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
    /// [`ModuleError::NotFound`] for an unknown version.
    pub fn activate(&self, name: &str, version: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let mut modules = self.modules.write();
        let entry = modules
            .get_mut(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        let (target, role) = entry
            .all()
            .find(|(m, role)| *role != Role::Replay && version_matches(&m.version, version))
            .map(|(m, role)| (m.clone(), role))
            .ok_or_else(|| ModuleError::VersionNotFound(name.to_owned(), version.to_owned()))?;
        if role == Role::Current {
            return Ok(target);
        }
        if !target.is_running() {
            self.spawn_runner(&target)?;
            target.set_status(Status::Rebuilding, None);
        }
        let superseded = self.swap_in(entry, target.clone());
        self.save_entry(name, entry)?;
        drop(modules);
        self.finish(superseded);
        tracing::info!(module = name, version = %target.version, "activated");
        Ok(target)
    }

    /// Every version of module `name`: current first, then candidate, kept, replays.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`].
    pub fn versions(&self, name: &str) -> Result<Vec<VersionView>, ModuleError> {
        self.expire_replays();
        let modules = self.modules.read();
        let entry = modules
            .get(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        Ok(entry
            .all()
            .map(|(m, role)| VersionView {
                module: m.clone(),
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
            return Ok(entry.current.clone());
        };
        entry
            .all()
            .find(|(m, _)| version_matches(&m.version, version))
            .map(|(m, _)| m.clone())
            .ok_or_else(|| ModuleError::VersionNotFound(name.to_owned(), version.to_owned()))
    }

    /// Compares `version`'s state with the current version's.
    ///
    /// # Errors
    /// Unknown module or version, or storage failures.
    pub fn diff(&self, name: &str, version: &str) -> Result<Diff, ModuleError> {
        let current = self.resolve(name, None)?;
        let other = self.resolve(name, Some(version))?;
        verify::diff(&other, &current)
    }

    /// Builds a temporary read model of module `name` (its current code) from position 0
    /// up to `to`, queryable as a version (`version=<its id>`) for a while.
    ///
    /// # Errors
    /// Unknown module, or the rebuild failed.
    pub fn replay(
        &self,
        name: &str,
        to: GlobalPosition,
    ) -> Result<Arc<DeployedModule>, ModuleError> {
        self.expire_replays();
        let current = self.resolve(name, None)?;
        let id = format!("replay-{}", uuid::Uuid::new_v4().simple());
        let tree = self.store.db().open_tree(state_tree_name(name, &id))?;
        let replay = current.rebuilding_copy(id, now_rfc3339(), ModuleState::new(tree));
        let to = to.min(self.store.head());
        let (letters, _) = current.state.dead_letters(0, usize::MAX)?;
        verify::rebuild_until(
            self,
            &replay,
            to,
            letters.iter().map(|l| l.position).collect(),
            "replaying",
        )?;
        replay.set_status(Status::Running, None);
        let mut modules = self.modules.write();
        let entry = modules
            .get_mut(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        entry
            .replays
            .push((replay.clone(), Instant::now() + REPLAY_TTL));
        Ok(replay)
    }

    fn expire_replays(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for entry in self.modules.write().values_mut() {
            entry.replays.retain(|(m, until)| {
                let keep = *until > now;
                if !keep {
                    expired.push(m.clone());
                }
                keep
            });
        }
        for module in expired {
            self.retire(&module);
        }
    }

    /// Stops a version for good and drops its state (and its code, if nothing else uses it).
    fn retire(&self, module: &DeployedModule) {
        module.stop_runner();
        module.mark_retired();
        let tree = state_tree_name(&module.name, &module.version);
        if let Err(err) = self.store.db().drop_tree(tree) {
            tracing::warn!(module = %module.name, %err, "dropping module state failed");
        }
        if module.version.starts_with("replay-") {
            return;
        }
        // Conservative when the lock is busy: keeping an unused artifact is harmless.
        let still_used = self.modules.try_read().is_none_or(|modules| {
            modules.values().any(|e| {
                e.all()
                    .any(|(m, _)| m.version == module.version && !std::ptr::eq(&**m, module))
            })
        });
        if !still_used {
            let _ = self.records.remove(format!("wasm/{}", module.version));
            let _ = std::fs::remove_file(self.compiled_path(&module.version));
        }
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
        self.records.remove(record_key(name))?;
        let versions: Vec<Arc<DeployedModule>> = entry.all().map(|(m, _)| m.clone()).collect();
        for module in versions {
            self.retire(&module);
        }
        self.store.db().flush()?;
        tracing::info!(module = name, "removed");
        Ok(())
    }

    /// Runs `action` on module `name`'s current version under the change lock, then
    /// persists the entry.
    fn operate<T>(
        &self,
        name: &str,
        action: impl FnOnce(&Self, &mut ModuleEntry) -> Result<T, ModuleError>,
    ) -> Result<T, ModuleError> {
        let _one_at_a_time = self.changes.lock();
        let mut modules = self.modules.write();
        let entry = modules
            .get_mut(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        let outcome = action(self, entry)?;
        self.save_entry(name, entry)?;
        Ok(outcome)
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

    /// Stops the current version after its current batch; it stays stopped across restarts.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn pause(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.operate(name, |_, entry| {
            let module = entry.current.clone();
            entry.paused.insert(module.version.clone());
            module.stop_runner();
            module.set_status(Status::Paused, None);
            Ok(module)
        })
    }

    /// Starts a paused or faulted current version again (a faulted one retries its event).
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn resume(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.operate(name, |registry, entry| {
            let module = entry.current.clone();
            entry.paused.remove(&module.version);
            registry.restart(&module)?;
            Ok(module)
        })
    }

    /// Drops the current version's state and dead letters and rebuilds it from position 0
    /// (when resumed, if it is paused).
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn reset(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.operate(name, |registry, entry| {
            let module = entry.current.clone();
            module.stop_runner();
            module.state.clear()?;
            module.progress.send_modify(|p| p.checkpoint = 0);
            if entry.paused.contains(&module.version) {
                module.set_status(Status::Paused, None);
            } else {
                registry.restart(&module)?;
            }
            tracing::info!(module = name, "reset");
            Ok(module)
        })
    }

    /// Steps a faulted current version over the event it stopped at, recording it as a
    /// dead letter, and starts it again.
    ///
    /// # Errors
    /// [`ModuleError::NotFaulted`] if it is not faulted at an event.
    pub fn skip(&self, name: &str) -> Result<Arc<DeployedModule>, ModuleError> {
        self.operate(name, |registry, entry| {
            let module = entry.current.clone();
            let progress = module.progress();
            let fault = match (&progress.status, &progress.fault) {
                (Status::Faulted, Some(fault)) if fault.position.is_some() => fault.clone(),
                _ => {
                    return Err(ModuleError::NotFaulted(format!(
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
                at: now_rfc3339(),
                by: "operator".into(),
            });
            changes.commit(&module.state, position + 1)?;
            module.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
            module.progress.send_modify(|p| p.checkpoint = position + 1);
            if entry.paused.contains(&module.version) {
                module.set_status(Status::Paused, None);
            } else {
                registry.restart(&module)?;
            }
            tracing::info!(module = name, position, "event skipped by an operator");
            Ok(module)
        })
    }

    /// Rebuilds the current version into scratch space up to its checkpoint and compares
    /// the result with its live state. The version pauses while this runs.
    ///
    /// # Errors
    /// [`ModuleError::NotFound`], or storage failures.
    pub fn verify(&self, name: &str) -> Result<Verification, ModuleError> {
        // The long part, the rebuild up to the live checkpoint, runs while the module keeps
        // going and queries are served; only the last stretch, up to where the stopped
        // module stands, and the comparison hold the registry.
        let module = self
            .get(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_owned()))?;
        let mut scratch = verify::Scratch::new(self, &module)?;
        scratch.rebuild_to(self, &module, module.state.checkpoint()?)?;
        self.operate(name, |registry, entry| {
            let module = entry.current.clone();
            if module.version != scratch.version() {
                return Err(ModuleError::Conflict(
                    "a new version became current while verifying; verify it again".into(),
                ));
            }
            let was_running = module.is_running();
            module.stop_runner();
            let result = scratch.finish(registry, &module);
            if was_running && module.progress().status != Status::Faulted {
                registry.spawn_runner(&module)?;
            }
            result
        })
    }

    /// The current version of module `name`.
    pub fn get(&self, name: &str) -> Option<Arc<DeployedModule>> {
        self.modules.read().get(name).map(|e| e.current.clone())
    }

    /// The current version of every module.
    pub fn list(&self) -> Vec<Arc<DeployedModule>> {
        self.modules
            .read()
            .values()
            .map(|e| e.current.clone())
            .collect()
    }

    /// The log head, for lag.
    pub fn head(&self) -> GlobalPosition {
        self.store.head()
    }

    /// Stops every runner (each commits its current work).
    pub fn shutdown(&self) {
        let versions: Vec<Arc<DeployedModule>> = self
            .modules
            .read()
            .values()
            .flat_map(|e| e.all().map(|(m, _)| m.clone()).collect::<Vec<_>>())
            .collect();
        for module in versions {
            module.stop_runner();
            module.mark_retired();
        }
    }
}

/// Whether `query` names `version`: in full, or as a prefix of at least 8 characters.
fn version_matches(version: &str, query: &str) -> bool {
    version == query || (query.len() >= 8 && version.starts_with(query))
}
