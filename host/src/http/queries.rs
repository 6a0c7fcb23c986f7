//! Reading what modules derived: reducer state per stream (now, or at a past revision or
//! time), projection keys, logs and dead letters. Every read takes `version=` (default: the
//! current version) and `after=<position>` with `wait_ms` (read-your-writes).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, blocking, params};
use crate::engine::ModuleKind;
use crate::modules::{DeployedModule, Point, Status};

const DEFAULT_WAIT_MS: u64 = 5_000;
const MAX_WAIT_MS: u64 = 60_000;

/// `version`, `after` and `wait_ms`, shared by every read.
#[derive(Deserialize)]
pub struct Consistency {
    version: Option<String>,
    after: Option<String>,
    wait_ms: Option<String>,
}

/// The addressed version of module `name`, once it has processed the log past `after`.
async fn version_caught_up(
    app: &AppState,
    name: &str,
    consistency: &Consistency,
) -> Result<Arc<DeployedModule>, ApiError> {
    let module = app
        .modules()?
        .resolve(name, consistency.version.as_deref())?;
    let Some(after) = params::u64_param("after", consistency.after.as_deref())? else {
        return Ok(module);
    };
    let wait_ms = params::u64_param("wait_ms", consistency.wait_ms.as_deref())?
        .unwrap_or(DEFAULT_WAIT_MS)
        .min(MAX_WAIT_MS);
    let mut progress = module.watch_progress();
    // `wait_for` answers with a read guard on the progress: it is dropped here, at once.
    // Held on, it would block the owner's next publish, and with it every later reader
    // (a waiting writer stops new readers), this one included: a deadlock.
    let _reached = tokio::time::timeout(
        Duration::from_millis(wait_ms),
        progress.wait_for(|p| p.checkpoint > after || p.status == Status::Faulted),
    )
    .await
    .is_ok_and(|reached| reached.is_ok());
    // Without an explicit version, a switch to a newer version may have happened while
    // waiting: read from whichever is current now if it is far enough.
    let module = match &consistency.version {
        None => app.modules()?.resolve(name, None)?,
        Some(_) => module,
    };
    let current = module.progress();
    if current.checkpoint > after {
        return Ok(module);
    }
    let why = match current.status {
        Status::Faulted => {
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

/// State bytes as JSON (by convention), or as a string if a module stored something else.
pub fn state_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| String::from_utf8_lossy(bytes).into())
}

/// A query of per-stream state (`Reducer`) or of keys (`Projection`, which processors
/// have too) must go to a module that has it.
fn require_kind(module: &DeployedModule, kind: ModuleKind) -> Result<(), ApiError> {
    if module.kind.has_key_value_state() == kind.has_key_value_state() {
        return Ok(());
    }
    let (what, instead) = if kind.has_key_value_state() {
        ("keys", "/streams/{stream}")
    } else {
        ("per-stream state", "/state/{key} or /state?prefix=")
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

#[derive(Deserialize)]
pub struct StreamStateParams {
    revision: Option<String>,
    at: Option<String>,
    #[serde(flatten)]
    consistency: Consistency,
}

pub async fn stream_state(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<StreamStateParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, stream)) = path?;
    let Query(query) = query?;
    let stream = params::stream_name(&stream)?;
    let module = version_caught_up(&app, &name, &query.consistency).await?;
    require_kind(&module, ModuleKind::Reducer)?;
    let point = match (
        params::u64_param("revision", query.revision.as_deref())?,
        &query.at,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_query("give revision or at, not both"));
        }
        (Some(revision), None) => Some(Point::Revision(revision)),
        (None, Some(at)) => Some(Point::At(params::timestamp_micros("at", at)?)),
        (None, None) => None,
    };
    let no_state = || {
        ApiError::not_found(
            "stream_not_found",
            format!(
                "module {name} has no state for stream {stream}: it has seen no event of it then"
            ),
        )
    };
    let Some(point) = point else {
        let (reader, target) = (module.clone(), stream.clone());
        let state = blocking(move || reader.state.stream_state(target.as_str()))
            .await?
            .ok_or_else(no_state)?;
        return Ok(Json(json!({
            "stream": stream.as_str(),
            "revision": state.revision,
            "state": state_json(&state.bytes),
        })));
    };
    let modules = app.modules()?;
    let version = module.version.clone();
    let target = stream.clone();
    let module_name = name.clone();
    let past =
        blocking(move || modules.stream_state_at(&module_name, Some(&version), &target, point))
            .await?
            .ok_or_else(no_state)?;
    Ok(Json(json!({
        "stream": stream.as_str(),
        "revision": past.revision,
        "state": state_json(&past.bytes),
        "replayed": past.replayed,
    })))
}

