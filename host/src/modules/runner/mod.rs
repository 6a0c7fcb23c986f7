//! The runner of one module version: reads the log from the module's checkpoint up to the
//! durable head, skips what the module does not want without entering wasm, folds batches
//! through the guest ([`fold`]) and commits the state changes together with the new
//! checkpoint. While following the log it sleeps until the head moves or it is poked; it
//! never polls. It runs on its owner's thread ([`super::owner`]), or on the caller's for a
//! bounded rebuild (verify, replay).
//!
//! Consecutive batches are committed together (a store's cost is per key written, and a
//! rebuild touches the same keys over and over), and always when the runner catches up.
//! A batch that fails discards everything uncommitted; the runner replays those events
//! one at a time, committing each, so the fault names the exact event. Then the module's
//! policy decides: `halt` stops it there, `skip` records the event as a dead letter and
//! goes on.

mod emit;
mod fold;
mod reader;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use self::fold::{Failure, Folder, Pending};
use self::reader::{Next, Prefetch, Selection};
use super::model::{Fault, FaultPolicy, Status, now_rfc3339};
use super::state::{Changes, DeadLetter};
use super::version::DeployedModule;
use crate::engine::bindings::v2::Events;
use crate::engine::{GuestErrorKind, records};
use crate::store::{EventLog, GlobalPosition};

pub use self::emit::Emitter;
pub(super) use self::reader::{CallEvents, wanted_by};

/// Uncommitted work is committed once it holds this many events...
const COMMIT_EVERY_EVENTS: u64 = 50_000;
/// ...or this many bytes of new states or state-store writes (an upper bound), so that
/// what guests return over many calls cannot pile up in the host before a commit...
const COMMIT_EVERY_BYTES: usize = 64 * 1024 * 1024;
/// ...or is this old; and always when the runner catches up.
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// Why [`Runner::follow`] returned without a fault.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stopped {
    /// Its caller asked it to look up (everything processed is committed).
    Interrupted,
    /// The log closed (the server is shutting down).
    LogClosed,
}

pub(super) struct Runner {
    module: Arc<DeployedModule>,
    log: Arc<dyn EventLog>,
    folder: Folder,
    policy: FaultPolicy,
    /// Positions to step over without entering the guest (the live module's dead letters,
    /// when verifying or replaying).
    skip: BTreeSet<GlobalPosition>,
    /// What to read, once the guest has said what it wants.
    selection: Option<Selection>,
    /// The committed checkpoint: what queries see.
    checkpoint: GlobalPosition,
    /// Processed but not yet committed.
    pending: Pending,
    /// Whether commits were made since the last flush.
    dirty: bool,
    /// Called when the runner catches up after a rebuild.
    on_caught_up: Option<Box<dyn FnMut() + Send>>,
    /// Where a processor's emissions go; none when they are dropped (verify, replay).
    emitter: Option<Arc<Emitter>>,
}

impl Runner {
    pub(super) fn new(
        module: Arc<DeployedModule>,
        log: Arc<dyn EventLog>,
        policy: FaultPolicy,
        skip: BTreeSet<GlobalPosition>,
    ) -> Self {
        let folder = Folder::new(module.new_guest());
        Self {
            module,
            log,
            folder,
            policy,
            skip,
            selection: None,
            checkpoint: 0,
            pending: Pending::default(),
            dirty: false,
            on_caught_up: None,
            emitter: None,
        }
    }

    /// Appends what a processor emits (a runner without it drops emissions: a verify or
    /// replay must not act).
    pub(super) fn emitting(mut self, emitter: Option<Arc<Emitter>>) -> Self {
        self.emitter = emitter;
        self
    }

    /// Calls `then` each time the runner catches up after rebuilding.
    pub(super) fn on_caught_up(mut self, then: impl FnMut() + Send + 'static) -> Self {
        self.on_caught_up = Some(Box::new(then));
        self
    }

    /// Reads the checkpoint and asks the guest what it wants, once.
    fn prepare(&mut self) -> Result<Selection, Fault> {
        if let Some(selection) = &self.selection {
            return Ok(selection.clone());
        }
        self.checkpoint =
            self.module.state.checkpoint().map_err(|err| {
                self.storage_fault(format!("reading the checkpoint failed: {err}"))
            })?;
        self.pending = Pending::at(self.checkpoint);
        self.publish(None);
        let filter = wanted_by(self.folder.guest()).map_err(|err| {
            self.make_fault(None, err.kind, format!("filter() failed: {}", err.message))
        })?;
        let selection = Selection {
            filter,
            skip: self.skip.clone(),
        };
        self.selection = Some(selection.clone());
        Ok(selection)
    }

