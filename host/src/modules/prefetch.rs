//! Reading ahead: a thread that scans the log and turns the events a module wants into
//! guest records while the runner's thread is inside the guest with the previous batch.
//! Reading and converting cost about a third of a rebuild; overlapped, they cost nothing
//! on a second core.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use super::RunnerControl;
use crate::engine::bindings::Event;
use crate::store::{EventFilter, EventStore, GlobalPosition, SledStore, StoreError};

/// Most events handed to the guest in one call.
pub(super) const MAX_BATCH_EVENTS: usize = 2_000;
/// Most log events looked at for one batch (most may be filtered out).
pub(super) const MAX_SCAN_EVENTS: usize = 100_000;
/// Batches read ahead of the runner.
const AHEAD: usize = 2;

/// One batch: the wanted events, and the position scanning stopped at.
pub(super) type Batch = Result<(Vec<Event>, GlobalPosition), StoreError>;

/// The wanted events at the start of `from..durable`, within the batch limits, and the
/// position scanning stopped at (where the next batch starts).
pub(super) fn collect(
    store: &SledStore,
    filter: &EventFilter,
    skip: &BTreeSet<GlobalPosition>,
    from: GlobalPosition,
    durable: GlobalPosition,
) -> Batch {
    let mut events = Vec::new();
    let mut scanned = 0;
    let scanned_to = store.scan_log(from, durable, |event| {
        scanned += 1;
        if filter.matches(event.stream, event.event_type) && !skip.contains(&event.position) {
            events.push(super::runner::to_guest_event(&event));
        }
        events.len() < MAX_BATCH_EVENTS && scanned < MAX_SCAN_EVENTS
    })?;
    Ok((events, scanned_to))
}

/// A read-ahead thread; dropping it stops the thread.
pub(super) struct Prefetch {
    batches: Receiver<Batch>,
    own: Arc<RunnerControl>,
    thread: Option<JoinHandle<()>>,
}

/// What the runner gets when it asks for the next batch.
pub(super) enum Next {
    Batch(Batch),
    /// Nothing read ahead yet.
    Empty,
    /// The reader stopped (the runner is stopping).
    Stopped,
}

impl Prefetch {
    /// Starts reading at `from`. It waits for appends when caught up, and stops when
    /// `runner` is told to stop or the prefetch is dropped.
    pub(super) fn start(
        store: Arc<SledStore>,
        filter: EventFilter,
        skip: BTreeSet<GlobalPosition>,
        from: GlobalPosition,
        runner: Arc<RunnerControl>,
    ) -> std::io::Result<Self> {
        let (sender, batches) = sync_channel(AHEAD);
        let own = Arc::new(RunnerControl::default());
        let stop = own.clone();
        let thread = std::thread::Builder::new()
            .name("module-prefetch".into())
            .spawn(move || read_ahead(&store, &filter, &skip, from, &sender, &runner, &stop))?;
        Ok(Self {
            batches,
            own,
            thread: Some(thread),
        })
    }

    pub(super) fn try_next(&self) -> Next {
        match self.batches.try_recv() {
            Ok(batch) => Next::Batch(batch),
            Err(TryRecvError::Empty) => Next::Empty,
            Err(TryRecvError::Disconnected) => Next::Stopped,
        }
    }

    /// Blocks until a batch is ready or the reader stops.
    pub(super) fn next(&self) -> Next {
        self.batches.recv().map_or(Next::Stopped, Next::Batch)
    }

    /// As [`Prefetch::next`], but gives up after `timeout` with [`Next::Empty`].
    pub(super) fn next_within(&self, timeout: Duration) -> Next {
        match self.batches.recv_timeout(timeout) {
            Ok(batch) => Next::Batch(batch),
            Err(RecvTimeoutError::Timeout) => Next::Empty,
            Err(RecvTimeoutError::Disconnected) => Next::Stopped,
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.own.request_stop();
        // Unblock a reader waiting to hand over a batch.
        while self.batches.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            drop(std::mem::replace(&mut self.batches, sync_channel(0).1));
            let _ = thread.join();
        }
    }
}

fn read_ahead(
    store: &SledStore,
    filter: &EventFilter,
    skip: &BTreeSet<GlobalPosition>,
    mut from: GlobalPosition,
    sender: &SyncSender<Batch>,
    runner: &RunnerControl,
    own: &RunnerControl,
) {
    let mut head = store.watch_head();
    loop {
        if runner.stopping() || own.stopping() {
            return;
        }
        let durable = *head.borrow_and_update();
        if from >= durable {
            let woken = futures::executor::block_on(async {
                tokio::select! {
                    changed = head.changed() => changed.is_ok(),
                    () = runner.wake.notified() => true,
                    () = own.wake.notified() => true,
                }
            });
            if !woken {
                return;
            }
            continue;
        }
        let batch = collect(store, filter, skip, from, durable);
        if let Ok((_, scanned_to)) = &batch {
            from = *scanned_to;
        }
        let failed = batch.is_err();
        if sender.send(batch).is_err() || failed {
            return;
        }
    }
}
