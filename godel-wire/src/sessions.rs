//! Sessions: an agent session as `/api/v1/sessions` shows it.

use godel_core::{SessionId, SessionState, TaskId, Timestamp};
use serde::{Deserialize, Serialize};

/// An agent session.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Session {
    /// Its id.
    #[serde(with = "crate::text")]
    pub id: SessionId,
    /// Its agent.
    pub agent_id: String,
    /// The task it runs.
    #[serde(default, with = "crate::text::opt")]
    pub task_id: Option<TaskId>,
    /// Where it is in its life.
    pub state: SessionState,
    /// Why it ended, for the side exits.
    #[serde(default)]
    pub error: Option<String>,
    /// When it opened.
    #[serde(with = "crate::text")]
    pub created_at: Timestamp,
    /// When it last changed.
    #[serde(with = "crate::text")]
    pub updated_at: Timestamp,
}
