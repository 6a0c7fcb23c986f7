//! From the log to the guest: which events a module wants, turned into guest records, in
//! batches; and a thread that reads ahead while the runner's thread is inside the guest
//! with the previous batch. Reading and converting cost about a third of a rebuild;
//! overlapped, they cost nothing on a second core.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Notify;

use crate::engine::bindings::v2::{Event, Events, Span};
use crate::engine::bindings::{self};
use crate::engine::{Guest, GuestError};
use crate::store::{EventFilter, EventLog, EventRef, GlobalPosition, StoreError};

/// Most events handed to the guest in one call.
pub(in crate::modules) const MAX_BATCH_EVENTS: usize = 2_000;
/// Most log events looked at for one batch (most may be filtered out).
const MAX_SCAN_EVENTS: usize = 100_000;
/// Batches read ahead of the runner.
const AHEAD: usize = 2;

/// One batch: the wanted events, and the position scanning stopped at.
pub(super) type Batch = Result<(Events, GlobalPosition), StoreError>;

/// Builds the events of one guest call from events read from the log: each stream name
/// and type once, every payload and metadata copied into one buffer.
pub(in crate::modules) struct CallEvents {
    events: Events,
    streams: HashMap<String, u32>,
    types: HashMap<String, u32>,
}

impl Default for CallEvents {
    fn default() -> Self {
        Self {
            events: Events {
                streams: Vec::new(),
                types: Vec::new(),
                text: Vec::new(),
                events: Vec::new(),
            },
            streams: HashMap::new(),
            types: HashMap::new(),
        }
    }
}

impl CallEvents {
    pub(in crate::modules) fn push(&mut self, event: &EventRef<'_>) {
        let stream_index = intern(&mut self.streams, &mut self.events.streams, event.stream);
        let type_index = intern(&mut self.types, &mut self.events.types, event.event_type);
        let data = append_text(&mut self.events.text, event.data);
        let metadata =
            (event.metadata != "{}").then(|| append_text(&mut self.events.text, event.metadata));
        let (id_hi, id_lo) = event.id.as_u64_pair();
        self.events.events.push(Event {
            id_hi,
            id_lo,
            stream_index,
            revision: event.revision,
            position: event.position,
            type_index,
            data,
            metadata,
            recorded_at: u64::try_from(event.recorded_at_micros).unwrap_or(0),
        });
    }

    pub(in crate::modules) fn len(&self) -> usize {
        self.events.events.len()
    }

    pub(in crate::modules) fn finish(self) -> Events {
        self.events
    }
}

fn intern(index: &mut HashMap<String, u32>, names: &mut Vec<String>, name: &str) -> u32 {
    if let Some(&i) = index.get(name) {
        return i;
    }
    let i = names.len() as u32;
    names.push(name.to_owned());
    index.insert(name.to_owned(), i);
    i
}

fn append_text(text: &mut Vec<u8>, value: &str) -> Span {
    let offset = text.len() as u32;
    text.extend_from_slice(value.as_bytes());
    Span {
        offset,
        len: value.len() as u32,
    }
}

/// The `index`th event of `events` alone, as a call of its own.
pub(in crate::modules) fn one_of(events: &Events, index: usize) -> Events {
    use crate::engine::records::text;
    let mut one = CallEvents::default();
    if let Some(e) = events.events.get(index) {
        let metadata = e.metadata.map_or("{}", |m| text(events, m));
        one.push(&EventRef {
            id: crate::engine::records::id_of(e),
            stream: crate::engine::records::stream_of(events, index),
            revision: e.revision,
            position: e.position,
            event_type: crate::engine::records::type_of(events, index),
            data: text(events, e.data),
            metadata,
            recorded_at_micros: i64::try_from(e.recorded_at).unwrap_or(i64::MAX),
        });
    }
    one.finish()
}

/// The events `guest` wants, as a log filter (an empty list means all).
///
/// # Errors
/// The guest's `filter` failed.
pub(in crate::modules) fn wanted_by(guest: &mut Guest) -> Result<EventFilter, GuestError> {
    let bindings::EventFilter {
        event_types,
        categories,
    } = guest.filter()?;
    Ok(EventFilter {
        event_types: (!event_types.is_empty()).then_some(event_types),
        categories: (!categories.is_empty()).then_some(categories),
    })
}

/// What a runner reads: the events it wants, minus the positions it steps over.
#[derive(Clone)]
pub(super) struct Selection {
    pub filter: EventFilter,
    pub skip: BTreeSet<GlobalPosition>,
}

