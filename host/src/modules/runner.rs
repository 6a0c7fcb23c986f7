//! The runner of one module version: a thread that reads the log from the module's
//! checkpoint up to the durable head, skips what the module does not want without entering
//! wasm, calls the guest with batches, and commits the state changes together with the new
//! checkpoint. It sleeps until the head moves; it never polls.
//!
//! Consecutive batches are committed together (sled's cost is per key written, and a
//! rebuild touches the same keys over and over), and always when the runner catches up.
//! A batch that fails discards everything uncommitted; the runner replays those events
//! one at a time, committing each, so the fault names the exact event. Then the module's
//! policy decides: `halt` stops it there, `skip` records the event as a dead letter and
//! goes on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::prefetch::{self, Next, Prefetch};
use super::state::{Changes, DeadLetter, KvOverlay, StreamState};
use super::{DeployedModule, Fault, FaultPolicy, RunnerControl, Status, now_rfc3339};
use crate::engine::bindings::{Event, StreamBatch};
use crate::engine::{Guest, GuestError, GuestErrorKind, ModuleKind};
use crate::store::{EventFilter, EventRef, EventStore, GlobalPosition, SledStore, StreamRevision};

/// Reducer states remembered between batches, at most this many...
const MAX_CACHED_STATES: usize = 100_000;
/// ...holding at most this many bytes (names and states), so that ten modules over many
/// streams, or a module with large states, keep the host's memory flat.
const MAX_CACHED_STATE_BYTES: usize = 16 * 1024 * 1024;
/// Uncommitted work is committed once it holds this many events...
const COMMIT_EVERY_EVENTS: u64 = 50_000;
/// ...or this many bytes of new states or state-store writes (an upper bound), so that
/// what guests return over many calls cannot pile up in the host before a commit...
const COMMIT_EVERY_BYTES: usize = 64 * 1024 * 1024;
/// ...or is this old; and always when the runner catches up with the log.
const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// A reducer state is snapshotted whenever a stream passes a multiple of this many
/// revisions, which bounds the replay behind `?revision=` and `?at=` queries.
pub(super) const SNAPSHOT_EVERY: u64 = 1_000;
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

/// Module state is derived from durable events, so a crash can only cost replay work; it
/// is flushed at most this often rather than per commit.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Why a batch did not commit.
enum Failure {
    Guest(GuestError),
    /// The guest returned an error result for a stream (reducer) or the batch (projection).
    Rejected(String),
    Storage(String),
}

impl Failure {
    fn kind_and_message(self) -> (GuestErrorKind, String) {
        match self {
            Failure::Guest(err) => (err.kind, err.message),
            Failure::Rejected(message) => (GuestErrorKind::Error, message),
            Failure::Storage(message) => (GuestErrorKind::Storage, message),
        }
    }
}

impl From<sled::Error> for Failure {
    fn from(err: sled::Error) -> Self {
        Failure::Storage(format!("committing module state failed: {err}"))
    }
}

/// What a runner does besides following the log.
pub(super) struct RunnerOptions {
    pub policy: FaultPolicy,
    /// Stop at this position instead of following the log (a verification rebuild).
    pub until: Option<GlobalPosition>,
    /// Positions to step over without entering the guest (the live module's dead letters,
    /// when verifying).
    pub skip: BTreeSet<GlobalPosition>,
}

pub(super) struct Runner {
    module: Arc<DeployedModule>,
    control: Arc<RunnerControl>,
    guest: Guest,
    /// A reducer's second instance, made on the first large batch: a batch's streams are
    /// independent, so the two fold halves of it on two cores.
    sibling: Option<Guest>,
    /// When the sibling last folded half a batch.
    sibling_used: Instant,
    store: Arc<SledStore>,
    options: RunnerOptions,
    /// The committed checkpoint: what queries see.
    checkpoint: GlobalPosition,
    /// Committed reducer states remembered between batches, and their size.
    states: HashMap<String, StreamState>,
    cached_bytes: usize,
    /// Processed but not yet committed.
    pending: Pending,
    dirty_since: Option<Instant>,
}

