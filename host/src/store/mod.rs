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
mod faults;
mod id_index;
mod keyspace;
mod memory;
mod sled_batch;
mod sled_keyspace;
mod sled_log;
mod sled_store;
mod writer;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;
use uuid::Uuid;

pub use faults::InjectedFaults;
pub use keyspace::{KeyIter, Keyspace, Keyspaces, Writes};
pub use memory::{MemoryKeyspaces, MemoryStore};
pub use sled_store::{SledStore, StoreConfig};

/// 0-based position of an event in the global log.
pub type GlobalPosition = u64;
/// 0-based position of an event in its stream.
pub type StreamRevision = u64;

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 256;

/// A validated stream name: 1..=256 bytes of UTF-8 with no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Validates `name`.
    ///
    /// # Errors
    /// A sentence saying what is wrong with the name.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("stream name is empty".into());
        }
        if name.len() > MAX_STREAM_NAME_BYTES {
            return Err(format!(
                "stream name is {} bytes long; the limit is {MAX_STREAM_NAME_BYTES}",
                name.len()
            ));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(format!(
                "stream name contains the control character U+{:04X}",
                c as u32
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part of the name before its first `-` (`account-42` → `account`).
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The category of a stream name: the part before its first `-`.
pub fn category_of(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

/// What the writer of an append believes about the stream's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    Exists,
    /// The stream's last event must have this revision.
    Exact(StreamRevision),
}

impl ExpectedRevision {
    /// Parses the `expected_revision` query value.
    ///
    /// # Errors
    /// A sentence naming the accepted forms.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "any" => Ok(Self::Any),
            "no_stream" => Ok(Self::NoStream),
            "exists" => Ok(Self::Exists),
            other => other.parse().map(Self::Exact).map_err(|_| {
                format!(
                    "expected_revision must be any, no_stream, exists or a non-negative integer, not {other:?}"
                )
            }),
        }
    }

    fn admits(self, current: Option<StreamRevision>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current.is_none(),
            Self::Exists => current.is_some(),
            Self::Exact(revision) => current == Some(revision),
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any revision"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exists => f.write_str("an existing stream"),
            Self::Exact(revision) => write!(f, "revision {revision}"),
        }
    }
}

fn describe_current(current: Option<StreamRevision>) -> String {
    match current {
        None => "the stream has no events".to_owned(),
        Some(revision) => format!("the stream's last revision is {revision}"),
    }
}

/// An event as a client proposes it, already validated.
#[derive(Clone, Debug)]
pub struct ProposedEvent {
    pub id: Uuid,
    /// Whether the client chose the id (only those take part in idempotent retries).
    pub id_from_client: bool,
    pub event_type: String,
    /// The payload as JSON text.
    pub data: String,
    /// The metadata as JSON object text.
    pub metadata: String,
}

/// One event as recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub stream: String,
    pub revision: StreamRevision,
    pub position: GlobalPosition,
    pub event_type: String,
    /// The payload as JSON text.
    pub data: String,
    /// The metadata as JSON object text.
    pub metadata: String,
    /// When the server recorded it, in microseconds since the Unix epoch.
    pub recorded_at_micros: i64,
}

impl RecordedEvent {
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            id: self.id,
            stream: &self.stream,
            revision: self.revision,
            position: self.position,
            event_type: &self.event_type,
            data: &self.data,
            metadata: &self.metadata,
            recorded_at_micros: self.recorded_at_micros,
        }
    }
}

/// One event borrowed from storage: the zero-copy form that scans (and module runners)
/// use; [`EventRef::to_recorded`] makes an owned copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub id: Uuid,
    pub stream: &'a str,
    pub revision: StreamRevision,
    pub position: GlobalPosition,
    pub event_type: &'a str,
    pub data: &'a str,
    pub metadata: &'a str,
    pub recorded_at_micros: i64,
}

