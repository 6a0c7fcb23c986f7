//! Folding batches through the guest: a reducer's events grouped by stream with their
//! states, a projection's (or processor's) events through its state store; the effects
//! kept as [`Pending`] until the runner commits them. A large reducer call is split
//! across two instances.
//!
//! A 0.1 reducer gets each stream's state with its events and returns the new one; the
//! host remembers committed states between batches. A 0.2 reducer holds its streams'
//! states itself ([`Held`]): the host hands a state over once, then only events, and asks
//! for the changed states when it commits ([`Folder::save`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::super::state::{DeadLetter, KvOverlay, ModuleState, StreamState};
use super::emit::{
    Emission, MAX_EMITTED_BYTES_PER_CALL, MAX_EMITTED_EVENT_BYTES, MAX_EMITTED_PER_CALL,
};
use crate::engine::bindings::v2::{self, Events};
use crate::engine::bindings::{Event, StreamBatch};
use crate::engine::{Contract, Guest, GuestError, GuestErrorKind, ModuleKind, records};
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
/// A 0.2 reducer instance is asked to drop its states after a commit once it holds more
/// than this many streams...
const MAX_HELD_STREAMS: usize = 100_000;
/// ...or states of this many bytes (as last saved), so that its memory stays bounded.
const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

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
    /// A processor's events to append.
    pub emitted: Vec<Emission>,
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
    /// A 0.1 reducer's committed states remembered between batches, and their size.
    states: HashMap<String, StreamState>,
    cached_bytes: usize,
    /// What a 0.2 reducer's instances hold: the guest's, then the sibling's.
    held: [Held; 2],
}

/// The streams whose states one instance of a 0.2 reducer holds, by slot.
#[derive(Default)]
struct Held {
    slots: HashMap<String, u32>,
    streams: Vec<HeldStream>,
    /// The slots changed since their state was last saved.
    changed: Vec<u32>,
    /// The size of the states as last saved.
    bytes: usize,
}

struct HeldStream {
    name: String,
    /// The first revision not folded into the held state.
    next: StreamRevision,
    /// Whether the slot is in [`Held::changed`].
    changed: bool,
    /// The size of the state as last saved.
    bytes: usize,
}

impl Held {
    fn clear(&mut self) {
        *self = Held::default();
    }
}

impl Folder {
    pub(super) fn new(guest: Guest) -> Self {
        Self {
            guest,
            sibling: None,
            sibling_used: Instant::now(),
            states: HashMap::new(),
            cached_bytes: 0,
            held: [Held::default(), Held::default()],
        }
    }

    pub(super) fn guest(&mut self) -> &mut Guest {
        &mut self.guest
    }

    fn holds_states(&self) -> bool {
        self.guest.kind() == ModuleKind::Reducer && self.guest.contract() == Contract::V0_2
    }

    /// Runs one batch through the guest, adding its effects to `pending`.
    pub(super) fn fold(
        &mut self,
        events: Events,
        state: &ModuleState,
        pending: &mut Pending,
    ) -> Result<(), Failure> {
        match (self.guest.kind(), self.guest.contract()) {
            (ModuleKind::Reducer, Contract::V0_1) => {
                self.fold_reducer(records::to_v01(&events), state, pending)
            }
            (ModuleKind::Reducer, Contract::V0_2) => self.fold_held(&events, state, pending),
            (ModuleKind::Projection | ModuleKind::Processor, _) => {
                self.fold_projection(&events, state, pending)
            }
        }
    }

    /// Before a commit: a 0.2 reducer's changed states, into `pending`.
    pub(super) fn save(&mut self, pending: &mut Pending) -> Result<(), Failure> {
        for which in 0..2 {
            let slots = std::mem::take(&mut self.held[which].changed);
            self.save_slots(which, &slots, pending, false)?;
        }
        Ok(())
    }

