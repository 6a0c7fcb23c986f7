//! Modules over HTTP: deploy, inspect, remove (`/projections`, `/projections/{name}`), and
//! query their state, optionally after a given log position (read-your-writes).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, params};
use crate::engine::{ModuleKind, UploadError};
use crate::modules::{DeployError, DeployedModule, Status};

/// Largest module upload (language runtimes such as Python's are tens of MiB).
pub const MAX_MODULE_BYTES: usize = 128 * 1024 * 1024;
const DEFAULT_WAIT_MS: u64 = 5_000;
const MAX_WAIT_MS: u64 = 60_000;

fn module_not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "module_not_found",
        format!("no module named {name:?} is deployed"),
    )
    .with("name", name)
}

fn find(app: &AppState, name: &str) -> Result<Arc<DeployedModule>, ApiError> {
    app.modules.get(name).ok_or_else(|| module_not_found(name))
}

/// The summary every listing shows.
fn summary(module: &DeployedModule, head: u64) -> Value {
    let progress = module.progress();
    let mut value = json!({
        "name": module.name,
        "kind": module.kind,
        "version": module.version,
        "status": progress.status,
        "position": progress.checkpoint,
        "lag": head.saturating_sub(progress.checkpoint),
    });
    if let Some(fault) = &progress.fault {
        value["error"] = fault.message.clone().into();
    }
    value
}

pub async fn deploy(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let body = body?;
    let modules = app.modules.clone();
    let deployed = tokio::task::spawn_blocking(move || modules.deploy(&name, &body))
        .await?
        .map_err(|err| match err {
            DeployError::InvalidName(message) => {
                ApiError::bad_request("invalid_module_name", message)
            }
            DeployError::Upload(UploadError::NotWasm(message)) => {
                ApiError::bad_request("not_wasm", message)
            }
            DeployError::Upload(UploadError::Incompatible(message)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "incompatible_module",
                message,
            ),
            DeployError::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "deploy failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "deploy_failed",
                    format!("the module could not be stored: {err:#}"),
                )
            }
        })?;
    let module = &deployed.module;
    let status = if deployed.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "name": module.name,
            "version": module.version,
            "kind": module.kind,
            "status": module.progress().status,
        })),
    )
        .into_response())
}

pub async fn list(State(app): State<AppState>) -> Json<Value> {
    let head = app.modules.head();
    let modules: Vec<Value> = app
        .modules
        .list()
        .iter()
        .map(|m| summary(m, head))
        .collect();
    Json(json!({ "projections": modules }))
}

pub async fn details(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let module = find(&app, &name)?;
    let head = app.modules.head();
    let progress = module.progress();
    let mut value = summary(&module, head);
    let counters = &module.counters;
    value["head"] = head.into();
    value["deployed_at"] = module.deployed_at.clone().into();
    value["size_bytes"] = module.size_bytes.into();
    value["versions"] = json!([{
        "version": module.version,
        "deployed_at": module.deployed_at,
        "status": progress.status,
        "position": progress.checkpoint,
        "current": true,
    }]);
    value["fault"] = serde_json::to_value(&progress.fault).unwrap_or(Value::Null);
    value["counters"] = json!({
        "events_processed": counters.events.load(Ordering::Relaxed),
        "batches": counters.batches.load(Ordering::Relaxed),
        "busy_ms": counters.busy_micros.load(Ordering::Relaxed) / 1_000,
    });
    value["limits"] = json!({
        "memory_bytes": module.limits.memory_bytes,
        "call_timeout_ms": module.limits.call_timeout.as_millis() as u64,
        "max_state_bytes": module.limits.max_state_bytes,
        "log_bytes": module.limits.log_bytes,
    });
    Ok(Json(value))
}

pub async fn remove(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let modules = app.modules.clone();
    let target = name.clone();
    let removed = tokio::task::spawn_blocking(move || modules.remove(&target))
        .await?
        .map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_failure",
                format!("removing the module failed: {err:#}"),
            )
        })?;
    if !removed {
        return Err(module_not_found(&name));
    }
    Ok(Json(json!({ "name": name, "removed": true })))
}

/// `after` and `wait_ms`, shared by every state query.
#[derive(Deserialize)]
pub struct Consistency {
    after: Option<String>,
    wait_ms: Option<String>,
}

