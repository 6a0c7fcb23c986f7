//! Contract 0.2 hands a call's events over as one `events` record: stream names and types
//! once each, every payload and metadata in one buffer. These turn its records into
//! [`Event`]s that borrow from it, without copying.

use crate::bindings::v2::{Events, RawEvent, Span};
use crate::event::Event;

/// The UTF-8 text a span points at.
fn text(events: &Events, span: Span) -> Result<&str, String> {
    let start = span.offset as usize;
    let bytes = events
        .text
        .get(start..start + span.len as usize)
        .ok_or_else(|| format!("the host sent a span {start}+{} out of range", span.len))?;
    std::str::from_utf8(bytes).map_err(|e| format!("the host sent text that is not UTF-8: {e}"))
}

/// The event `raw` of `events`, on `stream`.
pub(crate) fn view<'a>(
    events: &'a Events,
    raw: &RawEvent,
    stream: &'a str,
) -> Result<Event<'a>, String> {
    let event_type = events
        .types
        .get(raw.type_index as usize)
        .ok_or_else(|| format!("the host sent an event of unknown type {}", raw.type_index))?;
    let metadata = raw.metadata.map(|m| text(events, m)).transpose()?;
    Ok(Event::borrowed(
        (raw.id_hi, raw.id_lo),
        stream,
        raw.revision,
        raw.position,
        event_type,
        text(events, raw.data)?,
        metadata,
        raw.recorded_at,
    ))
}

/// The `index`th event of a call that names its streams (a projection's or processor's).
pub(crate) fn nth(events: &Events, index: usize) -> Result<Event<'_>, String> {
    let raw = &events.events[index];
    let stream = events
        .streams
        .get(raw.stream_index as usize)
        .ok_or_else(|| {
            format!(
                "the host sent an event of unknown stream {}",
                raw.stream_index
            )
        })?;
    view(events, raw, stream)
}
