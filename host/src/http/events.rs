//! Appending and reading events: `POST/GET /streams/{stream}`, `GET /streams`, `GET /all`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::body::read_limited;
use super::error::ApiError;
use super::render::push_event_list;
use super::{AppState, Limits, blocking, params};
use crate::store::{ExpectedRevision, ListStreams, ProposedEvent, StreamRead};

/// The fields an event may have.
const EVENT_FIELDS: [&str; 4] = ["type", "data", "metadata", "id"];

/// The most events `/all` looks at for one page when filters skip most of them.
const ALL_SCAN_LIMIT: usize = 100_000;

#[derive(Deserialize)]
pub struct AppendParams {
    expected_revision: Option<String>,
}

pub async fn append(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<AppendParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(stream) = path?;
    let stream = params::stream_name(&stream)?;
    let Query(query) = query?;
    let expected = match query.expected_revision.as_deref() {
        None => ExpectedRevision::Any,
        Some(raw) => ExpectedRevision::parse(raw).map_err(ApiError::invalid_query)?,
    };
    let body = read_limited(&headers, body, app.limits.max_body_bytes).await?;
    let events = parse_events(&body, &app.limits)?;
    let count = events.len() as u64;
    let started = std::time::Instant::now();
    let outcome = match app.store.append(stream.clone(), expected, events).await {
        Ok(outcome) => outcome,
        Err(err) => {
            if matches!(err, crate::store::StoreError::WrongExpectedRevision { .. }) {
                app.metrics.append_conflicts.fetch_add(1, Ordering::Relaxed);
            }
            return Err(err.into());
        }
    };
    app.metrics.append_latency.observe(started.elapsed());
    app.metrics.appends.fetch_add(1, Ordering::Relaxed);
    app.metrics
        .events_appended
        .fetch_add(count, Ordering::Relaxed);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "stream": stream.as_str(),
            "first_revision": outcome.first_revision,
            "last_revision": outcome.last_revision,
            "first_position": outcome.first_position,
            "last_position": outcome.last_position,
        })),
    )
        .into_response())
}

pub(super) fn invalid_event(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_event", message)
}

/// Parses an append body: one event object, or an array of them.
fn parse_events(body: &[u8], limits: &Limits) -> Result<Vec<ProposedEvent>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid_json", "the body is not UTF-8"))?;
    let first = text.trim_start().as_bytes().first().copied();
    let items: Vec<&RawValue> = match first {
        Some(b'[') => serde_json::from_str(text).map_err(|err| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {err}"))
        })?,
        Some(b'{') => vec![serde_json::from_str(text).map_err(|err| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {err}"))
        })?],
        _ => {
            return Err(ApiError::bad_request(
                "invalid_json",
                "the body must be a JSON event object or an array of event objects",
            ));
        }
    };
    if items.is_empty() {
        return Err(invalid_event(
            "the array holds no events; an append needs at least one",
        ));
    }
    if items.len() > limits.max_events_per_append {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "the append holds {} events; the limit is {}",
                items.len(),
                limits.max_events_per_append
            ),
        ));
    }
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let event = parse_event(item, limits).map_err(|mut err| {
            if first == Some(b'[') {
                err.message = format!("event {index}: {}", err.message);
                err = err.with("index", index);
            }
            err
        })?;
        events.push(event);
    }
    let mut ids: Vec<Uuid> = events
        .iter()
        .filter(|e| e.id_from_client)
        .map(|e| e.id)
        .collect();
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(invalid_event(format!(
            "event id {} appears twice in one append",
            pair[0]
        )));
    }
    Ok(events)
}

fn parse_event(item: &RawValue, limits: &Limits) -> Result<ProposedEvent, ApiError> {
    let fields = event_fields(item, &EVENT_FIELDS)?;
    parse_event_fields(&fields, limits)
}

/// An event's JSON object as its fields, refusing any not in `known`.
pub(super) fn event_fields<'a>(
    item: &'a RawValue,
    known: &[&str],
) -> Result<HashMap<String, &'a RawValue>, ApiError> {
    let fields: HashMap<String, &RawValue> = serde_json::from_str(item.get())
        .map_err(|_| invalid_event("an event must be a JSON object"))?;
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid_event(format!(
            "unknown field {unknown:?}; an event has {}",
            known.join(", ")
        )));
    }
    Ok(fields)
}

/// Checks an event's `type`, `data`, `metadata` and `id` and its size.
pub(super) fn parse_event_fields(
    fields: &HashMap<String, &RawValue>,
    limits: &Limits,
) -> Result<ProposedEvent, ApiError> {
    let event_type: String = match fields.get("type") {
        None => return Err(invalid_event("type is required")),
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|_| invalid_event("type must be a string"))?
        }
    };
    if event_type.is_empty() || event_type.len() > 256 {
        return Err(invalid_event("type must be 1 to 256 bytes long"));
    }
    if event_type.chars().any(char::is_control) {
        return Err(invalid_event("type must not contain control characters"));
    }
    let data = fields
        .get("data")
        .ok_or_else(|| invalid_event("data is required (any JSON value)"))?
        .get();
    let metadata = match fields.get("metadata") {
        None => "{}",
        Some(raw) if raw.get().starts_with('{') => raw.get(),
        Some(_) => return Err(invalid_event("metadata must be a JSON object")),
    };
    let id =
        match fields.get("id") {
            None => None,
            Some(raw) => Some(serde_json::from_str::<Uuid>(raw.get()).map_err(|_| {
                invalid_event(format!("id must be a UUID string, not {}", raw.get()))
            })?),
        };
    let size = event_type.len() + data.len() + metadata.len();
    if size > limits.max_event_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!(
                "the event is {size} bytes; the limit is {} bytes",
                limits.max_event_bytes
            ),
        ));
    }
    Ok(ProposedEvent {
        id: id.unwrap_or_else(Uuid::new_v4),
        id_from_client: id.is_some(),
        event_type,
        data: data.to_owned(),
        metadata: metadata.to_owned(),
    })
}