impl Selection {
    /// The wanted events at the start of `from..durable`, within the batch limits, and the
    /// position scanning stopped at (where the next batch starts).
    pub(super) fn collect(
        &self,
        log: &dyn EventLog,
        from: GlobalPosition,
        durable: GlobalPosition,
    ) -> Batch {
        let mut events = CallEvents::default();
        let mut scanned = 0;
        let scanned_to = log.scan(from..durable, &mut |event| {
            scanned += 1;
            if self.filter.matches(event.stream, event.event_type)
                && !self.skip.contains(&event.position)
            {
                events.push(&event);
            }
            events.len() < MAX_BATCH_EVENTS && scanned < MAX_SCAN_EVENTS
        })?;
        Ok((events.finish(), scanned_to))
    }
}

/// A flag with a wake-up: how a thread is told to stop, or to look up.
#[derive(Default)]
pub(in crate::modules) struct Signal {
    raised: AtomicBool,
    pub wake: Notify,
}

impl Signal {
    pub(in crate::modules) fn raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    pub(in crate::modules) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        // A stored permit: a thread about to wait wakes at once.
        self.wake.notify_one();
    }
}

/// What the read-ahead thread hands over.
enum Item {
    Batch(Batch),
    /// Someone woke the runner (a command is waiting).
    Poke,
}

/// What the runner gets when it asks for the next batch.
pub(super) enum Next {
    Batch(Batch),
    /// Nothing read ahead yet.
    Empty,
    /// The runner was woken: look at its commands.
    Poked,
    /// The reader stopped.
    Stopped,
}

impl From<Item> for Next {
    fn from(item: Item) -> Self {
        match item {
            Item::Batch(batch) => Next::Batch(batch),
            Item::Poke => Next::Poked,
        }
    }
}

/// A read-ahead thread; dropping it stops the thread.
pub(super) struct Prefetch {
    items: Receiver<Item>,
    stop: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts reading at `from`. It waits for appends when caught up, hands over a poke
    /// when `poke` is notified, and stops when dropped.
    pub(super) fn start(
        log: Arc<dyn EventLog>,
        selection: Selection,
        from: GlobalPosition,
        poke: Arc<Notify>,
    ) -> std::io::Result<Self> {
        let (sender, items) = sync_channel(AHEAD);
        let stop = Arc::new(Signal::default());
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("module-prefetch".into())
            .spawn(move || read_ahead(&*log, &selection, from, &sender, &poke, &stopped))?;
        Ok(Self {
            items,
            stop,
            thread: Some(thread),
        })
    }

    pub(super) fn try_next(&self) -> Next {
        match self.items.try_recv() {
            Ok(item) => item.into(),
            Err(TryRecvError::Empty) => Next::Empty,
            Err(TryRecvError::Disconnected) => Next::Stopped,
        }
    }

    /// Blocks until a batch or a poke is ready, or the reader stops.
    pub(super) fn next(&self) -> Next {
        self.items.recv().map_or(Next::Stopped, Next::from)
    }

    /// As [`Prefetch::next`], but gives up after `timeout` with [`Next::Empty`].
    pub(super) fn next_within(&self, timeout: Duration) -> Next {
        match self.items.recv_timeout(timeout) {
            Ok(item) => item.into(),
            Err(RecvTimeoutError::Timeout) => Next::Empty,
            Err(RecvTimeoutError::Disconnected) => Next::Stopped,
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.raise();
        // Unblock a reader waiting to hand over a batch.
        while self.items.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            drop(std::mem::replace(&mut self.items, sync_channel(0).1));
            let _ = thread.join();
        }
    }
}

fn read_ahead(
    log: &dyn EventLog,
    selection: &Selection,
    mut from: GlobalPosition,
    sender: &SyncSender<Item>,
    poke: &Notify,
    stop: &Signal,
) {
    let mut head = log.watch_head();
    loop {
        if stop.raised() {
            return;
        }
        let durable = *head.borrow_and_update();
        if from >= durable {
            let woken = futures::executor::block_on(async {
                tokio::select! {
                    changed = head.changed() => changed.is_ok().then_some(None),
                    () = poke.notified() => Some(Some(Item::Poke)),
                    () = stop.wake.notified() => Some(None),
                }
            });
            match woken {
                None => return,
                Some(Some(item)) => {
                    if sender.send(item).is_err() {
                        return;
                    }
                }
                Some(None) => {}
            }
            continue;
        }
        let batch = selection.collect(log, from, durable);
        if let Ok((_, scanned_to)) = &batch {
            from = *scanned_to;
        }
        let failed = batch.is_err();
        if sender.send(Item::Batch(batch)).is_err() || failed {
            return;
        }
    }
}
