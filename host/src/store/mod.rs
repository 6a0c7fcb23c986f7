//! Storage: the event log and the keyed state kept beside it. Domain types, the traits the
//! rest of Refold depends on ([`EventLog`] to read the log, [`EventStore`] to write it,
//! [`Keyspaces`] for module state and records), the embedded sled backend ([`SledStore`],
//! the only place that names sled) and an in-memory one ([`MemoryStore`]).
//!
//! The store owns durability. Appends go through one writer (group commit) and are
//! acknowledged only after their batch is flushed; the writer then publishes the durable
//! high-water mark ([`EventStore::head`]). Every read is bounded by that mark, so no reader
//! ever sees an event that a crash could still take away.

mod codec;
mod event;
mod faults;
mod id_index;
mod keyspace;
mod memory;
pub mod nats;
mod sled_batch;
mod sled_keyspace;
mod sled_log;
mod sled_store;
mod writer;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use tokio::sync::watch;

use event::describe_current;
pub use event::{
    AppendOutcome, Direction, EventFilter, EventRef, ExpectedRevision, GlobalPosition, ListStreams,
    LogSlice, MAX_STREAM_NAME_BYTES, ProposedEvent, RecordedEvent, StreamInfo, StreamListing,
    StreamName, StreamRead, StreamRevision, StreamSlice, category_of,
};
pub use faults::InjectedFaults;
pub use keyspace::{KeyIter, KeyValue, Keyspace, Keyspaces, Writes};
pub use memory::{MemoryKeyspaces, MemoryStore};
pub use sled_store::{SledStore, StoreConfig};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("expected {expected}, but {}", describe_current(*.current))]
    WrongExpectedRevision {
        expected: ExpectedRevision,
        current: Option<StreamRevision>,
    },
    #[error("{0}")]
    DuplicateEventId(String),
    /// An imported event does not continue the log where it ends.
    #[error("{message}")]
    ImportMismatch {
        message: String,
        head: GlobalPosition,
    },
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The store stopped acknowledging writes after a storage error, until it recovers.
    #[error("{0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("corrupt record in the store: {0}")]
    Corrupt(String),
}

/// The first of `low..high` for which `holds` is true, given that it is true for everything
/// above such a value (`high` if none): a binary search, for instance over recording times,
/// which grow with positions and revisions.
///
/// # Errors
/// The first error of `holds`.
pub fn first_where<E>(
    mut low: u64,
    mut high: u64,
    mut holds: impl FnMut(u64) -> Result<bool, E>,
) -> Result<u64, E> {
    while low < high {
        let mid = low + (high - low) / 2;
        if holds(mid)? {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    Ok(low)
}

/// What a scan calls with each event, until it returns `false`.
pub type Visit<'a> = dyn FnMut(EventRef<'_>) -> bool + 'a;

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The durable log as its readers see it: module runners, subscriptions and HTTP reads
/// depend on this and nothing more. Every read stops at the durable head.
pub trait EventLog: Send + Sync + 'static {
    /// The durable high-water mark: the number of durable events, i.e. the position the
    /// next event will get. Readers see only positions below it.
    fn head(&self) -> GlobalPosition;

    /// A receiver that changes whenever the head moves.
    fn watch_head(&self) -> watch::Receiver<GlobalPosition>;

    /// Visits the durable events of `range`, in position order and without copying them,
    /// until `visit` returns `false`. Returns the position after the last event visited
    /// (the range's start if none was).
    ///
    /// # Errors
    /// Storage failures.
    fn scan(
        &self,
        range: Range<GlobalPosition>,
        visit: &mut Visit<'_>,
    ) -> Result<GlobalPosition, StoreError>;

    /// Reads the part of `stream` that `read` asks for. `None` if the stream has no durable
    /// events.
    ///
    /// # Errors
    /// Storage failures.
    fn read_stream(
        &self,
        stream: &StreamName,
        read: StreamRead,
    ) -> Result<Option<StreamSlice>, StoreError>;

    /// The revision of the first event of `stream` whose position is above `position`.
    ///
    /// # Errors
    /// Storage failures.
    fn stream_revision_after(
        &self,
        stream: &StreamName,
        position: GlobalPosition,
    ) -> Result<StreamRevision, StoreError>;

    /// Resolves once this log holds every append acknowledged before the call, by any
    /// host: what a read waits for to see its own and others' writes. The embedded store
    /// holds them already; cluster mode's copy may lag JetStream by a few milliseconds.
    fn sync(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Lists streams in name order, the page `query` asks for.
    ///
    /// # Errors
    /// Storage failures.
    fn list_streams(&self, query: ListStreams<'_>) -> Result<StreamListing, StoreError>;

    /// Reads events of the global log from `from` (inclusive) that match `filter`, up to
    /// `limit` matches or `scan_limit` events looked at, whichever comes first.
    ///
    /// # Errors
    /// Storage failures.
    fn read_all(
        &self,
        from: GlobalPosition,
        limit: usize,
        scan_limit: usize,
        filter: &EventFilter,
    ) -> Result<LogSlice, StoreError> {
        let head = self.head();
        let mut events = Vec::new();
        let mut scanned = 0usize;
        let scanned_to = self.scan(from..head, &mut |event| {
            scanned += 1;
            if filter.matches(event.stream, event.event_type) {
                events.push(event.to_recorded());
            }
            events.len() < limit && scanned < scan_limit
        })?;
        Ok(LogSlice {
            events,
            scanned_to: scanned_to.max(from),
            reached_head: scanned_to >= head,
        })
    }

    /// The first position recorded after `micros` (so that every event recorded at or
    /// before it is below): a binary search over recorded times, which grow with the log.
    ///
    /// # Errors
    /// Storage failures.
    fn position_after_time(&self, micros: i64) -> Result<GlobalPosition, StoreError> {
        first_where(0, self.head(), |position| {
            let mut at = i64::MAX;
            self.scan(position..position + 1, &mut |event| {
                at = event.recorded_at_micros;
                false
            })?;
            Ok(at > micros)
        })
    }
}

/// The event log with its writes. The embedded backend is [`SledStore`]; [`MemoryStore`]
/// keeps everything in memory (tests).
pub trait EventStore: EventLog {
    /// Appends `events` to `stream` atomically, if `expected` holds. Resolves once the events
    /// are durable. Event ids are unique in the whole log: a retry whose client-chosen ids
    /// were recorded by one earlier append (same ids, same order, same stream), however
    /// long ago, appends nothing and resolves to the original outcome; any other append
    /// carrying a recorded id fails with [`StoreError::DuplicateEventId`].
    fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<ProposedEvent>,
    ) -> BoxFuture<'static, Result<AppendOutcome, StoreError>>;

    /// Restores recorded events (from a backup) exactly as they were: ids, streams,
    /// revisions, positions and recording times. The first must be at the head of the log,
    /// positions must follow each other, and each event must be the next revision of its
    /// stream; otherwise nothing is written ([`StoreError::ImportMismatch`]). Atomic and
    /// durable like an append; resolves to the new head.
    fn import(
        &self,
        events: Vec<RecordedEvent>,
    ) -> BoxFuture<'static, Result<GlobalPosition, StoreError>>;
}