    /// Follows the log until `interrupted` says so (it is asked between batches, and
    /// whenever `poke` is notified), committing what it processed before returning.
    ///
    /// # Errors
    /// The fault that stopped the module (published by the caller).
    pub(super) fn follow(
        &mut self,
        poke: &Arc<Notify>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Stopped, Fault> {
        let selection = self.prepare()?;
        let mut head = self.log.watch_head();
        // A second thread reads ahead while this one is in the guest.
        let mut ahead: Option<Prefetch> = None;
        let stopped = loop {
            if interrupted() {
                break Stopped::Interrupted;
            }
            let reader = match ahead.as_mut() {
                Some(reader) => reader,
                None => ahead.insert(
                    Prefetch::start(
                        self.log.clone(),
                        selection.clone(),
                        self.pending.next,
                        poke.clone(),
                    )
                    .map_err(|err| {
                        self.storage_fault(format!("starting the log reader failed: {err}"))
                    })?,
                ),
            };
            let mut next = reader.try_next();
            if matches!(next, Next::Empty) {
                // Nothing read ahead: if everything durable is processed, commit now (live
                // lag is this commit), then wait for the reader.
                if self.pending.next >= *head.borrow_and_update() {
                    self.catch_up(&selection)?;
                }
                next = match self.folder.sibling_time_left() {
                    Some(left) => match reader.next_within(left) {
                        Next::Empty => {
                            // Idle long enough: the sibling's memory goes back.
                            self.folder.drop_sibling();
                            reader.next()
                        }
                        other => other,
                    },
                    None => reader.next(),
                };
            }
            match next {
                Next::Batch(batch) => {
                    if self.step(batch, &selection)? {
                        // Nothing uncommitted survived the failure, nor what was read ahead.
                        ahead = None;
                    }
                }
                Next::Poked | Next::Empty => {}
                Next::Stopped => break Stopped::LogClosed,
            }
        };
        self.commit_or_replay(&selection)?;
        Ok(stopped)
    }

    /// Processes the log up to `to` (or the durable head, if lower) and commits.
    ///
    /// # Errors
    /// The fault that stopped the rebuild.
    pub(super) fn rebuild_to(&mut self, to: GlobalPosition) -> Result<(), Fault> {
        let selection = self.prepare()?;
        loop {
            let durable = to.min(self.log.head());
            if self.pending.next >= durable {
                return self.commit_or_replay(&selection);
            }
            let batch = selection.collect(&*self.log, self.pending.next, durable);
            self.step(batch, &selection)?;
        }
    }

    /// Makes what was committed durable, if anything was since the last time. Module state
    /// is derived from durable events, so a crash can only cost replay work: it is flushed
    /// when the runner catches up or stops, not per commit.
    pub(super) fn flush(&mut self) {
        if std::mem::take(&mut self.dirty)
            && let Err(err) = self.module.state.flush()
        {
            tracing::warn!(module = %self.module.name, %err, "flushing module state failed");
        }
    }

    /// Everything durable is processed: commit, publish `running`, let the sibling go.
    fn catch_up(&mut self, selection: &Selection) -> Result<(), Fault> {
        self.commit_or_replay(selection)?;
        let rebuilt = self.module.status() == Status::Rebuilding;
        self.folder.release_idle_sibling(rebuilt);
        self.publish(Some(Status::Running));
        if rebuilt && let Some(then) = self.on_caught_up.as_mut() {
            then();
        }
        self.flush();
        Ok(())
    }

    /// Folds one batch read from the log; commits when due. `true` if the batch failed
    /// (and was then replayed event by event, so the policy has decided).
    fn step(&mut self, batch: reader::Batch, selection: &Selection) -> Result<bool, Fault> {
        let (events, scanned_to) =
            batch.map_err(|err| self.storage_fault(format!("reading the log failed: {err}")))?;
        let count = events.events.len() as u64;
        let started = Instant::now();
        let outcome = if events.events.is_empty() {
            Ok(())
        } else {
            self.folder
                .fold(events, &self.module.state, &mut self.pending)
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
                || self.folder.holds_too_much()
                || self
                    .pending
                    .since
                    .is_some_and(|t| t.elapsed() >= COMMIT_EVERY)
            {
                self.commit()?;
            }
            Ok(())
        });
        if outcome.is_ok() {
            return Ok(false);
        }
        self.pending = Pending::at(self.checkpoint);
        self.folder.forget_states();
        self.replay_one_by_one(selection, scanned_to)?;
        Ok(true)
    }

