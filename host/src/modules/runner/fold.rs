//! Folding batches through the guest: a reducer's events grouped by stream with their
//! states, a projection's events through its state store; the effects kept as [`Pending`]
//! until the runner commits them. A large reducer call is split across two instances.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::super::state::{DeadLetter, KvOverlay, ModuleState, StreamState};
use crate::engine::bindings::{Event, StreamBatch};
use crate::engine::{Guest, GuestError, GuestErrorKind, ModuleKind};
use crate::store::{GlobalPosition, StoreError, StreamRevision};

/// Reducer states remembered between batches, at most this many...
const MAX_CACHED_STATES: usize = 100_000;
/// ...holding at most this many bytes (names and states), so that ten modules over many
/// streams, or a module with large states, keep the host's memory flat.
const MAX_CACHED_STATE_BYTES: usize = 16 * 1024 * 1024;
/// A reducer state is snapshotted whenever a stream passes a multiple of this many
/// revisions, which bounds the replay behind `?revision=` and `?at=` queries.
pub(in crate::modules) const SNAPSHOT_EVERY: u64 = 1_000;
/// A reducer call with at least this many events is split across two instances (below it,
/// starting the second thread costs more than it saves).
const PARALLEL_MIN_EVENTS: usize = 512;
/// A sibling instance unused this long is dropped when the runner is caught up.
const SIBLING_IDLE: Duration = Duration::from_secs(30);

/// How many runners are in a guest call right now, across all modules: a call is split in
/// two only while there is a core to spare for every one of them.
static CALLING_RUNNERS: AtomicUsize = AtomicUsize::new(0);

/// This runner's place in [`CALLING_RUNNERS`], for the length of one call.
struct CallingRunners {
    calling: usize,
}

impl CallingRunners {
    fn enter() -> Self {
        Self {
            calling: CALLING_RUNNERS.fetch_add(1, Ordering::AcqRel) + 1,
        }
    }

    fn has_spare_core(&self) -> bool {
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cores = *CORES.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        self.calling * 2 <= cores
    }
}

