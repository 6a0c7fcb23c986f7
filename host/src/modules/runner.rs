//! The runner of one module version: a thread that reads the log from the module's
//! checkpoint up to the durable head, skips what the module does not want without entering
//! wasm, calls the guest with batches, and commits each batch's state changes together
//! with the new checkpoint. It sleeps until the head moves; it never polls.
//!
//! A batch that fails is discarded whole and replayed one event at a time, so the fault
//! names the exact event, and every event before it is committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::state::{Changes, KvOverlay, StreamState};
use super::{DeployedModule, Fault, Status};
use crate::engine::bindings::{Event, StreamBatch};
use crate::engine::{Guest, GuestError, GuestErrorKind, ModuleKind};
use crate::store::{EventFilter, EventRef, EventStore, GlobalPosition, SledStore};

/// Most events handed to the guest in one call.
const MAX_BATCH_EVENTS: usize = 2_000;
/// Most log events looked at for one batch (most may be filtered out).
const MAX_SCAN_EVENTS: usize = 100_000;
/// Reducer states remembered between batches.
const MAX_CACHED_STATES: usize = 100_000;
/// Changes of consecutive batches are committed together (sled's cost is per key written,
/// and a rebuild touches the same keys over and over) until this many events...
const COMMIT_EVERY_EVENTS: u64 = 50_000;
/// ...or this much time has passed; and always when the runner catches up with the log.
const COMMIT_EVERY: Duration = Duration::from_millis(100);
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
            Failure::Storage(message) => (GuestErrorKind::Contract, message),
        }
    }
}

impl From<sled::Error> for Failure {
    fn from(err: sled::Error) -> Self {
        Failure::Storage(format!("committing module state failed: {err}"))
    }
}

pub(super) struct Runner {
    module: Arc<DeployedModule>,
    guest: Guest,
    store: Arc<SledStore>,
    /// The committed checkpoint: what queries see.
    checkpoint: GlobalPosition,
    /// Committed reducer states remembered between batches.
    states: HashMap<String, StreamState>,
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
    since: Option<Instant>,
    /// A reducer's new states.
    states: HashMap<String, StreamState>,
    /// A projection's writes.
    overlay: Option<KvOverlay>,
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
    pub(super) fn new(module: Arc<DeployedModule>, guest: Guest, store: Arc<SledStore>) -> Self {
        Self {
            module,
            guest,
            store,
            checkpoint: 0,
            states: HashMap::new(),
            pending: Pending::default(),
            dirty_since: None,
        }
    }

