//! Typed events: every state change emits one, and subscribers pick them by
//! pattern (`task.*`, `agent.status`, `*`).

use std::fmt;
use std::str::FromStr;

use crate::InvalidInput;
use crate::agent::AgentStatus;
use crate::ids::{AgentId, SessionId, TaskId, TenantId};
use crate::money::Micros;
use crate::session::SessionState;
use crate::task::{Priority, TaskError};
use crate::time::Timestamp;

pub use crate::output::OutputStream;

/// What happened.
#[derive(Clone, PartialEq, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// `task.created`
    TaskCreated { task: TaskId, priority: Priority },
    /// `task.assigned`
    TaskAssigned { task: TaskId, priority: Priority, agent: AgentId, attempt: u32 },
    /// `task.started`
    TaskStarted { task: TaskId, session: SessionId, attempt: u32 },
    /// `task.output`
    TaskOutput { task: TaskId, attempt: u32, stream: OutputStream, data: String },
    /// `task.completed`
    TaskCompleted { task: TaskId, priority: Priority, attempt: u32 },
    /// `task.failed`: failed for good (not retryable).
    TaskFailed { task: TaskId, priority: Priority, attempt: u32, error: TaskError },
    /// `task.retrying`: an attempt failed and another is scheduled.
    TaskRetrying { task: TaskId, attempt: u32, run_at: Timestamp, error: TaskError },
    /// `task.dead_lettered`
    TaskDeadLettered { task: TaskId, priority: Priority, attempts: u32, error: Option<TaskError> },
    /// `task.cancelled`
    TaskCancelled { task: TaskId, priority: Priority },
    /// `task.replayed`: a finished task (dead-lettered, failed or cancelled)
    /// was put back in the queue with fresh attempts.
    TaskReplayed { task: TaskId, priority: Priority },
    /// `task.quarantined`: a claim or listing met a task row that does not
    /// decode and moved it to the quarantine. `task` is the id as stored.
    TaskQuarantined { task: String, error: String },
    /// `agent.connected`
    AgentConnected { agent: AgentId },
    /// `agent.disconnected`
    AgentDisconnected { agent: AgentId, reason: String },
    /// `agent.status`
    AgentStatus { agent: AgentId, status: AgentStatus },
    /// `session.opened`
    SessionOpened { session: SessionId, agent: AgentId },
    /// `session.state_changed`
    SessionStateChanged { session: SessionId, from: SessionState, to: SessionState },
    /// `session.closed`
    SessionClosed { session: SessionId, state: SessionState },
    /// `session.error`
    SessionError { session: SessionId, message: String },
    /// `system.<name>`, e.g. `system.started`.
    System { name: String, message: String },
    /// `budget.exceeded`: the tenant's spend in `period` (a UTC month, `2026-11`)
    /// reached its soft or (`hard: true`) hard limit; amounts in micros.
    BudgetExceeded { period: String, spent_micros: Micros, limit_micros: Micros, hard: bool },
}

impl EventKind {
    /// The dotted name subscribers match on, e.g. `task.created`.
    pub fn name(&self) -> String {
        let fixed = match self {
            EventKind::TaskCreated { .. } => "task.created",
            EventKind::TaskAssigned { .. } => "task.assigned",
            EventKind::TaskStarted { .. } => "task.started",
            EventKind::TaskOutput { .. } => "task.output",
            EventKind::TaskCompleted { .. } => "task.completed",
            EventKind::TaskFailed { .. } => "task.failed",
            EventKind::TaskRetrying { .. } => "task.retrying",
            EventKind::TaskDeadLettered { .. } => "task.dead_lettered",
            EventKind::TaskCancelled { .. } => "task.cancelled",
            EventKind::TaskReplayed { .. } => "task.replayed",
            EventKind::TaskQuarantined { .. } => "task.quarantined",
            EventKind::AgentConnected { .. } => "agent.connected",
            EventKind::AgentDisconnected { .. } => "agent.disconnected",
            EventKind::AgentStatus { .. } => "agent.status",
            EventKind::SessionOpened { .. } => "session.opened",
            EventKind::SessionStateChanged { .. } => "session.state_changed",
            EventKind::SessionClosed { .. } => "session.closed",
            EventKind::SessionError { .. } => "session.error",
            EventKind::BudgetExceeded { .. } => "budget.exceeded",
            EventKind::System { name, .. } => return format!("system.{name}"),
        };
        fixed.to_owned()
    }

    /// The task this event is about, if any.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            EventKind::TaskCreated { task, .. }
            | EventKind::TaskAssigned { task, .. }
            | EventKind::TaskStarted { task, .. }
            | EventKind::TaskOutput { task, .. }
            | EventKind::TaskCompleted { task, .. }
            | EventKind::TaskFailed { task, .. }
            | EventKind::TaskRetrying { task, .. }
            | EventKind::TaskDeadLettered { task, .. }
            | EventKind::TaskCancelled { task, .. }
            | EventKind::TaskReplayed { task, .. } => Some(*task),
            _ => None,
        }
    }
}

/// An event with its tenant and time. Serializable so that nodes sharing a
/// store can pass events to each other (see [`crate::store::ClusterMessage`]);
/// the API's wire shape lives in the server.
#[derive(Clone, PartialEq, Debug, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Whose event it is; subscribers only see their tenant's.
    pub tenant: TenantId,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
}

/// A subscription pattern: `*` (everything), `task.*` (a family) or an exact
/// name such as `task.completed`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventPattern(String);

impl EventPattern {
    /// Parses and validates a pattern.
    pub fn new(pattern: &str) -> Result<Self, InvalidInput> {
        let valid_segment = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        let ok = pattern == "*"
            || match pattern.split_once('.') {
                Some((family, "*")) => valid_segment(family),
                Some((family, name)) => valid_segment(family) && valid_segment(name),
                None => false,
            };
        if ok {
            Ok(Self(pattern.to_owned()))
        } else {
            Err(InvalidInput::new(
                "pattern",
                format!("expected `*`, `family.*` or `family.name` (e.g. `task.*`, `task.completed`); got {pattern:?}"),
            ))
        }
    }

    /// True if an event named `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventPattern({:?})", self.0)
    }
}

impl FromStr for EventPattern {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_families_and_names() {
        let all = EventPattern::new("*").unwrap();
        let tasks = EventPattern::new("task.*").unwrap();
        let done = EventPattern::new("task.completed").unwrap();
        assert!(all.matches("agent.status"));
        assert!(tasks.matches("task.output"));
        assert!(!tasks.matches("taskx.output"));
        assert!(!tasks.matches("agent.status"));
        assert!(done.matches("task.completed"));
        assert!(!done.matches("task.created"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in ["", "task", "task.", ".x", "Task.*", "task.**", "task.a.b"] {
            assert_eq!(EventPattern::new(bad).unwrap_err().field, "pattern", "{bad:?}");
        }
    }

    #[test]
    fn names_are_dotted() {
        let e = EventKind::System { name: "started".into(), message: String::new() };
        assert_eq!(e.name(), "system.started");
        let e = EventKind::TaskCancelled { task: TaskId::new(), priority: Priority::Low };
        assert_eq!(e.name(), "task.cancelled");
        assert!(EventPattern::new("task.*").unwrap().matches(&e.name()));
    }
}