/// The effects of batches processed since the last commit.
#[derive(Default)]
struct Pending {
    /// Where the next batch starts; the checkpoint once committed.
    next: GlobalPosition,
    events: u64,
    /// New reducer states' bytes (names included), or the projection's pending writes.
    bytes: usize,
    since: Option<Instant>,
    /// A reducer's new states.
    states: HashMap<String, StreamState>,
    /// Reducer states to keep as snapshots.
    snapshots: Vec<(String, StreamState)>,
    /// A projection's writes.
    overlay: Option<KvOverlay>,
    dead_letters: Vec<DeadLetter>,
}

pub(super) fn to_guest_event(event: &EventRef<'_>) -> Event {
    Event {
        id: event.id.hyphenated().to_string(),
        stream_id: event.stream.to_owned(),
        revision: event.revision,
        position: event.position,
        event_type: event.event_type.to_owned(),
        data: event.data.to_owned(),
        metadata: event.metadata.to_owned(),
        recorded_at: u64::try_from(event.recorded_at_micros).unwrap_or(0),
    }
}

impl Runner {
    pub(super) fn new(
        module: Arc<DeployedModule>,
        control: Arc<RunnerControl>,
        guest: Guest,
        store: Arc<SledStore>,
        options: RunnerOptions,
    ) -> Self {
        Self {
            module,
            control,
            guest,
            sibling: None,
            sibling_used: Instant::now(),
            store,
            options,
            checkpoint: 0,
            states: HashMap::new(),
            cached_bytes: 0,
            pending: Pending::default(),
            dirty_since: None,
        }
    }

    /// Follows the log until told to stop; a fault is published and the thread then waits
    /// for its stop.
    pub(super) fn run(mut self) {
        if let Err(fault) = self.drive() {
            self.publish_fault(fault);
            while !self.control.stopping() {
                futures::executor::block_on(self.control.wake.notified());
            }
        }
        self.flush_if_due(false);
    }