    /// The states of `slots` of instance `which` (0: the guest, 1: the sibling) into
    /// `pending`, and as snapshots too when `snapshot`.
    fn save_slots(
        &mut self,
        which: usize,
        slots: &[u32],
        pending: &mut Pending,
        snapshot: bool,
    ) -> Result<(), Failure> {
        if slots.is_empty() {
            return Ok(());
        }
        let guest = match which {
            0 => Some(&mut self.guest),
            _ => self.sibling.as_mut(),
        };
        let held = &mut self.held[which];
        let Some(guest) = guest else {
            held.clear();
            return Ok(());
        };
        let saved = guest.save(slots).map_err(|err| {
            held.clear();
            Failure::Guest(err)
        })?;
        for (&slot, bytes) in slots.iter().zip(saved) {
            let stream = &mut held.streams[slot as usize];
            held.bytes = held.bytes + bytes.len() - stream.bytes.min(held.bytes);
            stream.bytes = bytes.len();
            stream.changed = false;
            pending.bytes += stream.name.len() + bytes.len();
            let folded = StreamState {
                revision: stream.next.saturating_sub(1),
                bytes,
            };
            if snapshot {
                pending
                    .snapshots
                    .push((stream.name.clone(), folded.clone()));
            }
            pending.states.insert(stream.name.clone(), folded);
        }
        held.changed
            .retain(|slot| held.streams[*slot as usize].changed);
        Ok(())
    }

