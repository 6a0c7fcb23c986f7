//! Consumer groups over HTTP (`/subscriptions…`): create, inspect and remove groups; poll
//! for leased events, ack and nack them; list and replay parked events.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::body::read_limited;
use super::error::ApiError;
use super::render::push_event;
use super::{AppState, blocking, params};
use crate::groups::{GroupError, GroupSettings, MAX_POLL, MAX_WAIT_MS, NackAction, Settled};

/// Largest body of a group request (settings, or up to many leases).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most leases one ack or nack may carry.
const MAX_LEASES: usize = 10_000;

impl From<GroupError> for ApiError {
    fn from(err: GroupError) -> Self {
        match err {
            GroupError::NotFound(name) => ApiError::not_found(
                "group_not_found",
                format!("no consumer group named {name:?}"),
            )
            .with("group", name),
            GroupError::Invalid(message) => ApiError::bad_request("invalid_group_name", message),
            GroupError::Store(err) => err.into(),
        }
    }
}

async fn json_body(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let bytes = read_limited(headers, body, MAX_BODY).await?;
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|err| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {err}"))
    })
}

/// `PUT /subscriptions/{group}`.
pub async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body).await?;
    let settings = GroupSettings::from_json(&body)
        .map_err(|message| ApiError::bad_request("invalid_settings", message))?;
    let groups = app.groups()?;
    let created = {
        let groups = groups.clone();
        let name = name.clone();
        blocking(move || groups.put(&name, settings)).await?
    };
    let group = groups.get(&name)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(groups.status(&group))).into_response())
}

/// `GET /subscriptions`.
pub async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let groups = app.groups()?;
    let all: Vec<Value> = groups.list().iter().map(|g| groups.status(g)).collect();
    Ok(Json(json!({ "subscriptions": all })))
}

/// `GET /subscriptions/{group}`.
pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let groups = app.groups()?;
    let group = groups.get(&name)?;
    Ok(Json(groups.status(&group)))
}

/// `DELETE /subscriptions/{group}`.
pub async fn delete(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let groups = app.groups()?;
    let deleted = name.clone();
    blocking(move || groups.delete(&name)).await?;
    Ok(Json(json!({ "deleted": deleted })))
}

/// `POST /subscriptions/{group}/poll`.
pub async fn poll(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let max = params::u64_param("max", query.get("max").map(String::as_str))?.unwrap_or(100);
    if max == 0 || max > MAX_POLL as u64 {
        return Err(ApiError::invalid_query(format!(
            "max must be between 1 and {MAX_POLL}, not {max}"
        )));
    }
    let wait_ms =
        params::u64_param("wait_ms", query.get("wait_ms").map(String::as_str))?.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::invalid_query(format!(
            "wait_ms must be at most {MAX_WAIT_MS}, not {wait_ms}"
        )));
    }
    let worker = query.get("worker").map_or("anonymous", String::as_str);
    if worker.is_empty() || worker.len() > 128 || worker.chars().any(char::is_control) {
        return Err(ApiError::invalid_query(
            "worker must be 1 to 128 characters with no control characters",
        ));
    }
    let groups = app.groups()?;
    let deliveries = groups
        .poll(&name, max as usize, Duration::from_millis(wait_ms), worker)
        .await?;
    let mut out = Vec::with_capacity(64 + deliveries.len() * 320);
    out.extend_from_slice(b"{\"messages\":[");
    for (i, delivery) in deliveries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"lease\":\"");
        out.extend_from_slice(delivery.lease.as_bytes());
        out.extend_from_slice(b"\",\"delivery\":");
        out.extend_from_slice(delivery.delivery.to_string().as_bytes());
        out.extend_from_slice(b",\"event\":");
        push_event(&mut out, &delivery.event);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response())
}

/// The `leases` of an ack or nack body.
fn leases(body: &Value) -> Result<Vec<String>, ApiError> {
    let invalid = |message: &str| ApiError::bad_request("invalid_body", message.to_owned());
    let Some(list) = body.get("leases").and_then(Value::as_array) else {
        return Err(invalid("the body must be {\"leases\": [\"<lease>\", ...]}"));
    };
    if list.len() > MAX_LEASES {
        return Err(invalid(&format!(
            "at most {MAX_LEASES} leases at once, not {}",
            list.len()
        )));
    }
    list.iter()
        .map(|lease| {
            lease
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid("every lease must be a string, as poll answered it"))
        })
        .collect()
}

/// `POST /subscriptions/{group}/ack`.
pub async fn ack(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&headers, body).await?;
    let leases = leases(&body)?;
    let groups = app.groups()?;
    let Settled { count, expired } = groups.ack(&name, &leases).await?;
    Ok(Json(json!({ "acked": count, "expired": expired })))
}

/// `POST /subscriptions/{group}/nack`.
pub async fn nack(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&headers, body).await?;
    let leases = leases(&body)?;
    let action = match body.get("action").and_then(Value::as_str) {
        None | Some("retry") => NackAction::Retry,
        Some("park") => NackAction::Park,
        Some("skip") => NackAction::Skip,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("action must be retry, park or skip, not {other:?}"),
            ));
        }
    };
    let reason = match body.get("reason") {
        None | Some(Value::Null) => "",
        Some(Value::String(reason)) if reason.len() <= 4096 => reason.as_str(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "reason must be a string of at most 4096 bytes",
            ));
        }
    };
    let reason = if reason.is_empty() {
        match action {
            NackAction::Retry => "retry requested",
            NackAction::Park => "parked by a worker",
            NackAction::Skip => "skipped by a worker",
        }
    } else {
        reason
    };
    let groups = app.groups()?;
    let Settled { count, expired } = groups.nack(&name, &leases, action, reason).await?;
    Ok(Json(json!({ "nacked": count, "expired": expired })))
}

/// `GET /subscriptions/{group}/parked`.
pub async fn parked(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let from = params::u64_param("from", query.get("from").map(String::as_str))?.unwrap_or(0);
    let limit = params::limit(query.get("limit").map(String::as_str))?;
    let groups = app.groups()?;
    let group = groups.get(&name)?;
    let (page, next) = group.parked(from, limit);
    let mut out = Vec::with_capacity(64 + page.len() * 400);
    out.extend_from_slice(b"{\"parked\":[");
    for (i, parked) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"event\":");
        push_event(&mut out, &parked.event);
        out.extend_from_slice(b",\"reason\":");
        out.extend_from_slice(Value::from(parked.reason.as_str()).to_string().as_bytes());
        out.extend_from_slice(b",\"deliveries\":");
        out.extend_from_slice(parked.deliveries.to_string().as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"next\":");
    out.extend_from_slice(next.map_or("null".to_owned(), |n| n.to_string()).as_bytes());
    out.push(b'}');
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response())
}

/// `POST /subscriptions/{group}/parked/replay`.
pub async fn replay_parked(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let groups = app.groups()?;
    let replayed = groups.replay_parked(&name).await?;
    Ok(Json(json!({ "replayed": replayed })))
}