    /// Processes the log until stopped, or (with `until`) until that position.
    ///
    /// # Errors
    /// The fault that stopped the module.
    pub(super) fn drive(&mut self) -> Result<(), Fault> {
        let mut head = self.store.watch_head();
        self.checkpoint = self.module.state.checkpoint().map_err(|err| {
            self.make_fault(
                None,
                GuestErrorKind::Storage,
                format!("reading the checkpoint failed: {err}"),
            )
        })?;
        self.pending.next = self.checkpoint;
        self.publish(None);
        let filter = self.guest.filter().map_err(|err| {
            self.make_fault(None, err.kind, format!("filter() failed: {}", err.message))
        })?;
        let filter = EventFilter {
            event_types: (!filter.event_types.is_empty()).then_some(filter.event_types),
            categories: (!filter.categories.is_empty()).then_some(filter.categories),
        };
        // Following the log, a second thread reads ahead; a bounded rebuild reads inline.
        let mut ahead: Option<Prefetch> = None;
        while !self.control.stopping() {
            let batch = if self.options.until.is_none() {
                let reader = match ahead.as_mut() {
                    Some(reader) => reader,
                    None => ahead.insert(
                        Prefetch::start(
                            self.store.clone(),
                            filter.clone(),
                            self.options.skip.clone(),
                            self.pending.next,
                            self.control.clone(),
                        )
                        .map_err(|err| {
                            self.make_fault(
                                None,
                                GuestErrorKind::Storage,
                                format!("starting the log reader failed: {err}"),
                            )
                        })?,
                    ),
                };
                let mut next = reader.try_next();
                if matches!(next, Next::Empty) {
                    // Nothing read ahead: if everything durable is processed, commit now
                    // (live lag is this commit), then wait for the reader.
                    if self.pending.next >= *head.borrow_and_update() {
                        self.commit().map_err(|f| self.fault_from(None, f))?;
                        self.release_idle_sibling();
                        self.publish(Some(Status::Running));
                        self.flush_if_due(true);
                    }
                    next = match self.sibling_time_left() {
                        Some(left) => match reader.next_within(left) {
                            Next::Empty => {
                                // Idle long enough: the sibling's memory goes back.
                                self.sibling = None;
                                reader.next()
                            }
                            other => other,
                        },
                        None => reader.next(),
                    };
                }
                match next {
                    Next::Batch(batch) => batch,
                    Next::Empty | Next::Stopped => break,
                }
            } else {
                let durable = self
                    .options
                    .until
                    .map_or(0, |until| until.min(*head.borrow_and_update()));
                if self.pending.next >= durable {
                    self.commit().map_err(|f| self.fault_from(None, f))?;
                    return Ok(());
                }
                self.collect(&filter, self.pending.next, durable)
            };
            let (events, scanned_to) = batch.map_err(|err| {
                self.make_fault(
                    None,
                    GuestErrorKind::Storage,
                    format!("reading the log failed: {err}"),
                )
            })?;
            let count = events.len() as u64;
            let started = Instant::now();
            let outcome = if events.is_empty() {
                Ok(())
            } else {
                self.process(events)
            };
            let outcome = outcome.and_then(|()| {
                self.pending.next = scanned_to;
                self.pending.events += count;
                self.pending.since.get_or_insert(started);
                if count > 0 {
                    self.record_batch(count, started);
                }
                if self.pending.events >= COMMIT_EVERY_EVENTS
                    || self.pending.bytes >= COMMIT_EVERY_BYTES
                    || self
                        .pending
                        .since
                        .is_some_and(|t| t.elapsed() >= COMMIT_EVERY)
                {
                    self.commit()?;
                }
                Ok(())
            });
            if outcome.is_err() {
                // Nothing uncommitted survives a failure, nor what was read ahead.
                ahead = None;
                self.pending = Pending {
                    next: self.checkpoint,
                    ..Pending::default()
                };
                self.forget_states();
                self.replay_one_by_one(&filter, scanned_to)?;
            }
        }
        self.commit().map_err(|f| self.fault_from(None, f))?;
        Ok(())
    }

    fn collect(
        &self,
        filter: &EventFilter,
        from: GlobalPosition,
        durable: GlobalPosition,
    ) -> Result<(Vec<Event>, GlobalPosition), crate::store::StoreError> {
        prefetch::collect(&self.store, filter, &self.options.skip, from, durable)
    }

    /// Commits the pending changes with the checkpoint they reach, and publishes it.
    fn commit(&mut self) -> Result<(), Failure> {
        let pending = std::mem::take(&mut self.pending);
        let next = pending.next;
        self.pending.next = next;
        if next == self.checkpoint {
            return Ok(());
        }
        let mut changes = match pending.overlay {
            Some(overlay) => overlay.into_changes(),
            None => Changes::default(),
        };
        for (stream, state) in &pending.states {
            changes.put_stream_state(stream, state);
        }
        for (stream, state) in &pending.snapshots {
            changes.put_snapshot(stream, state);
        }
        for letter in &pending.dead_letters {
            changes.put_dead_letter(letter);
        }
        changes.commit(&self.module.state, next)?;
        if self.states.len() + pending.states.len() > MAX_CACHED_STATES
            || self.cached_bytes + pending.bytes > MAX_CACHED_STATE_BYTES
        {
            self.forget_states();
        }
        if pending.bytes <= MAX_CACHED_STATE_BYTES {
            self.cached_bytes += pending.bytes;
            self.states.extend(pending.states);
        }
        self.checkpoint = next;
        self.dirty_since.get_or_insert_with(Instant::now);
        self.publish(None);
        crate::memory::trim_if_due();
        Ok(())
    }

    /// Runs one batch through the guest, adding its effects to the pending changes.
    fn process(&mut self, events: Vec<Event>) -> Result<(), Failure> {
        match self.guest.kind() {
            ModuleKind::Reducer => self.process_reducer(events),
            ModuleKind::Projection => self.process_projection(&events),
        }
    }

