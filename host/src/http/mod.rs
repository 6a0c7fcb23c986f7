//! The HTTP API (axum): routes, shared state, limits. Each file serves one part of the API;
//! all of them answer failures with [`error::ApiError`].

pub mod auth;
mod backup;
mod body;
mod console;
pub mod error;
mod events;
mod forward;
mod observe;
mod openapi;
mod params;
mod projections;
mod queries;
mod render;
mod routes;
mod subscribe;
mod subscriptions;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde_json::json;
use std::collections::BTreeMap;
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::groups::ConsumerGroups;
use crate::hosted::HostedSlot;
use crate::metrics::Metrics;
use crate::modules::ModuleRegistry;
use crate::store::{EventLog, EventStore};
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
    /// The modules and consumer groups, when this host runs them.
    pub hosted: Arc<HostedSlot>,
    /// Where this host listens (as other hosts reach it, in cluster mode).
    pub address: String,
    /// Cluster mode: this host's place in the cluster (`None` on a single node).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub limits: Limits,
    /// Who may do what; empty means authentication is off.
    pub tokens: Arc<auth::Tokens>,
    pub metrics: Arc<Metrics>,
    /// Built by [`router`] from the route table.
    pub openapi: Arc<serde_json::Value>,
    /// Turns `true` when the server begins shutting down, so that endless responses
    /// (subscriptions) end and graceful shutdown can complete.
    pub shutdown: watch::Receiver<bool>,
}

/// Runs `work` (a storage read or a module operation, which may block) on the blocking
/// pool, so that no async worker waits on a disk.
async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?.map_err(Into::into)
}

impl AppState {
    /// The log as readers see it: what every read and subscription depends on.
    pub fn log(&self) -> Arc<dyn EventLog> {
        self.store.clone()
    }

    /// The log once it holds every append acknowledged before this call (by any host, in
    /// cluster mode): what reads use, so that they see their own and others' writes.
    ///
    /// # Errors
    /// 503 when the log cannot be brought up to date (cluster mode).
    pub async fn synced_log(&self) -> Result<Arc<dyn EventLog>, ApiError> {
        self.store.sync().await?;
        Ok(self.log())
    }

    /// The module registry, if this host runs the modules now.
    ///
    /// # Errors
    /// 503 `modules_moving` while the modules move to another host (cluster mode).
    pub fn modules(&self) -> Result<Arc<ModuleRegistry>, ApiError> {
        self.hosted.modules().ok_or_else(moving)
    }

    /// The consumer groups, if this host runs them now.
    ///
    /// # Errors
    /// 503 `modules_moving` while they move to another host (cluster mode).
    pub fn groups(&self) -> Result<Arc<ConsumerGroups>, ApiError> {
        self.hosted
            .current()
            .map(|hosted| hosted.groups.clone())
            .ok_or_else(moving)
    }
}

fn moving() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "modules_moving",
        "the modules are moving to another host of the cluster; retry in a few seconds",
    )
}

/// The whole API, built from [`routes::table`].
pub fn router(state: AppState) -> Router {
    let table = routes::table();
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for (endpoint, handler) in &table {
        let guarded = handler.clone().route_layer(middleware::from_fn_with_state(
            (state.tokens.clone(), endpoint.access),
            auth::require,
        ));
        let merged = match by_path.remove(endpoint.path) {
            Some(existing) => existing.merge(guarded),
            None => guarded,
        };
        by_path.insert(endpoint.path, merged);
    }
    let endpoints: Vec<&routes::Endpoint> = table.iter().map(|(e, _)| e).collect();
    let state = AppState {
        openapi: Arc::new(openapi::document(&endpoints)),
        ..state
    };
    let mut router = Router::new();
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::forward_module_requests,
        ))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    // One span per request: its id, method and path; never its headers,
                    // which may carry a token.
                    TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                        let id = request
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!("request", id, method = %request.method(), path = %request.uri().path())
                    }),
                )
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

pub(crate) async fn health(State(app): State<AppState>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ModuleLimits, WasmEngine};
    use crate::store::{EventLog, SledStore, StoreConfig};
    use axum::body::Body;
    use axum::http::Request;
    use tower::Service;

    #[tokio::test]
    async fn an_append_after_the_store_closed_is_answered_503_shutting_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&StoreConfig::new(dir.path().join("store"))).unwrap());
        let engine = Arc::new(WasmEngine::new().unwrap());
        let modules = ModuleRegistry::open(
            engine,
            store.clone(),
            Some(store.clone()),
            store.clone(),
            dir.path().join("compiled"),
            ModuleLimits::default(),
            1,
        )
        .unwrap();
        let groups = ConsumerGroups::open(store.clone(), store.as_ref()).unwrap();
        let (_shutdown_tx, shutdown) = watch::channel(false);
        let mut app = router(AppState {
            store: store.clone(),
            hosted: Arc::new(HostedSlot::holding(crate::hosted::Hosted {
                modules,
                groups,
            })),
            address: "127.0.0.1:0".into(),
            cluster: None,
            limits: Limits::default(),
            tokens: Arc::default(),
            metrics: Arc::default(),
            openapi: Arc::default(),
            shutdown,
        });
        store.close();
        let request = Request::post("/streams/account-1")
            .body(Body::from(r#"{"type":"Deposited","data":{"amount":5}}"#))
            .unwrap();
        let response = app.call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "shutting_down", "{body}");
        assert_eq!(store.head(), 0, "nothing was written");
    }
}