pub async fn state_key(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Consistency>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((name, key)) = path?;
    let Query(consistency) = query?;
    let module = version_caught_up(&app, &name, &consistency).await?;
    require_kind(&module, ModuleKind::Projection)?;
    let (reader, wanted) = (module.clone(), key.clone());
    let value = blocking(move || reader.state.value(&wanted))
        .await?
        .ok_or_else(|| {
            ApiError::not_found("key_not_found", format!("module {name} has no key {key:?}"))
                .with("key", key.as_str())
        })?;
    Ok(Json(json!({ "key": key, "value": state_json(&value) })))
}

/// `from`, `limit` and the consistency options, shared by the paged reads.
#[derive(Deserialize)]
pub struct PageParams {
    from: Option<String>,
    limit: Option<String>,
    #[serde(flatten)]
    consistency: Consistency,
}

/// A paged read of module `name`: the addressed version once caught up, the page size, and
/// the `from` given (unparsed: each read pages by its own kind of key).
async fn page_of(
    app: &AppState,
    path: Result<Path<String>, PathRejection>,
    page: &PageParams,
) -> Result<(String, Arc<DeployedModule>, usize), ApiError> {
    let Path(name) = path?;
    let limit = params::limit(page.limit.as_deref())?;
    let module = version_caught_up(app, &name, &page.consistency).await?;
    Ok((name, module, limit))
}

#[derive(Deserialize)]
pub struct ListStateParams {
    prefix: Option<String>,
    #[serde(flatten)]
    page: PageParams,
}

pub async fn state_list(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListStateParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let (_, module, limit) = page_of(&app, path, &query.page).await?;
    require_kind(&module, ModuleKind::Projection)?;
    let (prefix, from) = (query.prefix.unwrap_or_default(), query.page.from);
    let (items, next) =
        blocking(move || module.state.values(&prefix, from.as_deref(), limit)).await?;
    let items: Vec<Value> = items
        .iter()
        .map(|(key, value)| json!({ "key": key, "value": state_json(value) }))
        .collect();
    Ok(Json(json!({ "items": items, "next": next })))
}

pub async fn logs(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let from = params::u64_param("from", query.from.as_deref())?;
    let (name, module, limit) = page_of(&app, path, &query).await?;
    // Without `from`: the most recent lines. With it: the lines numbered from there on.
    let written = module.log.written();
    let from = from.unwrap_or_else(|| written.saturating_sub(limit as u64));
    let page = module.log.since(from, limit);
    let after = page.first + page.lines.len() as u64;
    let next = (after < page.written).then_some(after);
    Ok(Json(json!({
        "name": name,
        "version": module.version,
        "lines": page.lines,
        "first": page.first,
        "next": next,
        "written": page.written,
        "dropped": page.dropped,
    })))
}

pub async fn dead_letters(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let from = params::u64_param("from", query.from.as_deref())?.unwrap_or(0);
    let (_, module, limit) = page_of(&app, path, &query).await?;
    let (letters, next) = blocking(move || module.state.dead_letters(from, limit)).await?;
    Ok(Json(json!({ "dead_letters": letters, "next": next })))
}