    pub(super) fn run(mut self) {
        let mut head = self.store.watch_head();
        self.checkpoint = match self.module.state.checkpoint() {
            Ok(checkpoint) => checkpoint,
            Err(err) => {
                self.fault(
                    None,
                    GuestErrorKind::Contract,
                    format!("reading the checkpoint failed: {err}"),
                );
                return self.wait_for_stop();
            }
        };
        self.publish(None);
        let filter = match self.guest.filter() {
            Ok(filter) => EventFilter {
                event_types: (!filter.event_types.is_empty()).then_some(filter.event_types),
                categories: (!filter.categories.is_empty()).then_some(filter.categories),
            },
            Err(err) => {
                self.fault(None, err.kind, format!("filter() failed: {}", err.message));
                return self.wait_for_stop();
            }
        };
        self.pending.next = self.checkpoint;
        while !self.module.control.stopping() {
            let durable = *head.borrow_and_update();
            if self.pending.next >= durable {
                if let Err(failure) = self.commit() {
                    let (kind, message) = failure.kind_and_message();
                    self.fault(None, kind, message);
                    return self.wait_for_stop();
                }
                self.publish(Some(Status::Running));
                self.flush_if_due(true);
                if !self.wait(&mut head) {
                    break;
                }
                continue;
            }
            let (events, scanned_to) = match self.collect(&filter, durable) {
                Ok(collected) => collected,
                Err(err) => {
                    self.fault(
                        None,
                        GuestErrorKind::Contract,
                        format!("reading the log failed: {err}"),
                    );
                    return self.wait_for_stop();
                }
            };
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
                // Nothing uncommitted survives a failure: replay from the checkpoint, one
                // event at a time, to commit what succeeds and name the event that fails.
                self.pending = Pending::default();
                self.states.clear();
                if let Err(fault) = self.replay_one_by_one(&filter, scanned_to) {
                    let (position, failure) = *fault;
                    let (kind, message) = failure.kind_and_message();
                    self.fault(position, kind, message);
                    return self.wait_for_stop();
                }
            }
        }
        if self.commit().is_err() {
            tracing::warn!(module = %self.module.name, "the last commit before stopping failed");
        }
        self.flush_if_due(false);
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
        changes.commit(&self.module.state, next)?;
        if self.states.len() + pending.states.len() > MAX_CACHED_STATES {
            self.states.clear();
        }
        self.states.extend(pending.states);
        self.checkpoint = next;
        self.dirty_since.get_or_insert_with(Instant::now);
        self.publish(None);
        Ok(())
    }

    /// The wanted events from the checkpoint on, and the position scanning stopped at.
    fn collect(
        &self,
        filter: &EventFilter,
        durable: GlobalPosition,
    ) -> Result<(Vec<Event>, GlobalPosition), crate::store::StoreError> {
        let mut events = Vec::new();
        let mut scanned = 0;
        let scanned_to = self.store.scan_log(self.pending.next, durable, |event| {
            scanned += 1;
            if filter.matches(event.stream, event.event_type) {
                events.push(to_guest_event(&event));
            }
            events.len() < MAX_BATCH_EVENTS && scanned < MAX_SCAN_EVENTS
        })?;
        Ok((events, scanned_to))
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
                Some(state) => Some(state.bytes.clone()),
                None => self
                    .module
                    .state
                    .stream_state(&event.stream_id)?
                    .map(|s| s.bytes),
            };
            index.insert(event.stream_id.clone(), batches.len());
            batches.push(StreamBatch {
                stream_id: event.stream_id.clone(),
                state,
                events: vec![event],
            });
        }
        let results = self.guest.apply(&batches).map_err(Failure::Guest)?;
        let mut updated = Vec::with_capacity(batches.len());
        for (batch, result) in batches.into_iter().zip(results) {
            let bytes = result.map_err(Failure::Rejected)?;
            let revision = batch.events.last().map_or(0, |e| e.revision);
            updated.push((batch.stream_id, StreamState { revision, bytes }));
        }
        self.pending.states.extend(updated);
        Ok(())
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
        self.pending.overlay = Some(*overlay);
        Ok(())
    }

    /// After a failed batch: the same events one at a time, committing each, to find the
    /// exact event that fails.
    fn replay_one_by_one(
        &mut self,
        filter: &EventFilter,
        until: GlobalPosition,
    ) -> Result<(), Box<(Option<GlobalPosition>, Failure)>> {
        let mut singles = Vec::new();
        let from = self.checkpoint;
        self.store
            .scan_log(from, until, |event| {
                if filter.matches(event.stream, event.event_type) {
                    singles.push(to_guest_event(&event));
                }
                true
            })
            .map_err(|err| Box::new((None, Failure::Storage(err.to_string()))))?;
        for event in singles {
            let position = event.position;
            let started = Instant::now();
            self.process(vec![event])
                .and_then(|()| {
                    self.pending.next = position + 1;
                    self.commit()
                })
                .map_err(|failure| Box::new((Some(position), failure)))?;
            self.record_batch(1, started);
        }
        self.pending.next = until;
        self.commit().map_err(|failure| Box::new((None, failure)))?;
        Ok(())
    }

    fn record_batch(&self, events: u64, started: Instant) {
        let counters = &self.module.counters;
        counters.events.fetch_add(events, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .busy_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
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

    fn fault(&self, position: Option<GlobalPosition>, kind: GuestErrorKind, message: String) {
        let event = position.and_then(|p| {
            let mut found = None;
            let _ = self.store.scan_log(p, p + 1, |e| {
                found = Some(e.to_recorded());
                false
            });
            found
        });
        let (log_tail, _) = self.module.log.tail(20);
        tracing::warn!(module = %self.module.name, ?position, %message, "module faulted");
        let fault = Fault {
            position,
            event_id: event.as_ref().map(|e| e.id.to_string()),
            event_type: event.as_ref().map(|e| e.event_type.clone()),
            stream: event.as_ref().map(|e| e.stream.clone()),
            kind,
            message,
            log_tail,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let checkpoint = self.checkpoint;
        self.module.progress.send_modify(|progress| {
            progress.checkpoint = checkpoint;
            progress.status = Status::Faulted;
            progress.fault = Some(fault);
        });
    }

    /// Sleeps until the head moves or the runner is told to stop; `false` to stop.
    fn wait(&self, head: &mut watch::Receiver<GlobalPosition>) -> bool {
        let control = &self.module.control;
        futures::executor::block_on(async {
            tokio::select! {
                changed = head.changed() => changed.is_ok(),
                () = control.wake.notified() => true,
            }
        }) && !control.stopping()
    }

    fn wait_for_stop(&self) {
        let control = &self.module.control;
        while !control.stopping() {
            futures::executor::block_on(control.wake.notified());
        }
    }
}
