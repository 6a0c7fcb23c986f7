//! The HTTP API (axum): routes, shared state, limits. Each file serves one part of the API;
//! all of them answer failures with [`error::ApiError`].

pub mod error;
mod events;
mod params;
mod projections;
mod queries;
mod render;
mod subscribe;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;
use tokio::sync::watch;

use crate::modules::ModuleRegistry;
use crate::store::EventStore;
use error::ApiError;

/// Size limits on what clients may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most events in one append.
    pub max_events_per_append: usize,
    /// Largest single event: type + data + metadata, in bytes.
    pub max_event_bytes: usize,
    /// Largest module upload, in bytes (language runtimes such as Python's are tens of MiB).
    pub max_module_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_events_per_append: 10_000,
            max_event_bytes: 4 * 1024 * 1024,
            max_module_bytes: 128 * 1024 * 1024,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub modules: Arc<ModuleRegistry>,
    pub limits: Limits,
    /// Turns `true` when the server begins shutting down, so that endless responses
    /// (subscriptions) end and graceful shutdown can complete.
    pub shutdown: watch::Receiver<bool>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let module_limit = state.limits.max_module_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/streams", get(events::list_streams))
        .route(
            "/streams/{stream}",
            get(events::read_stream).post(events::append),
        )
        .route("/all", get(events::read_all))
        .route("/subscribe/all", get(subscribe::subscribe_all))
        .route(
            "/subscribe/streams/{stream}",
            get(subscribe::subscribe_stream),
        )
        .route("/projections", get(projections::list))
        .route(
            "/projections/{name}",
            put(projections::deploy)
                .get(projections::details)
                .delete(projections::remove)
                .layer(DefaultBodyLimit::max(module_limit)),
        )
        .route(
            "/projections/{name}/streams/{stream}",
            get(queries::stream_state),
        )
        .route("/projections/{name}/state", get(queries::state_list))
        .route("/projections/{name}/state/{*key}", get(queries::state_key))
        .route("/projections/{name}/logs", get(queries::logs))
        .route(
            "/projections/{name}/dead-letters",
            get(queries::dead_letters),
        )
        .route("/projections/{name}/versions", get(projections::versions))
        .route(
            "/projections/{name}/versions/{version}/activate",
            post(projections::activate),
        )
        .route(
            "/projections/{name}/versions/{version}/diff",
            get(projections::diff),
        )
        .route("/projections/{name}/replay", post(projections::replay))
        .route("/projections/{name}/{action}", post(projections::action))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn health(State(app): State<AppState>) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({ "status": "ok", "head": app.store.head() })),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "not_found",
        "no such route; see GET /openapi.json for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}
