//! Request bodies read under a size limit.
//!
//! A body over the limit is refused with 413 `payload_too_large`, but first the rest of it is
//! read and thrown away (up to [`DRAIN_BYTES`] more, for at most [`DRAIN_TIME`]). A client
//! that writes its whole body before reading the answer then sees the 413 instead of a reset
//! connection, which is what closing a socket with unread data in it produces.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::BytesMut;
use futures::StreamExt;

use super::error::ApiError;

/// How much of an oversized body is read and discarded so that its sender gets the answer.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// How long an oversized body may take to be discarded.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads a whole request body of at most `limit` bytes.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > (limit + DRAIN_BYTES) as u64) {
        // Too large to be worth draining: the connection is closed after the answer.
        return Err(too_large(limit));
    }
    let mut chunks = body.into_data_stream();
    let mut buffer =
        BytesMut::with_capacity(declared.map_or(0, |len| len.min(limit as u64) as usize));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| {
            ApiError::bad_request(
                "invalid_body",
                format!("the request body could not be read: {err}"),
            )
        })?;
        if buffer.len() + chunk.len() > limit {
            let mut seen = buffer.len() + chunk.len();
            drop(buffer);
            let drain = async {
                while seen <= limit + DRAIN_BYTES {
                    match chunks.next().await {
                        Some(Ok(chunk)) => seen += chunk.len(),
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(too_large(limit));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than this server accepts ({limit} bytes)"),
    )
}