    /// Commits what is pending; if that fails (a processor's emission refused, a storage
    /// failure), replays the uncommitted events one at a time, so that the fault names the
    /// event and the module's policy decides.
    fn commit_or_replay(&mut self, selection: &Selection) -> Result<(), Fault> {
        let until = self.pending.next;
        if self.commit().is_ok() {
            return Ok(());
        }
        self.pending = Pending::at(self.checkpoint);
        self.folder.forget_states();
        self.replay_one_by_one(selection, until)
    }

    /// Commits the pending changes with the checkpoint they reach, and publishes it.
    fn commit(&mut self) -> Result<(), Failure> {
        let next = self.pending.next;
        let pending = std::mem::replace(&mut self.pending, Pending::at(next));
        if next == self.checkpoint {
            return Ok(());
        }
        let mut pending = pending;
        self.folder.save(&mut pending)?;
        // Emissions first: if the commit below does not happen, the events are processed
        // again and emit the same ids, which append nothing.
        let emissions = std::mem::take(&mut pending.emitted);
        if let Some(emitter) = &self.emitter
            && !emissions.is_empty()
        {
            let appended = emitter
                .append(&self.module.name, emissions)
                .map_err(|(_, failure)| failure)?;
            self.module
                .counters
                .emitted
                .fetch_add(appended, Ordering::Relaxed);
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
        self.folder.committed(pending.states, pending.bytes);
        self.checkpoint = next;
        self.dirty = true;
        self.publish(None);
        crate::memory::trim_if_due();
        Ok(())
    }

    /// After a failed batch: every uncommitted event up to `until` again, one at a time,
    /// each committed, to find the exact event that fails; then the policy decides.
    fn replay_one_by_one(
        &mut self,
        selection: &Selection,
        until: GlobalPosition,
    ) -> Result<(), Fault> {
        // Read in batches: what failed may be many batches past the checkpoint.
        let mut from = self.checkpoint;
        while from < until {
            let (singles, scanned_to) = selection
                .collect(&*self.log, from, until)
                .map_err(|err| self.storage_fault(format!("reading the log failed: {err}")))?;
            self.fold_one_by_one(singles)?;
            from = scanned_to;
        }
        self.pending.next = until;
        self.commit().map_err(|f| self.fault_from(None, f))
    }

    /// Folds `singles` one call and one commit each; a failing event faults the module
    /// (`halt`) or is dead-lettered (`skip`).
    fn fold_one_by_one(&mut self, singles: Events) -> Result<(), Fault> {
        for (i, event) in singles.events.iter().enumerate() {
            let position = event.position;
            let (id, stream, event_type) = (
                records::id_of(event).hyphenated().to_string(),
                records::stream_of(&singles, i).to_owned(),
                records::type_of(&singles, i).to_owned(),
            );
            let started = Instant::now();
            let outcome = self
                .folder
                .fold(
                    reader::one_of(&singles, i),
                    &self.module.state,
                    &mut self.pending,
                )
                .and_then(|()| {
                    self.pending.next = position + 1;
                    self.commit()
                });
            let Err(failure) = outcome else {
                self.record_batch(1, started);
                continue;
            };
            let fault = self.fault_from(Some(position), failure);
            // Everything before the failing event is done: the checkpoint moves up to it
            // (past the events the module does not want).
            self.pending = Pending::at(position);
            self.folder.forget_states();
            self.commit()
                .map_err(|f| self.fault_from(Some(position), f))?;
            if self.policy == FaultPolicy::Halt {
                return Err(fault);
            }
            tracing::info!(module = %self.module.name, position, "event dead-lettered by policy");
            self.pending = Pending::at(position + 1);
            self.pending.dead_letters.push(DeadLetter {
                position,
                event_id: id,
                event_type,
                stream,
                kind: fault.kind,
                message: fault.message,
                at: now_rfc3339(),
                by: "policy".into(),
            });
            self.commit()
                .map_err(|f| self.fault_from(Some(position), f))?;
            self.module
                .counters
                .dead_letters
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
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

    fn publish(&self, status: Option<Status>) {
        let checkpoint = self.checkpoint;
        self.module.publish(|progress| {
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

    fn storage_fault(&self, message: String) -> Fault {
        self.make_fault(None, GuestErrorKind::Storage, message)
    }

    fn make_fault(
        &self,
        position: Option<GlobalPosition>,
        kind: GuestErrorKind,
        message: String,
    ) -> Fault {
        let mut event = None;
        if let Some(p) = position {
            let _ = self.log.scan(p..p + 1, &mut |e| {
                event = Some(e.to_recorded());
                false
            });
        }
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
}