    fn process_reducer(&mut self, events: Vec<Event>) -> Result<(), Failure> {
        let mut batches: Vec<StreamBatch> = Vec::new();
        // Per batch, the first revision its state does not reflect yet.
        let mut unfolded_from: Vec<StreamRevision> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for event in events {
            if let Some(&i) = index.get(&event.stream_id) {
                batches[i].events.push(event);
                continue;
            }
            let known = self
                .pending
                .states
                .get(&event.stream_id)
                .or_else(|| self.states.get(&event.stream_id));
            let state = match known {
                Some(state) => Some(state.clone()),
                None => self.module.state.stream_state(&event.stream_id)?,
            };
            unfolded_from.push(state.as_ref().map_or(0, |s| s.revision + 1));
            let state = state.map(|s| s.bytes);
            index.insert(event.stream_id.clone(), batches.len());
            batches.push(StreamBatch {
                stream_id: event.stream_id.clone(),
                state,
                events: vec![event],
            });
        }
        let results = self.apply_in_parallel(&batches).map_err(Failure::Guest)?;
        let mut updated = Vec::with_capacity(batches.len());
        for ((batch, result), from) in batches.into_iter().zip(results).zip(unfolded_from) {
            let bytes = result.map_err(Failure::Rejected)?;
            let revision = batch.events.last().map_or(0, |e| e.revision);
            self.pending.bytes += batch.stream_id.len() + bytes.len();
            let state = StreamState { revision, bytes };
            // Snapshot when the revisions this call folded (wanted or not) cross a multiple
            // of SNAPSHOT_EVERY, so that streams with unwanted events get snapshots too.
            if from / SNAPSHOT_EVERY != (revision + 1) / SNAPSHOT_EVERY {
                self.pending
                    .snapshots
                    .push((batch.stream_id.clone(), state.clone()));
            }
            updated.push((batch.stream_id, state));
        }
        self.pending.states.extend(updated);
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
    fn release_idle_sibling(&mut self) {
        let rebuilt = self.module.progress.borrow().status == Status::Rebuilding;
        if rebuilt || self.sibling_used.elapsed() >= SIBLING_IDLE {
            self.sibling = None;
        }
    }

    /// How long the sibling instance may still go unused; `None` without one.
    fn sibling_time_left(&self) -> Option<Duration> {
        self.sibling
            .as_ref()
            .map(|_| SIBLING_IDLE.saturating_sub(self.sibling_used.elapsed()))
    }

    fn process_projection(&mut self, events: &[Event]) -> Result<(), Failure> {
        let overlay = self.pending.overlay.take().unwrap_or_else(|| {
            KvOverlay::new(
                self.module.state.clone(),
                self.guest.limits().max_state_bytes,
            )
        });
        let (result, overlay) = self.guest.handle(events, Box::new(overlay));
        result.map_err(Failure::Guest)?.map_err(Failure::Rejected)?;
        // The store comes back unless the call trapped, and a trap returned above.
        let overlay = overlay
            .and_then(|store| {
                let any: Box<dyn std::any::Any> = store;
                any.downcast::<KvOverlay>().ok()
            })
            .ok_or_else(|| Failure::Storage("the projection's state store was lost".into()))?;
        self.pending.bytes = overlay.written_bytes();
        self.pending.overlay = Some(*overlay);
        Ok(())
    }

    /// After a failed batch: every uncommitted event up to `until` again, one at a time,
    /// each committed, to find the exact event that fails; then the policy decides.
    fn replay_one_by_one(
        &mut self,
        filter: &EventFilter,
        until: GlobalPosition,
    ) -> Result<(), Fault> {
        // Read in batches: what failed may be many batches past the checkpoint.
        let mut from = self.checkpoint;
        while from < until {
            let (singles, scanned_to) = self.collect(filter, from, until).map_err(|err| {
                self.make_fault(
                    None,
                    GuestErrorKind::Storage,
                    format!("reading the log failed: {err}"),
                )
            })?;
            self.fold_one_by_one(singles)?;
            from = scanned_to;
        }
        self.pending.next = until;
        self.commit().map_err(|f| self.fault_from(None, f))
    }

    /// Folds `singles` one call and one commit each; a failing event faults the module
    /// (`halt`) or is dead-lettered (`skip`).
    fn fold_one_by_one(&mut self, singles: Vec<Event>) -> Result<(), Fault> {
        for event in singles {
            let position = event.position;
            let (id, stream, event_type) = (
                event.id.clone(),
                event.stream_id.clone(),
                event.event_type.clone(),
            );
            let started = Instant::now();
            let outcome = self.process(vec![event]).and_then(|()| {
                self.pending.next = position + 1;
                self.commit()
            });
            match outcome {
                Ok(()) => self.record_batch(1, started),
                Err(failure) => {
                    let fault = self.fault_from(Some(position), failure);
                    // Everything before the failing event is done: the checkpoint moves
                    // up to it (past the events the module does not want).
                    self.pending = Pending {
                        next: position,
                        ..Pending::default()
                    };
                    self.forget_states();
                    self.commit()
                        .map_err(|f| self.fault_from(Some(position), f))?;
                    if self.options.policy == FaultPolicy::Halt {
                        return Err(fault);
                    }
                    tracing::info!(module = %self.module.name, position, "event dead-lettered by policy");
                    self.pending = Pending {
                        next: position + 1,
                        dead_letters: vec![DeadLetter {
                            position,
                            event_id: id,
                            event_type,
                            stream,
                            kind: fault.kind,
                            message: fault.message,
                            at: now_rfc3339(),
                            by: "policy".into(),
                        }],
                        ..Pending::default()
                    };
                    self.forget_states();
                    self.commit()
                        .map_err(|f| self.fault_from(Some(position), f))?;
                    self.module
                        .counters
                        .dead_letters
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    fn forget_states(&mut self) {
        self.states.clear();
        self.cached_bytes = 0;
    }

    fn record_batch(&self, events: u64, started: Instant) {
        let counters = &self.module.counters;
        counters.events.fetch_add(events, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        counters
            .busy_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        counters.batch_duration.observe(elapsed);
    }

    fn flush_if_due(&mut self, caught_up: bool) {
        let due = self
            .dirty_since
            .is_some_and(|since| caught_up || since.elapsed() >= FLUSH_EVERY);
        if due {
            if let Err(err) = self.store.db().flush() {
                tracing::warn!(module = %self.module.name, %err, "flushing module state failed");
            }
            self.dirty_since = None;
        }
    }

    fn publish(&self, status: Option<Status>) {
        let checkpoint = self.checkpoint;
        self.module.progress.send_modify(|progress| {
            progress.checkpoint = checkpoint;
            if let Some(status) = status {
                progress.status = status;
            }
        });
    }

    fn fault_from(&self, position: Option<GlobalPosition>, failure: Failure) -> Fault {
        let (kind, message) = failure.kind_and_message();
        self.make_fault(position, kind, message)
    }

    fn make_fault(
        &self,
        position: Option<GlobalPosition>,
        kind: GuestErrorKind,
        message: String,
    ) -> Fault {
        let event = position.and_then(|p| {
            let mut found = None;
            let _ = self.store.scan_log(p, p + 1, |e| {
                found = Some(e.to_recorded());
                false
            });
            found
        });
        let (log_tail, _) = self.module.log.tail(20);
        Fault {
            position,
            event_id: event.as_ref().map(|e| e.id.to_string()),
            event_type: event.as_ref().map(|e| e.event_type.clone()),
            stream: event.as_ref().map(|e| e.stream.clone()),
            kind,
            message,
            log_tail,
            at: now_rfc3339(),
        }
    }

    fn publish_fault(&self, fault: Fault) {
        tracing::warn!(module = %self.module.name, position = ?fault.position, message = %fault.message, "module faulted");
        let checkpoint = self.checkpoint;
        self.module.progress.send_modify(|progress| {
            progress.checkpoint = checkpoint;
            progress.status = Status::Faulted;
            progress.fault = Some(fault);
        });
    }
}