impl EventRef<'_> {
    pub fn to_recorded(&self) -> RecordedEvent {
        RecordedEvent {
            id: self.id,
            stream: self.stream.to_owned(),
            revision: self.revision,
            position: self.position,
            event_type: self.event_type.to_owned(),
            data: self.data.to_owned(),
            metadata: self.metadata.to_owned(),
            recorded_at_micros: self.recorded_at_micros,
        }
    }
}

/// Where an append landed (for a retried append: where the original landed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_revision: StreamRevision,
    pub last_revision: StreamRevision,
    pub first_position: GlobalPosition,
    pub last_position: GlobalPosition,
}

/// Which way a stream is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A page of one stream.
#[derive(Debug)]
pub struct StreamSlice {
    pub events: Vec<RecordedEvent>,
    /// The revision to read from for the following page, if there is more to read now.
    pub next: Option<StreamRevision>,
}

/// Which events of the global log a reader wants; `None` means all.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub event_types: Option<Vec<String>>,
    pub categories: Option<Vec<String>>,
}

impl EventFilter {
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == event_type))
            && self
                .categories
                .as_ref()
                .is_none_or(|cats| cats.iter().any(|c| c == category_of(stream)))
    }
}

/// A page of the global log.
#[derive(Debug)]
pub struct LogSlice {
    /// Matching events, in position order.
    pub events: Vec<RecordedEvent>,
    /// Where scanning stopped: every position below it was looked at.
    pub scanned_to: GlobalPosition,
    /// Whether scanning stopped at the durable head (nothing more to read now).
    pub reached_head: bool,
}

/// One stream in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream: String,
    pub last_revision: StreamRevision,
}

/// A page of the stream listing.
#[derive(Debug)]
pub struct StreamListing {
    pub streams: Vec<StreamInfo>,
    /// The `after` value for the following page.
    pub next: Option<String>,
}

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

    /// Visits durable events from `from` (inclusive) up to `until` (exclusive), in position
    /// order and without copying them, until `visit` returns `false`. Returns the position
    /// after the last event visited (`from` if none was).
    ///
    /// # Errors
    /// Storage failures.
    fn scan(
        &self,
        from: GlobalPosition,
        until: GlobalPosition,
        visit: &mut dyn FnMut(EventRef<'_>) -> bool,
    ) -> Result<GlobalPosition, StoreError>;

    /// Reads up to `limit` events of `stream` starting at `from` (inclusive; default: the
    /// first event going forward, the last going backward). `None` if the stream has no
    /// durable events.
    ///
    /// # Errors
    /// Storage failures.
    fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<StreamRevision>,
        limit: usize,
        direction: Direction,
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

    /// Lists streams in name order whose names start with `prefix`, after `after`.
    ///
    /// # Errors
    /// Storage failures.
    fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StreamListing, StoreError>;

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
        let scanned_to = self.scan(from, head, &mut |event| {
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
            self.scan(position, position + 1, &mut |event| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_validated() {
        assert!(StreamName::parse("account-42").is_ok());
        assert!(StreamName::parse("ünïcode/with spaces").is_ok());
        assert!(StreamName::parse("").is_err());
        assert!(StreamName::parse("a\nb").is_err());
        assert!(StreamName::parse(&"x".repeat(257)).is_err());
        assert!(StreamName::parse(&"x".repeat(256)).is_ok());
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        assert_eq!(category_of("account-42"), "account");
        assert_eq!(category_of("order-1-2"), "order");
        assert_eq!(category_of("plain"), "plain");
    }

    #[test]
    fn expected_revision_parses_every_form() {
        assert_eq!(ExpectedRevision::parse("any"), Ok(ExpectedRevision::Any));
        assert_eq!(
            ExpectedRevision::parse("no_stream"),
            Ok(ExpectedRevision::NoStream)
        );
        assert_eq!(
            ExpectedRevision::parse("exists"),
            Ok(ExpectedRevision::Exists)
        );
        assert_eq!(ExpectedRevision::parse("7"), Ok(ExpectedRevision::Exact(7)));
        assert!(ExpectedRevision::parse("-1").is_err());
        assert!(ExpectedRevision::parse("latest").is_err());
    }
}
