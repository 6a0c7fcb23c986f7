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
use super::{
    Counters, DeployedModule, FaultPolicy, ModuleError, ModuleRegistry, Progress, RunnerControl,
    Status,
};
use crate::engine::sandbox::GuestLog;

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
    /// Why the rebuild could not reach the checkpoint, if it could not.
    pub rebuild_error: Option<String>,
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

pub(super) fn verify(
    registry: &ModuleRegistry,
    module: &Arc<DeployedModule>,
) -> Result<Verification, ModuleError> {
    let position = module.state.checkpoint()?;
    let (letters, _) = module.state.dead_letters(0, usize::MAX)?;
    let skip: BTreeSet<u64> = letters.iter().map(|l| l.position).collect();
    let tree_name = format!("scratch/{}/{}", module.name, uuid::Uuid::new_v4());
    let db = registry.store.db();
    let scratch = ModuleState::new(db.open_tree(&tree_name)?);
    let copy = Arc::new(DeployedModule {
        name: module.name.clone(),
        version: module.version.clone(),
        kind: module.kind,
        deployed_at: module.deployed_at.clone(),
        size_bytes: module.size_bytes,
        settings: module.settings.clone(),
        limits: module.limits.clone(),
        state: scratch.clone(),
        log: GuestLog::new(module.limits.log_bytes),
        counters: Counters::default(),
        compiled: module.compiled.clone(),
        progress: tokio::sync::watch::Sender::new(Progress {
            checkpoint: 0,
            status: Status::Rebuilding,
            fault: None,
        }),
        runner: parking_lot::Mutex::new(None),
    });
    let mut runner = Runner::new(
        copy.clone(),
        Arc::new(RunnerControl::default()),
        registry.new_guest(&copy),
        registry.store.clone(),
        RunnerOptions {
            policy: FaultPolicy::Halt,
            until: Some(position),
            skip,
        },
    );
    let started = Instant::now();
    let rebuilt = runner.drive();
    let rebuild_ms = started.elapsed().as_millis() as u64;
    let outcome = compare(&module.state, &scratch);
    let _ = db.drop_tree(&tree_name);
    let (compared, differences, first_difference) = outcome?;
    let rebuild_error = rebuilt.err().map(|fault| match fault.position {
        Some(p) => format!("the rebuild failed at position {p}: {}", fault.message),
        None => format!("the rebuild failed: {}", fault.message),
    });
    Ok(Verification {
        matches: differences == 0 && rebuild_error.is_none(),
        position,
        compared,
        differences,
        first_difference,
        rebuild_error,
        rebuild_ms,
    })
}

/// Walks both states in key order.
fn compare(
    live: &ModuleState,
    rebuilt: &ModuleState,
) -> Result<(u64, u64, Option<Difference>), ModuleError> {
    let mut a = live.entries();
    let mut b = rebuilt.entries();
    let (mut x, mut y): (Option<StateEntry>, Option<StateEntry>) =
        (a.next().transpose()?, b.next().transpose()?);
    let (mut compared, mut differences, mut first) = (0u64, 0u64, None);
    while x.is_some() || y.is_some() {
        compared += 1;
        let order = match (&x, &y) {
            (Some((kx, _)), Some((ky, _))) => kx.cmp(ky),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let (left, right) = match order {
            std::cmp::Ordering::Equal => (x.take(), y.take()),
            std::cmp::Ordering::Less => (x.take(), None),
            std::cmp::Ordering::Greater => (None, y.take()),
        };
        let same = matches!((&left, &right), (Some((_, l)), Some((_, r))) if l == r);
        if !same {
            differences += 1;
            if first.is_none() {
                let key = left
                    .as_ref()
                    .or(right.as_ref())
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default();
                first = Some(Difference {
                    key: describe_entry_key(&key),
                    live: left.as_ref().map(|(k, v)| value_json(k, v)),
                    rebuilt: right.as_ref().map(|(k, v)| value_json(k, v)),
                });
            }
        }
        if x.is_none() && left.is_some() {
            x = a.next().transpose()?;
        }
        if y.is_none() && right.is_some() {
            y = b.next().transpose()?;
        }
    }
    Ok((compared, differences, first))
}