#[derive(Deserialize)]
pub struct ReadStreamParams {
    from: Option<String>,
    limit: Option<String>,
    direction: Option<String>,
}

pub async fn read_stream(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ReadStreamParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(stream) = path?;
    let stream = params::stream_name(&stream)?;
    let Query(query) = query?;
    let from = params::u64_param("from", query.from.as_deref())?;
    let limit = params::limit(query.limit.as_deref())?;
    let direction = params::direction(query.direction.as_deref())?;
    let store = app.synced_log().await?;
    let name = stream.clone();
    let read = StreamRead {
        from,
        limit,
        direction,
    };
    let slice = blocking(move || store.read_stream(&name, read))
        .await?
        .ok_or_else(|| {
            ApiError::not_found("stream_not_found", format!("stream {stream} has no events"))
                .with("stream", stream.as_str())
        })?;
    let mut out = Vec::with_capacity(128 + slice.events.len() * 256);
    out.extend_from_slice(b"{\"stream\":");
    let _ = serde_json::to_writer(&mut out, stream.as_str());
    out.push(b',');
    push_event_list(&mut out, &slice.events);
    out.extend_from_slice(b",\"next\":");
    let _ = serde_json::to_writer(&mut out, &slice.next);
    out.push(b'}');
    Ok(json_response(out))
}

#[derive(Deserialize)]
pub struct ReadAllParams {
    from: Option<String>,
    limit: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    category: Option<String>,
}

pub async fn read_all(
    State(app): State<AppState>,
    query: Result<Query<ReadAllParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let from = params::u64_param("from", query.from.as_deref())?.unwrap_or(0);
    let limit = params::limit(query.limit.as_deref())?;
    let filter = params::filter(query.event_type.as_deref(), query.category.as_deref());
    let store = app.synced_log().await?;
    let slice = blocking(move || store.read_all(from, limit, ALL_SCAN_LIMIT, &filter)).await?;
    let next = (!slice.reached_head).then_some(slice.scanned_to);
    let mut out = Vec::with_capacity(64 + slice.events.len() * 256);
    out.push(b'{');
    push_event_list(&mut out, &slice.events);
    out.extend_from_slice(b",\"next\":");
    let _ = serde_json::to_writer(&mut out, &next);
    out.push(b'}');
    Ok(json_response(out))
}

#[derive(Deserialize)]
pub struct ListStreamsParams {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

pub async fn list_streams(
    State(app): State<AppState>,
    query: Result<Query<ListStreamsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let limit = params::limit(query.limit.as_deref())?;
    let prefix = query.prefix.unwrap_or_default();
    let after = query.after;
    let store = app.synced_log().await?;
    let listing = blocking(move || {
        store.list_streams(ListStreams {
            prefix: &prefix,
            after: after.as_deref(),
            limit,
        })
    })
    .await?;
    let streams: Vec<_> = listing
        .streams
        .iter()
        .map(|s| json!({ "stream": s.stream, "last_revision": s.last_revision }))
        .collect();
    Ok(Json(json!({ "streams": streams, "next": listing.next })).into_response())
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Vec<ProposedEvent>, ApiError> {
        parse_events(body.as_bytes(), &Limits::default())
    }

    #[test]
    fn a_single_object_and_an_array_both_parse() {
        assert_eq!(parse(r#"{"type":"A","data":1}"#).unwrap().len(), 1);
        let events = parse(
            r#"[{"type":"A","data":{"x":[1,2]}},{"type":"B","data":null,"metadata":{"k":"v"}}]"#,
        )
        .unwrap();
        assert_eq!(events[0].data, r#"{"x":[1,2]}"#);
        assert_eq!(events[1].data, "null");
        assert_eq!(events[1].metadata, r#"{"k":"v"}"#);
        assert_eq!(events[0].metadata, "{}");
    }

    #[test]
    fn bad_events_are_named() {
        let err = parse(r#"[{"type":"A","data":1},{"data":1}]"#).unwrap_err();
        assert_eq!(err.code, "invalid_event");
        assert_eq!(err.message, "event 1: type is required");
        assert_eq!(
            parse(r#"{"type":1,"data":1}"#).unwrap_err().message,
            "type must be a string"
        );
        assert_eq!(
            parse(r#"{"type":"A","data":1,"metadata":[]}"#)
                .unwrap_err()
                .code,
            "invalid_event"
        );
        assert_eq!(
            parse(r#"{"type":"A","data":1,"id":"nope"}"#)
                .unwrap_err()
                .code,
            "invalid_event"
        );
        assert_eq!(
            parse(r#"{"type":"A","data":1,"typo":2}"#).unwrap_err().code,
            "invalid_event"
        );
        assert_eq!(parse(r#"{"type":"A""#).unwrap_err().code, "invalid_json");
        assert_eq!(parse("42").unwrap_err().code, "invalid_json");
        assert_eq!(parse("[]").unwrap_err().code, "invalid_event");
        assert_eq!(parse("[1]").unwrap_err().code, "invalid_event");
    }

    #[test]
    fn repeated_ids_in_one_append_are_refused() {
        let id = Uuid::new_v4();
        let body =
            format!(r#"[{{"type":"A","data":1,"id":"{id}"}},{{"type":"A","data":1,"id":"{id}"}}]"#);
        assert_eq!(parse(&body).unwrap_err().code, "invalid_event");
    }
}
