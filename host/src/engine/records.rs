//! The event records of the two contract versions. The host builds every call's events
//! in the 0.2 form ([`Events`]: strings once per call, payloads in one buffer); a 0.1
//! module gets them converted ([`to_v01`]), five strings per event.

use super::bindings::Event;
use super::bindings::v2::{Events, Span};

/// The text a span points at; empty when it is out of range or not UTF-8 (the host only
/// makes spans over whole JSON texts it copied in).
pub fn text(events: &Events, span: Span) -> &str {
    let start = span.offset as usize;
    events
        .text
        .get(start..start + span.len as usize)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .unwrap_or_default()
}

/// The id of a 0.2 event as a UUID.
pub fn id_of(event: &super::bindings::v2::Event) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(event.id_hi, event.id_lo)
}

/// The stream name of the `index`th event of a call that names its streams.
pub fn stream_of(events: &Events, index: usize) -> &str {
    named(events, index, |e| (&events.streams, e.stream_index))
}

/// The type of the `index`th event of a call.
pub fn type_of(events: &Events, index: usize) -> &str {
    named(events, index, |e| (&events.types, e.type_index))
}

/// The name (in the call's `streams` or `types`) that `pick` says the `index`th event has.
fn named<'a>(
    events: &'a Events,
    index: usize,
    pick: impl Fn(&super::bindings::v2::Event) -> (&'a Vec<String>, u32),
) -> &'a str {
    events
        .events
        .get(index)
        .map(pick)
        .and_then(|(names, i)| names.get(i as usize))
        .map_or("", String::as_str)
}

/// The events as 0.1 records.
pub fn to_v01(events: &Events) -> Vec<Event> {
    events
        .events
        .iter()
        .map(|e| Event {
            id: id_of(e).hyphenated().to_string(),
            stream_id: events
                .streams
                .get(e.stream_index as usize)
                .cloned()
                .unwrap_or_default(),
            revision: e.revision,
            position: e.position,
            event_type: events
                .types
                .get(e.type_index as usize)
                .cloned()
                .unwrap_or_default(),
            data: text(events, e.data).to_owned(),
            metadata: e
                .metadata
                .map_or_else(|| "{}".to_owned(), |m| text(events, m).to_owned()),
            recorded_at: e.recorded_at,
        })
        .collect()
}
