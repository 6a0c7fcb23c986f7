//! The vocabulary of deployed modules that the rest of Refold reads: what a module is doing
//! ([`Status`], [`Progress`], [`Fault`]), how it was deployed ([`ModuleSettings`],
//! [`FaultPolicy`]), what it has done ([`Counters`], [`Rebuild`]), and what its name may be.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::sandbox::LogLine;
use crate::engine::{GuestErrorKind, ModuleLimits};
use crate::store::GlobalPosition;

/// Now, as module records and faults show it: RFC 3339 in UTC, to the millisecond.
pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What a module is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Caught up with the log, and keeping up.
    Running,
    /// Catching up after a deploy or reset.
    Rebuilding,
    /// Stopped by an operator.
    Paused,
    /// Stopped by a failure; see its [`Fault`].
    Faulted,
}

impl Status {
    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Rebuilding => "rebuilding",
            Status::Paused => "paused",
            Status::Faulted => "faulted",
        }
    }
}

/// What a module does when an event fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultPolicy {
    /// Stop at the event, faulted, until an operator acts.
    #[default]
    Halt,
    /// Record the event as a dead letter and go on.
    Skip,
}

/// Per-module settings given at deploy time; unset limits take the server's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModuleSettings {
    pub memory_bytes: Option<usize>,
    pub call_timeout_ms: Option<u64>,
    pub max_state_bytes: Option<usize>,
    pub max_call_write_bytes: Option<usize>,
    pub log_bytes: Option<usize>,
    pub on_error: FaultPolicy,
}

impl ModuleSettings {
    pub fn limits(&self, defaults: &ModuleLimits) -> ModuleLimits {
        ModuleLimits {
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            table_elements: defaults.table_elements,
            call_timeout: self
                .call_timeout_ms
                .map_or(defaults.call_timeout, Duration::from_millis),
            max_state_bytes: self.max_state_bytes.unwrap_or(defaults.max_state_bytes),
            max_call_write_bytes: self
                .max_call_write_bytes
                .unwrap_or(defaults.max_call_write_bytes),
            log_bytes: self.log_bytes.unwrap_or(defaults.log_bytes),
            ..defaults.clone()
        }
    }
}

/// Where and why a module stopped.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// The global position of the event that failed (none if the module failed before any).
    pub position: Option<GlobalPosition>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub stream: Option<String>,
    pub kind: GuestErrorKind,
    /// The guest's message, or the host's account of the trap or limit.
    pub message: String,
    /// The last lines the guest printed.
    pub log_tail: Vec<LogLine>,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// A module's progress, published by its owner.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Every position below it is processed.
    pub checkpoint: GlobalPosition,
    pub status: Status,
    pub fault: Option<Fault>,
}

/// Work counters, for status and metrics.
#[derive(Default)]
pub struct Counters {
    pub events: AtomicU64,
    pub batches: AtomicU64,
    pub busy_micros: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Events a processor emitted and the store appended.
    pub emitted: AtomicU64,
    /// Time per batch handed to the guest.
    pub batch_duration: crate::metrics::Histogram,
}

/// How fast a version is catching up.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rebuild {
    /// Share of the log processed, 0–100.
    pub percent: f64,
    pub events_per_second: f64,
    /// Seconds until caught up at the current rate (none when unknown).
    pub eta_seconds: Option<f64>,
}

impl Rebuild {
    /// Progress from `from` to `checkpoint` in `seconds`, towards `head`.
    pub(super) fn measure(
        from: GlobalPosition,
        checkpoint: GlobalPosition,
        head: GlobalPosition,
        seconds: f64,
    ) -> Self {
        let rate = if seconds > 0.0 {
            checkpoint.saturating_sub(from) as f64 / seconds
        } else {
            0.0
        };
        let left = head.saturating_sub(checkpoint) as f64;
        Rebuild {
            percent: if head == 0 {
                100.0
            } else {
                (checkpoint.min(head) as f64 * 100.0 / head as f64 * 10.0).round() / 10.0
            },
            events_per_second: rate.round(),
            eta_seconds: if left == 0.0 {
                Some(0.0)
            } else if rate > 0.0 {
                Some((left / rate * 10.0).round() / 10.0)
            } else {
                None
            },
        }
    }
}

/// Checks a module name: 1–64 of `a-z 0-9 - _`, starting with a letter or digit.
///
/// # Errors
/// A sentence saying what is allowed.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "module name {name:?} is not valid: use 1 to 64 characters of a-z, 0-9, - and _, starting with a letter or digit"
        ))
    }
}
