//! Query-parameter parsing with messages that name the parameter and what it accepts.

use super::error::ApiError;
use crate::store::{Direction, EventFilter, StreamName};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;

pub fn stream_name(raw: &str) -> Result<StreamName, ApiError> {
    StreamName::parse(raw).map_err(|why| ApiError::bad_request("invalid_stream_name", why))
}

pub fn u64_param(name: &str, value: Option<&str>) -> Result<Option<u64>, ApiError> {
    value
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::invalid_query(format!("{name} must be a non-negative integer, not {v:?}"))
            })
        })
        .transpose()
}

pub fn limit(value: Option<&str>) -> Result<usize, ApiError> {
    let limit = u64_param("limit", value)?.unwrap_or(DEFAULT_LIMIT as u64);
    if limit == 0 || limit > MAX_LIMIT as u64 {
        return Err(ApiError::invalid_query(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {limit}"
        )));
    }
    Ok(limit as usize)
}

pub fn direction(value: Option<&str>) -> Result<Direction, ApiError> {
    match value {
        None | Some("forward") => Ok(Direction::Forward),
        Some("backward") => Ok(Direction::Backward),
        Some(other) => Err(ApiError::invalid_query(format!(
            "direction must be forward or backward, not {other:?}"
        ))),
    }
}

/// `type` and `category` filters: comma-separated lists.
pub fn filter(types: Option<&str>, categories: Option<&str>) -> EventFilter {
    let list = |v: Option<&str>| {
        v.map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    };
    EventFilter {
        event_types: list(types),
        categories: list(categories),
    }
}

/// An RFC 3339 time as microseconds since the Unix epoch.
pub fn timestamp_micros(name: &str, value: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_micros())
        .map_err(|_| {
            ApiError::invalid_query(format!(
                "{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z, not {value:?}"
            ))
        })
}
