//! A module's versions in memory: each in a [`Slot`] with its owner while it runs, and
//! their roles in a [`ModuleEntry`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::super::error::ModuleError;
use super::super::owner::Owner;
use super::super::version::DeployedModule;
use super::records::{Activation, ModuleRecord, VersionRecord};

/// A version's place in its module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
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

/// A version and, while it runs, its owner.
#[derive(Clone)]
pub(super) struct Slot {
    pub module: Arc<DeployedModule>,
    pub owner: Option<Arc<Owner>>,
}

impl Slot {
    pub(super) fn owner(&self) -> Result<&Owner, ModuleError> {
        self.owner.as_deref().ok_or_else(|| {
            ModuleError::Conflict(format!("version {} is not running", self.module.version))
        })
    }
}

#[derive(Clone)]
pub(super) struct ModuleEntry {
    pub current: Slot,
    pub candidate: Option<Slot>,
    /// Newest first.
    pub kept: Vec<Slot>,
    pub activation: Activation,
    pub replays: Vec<(Slot, Instant)>,
    /// Whether each version is paused (persisted).
    pub paused: BTreeSet<String>,
}

impl ModuleEntry {
    /// A module with one version, current.
    pub(super) fn new(current: Slot, activation: Activation) -> Self {
        Self {
            current,
            candidate: None,
            kept: Vec::new(),
            activation,
            replays: Vec::new(),
            paused: BTreeSet::new(),
        }
    }

    pub(super) fn all(&self) -> impl Iterator<Item = (&Slot, Role)> {
        std::iter::once((&self.current, Role::Current))
            .chain(self.candidate.iter().map(|s| (s, Role::Candidate)))
            .chain(self.kept.iter().map(|s| (s, Role::Kept)))
            .chain(self.replays.iter().map(|(s, _)| (s, Role::Replay)))
    }

    pub(super) fn record(&self, name: &str) -> ModuleRecord {
        let version = |slot: &Slot| VersionRecord {
            version: slot.module.version.clone(),
            kind: slot.module.kind,
            deployed_at: slot.module.deployed_at.clone(),
            size_bytes: slot.module.size_bytes,
            settings: slot.module.settings.clone(),
            paused: self.paused.contains(&slot.module.version),
        };
        ModuleRecord {
            name: name.to_owned(),
            current: version(&self.current),
            candidate: self.candidate.as_ref().map(version),
            kept: self.kept.iter().map(version).collect(),
            activation: self.activation,
        }
    }

    /// Makes `next` current; the old current is kept for rollback. Returns the slots to
    /// stop (the old current) and to retire (kept versions past retention).
    pub(super) fn swap_in(&mut self, next: Slot, keep_versions: usize) -> (Slot, Vec<Slot>) {
        let same = |s: &Slot| Arc::ptr_eq(&s.module, &next.module);
        if self.candidate.as_ref().is_some_and(same) {
            self.candidate = None;
        }
        self.kept.retain(|s| !same(s));
        let old = std::mem::replace(&mut self.current, next);
        self.paused.remove(&old.module.version);
        self.kept.insert(
            0,
            Slot {
                module: old.module.clone(),
                owner: None,
            },
        );
        let dropped = self.kept.split_off(keep_versions.min(self.kept.len()));
        (old, dropped)
    }
}

pub(super) fn state_space(name: &str, version: &str) -> String {
    format!("state/{name}/{version}")
}

/// Whether `query` names `version`: in full, or as a prefix of at least 8 characters.
pub(super) fn version_matches(version: &str, query: &str) -> bool {
    version == query || (query.len() >= 8 && version.starts_with(query))
}

impl Slot {
    /// Stops the owner, if there is one (its runner commits first).
    pub(super) fn stop(&self) {
        if let Some(owner) = &self.owner {
            owner.stop();
        }
    }
}