    /// The states of `pending` were committed: remember them (within the cache's bounds).
    /// A 0.2 reducer's instances keep theirs, unless they hold too many.
    pub(super) fn committed(&mut self, states: HashMap<String, StreamState>, bytes: usize) {
        if self.holds_states() {
            for (guest, held) in [Some(&mut self.guest), self.sibling.as_mut()]
                .into_iter()
                .zip(self.held.iter_mut())
            {
                if held.streams.len() > MAX_HELD_STREAMS || held.bytes > MAX_HELD_BYTES {
                    if let Some(guest) = guest
                        && guest.forget().is_err()
                    {
                        guest.kill();
                    }
                    held.clear();
                }
            }
            return;
        }
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

    /// Whether a 0.2 reducer's instances hold so many states that it is time to commit
    /// (after which they drop them).
    pub(super) fn holds_too_much(&self) -> bool {
        self.held
            .iter()
            .any(|held| held.streams.len() > MAX_HELD_STREAMS || held.bytes > MAX_HELD_BYTES)
    }

    /// Forgets every state remembered or held since the last commit (after a failure).
    pub(super) fn forget_states(&mut self) {
        self.states.clear();
        self.cached_bytes = 0;
        if self.holds_states() {
            // The guest's states may be ahead of the checkpoint: fresh instances.
            self.guest.kill();
            self.sibling = None;
            self.held.iter_mut().for_each(Held::clear);
        }
    }

    /// Folds a 0.2 reducer's batch into the states its instances hold. A stream goes to
    /// the instance holding it; a new one to the guest, or in a large batch by its hash,
    /// so that the sibling takes about half.
    fn fold_held(
        &mut self,
        events: &Events,
        state: &ModuleState,
        pending: &mut Pending,
    ) -> Result<(), Failure> {
        // The events of each stream, in order, by the call's stream index.
        let mut groups: Vec<Vec<u32>> = vec![Vec::new(); events.streams.len()];
        let mut order: Vec<u32> = Vec::new();
        for (i, event) in events.events.iter().enumerate() {
            let group = &mut groups[event.stream_index as usize];
            if group.is_empty() {
                order.push(event.stream_index);
            }
            group.push(i as u32);
        }
        let calling = CallingRunners::enter();
        let parallel = events.events.len() >= PARALLEL_MIN_EVENTS
            && order.len() >= 2
            && calling.has_spare_core();
        let mut calls = [Call::new(events), Call::new(events)];
        if !parallel && self.held[1].slots.is_empty() {
            calls[1].events.text = Vec::new();
        }
        for stream_index in order {
            let name = &events.streams[stream_index as usize];
            let which = if self.held[0].slots.contains_key(name) {
                0
            } else if self.held[1].slots.contains_key(name) && self.sibling.is_some() {
                1
            } else if parallel {
                (fnv1a(name.as_bytes()) & 1) as usize
            } else {
                0
            };
            let held = &mut self.held[which];
            let start = match held.slots.get(name) {
                Some(&slot) => (slot, v2::Start::Held),
                None => {
                    let stored = state.stream_state(name)?;
                    let slot = held.streams.len() as u32;
                    held.slots.insert(name.clone(), slot);
                    held.streams.push(HeldStream {
                        name: name.clone(),
                        next: stored.as_ref().map_or(0, |s| s.revision + 1),
                        changed: false,
                        bytes: stored.as_ref().map_or(0, |s| s.bytes.len()),
                    });
                    let start = match stored {
                        Some(stored) => v2::Start::Stored(v2::StoredState {
                            stream_id: name.clone(),
                            state: stored.bytes,
                        }),
                        None => v2::Start::Fresh(name.clone()),
                    };
                    (slot, start)
                }
            };
            calls[which].add(events, &groups[stream_index as usize], start);
        }
        let [first, second] = calls;
        if !second.is_empty() {
            self.sibling_used = Instant::now();
        }
        let guest = &mut self.guest;
        let sibling = if second.is_empty() {
            None
        } else {
            Some(self.sibling.get_or_insert_with(|| guest.sibling()))
        };
        let (first_result, second_result) = match sibling {
            Some(sibling) if !first.is_empty() && parallel => std::thread::scope(|scope| {
                let second_result = scope.spawn(|| second.run(sibling));
                let first_result = first.run(guest);
                let second_result = second_result.join().unwrap_or_else(|_| {
                    Err(Failure::Guest(GuestError::new(
                        GuestErrorKind::Trap,
                        "the second instance's thread panicked",
                    )))
                });
                (first_result, second_result)
            }),
            Some(sibling) => (first.run(guest), second.run(sibling)),
            None => (first.run(guest), Ok(Vec::new())),
        };
        // A stream whose folded revisions crossed a multiple of SNAPSHOT_EVERY (wanted
        // or not) keeps a snapshot, which bounds the replay behind past-state queries.
        let mut snapshots: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        for ((result, held), due) in [first_result, second_result]
            .into_iter()
            .zip(self.held.iter_mut())
            .zip(snapshots.iter_mut())
        {
            for (slot, revision) in result? {
                let stream = &mut held.streams[slot as usize];
                let from = stream.next;
                stream.next = revision + 1;
                if from / SNAPSHOT_EVERY != stream.next / SNAPSHOT_EVERY {
                    due.push(slot);
                }
                if !stream.changed {
                    stream.changed = true;
                    held.changed.push(slot);
                }
            }
        }
        for (which, slots) in snapshots.iter().enumerate() {
            self.save_slots(which, slots, pending, true)?;
        }
        Ok(())
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
            self.drop_sibling();
        }
    }

    /// Drops the sibling instance now, unless it holds states not saved yet (a 0.2
    /// reducer's; they go at the next commit, and the sibling after it).
    pub(super) fn drop_sibling(&mut self) {
        if self.held[1].changed.is_empty() {
            self.sibling = None;
            self.held[1].clear();
        }
    }

    /// How long the sibling instance may still go unused; `None` without one.
    pub(super) fn sibling_time_left(&self) -> Option<Duration> {
        self.sibling
            .as_ref()
            .filter(|_| self.held[1].changed.is_empty())
            .map(|_| SIBLING_IDLE.saturating_sub(self.sibling_used.elapsed()))
    }

