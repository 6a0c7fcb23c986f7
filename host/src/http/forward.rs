//! Requests for modules and consumer groups that reach a host not running them are
//! forwarded to the host that does, and its answer returned as it is.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::{Duration, Instant};

use super::AppState;
use super::error::ApiError;
use crate::cluster::ModulesHome;

/// Marks a forwarded request, so that it is never forwarded twice.
const FORWARDED: HeaderName = HeaderName::from_static("x-refold-forwarded");
/// Largest request body forwarded (a module upload).
const MAX_FORWARD_BYTES: usize = 256 * 1024 * 1024;

/// How long a module request waits for the modules to have a home (the cluster starting,
/// or the modules moving after a host died) before it is answered 503.
const WAIT_FOR_HOME: Duration = Duration::from_secs(10);
/// How often it looks again meanwhile.
const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// Middleware: forwards `/projections…` requests when another host runs the modules, and
/// holds them for a while when no host does yet.
pub async fn forward_module_requests(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(cluster) = app.cluster.as_ref() else {
        return next.run(request).await;
    };
    if !is_hosted_path(request.uri().path())
        || request.headers().contains_key(&FORWARDED)
        || cluster.modules_home() == ModulesHome::Here
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_FORWARD_BYTES).await {
        Ok(body) => body,
        Err(err) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body could not be read: {err}"),
            )
            .into_response();
        }
    };
    let deadline = Instant::now() + WAIT_FOR_HOME;
    loop {
        let last_try = Instant::now() >= deadline;
        match cluster.modules_home() {
            ModulesHome::Here => {
                return next.run(Request::from_parts(parts, Body::from(body))).await;
            }
            ModulesHome::At(target) => match forward(&target, cluster.id(), &parts, &body).await {
                Ok((response, moving)) if last_try || !moving => return response,
                Ok(_) => {}
                Err(message) if last_try => {
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "modules_moving",
                        format!(
                            "the host running the modules ({target}) did not answer: \
                             {message}; retry in a few seconds"
                        ),
                    )
                    .into_response();
                }
                Err(_) => {}
            },
            // Nobody runs them: the handler answers `modules_moving`.
            ModulesHome::Unknown if last_try => {
                return next.run(Request::from_parts(parts, Body::from(body))).await;
            }
            ModulesHome::Unknown => {}
        }
        tokio::time::sleep(LOOK_AGAIN).await;
    }
}

/// Whether a path is served by the host running the modules and consumer groups.
fn is_hosted_path(path: &str) -> bool {
    ["/projections", "/subscriptions"].iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// A host's answer that its modules are not (or no longer) running there.
fn is_moving(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE
        && serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|answer| answer["error"]["code"] == "modules_moving")
}

async fn forward(
    target: &str,
    me: &str,
    parts: &axum::http::request::Parts,
    body: &axum::body::Bytes,
) -> Result<(Response, bool), String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(reqwest::Client::new);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|err| err.to_string())?;
    let mut outgoing = client
        .request(method, format!("http://{target}{path}"))
        .header(FORWARDED.as_str(), me)
        .body(body.clone());
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = outgoing.send().await.map_err(|err| err.to_string())?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers: Vec<(String, Vec<u8>)> = answer
        .headers()
        .iter()
        .filter(|(name, _)| {
            *name != reqwest::header::CONTENT_LENGTH && *name != reqwest::header::TRANSFER_ENCODING
        })
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let bytes = answer.bytes().await.map_err(|err| err.to_string())?;
    let moving = is_moving(status, &bytes);
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok((response, moving))
}
