//! Modules over HTTP: deploy, inspect, remove (`/projections`, `/projections/{name}`), and
//! query their state, optionally after a given log position (read-your-writes).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::read_limited;
use super::error::ApiError;
use super::{AppState, blocking, params};
use crate::engine::UploadError;
use crate::modules::{
    Activation, DeployedModule, FaultPolicy, ModuleError, ModuleSettings, Role, VersionView,
};

fn module_not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "module_not_found",
        format!("no module named {name:?} is deployed"),
    )
    .with("name", name)
}

fn find(app: &AppState, name: &str) -> Result<Arc<DeployedModule>, ApiError> {
    app.modules()?
        .get(name)
        .ok_or_else(|| module_not_found(name))
}

/// One version, as `GET /projections/{name}` and `/versions` show it.
fn version_json(view: &VersionView, head: u64) -> Value {
    let module = &view.module;
    let progress = module.progress();
    let mut value = json!({
        "version": module.version,
        "role": view.role,
        "kind": module.kind,
        "status": progress.status,
        "position": progress.checkpoint,
        "lag": head.saturating_sub(progress.checkpoint),
        "deployed_at": module.deployed_at,
    });
    if matches!(view.role, Role::Current | Role::Candidate) {
        value["progress"] = serde_json::to_value(module.rebuild(head)).unwrap_or(Value::Null);
    }
    value
}

/// The summary every listing shows.
fn summary(module: &DeployedModule, head: u64) -> Value {
    let progress = module.progress();
    let mut value = json!({
        "name": module.name,
        "kind": module.kind,
        "contract": module.contract().as_str(),
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
            ModuleError::VersionNotFound(name, version) => ApiError::not_found(
                "version_not_found",
                format!(
                    "module {name} has no version {version:?}; GET /projections/{name}/versions lists them"
                ),
            ),
            ModuleError::NotFaulted(message) => {
                ApiError::new(StatusCode::CONFLICT, "not_faulted", message)
            }
            ModuleError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            ModuleError::WrongKind(message) => ApiError::bad_request("wrong_module_kind", message),
            ModuleError::Guest { during, error } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "guest_failed",
                format!("the module failed {during}: {}", error.message),
            )
            .with(
                "kind",
                serde_json::to_value(error.kind).unwrap_or(serde_json::Value::Null),
            )
            .with("guest_message", error.message),
            ModuleError::Storage(err) => err.into(),
            ModuleError::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "module operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
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
    activate: Option<String>,
}

impl DeployParams {
    fn activation(&self) -> Result<Activation, ApiError> {
        match self.activate.as_deref() {
            None | Some("auto") => Ok(Activation::Auto),
            Some("manual") => Ok(Activation::Manual),
            Some(other) => Err(ApiError::invalid_query(format!(
                "activate must be auto or manual, not {other:?}"
            ))),
        }
    }

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
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let Query(query) = query?;
    let settings = query.settings()?;
    let activation = query.activation()?;
    let body = read_limited(&headers, body, app.limits.max_module_bytes).await?;
    let modules = app.modules()?;
    let deployed = blocking(move || modules.deploy(&name, &body, settings, activation)).await?;
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
            "current": app.modules()?.get(&module.name).is_some_and(|c| c.version == module.version),
        })),
    )
        .into_response())
}

pub async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let registry = app.modules()?;
    let head = registry.head();
    let modules: Vec<Value> = registry.list().iter().map(|m| summary(m, head)).collect();
    Ok(Json(json!({ "projections": modules })))
}

