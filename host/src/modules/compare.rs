//! Walking two states of a module side by side in key order: what `verify` compares and
//! what `diff` shows between versions.

use serde::Serialize;
use serde_json::Value;

use super::error::ModuleError;
use super::state::{ModuleState, StateEntry, describe_entry_key};
use super::version::DeployedModule;

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
pub(super) struct Comparison {
    pub compared: u64,
    only_left: u64,
    only_right: u64,
    changed: u64,
    pub first: Option<Difference>,
    samples: Samples,
}

impl Comparison {
    pub(super) fn differences(&self) -> u64 {
        self.only_left + self.only_right + self.changed
    }
}

/// Walks both states in key order, keeping up to `samples` examples of each difference.
pub(super) fn compare(
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
