//! Module requests that reach a host not running the modules are forwarded to the host
//! that does, and its answer returned as it is.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// Marks a forwarded request, so that it is never forwarded twice.
const FORWARDED: HeaderName = HeaderName::from_static("x-refold-forwarded");
/// Largest request body forwarded (a module upload).
const MAX_FORWARD_BYTES: usize = 256 * 1024 * 1024;

/// Middleware: forwards `/projections…` requests when another host runs the modules.
pub async fn forward_module_requests(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(cluster) = app.cluster.as_ref() else {
        return next.run(request).await;
    };
    if !request.uri().path().starts_with("/projections")
        || request.headers().contains_key(&FORWARDED)
    {
        return next.run(request).await;
    }
    let Some(target) = cluster.forward_to() else {
        return next.run(request).await;
    };
    match forward(&target, cluster.id(), request).await {
        Ok(response) => response,
        Err(message) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "modules_moving",
            format!("the host running the modules ({target}) did not answer: {message}; retry in a few seconds"),
        )
        .into_response(),
    }
}

async fn forward(target: &str, me: &str, request: Request) -> Result<Response, String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(reqwest::Client::new);
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = axum::body::to_bytes(body, MAX_FORWARD_BYTES)
        .await
        .map_err(|err| err.to_string())?;
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|err| err.to_string())?;
    let mut outgoing = client
        .request(method, format!("http://{target}{path}"))
        .header(FORWARDED.as_str(), me)
        .body(body);
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
    Ok(response)
}
