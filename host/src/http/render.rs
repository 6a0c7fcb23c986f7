//! Events as JSON. Event data and metadata are stored as JSON text, so they are copied into
//! responses as they are, without being parsed again.

use chrono::{DateTime, SecondsFormat};

use crate::store::RecordedEvent;

/// Formats microseconds since the Unix epoch as RFC 3339 (UTC, microsecond precision).
pub fn rfc3339_micros(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default()
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends one event as a JSON object.
pub fn push_event(out: &mut Vec<u8>, event: &RecordedEvent) {
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(
        event
            .id
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"stream\":");
    push_json_str(out, &event.stream);
    out.extend_from_slice(b",\"revision\":");
    out.extend_from_slice(event.revision.to_string().as_bytes());
    out.extend_from_slice(b",\"position\":");
    out.extend_from_slice(event.position.to_string().as_bytes());
    out.extend_from_slice(b",\"type\":");
    push_json_str(out, &event.event_type);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(event.data.as_bytes());
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(event.metadata.as_bytes());
    out.extend_from_slice(b",\"recorded_at\":\"");
    out.extend_from_slice(rfc3339_micros(event.recorded_at_micros).as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Appends `"events":[...]`.
pub fn push_event_list(out: &mut Vec<u8>, events: &[RecordedEvent]) {
    out.extend_from_slice(b"\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_event(out, event);
    }
    out.push(b']');
}

pub fn event_json(event: &RecordedEvent) -> String {
    let mut out = Vec::with_capacity(256 + event.data.len());
    push_event(&mut out, event);
    // Built only from valid UTF-8 pieces.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_as_valid_json_with_raw_data() {
        let event = RecordedEvent {
            id: uuid::Uuid::nil(),
            stream: "account-\"1\"".into(),
            revision: 3,
            position: 9,
            event_type: "Deposited".into(),
            data: r#"{"amount": 5}"#.into(),
            metadata: "{}".into(),
            recorded_at_micros: 1_700_000_000_123_456,
        };
        let parsed: serde_json::Value = serde_json::from_str(&event_json(&event)).unwrap();
        assert_eq!(parsed["stream"], "account-\"1\"");
        assert_eq!(parsed["data"]["amount"], 5);
        assert_eq!(parsed["recorded_at"], "2023-11-14T22:13:20.123456Z");
    }
}
