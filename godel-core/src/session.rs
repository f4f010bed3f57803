//! Agent sessions and their lifecycle, written as a transition table.
//!
//! An illegal transition is an error ([`InvalidSessionTransition`]), never a
//! silent overwrite.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, SessionId, TaskId, TenantId};
use crate::time::Timestamp;

/// Where a session is in its life.
///
/// The main path is `created -> initializing -> ready -> running -> completing
/// -> completed`. A running session whose task finished may go back to `ready`
/// to take the next task. The side exits `failed`, `cancelled` and `error` are
/// reachable from every live state, `timeout` from the states that wait on the
/// agent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Allocated, nothing started.
    Created,
    /// The adapter is starting it (spawning, connecting, handshaking).
    Initializing,
    /// Ready for a task.
    Ready,
    /// Running a task.
    Running,
    /// Wrapping up (collecting results, cleaning up).
    Completing,
    /// Closed normally. Terminal.
    Completed,
    /// Closed after its work failed. Terminal.
    Failed,
    /// Closed by a cancel. Terminal.
    Cancelled,
    /// Closed after a deadline passed. Terminal.
    Timeout,
    /// Closed after the adapter itself broke. Terminal.
    Error,
}

use SessionState::*;

/// Every legal `(from, to)` pair. Anything absent is illegal.
const TRANSITIONS: &[(SessionState, SessionState)] = &[
    (Created, Initializing),
    (Initializing, Ready),
    (Ready, Running),
    (Running, Ready),
    (Running, Completing),
    (Ready, Completing),
    (Completing, Completed),
    // Side exits.
    (Created, Cancelled),
    (Created, Error),
    (Initializing, Failed),
    (Initializing, Cancelled),
    (Initializing, Timeout),
    (Initializing, Error),
    (Ready, Failed),
    (Ready, Cancelled),
    (Ready, Error),
    (Running, Failed),
    (Running, Cancelled),
    (Running, Timeout),
    (Running, Error),
    (Completing, Failed),
    (Completing, Cancelled),
    (Completing, Timeout),
    (Completing, Error),
];

impl SessionState {
    /// Every state.
    pub const ALL: [SessionState; 10] =
        [Created, Initializing, Ready, Running, Completing, Completed, Failed, Cancelled, Timeout, Error];

    /// True if the table allows `self -> to`.
    pub fn can_transition_to(self, to: SessionState) -> bool {
        TRANSITIONS.contains(&(self, to))
    }

    /// True for states a session never leaves.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Completed | Failed | Cancelled | Timeout | Error)
    }

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Created => "created",
            Initializing => "initializing",
            Ready => "ready",
            Running => "running",
            Completing => "completing",
            Completed => "completed",
            Failed => "failed",
            Cancelled => "cancelled",
            Timeout => "timeout",
            Error => "error",
        }
    }
}

impl std::str::FromStr for SessionState {
    type Err = crate::InvalidInput;

    fn from_str(s: &str) -> Result<Self, crate::InvalidInput> {
        Self::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            crate::InvalidInput::new(
                "session state",
                format!("expected one of created, initializing, ready, running, completing, completed, failed, cancelled, timeout, error; got {s:?}"),
            )
        })
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A transition the lifecycle table does not allow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("session cannot go from {from} to {to}")]
pub struct InvalidSessionTransition {
    /// The state it was in.
    pub from: SessionState,
    /// The state that was asked for.
    pub to: SessionState,
}

/// One agent session executing work.
#[derive(Clone, PartialEq, Debug)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Its owner.
    pub tenant: TenantId,
    /// The agent it runs on.
    pub agent: AgentId,
    /// The task it runs now, if any.
    pub task: Option<TaskId>,
    /// Where it is in its life.
    pub state: SessionState,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// Why it ended, for the side exits.
    pub error: Option<String>,
}

impl Session {
    /// A new session in `created`.
    pub fn new(tenant: TenantId, agent: AgentId, now: Timestamp) -> Self {
        Self {
            id: SessionId::new(),
            tenant,
            agent,
            task: None,
            state: Created,
            created_at: now,
            updated_at: now,
            error: None,
        }
    }

    /// Moves to `to` if the table allows it; otherwise leaves the session as it was.
    pub fn transition(&mut self, to: SessionState, now: Timestamp) -> Result<SessionState, InvalidSessionTransition> {
        let from = self.state;
        if !from.can_transition_to(to) {
            return Err(InvalidSessionTransition { from, to });
        }
        self.state = to;
        self.updated_at = now;
        Ok(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_is_legal() {
        let mut s = Session::new(TenantId::default_tenant(), AgentId::new("a").unwrap(), Timestamp::EPOCH);
        for to in [Initializing, Ready, Running, Ready, Running, Completing, Completed] {
            s.transition(to, Timestamp::EPOCH).unwrap();
        }
        assert!(s.state.is_terminal());
    }

    #[test]
    fn illegal_transitions_leave_state_alone() {
        let mut s = Session::new(TenantId::default_tenant(), AgentId::new("a").unwrap(), Timestamp::EPOCH);
        assert_eq!(
            s.transition(Running, Timestamp::from_millis(5)),
            Err(InvalidSessionTransition { from: Created, to: Running })
        );
        assert_eq!(s.state, Created);
        assert_eq!(s.updated_at, Timestamp::EPOCH);
    }

    #[test]
    fn terminal_states_have_no_exits() {
        for from in SessionState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in SessionState::ALL {
                assert!(!from.can_transition_to(to), "{from} -> {to} should be illegal");
            }
        }
        for from in SessionState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            assert!(from.can_transition_to(Cancelled), "{from} must be cancellable");
            assert!(from.can_transition_to(Error), "{from} must be able to end in error");
        }
    }
}
