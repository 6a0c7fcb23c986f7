//! Time travel for reducers: a stream's state as it was after a given revision or at a
//! given time, replayed on demand through a fresh instance of the module, starting from the
//! latest snapshot at or before that point (so the cost is bounded, however long the
//! stream).

use super::error::ModuleError;
use super::runner::{CallEvents, wanted_by};
use super::version::DeployedModule;
use crate::engine::{GuestError, GuestErrorKind, ModuleKind};
use crate::store::{EventLog, StoreError, StreamName, StreamRead, StreamRevision, first_where};

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
    ModuleError::Storage(StoreError::Storage(format!("{what}: {err}")))
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
    log: &dyn EventLog,
    stream: &StreamName,
    point: Point,
) -> Result<Option<StreamRevision>, ModuleError> {
    let last = log
        .read_stream(stream, StreamRead::backward(None, 1))?
        .and_then(|slice| slice.events.first().map(|e| e.revision));
    let Some(last) = last else { return Ok(None) };
    match point {
        Point::Revision(revision) => Ok(Some(revision.min(last))),
        Point::At(micros) => {
            let after = first_where(0, last + 1, |revision| {
                let recorded = log
                    .read_stream(stream, StreamRead::forward(Some(revision), 1))?
                    .and_then(|s| s.events.first().map(|e| e.recorded_at_micros))
                    .ok_or_else(|| failed("reading the stream", "a revision vanished"))?;
                Ok::<_, ModuleError>(recorded > micros)
            })?;
            Ok(after.checked_sub(1))
        }
    }
}

/// `stream`'s state in reducer `module` at `point`. `None` if the stream had no event
/// then.
///
/// # Errors
/// The module is not a reducer, or the replay failed.
pub(super) fn stream_state_at(
    log: &dyn EventLog,
    module: &DeployedModule,
    stream: &StreamName,
    point: Point,
) -> Result<Option<PastState>, ModuleError> {
    if module.kind != ModuleKind::Reducer {
        return Err(ModuleError::WrongKind(format!(
            "module {} is a {} and has no per-stream state; query /state/{{key}} or /state?prefix= instead",
            module.name,
            module.kind.world()
        )));
    }
    let Some(target) = revision_at(log, stream, point)? else {
        return Ok(None);
    };
    let snapshot = module
        .state
        .snapshot_at_or_before(stream.as_str(), target)?;
    let (mut from, mut state) = match snapshot {
        Some(s) => (s.revision + 1, Some(s.bytes)),
        None => (0, None),
    };
    let skipped = module.state.dead_letter_positions()?;
    let mut replayed = 0;
    let mut guest = module.new_guest();
    let filter = wanted_by(&mut guest).map_err(|e| guest_failed(stream, "filter", e))?;
    while from <= target {
        let limit = PAGE.min((target - from + 1) as usize);
        let Some(slice) = log.read_stream(stream, StreamRead::forward(Some(from), limit))? else {
            break;
        };
        let Some(last) = slice.events.last().map(|e| e.revision) else {
            break;
        };
        let mut events = CallEvents::default();
        for e in slice
            .events
            .iter()
            .filter(|e| filter.matches(&e.stream, &e.event_type) && !skipped.contains(&e.position))
        {
            events.push(&e.as_ref());
        }
        if events.len() > 0 {
            replayed += events.len() as u64;
            let bytes = guest
                .fold_stream(stream.as_str(), state.take(), &events.finish())
                .map_err(|e| guest_failed(stream, "apply", e))?
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
