//! The log's vocabulary: stream names, positions and revisions, events as proposed and as
//! recorded, expected revisions, filters, and the pages reads return.

use std::fmt;

use uuid::Uuid;

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

    pub(super) fn admits(self, current: Option<StreamRevision>) -> bool {
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

pub(super) fn describe_current(current: Option<StreamRevision>) -> String {
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

/// What part of a stream a read wants: from which revision (default: the first going
/// forward, the last going backward), how many events, and which way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRead {
    pub from: Option<StreamRevision>,
    pub limit: usize,
    pub direction: Direction,
}

impl StreamRead {
    pub fn forward(from: Option<StreamRevision>, limit: usize) -> Self {
        Self {
            from,
            limit,
            direction: Direction::Forward,
        }
    }

    pub fn backward(from: Option<StreamRevision>, limit: usize) -> Self {
        Self {
            from,
            limit,
            direction: Direction::Backward,
        }
    }
}

/// A page of the stream listing: names starting with `prefix`, after `after`, at most
/// `limit`.
#[derive(Clone, Copy, Debug)]
pub struct ListStreams<'a> {
    pub prefix: &'a str,
    pub after: Option<&'a str>,
    pub limit: usize,
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
