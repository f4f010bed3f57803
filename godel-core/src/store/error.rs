//! Store errors: semantic variants that callers match on. Backend detail rides
//! in `source`, never in a string to parse.

use crate::InvalidInput;
use crate::ids::{KeyId, SessionId, TaskId};
use crate::task::TaskStatus;

/// A boxed error from a backend driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a store call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such task for this tenant.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// No such session for this tenant.
    #[error("session {0} not found")]
    SessionNotFound(SessionId),
    /// No such API key.
    #[error("key {0} not found")]
    KeyNotFound(KeyId),
    /// What was to be created exists already (e.g. a key with the same id or hash).
    #[error("{0} already exists")]
    Conflict(String),
    /// The caller's lease is stale (reclaimed, finished, or never valid); nothing was changed.
    #[error("lease on task {0} was lost")]
    LeaseLost(TaskId),
    /// The task's status does not allow the operation.
    #[error("cannot {action} task {task}: it is {from}")]
    InvalidTransition {
        /// The task.
        task: TaskId,
        /// Its status.
        from: TaskStatus,
        /// What was attempted (`cancel`, `purge`, `replay`, …).
        action: &'static str,
    },
    /// The request itself was invalid.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The store could not be opened (missing, unreadable or corrupt file, bad schema).
    #[error("cannot open {backend} store at {location}: {source}")]
    Open {
        /// The backend.
        backend: &'static str,
        /// The file or address, as given.
        location: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The backend is unreachable or overloaded; the call may succeed if retried.
    #[error("{backend} store unavailable: {source}")]
    Unavailable {
        /// The backend.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// Any other backend failure.
    #[error("{backend} store error: {source}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// True if retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}
