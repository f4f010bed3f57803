//! What the orchestrator's commands report: [`EngineError`], one variant per
//! meaning, so that a caller (the server mapping errors to statuses, the CLI
//! choosing an exit code) matches on what happened instead of reading
//! messages. A store failure the engine gives no meaning of its own rides in
//! [`EngineError::Store`]; the store's not-found, invalid-transition and
//! invalid-input errors are lifted to the engine's variants.

use crate::InvalidInput;
use crate::ids::{AgentId, SessionId, TaskId, TenantId};
use crate::money::Micros;
use crate::session::SessionState;
use crate::store::StoreError;
use crate::task::TaskStatus;

/// Why an orchestrator command did nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No such task for the engine's tenant.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// No such session for the engine's tenant.
    #[error("session {0} not found")]
    SessionNotFound(SessionId),
    /// No agent with this id is registered on this engine.
    #[error("no agent {0} is registered")]
    AgentNotFound(AgentId),
    /// An agent with this id is already registered on this engine.
    #[error("an agent {0} is already registered")]
    AgentExists(AgentId),
    /// The task's status does not allow the command.
    #[error("cannot {action} task {task}: it is {from}")]
    InvalidTransition {
        /// The task.
        task: TaskId,
        /// Its status.
        from: TaskStatus,
        /// What was attempted (`cancel`, `purge`, `replay`, …).
        action: &'static str,
    },
    /// A dead-letter replay named a task that is not dead-lettered.
    #[error("task {task} is {status}, not dead-lettered")]
    NotDeadLettered {
        /// The task.
        task: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// The session has already ended: there is nothing to terminate.
    #[error("session {session} is {state}, nothing to terminate")]
    SessionEnded {
        /// The session.
        session: SessionId,
        /// Its final state.
        state: SessionState,
    },
    /// The tenant's spend this period has reached its hard budget: new tasks
    /// are refused (tasks already queued still run).
    #[error(
        "tenant {tenant} has spent {} of its hard budget of {} for {period}; new tasks are refused until the budget is raised or the period ends",
        crate::money::format_micros(*spent),
        crate::money::format_micros(*limit)
    )]
    BudgetExceeded {
        /// Whose budget.
        tenant: TenantId,
        /// The period (UTC month, e.g. `2026-11`).
        period: String,
        /// Spent so far in the period, in micros.
        spent: Micros,
        /// The hard limit, in micros.
        limit: Micros,
    },
    /// The command itself was invalid; names the field.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The store failed in a way the engine gives no meaning of its own
    /// (unavailable, a lost lease, a backend error).
    #[error(transparent)]
    Store(StoreError),
}

impl EngineError {
    /// True if retrying the same command later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Store(e) if e.is_retryable())
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(task) => EngineError::TaskNotFound(task),
            StoreError::SessionNotFound(session) => EngineError::SessionNotFound(session),
            StoreError::InvalidTransition { task, from, action } => {
                EngineError::InvalidTransition { task, from, action }
            }
            StoreError::InvalidInput(e) => EngineError::InvalidInput(e),
            other => EngineError::Store(other),
        }
    }
}
