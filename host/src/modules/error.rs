//! Why an operation on modules failed: each cause is its own variant, so that callers (the
//! HTTP layer) answer each with its own status and code.

use crate::engine::{GuestError, UploadError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A module name that breaks the naming rule.
    #[error("{0}")]
    InvalidName(String),
    /// Bytes that are not a usable component.
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("no module named {0:?} is deployed")]
    NotFound(String),
    #[error("module {0:?} has no version {1:?}")]
    VersionNotFound(String, String),
    /// `skip` when the module is not faulted at an event.
    #[error("{0}")]
    NotFaulted(String),
    /// The module changed under the operation (a new version, a reset, a removal): try it
    /// again.
    #[error("{0}")]
    Conflict(String),
    /// The operation needs another kind of module (history of a projection).
    #[error("{0}")]
    WrongKind(String),
    /// The guest failed while the host ran it on demand (a past-state query, a replay, a
    /// verify): a trap, a time or memory limit, an error result, a broken contract.
    #[error("{during}: {error}")]
    Guest {
        /// What the host was doing (`replaying stream account-1`).
        during: String,
        error: GuestError,
    },
    /// Reading or writing the log or module state failed.
    #[error("{0}")]
    Storage(#[from] StoreError),
    /// The host could not do its part (start a thread, cache compiled code).
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}