    fn fold_projection(
        &mut self,
        events: &Events,
        state: &ModuleState,
        pending: &mut Pending,
    ) -> Result<(), Failure> {
        let overlay = pending
            .overlay
            .take()
            .unwrap_or_else(|| KvOverlay::new(state.clone(), self.guest.limits().max_state_bytes));
        let (result, overlay) = self.guest.handle(events, Box::new(overlay));
        let emitted = result
            .map_err(Failure::Guest)?
            .map_err(|rejection| Failure::Rejected(rejection.message))?;
        // The store comes back unless the call trapped, and a trap returned above.
        let overlay = overlay
            .and_then(|store| {
                let any: Box<dyn std::any::Any> = store;
                any.downcast::<KvOverlay>().ok()
            })
            .ok_or_else(|| Failure::Storage("the projection's state store was lost".into()))?;
        pending.bytes = overlay.written_bytes();
        pending.overlay = Some(*overlay);
        let contract =
            |message: String| Failure::Guest(GuestError::new(GuestErrorKind::Contract, message));
        if emitted.len() > MAX_EMITTED_PER_CALL {
            return Err(contract(format!(
                "process emitted {} events in one call; the limit is {MAX_EMITTED_PER_CALL}",
                emitted.len()
            )));
        }
        let mut call_bytes = 0;
        let mut per_source: HashMap<u32, u32> = HashMap::new();
        for event in emitted {
            let source = events.events.get(event.source as usize).ok_or_else(|| {
                contract(format!(
                    "process returned an event for source {}, but the call had {} events",
                    event.source,
                    events.events.len()
                ))
            })?;
            let bytes = event.data.len() + event.metadata.as_ref().map_or(0, String::len);
            call_bytes += bytes;
            if bytes > MAX_EMITTED_EVENT_BYTES || call_bytes > MAX_EMITTED_BYTES_PER_CALL {
                return Err(contract(format!(
                    "process emitted {} bytes of data and metadata (one event at most \
                     {MAX_EMITTED_EVENT_BYTES}, one call at most {MAX_EMITTED_BYTES_PER_CALL})",
                    bytes.max(call_bytes)
                )));
            }
            let index = per_source.entry(event.source).or_default();
            let source_id = records::id_of(source);
            let correlation_id = source
                .metadata
                .and_then(|m| {
                    serde_json::from_str::<serde_json::Value>(records::text(events, m)).ok()
                })
                .and_then(|m| m.get("$correlation_id")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| source_id.hyphenated().to_string());
            pending.bytes += bytes + event.stream_id.len() + event.event_type.len();
            pending.emitted.push(Emission {
                source_position: source.position,
                source_id,
                correlation_id,
                index: *index,
                event,
            });
            *index += 1;
        }
        Ok(())
    }
}

/// One 0.2 reducer call being put together: its events (grouped by stream, each naming
/// its slot) and stream batches.
struct Call {
    events: Events,
    batches: Vec<v2::StreamBatch>,
    /// Per batch: its slot and the revision of its last event.
    folded: Vec<(u32, StreamRevision)>,
}

impl Call {
    fn new(like: &Events) -> Self {
        Self {
            events: Events {
                streams: Vec::new(),
                types: like.types.clone(),
                // The events' spans point into the batch's text.
                text: like.text.clone(),
                events: Vec::new(),
            },
            batches: Vec::new(),
            folded: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn add(&mut self, from: &Events, indexes: &[u32], (slot, start): (u32, v2::Start)) {
        let mut last = 0;
        for &i in indexes {
            let mut event = from.events[i as usize];
            event.stream_index = slot;
            last = event.revision;
            self.events.events.push(event);
        }
        self.batches.push(v2::StreamBatch {
            slot,
            start,
            count: indexes.len() as u32,
        });
        self.folded.push((slot, last));
    }

    /// Runs the call on `guest`; the slots folded and their new revisions.
    fn run(self, guest: &mut Guest) -> Result<Vec<(u32, StreamRevision)>, Failure> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        guest
            .apply_held(&self.events, &self.batches)
            .map_err(Failure::Guest)?
            .map_err(|rejection| Failure::Rejected(rejection.message))?;
        Ok(self.folded)
    }
}

/// 64-bit FNV-1a, to spread new streams over two instances.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
