//! Time travel for reducers: a stream's state as it was after a given revision or at a
//! given time, replayed on demand through a fresh instance of the module, starting from the
//! latest snapshot at or before that point (so the cost is bounded, however long the
//! stream).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{DeployedModule, ModuleError, ModuleRegistry};
use crate::engine::bindings::StreamBatch;
use crate::engine::{GuestError, GuestErrorKind, ModuleKind};
use crate::store::{Direction, EventFilter, EventStore, StreamName, StreamRevision};

/// A point in a stream's history.
#[derive(Clone, Copy, Debug)]
pub enum Point {
    /// Right after the event with this revision.
    Revision(StreamRevision),
    /// At this time (microseconds since the Unix epoch): after every event recorded then.
    At(i64),
}

/// A stream's state at a point of its history.
#[derive(Debug)]
pub struct PastState {
    /// The revision of the stream's last event at that point.
    pub revision: StreamRevision,
    /// The module's state bytes after that event.
    pub bytes: Vec<u8>,
    /// How many events were fed through the module to answer, however long the stream:
    /// fewer than 3,000, as a snapshot is taken at the end of every guest call (of at most
    /// 2,000 events) that folds past a multiple of 1,000 revisions.
    pub replayed: u64,
}

/// Events replayed per guest call.
const PAGE: usize = 1_000;

fn failed(what: &str, err: impl std::fmt::Display) -> ModuleError {
    ModuleError::Internal(anyhow::anyhow!("{what}: {err}"))
}

/// The guest's own failure while replaying `stream`: reported as such, never as the host's.
fn guest_failed(stream: &StreamName, call: &str, error: GuestError) -> ModuleError {
    ModuleError::Guest {
        during: format!("in {call} while replaying stream {stream}"),
        error,
    }
}

/// The last revision of `stream` at `point`, or `None` if the stream had no event then.
fn revision_at(
    store: &dyn EventStore,
    stream: &StreamName,
    point: Point,
) -> Result<Option<StreamRevision>, ModuleError> {
    let last = store
        .read_stream(stream, None, 1, Direction::Backward)
        .map_err(|e| failed("reading the stream", e))?
        .and_then(|slice| slice.events.first().map(|e| e.revision));
    let Some(last) = last else { return Ok(None) };
    match point {
        Point::Revision(revision) => Ok(Some(revision.min(last))),
        Point::At(micros) => {
            // Recorded times grow with the log, so a binary search finds the last event
            // recorded at or before `micros`.
            let recorded = |revision: u64| -> Result<i64, ModuleError> {
                store
                    .read_stream(stream, Some(revision), 1, Direction::Forward)
                    .map_err(|e| failed("reading the stream", e))?
                    .and_then(|s| s.events.first().map(|e| e.recorded_at_micros))
                    .ok_or_else(|| failed("reading the stream", "a revision vanished"))
            };
            if recorded(0)? > micros {
                return Ok(None);
            }
            let (mut low, mut high) = (0, last);
            while low < high {
                let mid = low + (high - low).div_ceil(2);
                if recorded(mid)? <= micros {
                    low = mid;
                } else {
                    high = mid - 1;
                }
            }
            Ok(Some(low))
        }
    }
}

/// `stream`'s state in reducer `module` at `point`. `None` if the stream had no event
/// then.
///
/// # Errors
/// The module is not a reducer, or the replay failed.
pub(super) fn stream_state_at(
    registry: &ModuleRegistry,
    module: &Arc<DeployedModule>,
    stream: &StreamName,
    point: Point,
) -> Result<Option<PastState>, ModuleError> {
    if module.kind != ModuleKind::Reducer {
        return Err(ModuleError::WrongKind(format!(
            "module {} is a projection and has no per-stream state; query /state/{{key}} or /state?prefix= instead",
            module.name
        )));
    }
    let store: &dyn EventStore = registry.store.as_ref();
    let Some(target) = revision_at(store, stream, point)? else {
        return Ok(None);
    };
    let snapshot = module
        .state
        .snapshot_at_or_before(stream.as_str(), target)?;
    let (mut from, mut state) = match snapshot {
        Some(s) => (s.revision + 1, Some(s.bytes)),
        None => (0, None),
    };
    let (letters, _) = module.state.dead_letters(0, usize::MAX)?;
    let skipped: BTreeSet<u64> = letters.iter().map(|l| l.position).collect();
    let mut replayed = 0;
    let mut guest = registry.new_guest(module);
    let wanted = guest
        .filter()
        .map_err(|e| guest_failed(stream, "filter", e))?;
    let filter = EventFilter {
        event_types: (!wanted.event_types.is_empty()).then_some(wanted.event_types),
        categories: (!wanted.categories.is_empty()).then_some(wanted.categories),
    };
    while from <= target {
        let limit = PAGE.min((target - from + 1) as usize);
        let Some(slice) = store
            .read_stream(stream, Some(from), limit, Direction::Forward)
            .map_err(|e| failed("reading the stream", e))?
        else {
            break;
        };
        let Some(last) = slice.events.last().map(|e| e.revision) else {
            break;
        };
        let events: Vec<_> = slice
            .events
            .iter()
            .filter(|e| filter.matches(&e.stream, &e.event_type) && !skipped.contains(&e.position))
            .map(|e| super::runner::to_guest_event(&e.as_ref()))
            .collect();
        if !events.is_empty() {
            replayed += events.len() as u64;
            let batch = StreamBatch {
                stream_id: stream.as_str().to_owned(),
                state: state.take(),
                events,
            };
            let mut results = guest
                .apply(&[batch])
                .map_err(|e| guest_failed(stream, "apply", e))?;
            let bytes = results
                .pop()
                .ok_or_else(|| failed("the replay failed", "no result"))?
                .map_err(|message| {
                    guest_failed(
                        stream,
                        "apply",
                        GuestError::new(GuestErrorKind::Error, message),
                    )
                })?;
            state = Some(bytes);
        }
        from = last + 1;
    }
    let bytes = match state {
        Some(bytes) => bytes,
        None => guest
            .init(stream.as_str())
            .map_err(|e| guest_failed(stream, "init", e))?,
    };
    Ok(Some(PastState {
        revision: target,
        bytes,
        replayed,
    }))
}

impl ModuleRegistry {
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
        stream_state_at(self, &module, stream, point)
    }
}
