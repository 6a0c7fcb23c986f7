//! How Refold's records look in JetStream: subject names, the event payload, and the
//! server's error codes Refold acts on.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::super::{GlobalPosition, ProposedEvent, RecordedEvent, StoreError, StreamRevision};

/// The JetStream stream holding the event log, and its subjects.
pub(super) const EVENTS_STREAM: &str = "REFOLD_EVENTS";
pub(super) const EVENTS_SUBJECTS: &str = "refold.events.>";
/// The JetStream stream holding every committed change of module state and records.
pub(super) const STATE_STREAM: &str = "REFOLD_STATE";
pub(super) const STATE_SUBJECTS: &str = "refold.state.>";

/// An append-only stream: nothing ever leaves it (no limits, no deletes, no purges), so
/// its sequences have no gaps; atomic batches allowed.
pub(super) fn append_only_stream(
    name: &str,
    subjects: &str,
    replicas: usize,
    duplicate_window: std::time::Duration,
) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: StorageType::File,
        num_replicas: replicas,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::New,
        max_messages: -1,
        max_bytes: -1,
        max_age: std::time::Duration::ZERO,
        max_messages_per_subject: -1,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_atomic_publish: true,
        allow_direct: true,
        duplicate_window,
        ..Default::default()
    }
}

/// The sequence of the last message JetStream has stored in `stream` (asked of its leader).
pub(super) async fn last_sequence(
    stream: &async_nats::jetstream::stream::Stream,
) -> Result<u64, StoreError> {
    let info = stream
        .get_info()
        .await
        .map_err(|err| StoreError::Unavailable(format!("JetStream does not answer: {err}")))?;
    Ok(info.state.last_sequence)
}

/// How long a follower may stay behind JetStream without moving before it starts again.
const STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves when a follower of `stream` has stalled: JetStream holds messages past what
/// `applied` says the follower has applied, and that has not moved for [`STALL`]. (An
/// ordered consumer whose server died can wait forever without an error.)
pub(super) async fn stalled(
    stream: &async_nats::jetstream::stream::Stream,
    applied: impl Fn() -> u64,
) {
    let mut since: Option<(u64, tokio::time::Instant)> = None;
    loop {
        tokio::time::sleep(STALL / 4).await;
        let Ok(last) = last_sequence(stream).await else {
            continue;
        };
        let at = applied();
        if at >= last {
            since = None;
            continue;
        }
        match since {
            Some((seen, from)) if seen == at => {
                if from.elapsed() >= STALL {
                    tracing::warn!(
                        at,
                        last,
                        "a follower of JetStream stalled; starting it again"
                    );
                    return;
                }
            }
            _ => since = Some((at, tokio::time::Instant::now())),
        }
    }
}

/// Subject tokens may not hold `.`, `*`, `>` or whitespace; names are carried in URL-safe
/// base64, which has none of them.
pub(super) fn token_of(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name.as_bytes())
}

fn untoken(token: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()
}

/// The subject of one Refold stream: JetStream's per-subject sequence is the stream's.
pub(super) fn event_subject(stream: &str) -> String {
    format!("refold.events.{}", token_of(stream))
}

/// The subject of one keyspace's changes.
pub(super) fn state_subject(keyspace: &str) -> String {
    format!("refold.state.{}", token_of(keyspace))
}

/// The keyspace a state subject belongs to.
pub(super) fn keyspace_of(subject: &str) -> Option<String> {
    untoken(subject.strip_prefix("refold.state.")?)
}

/// Positions are 0-based; JetStream sequences start at 1 and, with nothing ever deleted,
/// have no gaps.
pub(super) fn position_of(sequence: u64) -> GlobalPosition {
    sequence - 1
}

/// The payload of one event message. `data` and `metadata` are JSON text already
/// validated, written as they are. An imported event keeps its recording time; an
/// appended one is recorded at the time JetStream stores it.
pub(super) fn encode_event(
    stream: &str,
    revision: StreamRevision,
    event: &ProposedEvent,
    recorded_at_micros: Option<i64>,
) -> bytes::Bytes {
    let stream = serde_json::to_string(stream).unwrap_or_default();
    let event_type = serde_json::to_string(&event.event_type).unwrap_or_default();
    let mut out = String::with_capacity(
        96 + stream.len() + event_type.len() + event.data.len() + event.metadata.len(),
    );
    out.push_str("{\"id\":\"");
    out.push_str(&event.id.to_string());
    out.push_str("\",\"stream\":");
    out.push_str(&stream);
    out.push_str(",\"revision\":");
    out.push_str(&revision.to_string());
    out.push_str(",\"type\":");
    out.push_str(&event_type);
    out.push_str(",\"data\":");
    out.push_str(&event.data);
    out.push_str(",\"metadata\":");
    out.push_str(&event.metadata);
    if let Some(micros) = recorded_at_micros {
        out.push_str(",\"recorded_at\":");
        out.push_str(&micros.to_string());
    }
    out.push('}');
    bytes::Bytes::from(out)
}

#[derive(Deserialize)]
struct WireEvent {
    id: Uuid,
    stream: String,
    revision: StreamRevision,
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    metadata: Box<RawValue>,
    /// Microseconds since the Unix epoch, for imported events.
    #[serde(default)]
    recorded_at: Option<i64>,
}

/// An event as recorded: the payload, where JetStream stored it and (unless the payload
/// says when, for an import) when.
pub(super) fn decode_event(
    payload: &[u8],
    sequence: u64,
    stored_at_micros: i64,
) -> Result<RecordedEvent, StoreError> {
    let wire: WireEvent = serde_json::from_slice(payload).map_err(|err| {
        StoreError::Corrupt(format!(
            "the event at sequence {sequence} is unreadable: {err}"
        ))
    })?;
    Ok(RecordedEvent {
        id: wire.id,
        stream: wire.stream,
        revision: wire.revision,
        position: position_of(sequence),
        event_type: wire.event_type,
        data: wire.data.get().to_owned(),
        metadata: wire.metadata.get().to_owned(),
        recorded_at_micros: wire.recorded_at.unwrap_or(stored_at_micros),
    })
}

/// Microseconds since the Unix epoch of a JetStream timestamp.
pub(super) fn micros(time: time::OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// JetStream error codes Refold acts on.
pub(super) mod code {
    /// The subject's (or stream's) last sequence is not the one expected.
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// In a cluster: another write to the subject is still being proposed.
    pub const SEQUENCE_IN_FLIGHT: u64 = 10164;
    /// In a cluster: a message with this id is still being proposed.
    pub const DUPLICATE_IN_FLIGHT: u64 = 10158;
    /// An atomic batch carries an id that is already recorded.
    pub const BATCH_DUPLICATE_ID: u64 = 10201;
}
