//! Restoring a backup: `POST /import` takes recorded events as NDJSON (one event per line,
//! as `refold export` writes them: the event objects of `GET /all`) and writes them back
//! exactly as they were: ids, streams, revisions, positions and recording times.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use serde_json::value::RawValue;

use super::body::read_limited;
use super::error::ApiError;
use super::events::{event_fields, invalid_event, parse_event_fields};
use super::{AppState, Limits, params};
use crate::store::RecordedEvent;

/// The fields of a recorded event, all required except `metadata`.
const RECORDED_FIELDS: [&str; 8] = [
    "id",
    "stream",
    "revision",
    "position",
    "type",
    "data",
    "metadata",
    "recorded_at",
];

/// Most events in one import request (its body is limited like any other). Larger than an
/// append's limit: the store writes one index key per stream per request, so large restore
/// requests write far fewer keys than events.
const MAX_IMPORT_EVENTS: usize = 100_000;

pub async fn import(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_limited(&headers, body, app.limits.max_body_bytes).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid_json", "the body is not UTF-8"))?;
    let mut events = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if events.len() == MAX_IMPORT_EVENTS {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_events",
                format!(
                    "an import request holds at most {MAX_IMPORT_EVENTS} events; send the rest in another"
                ),
            ));
        }
        let line_number = index + 1;
        let event = parse_recorded(line, &app.limits).map_err(|mut err| {
            err.message = format!("line {line_number}: {}", err.message);
            err.with("line", line_number)
        })?;
        events.push(event);
    }
    if events.is_empty() {
        return Err(invalid_event(
            "the body holds no events; send recorded events, one JSON object per line",
        ));
    }
    let count = events.len() as u64;
    let head = app.store.import(events).await?;
    app.metrics
        .events_appended
        .fetch_add(count, Ordering::Relaxed);
    Ok(Json(json!({ "imported": count, "head": head })).into_response())
}

/// One line of an export: an event as `GET /all` shows it.
fn parse_recorded(line: &str, limits: &Limits) -> Result<RecordedEvent, ApiError> {
    let raw: &RawValue = serde_json::from_str(line)
        .map_err(|err| ApiError::bad_request("invalid_json", format!("not valid JSON: {err}")))?;
    let fields = event_fields(raw, &RECORDED_FIELDS)?;
    let event = parse_event_fields(&fields, limits)?;
    if !event.id_from_client {
        return Err(invalid_event("id is required"));
    }
    let stream = params::stream_name(&required::<String>(&fields, "stream", "a string")?)?;
    let recorded_at: String = required(&fields, "recorded_at", "an RFC 3339 time")?;
    let recorded_at = chrono::DateTime::parse_from_rfc3339(&recorded_at).map_err(|_| {
        invalid_event(format!(
            "recorded_at must be an RFC 3339 time, not {recorded_at:?}"
        ))
    })?;
    Ok(RecordedEvent {
        id: event.id,
        stream: stream.as_str().to_owned(),
        revision: required(&fields, "revision", "a non-negative integer")?,
        position: required(&fields, "position", "a non-negative integer")?,
        event_type: event.event_type,
        data: event.data,
        metadata: event.metadata,
        recorded_at_micros: recorded_at.timestamp_micros(),
    })
}

fn required<T: DeserializeOwned>(
    fields: &HashMap<String, &RawValue>,
    name: &str,
    what: &str,
) -> Result<T, ApiError> {
    let raw = fields
        .get(name)
        .ok_or_else(|| invalid_event(format!("{name} is required")))?;
    serde_json::from_str(raw.get()).map_err(|_| invalid_event(format!("{name} must be {what}")))
}
