//! `verify`: rebuild a module from position 0 into scratch space, up to the live
//! checkpoint, and compare the result with the live state entry by entry. Since guests see
//! deterministic clocks and randomness, a module that passes is replayable; one that keeps
//! hidden state across calls (so that its result depends on how events were batched) fails,
//! and the first differing entry says where.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::runner::{Runner, RunnerOptions};
use super::state::{ModuleState, StateEntry, describe_entry_key};
use super::{DeployedModule, FaultPolicy, ModuleError, ModuleRegistry, RunnerControl};
use crate::engine::{GuestError, GuestErrorKind};

/// The outcome of a verification.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// Whether the rebuilt state equals the live state.
    pub matches: bool,
    /// The checkpoint both were compared at.
    pub position: u64,
    /// Entries (streams or keys) compared.
    pub compared: u64,
    /// Entries that differ.
    pub differences: u64,
    pub first_difference: Option<Difference>,
    pub rebuild_ms: u64,
}

/// One entry that differs; `None` where a side lacks it.
#[derive(Debug, Serialize)]
pub struct Difference {
    pub key: String,
    pub live: Option<Value>,
    pub rebuilt: Option<Value>,
}

fn value_json(key: &[u8], value: &[u8]) -> Value {
    // Reducer states start with their revision.
    let bytes = if key.first() == Some(&b's') {
        value.get(8..).unwrap_or_default()
    } else {
        value
    };
    serde_json::from_slice(bytes).unwrap_or_else(|_| String::from_utf8_lossy(bytes).into())
}

/// Runs `module` (a scratch version) from its checkpoint up to `to`, stepping over `skip`.
///
/// # Errors
/// [`ModuleError::Guest`] when the guest failed (`during` says what for), or
/// [`ModuleError::Internal`] when storage did.
pub(super) fn rebuild_until(
    registry: &ModuleRegistry,
    module: &Arc<DeployedModule>,
    to: u64,
    skip: BTreeSet<u64>,
    during: &str,
) -> Result<(), ModuleError> {
    let mut runner = Runner::new(
        module.clone(),
        Arc::new(RunnerControl::default()),
        registry.new_guest(module),
        registry.store.clone(),
        RunnerOptions {
            policy: FaultPolicy::Halt,
            until: Some(to),
            skip,
        },
    );
    let Err(fault) = runner.drive() else {
        return Ok(());
    };
    let during = match (fault.position, &fault.event_id) {
        (Some(p), Some(id)) => format!("{during}, at position {p} (event {id})"),
        (Some(p), None) => format!("{during}, at position {p}"),
        _ => during.to_owned(),
    };
    Err(match fault.kind {
        GuestErrorKind::Storage => {
            ModuleError::Internal(anyhow::anyhow!("{during}: {}", fault.message))
        }
        kind => ModuleError::Guest {
            during,
            error: GuestError::new(kind, fault.message),
        },
    })
}

/// A rebuild of a module from position 0 into a scratch tree (dropped with it), to be
/// compared with the live state.
pub(super) struct Scratch {
    copy: Arc<DeployedModule>,
    db: sled::Db,
    tree_name: String,
    rebuild_ms: u64,
}

impl Scratch {
    pub(super) fn new(
        registry: &ModuleRegistry,
        module: &Arc<DeployedModule>,
    ) -> Result<Self, ModuleError> {
        let tree_name = format!("scratch/{}/{}", module.name, uuid::Uuid::new_v4());
        let db = registry.store.db().clone();
        let scratch = ModuleState::new(db.open_tree(&tree_name)?);
        let copy =
            module.rebuilding_copy(module.version.clone(), module.deployed_at.clone(), scratch);
        Ok(Self {
            copy,
            db,
            tree_name,
            rebuild_ms: 0,
        })
    }

    /// The version being rebuilt.
    pub(super) fn version(&self) -> &str {
        &self.copy.version
    }

    /// Folds the log into the scratch state from where it stands up to `to`, stepping
    /// over `module`'s dead letters.
    pub(super) fn rebuild_to(
        &mut self,
        registry: &ModuleRegistry,
        module: &DeployedModule,
        to: u64,
    ) -> Result<(), ModuleError> {
        let (letters, _) = module.state.dead_letters(0, usize::MAX)?;
        let skip: BTreeSet<u64> = letters.iter().map(|l| l.position).collect();
        let started = Instant::now();
        let rebuilt = rebuild_until(registry, &self.copy, to, skip, "rebuilding to verify");
        self.rebuild_ms += started.elapsed().as_millis() as u64;
        rebuilt
    }