pub async fn details(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let module = find(&app, &name)?;
    let head = app.modules()?.head();
    let progress = module.progress();
    let mut value = summary(&module, head);
    let counters = &module.counters;
    value["head"] = head.into();
    value["deployed_at"] = module.deployed_at.clone().into();
    value["size_bytes"] = module.size_bytes.into();
    let versions = app.modules()?.versions(&name)?;
    value["versions"] = versions.iter().map(|v| version_json(v, head)).collect();
    if let Some(candidate) = versions.iter().find(|v| v.role == Role::Candidate) {
        value["rebuild"] = version_json(candidate, head);
    }
    value["fault"] = serde_json::to_value(&progress.fault).unwrap_or(Value::Null);
    value["settings"] = serde_json::to_value(&module.settings).unwrap_or(Value::Null);
    value["counters"] = json!({
        "dead_letters": counters.dead_letters.load(Ordering::Relaxed),
        "events_processed": counters.events.load(Ordering::Relaxed),
        "batches": counters.batches.load(Ordering::Relaxed),
        "busy_ms": counters.busy_micros.load(Ordering::Relaxed) / 1_000,
    });
    if module.kind == crate::engine::ModuleKind::Processor {
        value["counters"]["emitted"] = counters.emitted.load(Ordering::Relaxed).into();
    }
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
    let modules = app.modules()?;
    let target = name.clone();
    blocking(move || modules.remove(&target)).await?;
    Ok(Json(json!({ "name": name, "removed": true })))
}

/// `POST /projections/{name}/{action}`: pause, resume, reset, skip, verify.
pub async fn action(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, action)) = path?;
    const ACTIONS: [&str; 5] = ["pause", "resume", "reset", "skip", "verify"];
    if !ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::not_found(
            "not_found",
            format!("unknown action {action:?}; use pause, resume, reset, skip or verify"),
        ));
    }
    let modules = app.modules()?;
    let head = modules.head();
    let outcome = tokio::task::spawn_blocking(move || -> Result<Value, ModuleError> {
        let module = match action.as_str() {
            "pause" => modules.pause(&name)?,
            "resume" => modules.resume(&name)?,
            "reset" => modules.reset(&name)?,
            "skip" => modules.skip(&name)?,
            _ => {
                let verification = modules.verify(&name)?;
                return Ok(serde_json::to_value(verification).unwrap_or_default());
            }
        };
        Ok(summary(&module, head))
    })
    .await?;
    Ok(Json(outcome?))
}

pub async fn versions(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let head = app.modules()?.head();
    let versions = app.modules()?.versions(&name)?;
    let list: Vec<Value> = versions.iter().map(|v| version_json(v, head)).collect();
    Ok(Json(json!({ "name": name, "versions": list })))
}

pub async fn activate(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, version)) = path?;
    let modules = app.modules()?;
    let head = modules.head();
    let target = name.clone();
    let module = blocking(move || modules.activate(&target, &version)).await?;
    Ok(Json(summary(&module, head)))
}

pub async fn diff(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, version)) = path?;
    let modules = app.modules()?;
    let diff = blocking(move || modules.diff(&name, &version)).await?;
    Ok(Json(serde_json::to_value(diff).unwrap_or_default()))
}

#[derive(Deserialize)]
pub struct ReplayParams {
    to: Option<String>,
}

/// `POST /projections/{name}/replay?to=<position or RFC 3339 time>`: a temporary read
/// model of the module up to that point, queryable with `version=<its id>`.
pub async fn replay(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ReplayParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let Query(query) = query?;
    let raw = query.to.ok_or_else(|| {
        ApiError::invalid_query("to is required: a log position or an RFC 3339 time")
    })?;
    let store = app.log();
    let to = match raw.parse::<u64>() {
        Ok(position) => position,
        Err(_) => {
            let micros = params::timestamp_micros("to", &raw)?;
            blocking(move || store.position_after_time(micros)).await?
        }
    };
    let modules = app.modules()?;
    let module = blocking(move || modules.replay(&name, to)).await?;
    let value = json!({
        "name": module.name,
        "version": module.version,
        "kind": module.kind,
        "position": module.state.checkpoint().unwrap_or(0),
        "expires_in_seconds": crate::modules::REPLAY_TTL.as_secs(),
    });
    Ok(Json(value))
}