/// Waits until `module` has processed the log up to `after`, if given.
async fn caught_up(module: &DeployedModule, consistency: &Consistency) -> Result<(), ApiError> {
    let Some(after) = params::u64_param("after", consistency.after.as_deref())? else {
        return Ok(());
    };
    let wait_ms = params::u64_param("wait_ms", consistency.wait_ms.as_deref())?
        .unwrap_or(DEFAULT_WAIT_MS)
        .min(MAX_WAIT_MS);
    let mut progress = module.watch_progress();
    let reached = tokio::time::timeout(
        Duration::from_millis(wait_ms),
        progress.wait_for(|p| p.checkpoint > after || p.status == Status::Faulted),
    )
    .await;
    let current = module.progress();
    if current.checkpoint > after {
        return Ok(());
    }
    let why = match (reached, current.status) {
        (_, Status::Faulted) => {
            "the module is faulted and will not get there until it is fixed".to_owned()
        }
        _ => format!("it did not get there within {wait_ms} ms"),
    };
    Err(ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "not_caught_up",
        format!(
            "module {} has processed the log up to position {}, not past {after}: {why}",
            module.name, current.checkpoint
        ),
    )
    .with("position", current.checkpoint)
    .with(
        "status",
        serde_json::to_value(current.status).unwrap_or(Value::Null),
    ))
}

/// State bytes as JSON (by convention), or as a string if a module stores something else.
fn state_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| String::from_utf8_lossy(bytes).into())
}

fn require_kind(module: &DeployedModule, kind: ModuleKind) -> Result<(), ApiError> {
    if module.kind == kind {
        return Ok(());
    }
    let (what, instead) = match kind {
        ModuleKind::Reducer => ("per-stream state", "/state/{key} or /state?prefix="),
        ModuleKind::Projection => ("keys", "/streams/{stream}"),
    };
    Err(ApiError::bad_request(
        "wrong_module_kind",
        format!(
            "module {} is a {:?} and has no {what}; query {instead} instead",
            module.name, module.kind
        )
        .to_lowercase(),
    ))
}

fn storage_error(err: sled::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage_failure",
        format!("reading module state failed: {err}"),
    )
}

pub async fn stream_state(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Consistency>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, stream)) = path?;
    let Query(consistency) = query?;
    let stream = params::stream_name(&stream)?;
    let module = find(&app, &name)?;
    require_kind(&module, ModuleKind::Reducer)?;
    caught_up(&module, &consistency).await?;
    let state = module
        .state
        .stream_state(stream.as_str())
        .map_err(storage_error)?
        .ok_or_else(|| {
            ApiError::not_found(
                "stream_not_found",
                format!(
                    "module {name} has no state for stream {stream}: it has seen no event of it"
                ),
            )
        })?;
    Ok(Json(json!({
        "stream": stream.as_str(),
        "revision": state.revision,
        "state": state_json(&state.bytes),
    })))
}

pub async fn state_key(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Consistency>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, key)) = path?;
    let Query(consistency) = query?;
    let module = find(&app, &name)?;
    require_kind(&module, ModuleKind::Projection)?;
    caught_up(&module, &consistency).await?;
    let value = module
        .state
        .value(&key)
        .map_err(storage_error)?
        .ok_or_else(|| {
            ApiError::not_found("key_not_found", format!("module {name} has no key {key:?}"))
                .with("key", key.as_str())
        })?;
    Ok(Json(json!({ "key": key, "value": state_json(&value) })))
}

#[derive(Deserialize)]
pub struct ListStateParams {
    prefix: Option<String>,
    from: Option<String>,
    limit: Option<String>,
    #[serde(flatten)]
    consistency: Consistency,
}

pub async fn state_list(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListStateParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let Query(query) = query?;
    let limit = params::limit(query.limit.as_deref())?;
    let module = find(&app, &name)?;
    require_kind(&module, ModuleKind::Projection)?;
    caught_up(&module, &query.consistency).await?;
    let prefix = query.prefix.unwrap_or_default();
    let (items, next) = module
        .state
        .values(&prefix, query.from.as_deref(), limit)
        .map_err(storage_error)?;
    let items: Vec<Value> = items
        .iter()
        .map(|(key, value)| json!({ "key": key, "value": state_json(value) }))
        .collect();
    Ok(Json(json!({ "items": items, "next": next })))
}

#[derive(Deserialize)]
pub struct LogParams {
    limit: Option<String>,
}

pub async fn logs(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LogParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let Query(query) = query?;
    let limit = params::limit(query.limit.as_deref())?;
    let module = find(&app, &name)?;
    let (lines, dropped) = module.log.tail(limit);
    Ok(Json(
        json!({ "name": name, "lines": lines, "dropped": dropped }),
    ))
}