    /// With `module` stopped: the last stretch of the rebuild, up to its checkpoint, and
    /// the comparison.
    ///
    /// # Errors
    /// [`ModuleError::Conflict`] if the module went back (a reset) since the rebuild
    /// started; storage failures.
    pub(super) fn finish(
        mut self,
        registry: &ModuleRegistry,
        module: &DeployedModule,
    ) -> Result<Verification, ModuleError> {
        let position = module.state.checkpoint()?;
        if self.copy.state.checkpoint()? > position {
            return Err(ModuleError::Conflict(
                "the module was reset while it was being verified; verify it again".into(),
            ));
        }
        self.rebuild_to(registry, module, position)?;
        let comparison = compare(&module.state, &self.copy.state, 0)?;
        Ok(Verification {
            matches: comparison.differences() == 0,
            position,
            compared: comparison.compared,
            differences: comparison.differences(),
            first_difference: comparison.first,
            rebuild_ms: self.rebuild_ms,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.db.drop_tree(&self.tree_name);
    }
}

/// How one version's state differs from another's.
#[derive(Debug, Serialize)]
pub struct Diff {
    /// The version compared, and the current one it is compared with.
    pub version: String,
    pub current: String,
    /// Both versions' checkpoints: they may differ while one of them catches up.
    pub version_position: u64,
    pub current_position: u64,
    pub compared: u64,
    /// Entries only in the version (keys or streams it has and the current has not).
    pub added: u64,
    /// Entries only in the current version.
    pub removed: u64,
    /// Entries in both, with different values.
    pub changed: u64,
    /// Up to a few examples of each.
    pub samples: Samples,
}

#[derive(Debug, Default, Serialize)]
pub struct Samples {
    pub added: Vec<Difference>,
    pub removed: Vec<Difference>,
    pub changed: Vec<Difference>,
}

/// How many differences of each kind a diff shows.
const SAMPLES: usize = 20;

pub(super) fn diff(
    version: &DeployedModule,
    current: &DeployedModule,
) -> Result<Diff, ModuleError> {
    let comparison = compare(&current.state, &version.state, SAMPLES)?;
    Ok(Diff {
        version: version.version.clone(),
        current: current.version.clone(),
        version_position: version.state.checkpoint()?,
        current_position: current.state.checkpoint()?,
        compared: comparison.compared,
        added: comparison.only_right,
        removed: comparison.only_left,
        changed: comparison.changed,
        samples: comparison.samples,
    })
}

/// The result of walking two states side by side (`left` live or current).
struct Comparison {
    compared: u64,
    only_left: u64,
    only_right: u64,
    changed: u64,
    first: Option<Difference>,
    samples: Samples,
}

impl Comparison {
    fn differences(&self) -> u64 {
        self.only_left + self.only_right + self.changed
    }
}

/// Walks both states in key order, keeping up to `samples` examples of each difference.
fn compare(
    left: &ModuleState,
    right: &ModuleState,
    samples: usize,
) -> Result<Comparison, ModuleError> {
    let mut a = left.entries();
    let mut b = right.entries();
    let (mut x, mut y): (Option<StateEntry>, Option<StateEntry>) =
        (a.next().transpose()?, b.next().transpose()?);
    let mut out = Comparison {
        compared: 0,
        only_left: 0,
        only_right: 0,
        changed: 0,
        first: None,
        samples: Samples::default(),
    };
    while x.is_some() || y.is_some() {
        out.compared += 1;
        let order = match (&x, &y) {
            (Some((kx, _)), Some((ky, _))) => kx.cmp(ky),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let (l, r) = match order {
            std::cmp::Ordering::Equal => (x.take(), y.take()),
            std::cmp::Ordering::Less => (x.take(), None),
            std::cmp::Ordering::Greater => (None, y.take()),
        };
        let same = matches!((&l, &r), (Some((_, lv)), Some((_, rv))) if lv == rv);
        if !same {
            let key = l
                .as_ref()
                .or(r.as_ref())
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            let difference = || Difference {
                key: describe_entry_key(&key),
                live: l.as_ref().map(|(k, v)| value_json(k, v)),
                rebuilt: r.as_ref().map(|(k, v)| value_json(k, v)),
            };
            let (count, bucket) = match (&l, &r) {
                (Some(_), Some(_)) => (&mut out.changed, &mut out.samples.changed),
                (Some(_), None) => (&mut out.only_left, &mut out.samples.removed),
                _ => (&mut out.only_right, &mut out.samples.added),
            };
            *count += 1;
            if bucket.len() < samples {
                bucket.push(difference());
            }
            if out.first.is_none() {
                out.first = Some(difference());
            }
        }
        if x.is_none() && l.is_some() {
            x = a.next().transpose()?;
        }
        if y.is_none() && r.is_some() {
            y = b.next().transpose()?;
        }
    }
    Ok(out)
}
