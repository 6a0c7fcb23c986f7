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
use crate::modules::{DeployedModule, FaultPolicy, ModuleError, ModuleSettings, Status};

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

impl From<ModuleError> for ApiError {
    fn from(err: ModuleError) -> Self {
        match err {
            ModuleError::InvalidName(message) => {
                ApiError::bad_request("invalid_module_name", message)
            }
            ModuleError::Upload(UploadError::NotWasm(message)) => {
                ApiError::bad_request("not_wasm", message)
            }
            ModuleError::Upload(UploadError::Incompatible(message)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "incompatible_module",
                message,
            ),
            ModuleError::NotFound(name) => module_not_found(&name),
            ModuleError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "not_faulted", message)
            }
            ModuleError::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "module operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_failure",
                    format!("the module operation failed: {err:#}"),
                )
            }
        }
    }
}

/// Settings a deploy may carry as query parameters.
#[derive(Deserialize)]
pub struct DeployParams {
    memory_mb: Option<String>,
    timeout_ms: Option<String>,
    max_state_bytes: Option<String>,
    max_call_write_bytes: Option<String>,
    log_bytes: Option<String>,
    on_error: Option<String>,
}

impl DeployParams {
    fn settings(&self) -> Result<ModuleSettings, ApiError> {
        let positive = |name: &str, value: &Option<String>| -> Result<Option<u64>, ApiError> {
            match params::u64_param(name, value.as_deref())? {
                Some(0) => Err(ApiError::invalid_query(format!(
                    "{name} must be at least 1"
                ))),
                other => Ok(other),
            }
        };
        let on_error = match self.on_error.as_deref() {
            None | Some("halt") => FaultPolicy::Halt,
            Some("skip") => FaultPolicy::Skip,
            Some(other) => {
                return Err(ApiError::invalid_query(format!(
                    "on_error must be halt or skip, not {other:?}"
                )));
            }
        };
        Ok(ModuleSettings {
            memory_bytes: positive("memory_mb", &self.memory_mb)?.map(|mb| (mb as usize) << 20),
            call_timeout_ms: positive("timeout_ms", &self.timeout_ms)?,
            max_state_bytes: positive("max_state_bytes", &self.max_state_bytes)?
                .map(|b| b as usize),
            max_call_write_bytes: positive("max_call_write_bytes", &self.max_call_write_bytes)?
                .map(|b| b as usize),
            log_bytes: positive("log_bytes", &self.log_bytes)?.map(|b| b as usize),
            on_error,
        })
    }
}

pub async fn deploy(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DeployParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let Query(query) = query?;
    let settings = query.settings()?;
    let body = body?;
    let modules = app.modules.clone();
    let deployed =
        tokio::task::spawn_blocking(move || modules.deploy(&name, &body, settings)).await??;
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
    value["settings"] = serde_json::to_value(&module.settings).unwrap_or(Value::Null);
    value["counters"] = json!({
        "dead_letters": counters.dead_letters.load(Ordering::Relaxed),
        "events_processed": counters.events.load(Ordering::Relaxed),
        "batches": counters.batches.load(Ordering::Relaxed),
        "busy_ms": counters.busy_micros.load(Ordering::Relaxed) / 1_000,
    });
    value["limits"] = json!({
        "memory_bytes": module.limits.memory_bytes,
        "call_timeout_ms": module.limits.call_timeout.as_millis() as u64,
        "max_state_bytes": module.limits.max_state_bytes,
        "max_call_write_bytes": module.limits.max_call_write_bytes,
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
    tokio::task::spawn_blocking(move || modules.remove(&target)).await??;
    Ok(Json(json!({ "name": name, "removed": true })))
}

/// `POST /projections/{name}/{action}`: pause, resume, reset, skip, verify.
pub async fn action(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, action)) = path?;
    let modules = app.modules.clone();
    let head = modules.head();
    let target = name.clone();
    let outcome = tokio::task::spawn_blocking(move || -> Result<Value, ModuleError> {
        let module = match action.as_str() {
            "pause" => modules.pause(&target)?,
            "resume" => modules.resume(&target)?,
            "reset" => modules.reset(&target)?,
            "skip" => modules.skip(&target)?,
            "verify" => {
                let verification = modules.verify(&target)?;
                return Ok(serde_json::to_value(verification).unwrap_or_default());
            }
            other => {
                return Err(ModuleError::NotFound(format!("{target}/{other}")));
            }
        };
        Ok(summary(&module, head))
    })
    .await?;
    match outcome {
        Err(ModuleError::NotFound(what)) if what.contains('/') => Err(ApiError::not_found(
            "not_found",
            "unknown action; use pause, resume, reset, skip or verify",
        )),
        other => Ok(Json(other?)),
    }
}

#[derive(Deserialize)]
pub struct DeadLetterParams {
    from: Option<String>,
    limit: Option<String>,
}

pub async fn dead_letters(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let Query(query) = query?;
    let from = params::u64_param("from", query.from.as_deref())?.unwrap_or(0);
    let limit = params::limit(query.limit.as_deref())?;
    let module = find(&app, &name)?;
    let (letters, next) = module
        .state
        .dead_letters(from, limit)
        .map_err(storage_error)?;
    Ok(Json(json!({ "dead_letters": letters, "next": next })))
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