impl Drop for CallingRunners {
    fn drop(&mut self) {
        CALLING_RUNNERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a batch did not commit.
pub(super) enum Failure {
    Guest(GuestError),
    /// The guest returned an error result for a stream (reducer) or the batch (projection).
    Rejected(String),
    Storage(String),
}

impl Failure {
    pub(super) fn kind_and_message(self) -> (GuestErrorKind, String) {
        match self {
            Failure::Guest(err) => (err.kind, err.message),
            Failure::Rejected(message) => (GuestErrorKind::Error, message),
            Failure::Storage(message) => (GuestErrorKind::Storage, message),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::Storage(format!("module state storage failed: {err}"))
    }
}

/// The effects of batches processed since the last commit.
#[derive(Default)]
pub(super) struct Pending {
    /// Where the next batch starts; the checkpoint once committed.
    pub next: GlobalPosition,
    pub events: u64,
    /// New reducer states' bytes (names included), or the projection's pending writes.
    pub bytes: usize,
    pub since: Option<Instant>,
    /// A reducer's new states.
    pub states: HashMap<String, StreamState>,
    /// Reducer states to keep as snapshots.
    pub snapshots: Vec<(String, StreamState)>,
    /// A projection's writes.
    pub overlay: Option<KvOverlay>,
    pub dead_letters: Vec<DeadLetter>,
}

impl Pending {
    /// Nothing pending, continuing at `next`.
    pub(super) fn at(next: GlobalPosition) -> Self {
        Self {
            next,
            ..Self::default()
        }
    }
}

/// The guest side of a runner: its instances and the reducer states it remembers.
pub(super) struct Folder {
    guest: Guest,
    /// A reducer's second instance, made on the first large batch: a batch's streams are
    /// independent, so the two fold halves of it on two cores.
    sibling: Option<Guest>,
    /// When the sibling last folded half a batch.
    sibling_used: Instant,
    /// Committed reducer states remembered between batches, and their size.
    states: HashMap<String, StreamState>,
    cached_bytes: usize,
}

impl Folder {
    pub(super) fn new(guest: Guest) -> Self {
        Self {
            guest,
            sibling: None,
            sibling_used: Instant::now(),
            states: HashMap::new(),
            cached_bytes: 0,
        }
    }

    pub(super) fn guest(&mut self) -> &mut Guest {
        &mut self.guest
    }

    /// Runs one batch through the guest, adding its effects to `pending`.
    pub(super) fn fold(
        &mut self,
        events: Vec<Event>,
        state: &ModuleState,
        pending: &mut Pending,
    ) -> Result<(), Failure> {
        match self.guest.kind() {
            ModuleKind::Reducer => self.fold_reducer(events, state, pending),
            ModuleKind::Projection => self.fold_projection(&events, state, pending),
        }
    }

    /// The states of `pending` were committed: remember them (within the cache's bounds).
    pub(super) fn committed(&mut self, states: HashMap<String, StreamState>, bytes: usize) {
        if self.states.len() + states.len() > MAX_CACHED_STATES
            || self.cached_bytes + bytes > MAX_CACHED_STATE_BYTES
        {
            self.forget_states();
        }
        if bytes <= MAX_CACHED_STATE_BYTES {
            self.cached_bytes += bytes;
            self.states.extend(states);
        }
    }

    pub(super) fn forget_states(&mut self) {
        self.states.clear();
        self.cached_bytes = 0;
    }

    fn fold_reducer(
        &mut self,
        events: Vec<Event>,
        state: &ModuleState,
        pending: &mut Pending,
    ) -> Result<(), Failure> {
        let mut batches: Vec<StreamBatch> = Vec::new();
        // Per batch, the first revision its state does not reflect yet.
        let mut unfolded_from: Vec<StreamRevision> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for event in events {
            if let Some(&i) = index.get(&event.stream_id) {
                batches[i].events.push(event);
                continue;
            }
            let known = pending
                .states
                .get(&event.stream_id)
                .or_else(|| self.states.get(&event.stream_id));
            let current = match known {
                Some(known) => Some(known.clone()),
                None => state.stream_state(&event.stream_id)?,
            };
            unfolded_from.push(current.as_ref().map_or(0, |s| s.revision + 1));
            index.insert(event.stream_id.clone(), batches.len());
            batches.push(StreamBatch {
                stream_id: event.stream_id.clone(),
                state: current.map(|s| s.bytes),
                events: vec![event],
            });
        }
        let results = self.apply_in_parallel(&batches).map_err(Failure::Guest)?;
        let mut updated = Vec::with_capacity(batches.len());
        for ((batch, result), from) in batches.into_iter().zip(results).zip(unfolded_from) {
            let bytes = result.map_err(Failure::Rejected)?;
            let revision = batch.events.last().map_or(0, |e| e.revision);
            pending.bytes += batch.stream_id.len() + bytes.len();
            let folded = StreamState { revision, bytes };
            // Snapshot when the revisions this call folded (wanted or not) cross a multiple
            // of SNAPSHOT_EVERY, so that streams with unwanted events get snapshots too.
            if from / SNAPSHOT_EVERY != (revision + 1) / SNAPSHOT_EVERY {
                pending
                    .snapshots
                    .push((batch.stream_id.clone(), folded.clone()));
            }
            updated.push((batch.stream_id, folded));
        }
        pending.states.extend(updated);
        Ok(())
    }

    /// Folds stream batches into their states; a large call is split in two halves (by
    /// events), folded at once by this instance and its sibling. Each stream's events stay
    /// in one call, in order, so the states are the same as from one call.
    fn apply_in_parallel(
        &mut self,
        batches: &[StreamBatch],
    ) -> Result<Vec<Result<Vec<u8>, String>>, GuestError> {
        let events: usize = batches.iter().map(|b| b.events.len()).sum();
        let calling = CallingRunners::enter();
        if events < PARALLEL_MIN_EVENTS || batches.len() < 2 || !calling.has_spare_core() {
            return self.guest.apply(batches);
        }
        let mut seen = 0;
        let split = batches
            .iter()
            .position(|b| {
                seen += b.events.len();
                seen * 2 >= events
            })
            .map_or(1, |i| i + 1)
            .clamp(1, batches.len() - 1);
        let (first, second) = batches.split_at(split);
        self.sibling_used = Instant::now();
        let guest = &mut self.guest;
        let sibling = self.sibling.get_or_insert_with(|| guest.sibling());
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| sibling.apply(second));
            (guest.apply(first), second.join())
        });
        let second = second.map_err(|_| {
            // Whatever that instance was doing, it is not used again.
            self.sibling = None;
            GuestError::new(
                GuestErrorKind::Trap,
                "the second instance's thread panicked",
            )
        })?;
        let mut results = first?;
        results.extend(second?);
        Ok(results)
    }

    /// Caught up: large batches are over for now. The sibling instance (and its memory)
    /// goes at the end of a rebuild, or once no large batch has come for a while; a burst
    /// that follows makes it again.
    pub(super) fn release_idle_sibling(&mut self, rebuilt: bool) {
        if rebuilt || self.sibling_used.elapsed() >= SIBLING_IDLE {
            self.sibling = None;
        }
    }

    /// Drops the sibling instance now.
    pub(super) fn drop_sibling(&mut self) {
        self.sibling = None;
    }

    /// How long the sibling instance may still go unused; `None` without one.
    pub(super) fn sibling_time_left(&self) -> Option<Duration> {
        self.sibling
            .as_ref()
            .map(|_| SIBLING_IDLE.saturating_sub(self.sibling_used.elapsed()))
    }

    fn fold_projection(
        &mut self,
        events: &[Event],
        state: &ModuleState,
        pending: &mut Pending,
    ) -> Result<(), Failure> {
        let overlay = pending
            .overlay
            .take()
            .unwrap_or_else(|| KvOverlay::new(state.clone(), self.guest.limits().max_state_bytes));
        let (result, overlay) = self.guest.handle(events, Box::new(overlay));
        result.map_err(Failure::Guest)?.map_err(Failure::Rejected)?;
        // The store comes back unless the call trapped, and a trap returned above.
        let overlay = overlay
            .and_then(|store| {
                let any: Box<dyn std::any::Any> = store;
                any.downcast::<KvOverlay>().ok()
            })
            .ok_or_else(|| Failure::Storage("the projection's state store was lost".into()))?;
        pending.bytes = overlay.written_bytes();
        pending.overlay = Some(*overlay);
        Ok(())
    }
}
