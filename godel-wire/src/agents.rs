//! Agents: an agent as `/api/v1/agents` shows it, and the body that
//! registers a local process agent.

use godel_core::{AgentKind, AgentStatus, Timestamp};
use serde::{Deserialize, Serialize};

/// An agent with its load.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Agent {
    /// Its id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Runtime kind.
    pub kind: AgentKind,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Slots.
    pub max_capacity: u32,
    /// Slots in use.
    pub current_load: u32,
    /// Health and occupancy.
    pub status: AgentStatus,
    /// Last sign of life.
    #[serde(default, with = "crate::text::opt")]
    pub last_heartbeat: Option<Timestamp>,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Tasks it runs now (on this node; agents of other nodes list none).
    #[serde(default)]
    pub active_tasks: Vec<String>,
    /// The server node that runs it (several servers may share a store).
    #[serde(default)]
    pub node: Option<String>,
}

/// A local process agent to register on the server: the body of
/// `POST /api/v1/agents`. The server refuses fields it does not know.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    /// Its id.
    pub id: String,
    /// Display name (default: the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Runtime kind; only `process` agents can be registered over the API.
    #[serde(default = "process_kind")]
    pub kind: String,
    /// What it can do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Slots.
    #[serde(default = "one")]
    pub capacity: u32,
    /// argv template for prompt tasks, e.g. `["claude", "-p", "{prompt}"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Timeout for tasks that set none, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_timeout_ms: Option<u64>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// A process agent with one slot and nothing else set.
impl Default for RegisterAgent {
    fn default() -> Self {
        Self {
            id: String::new(),
            name: None,
            kind: process_kind(),
            capabilities: Vec::new(),
            capacity: one(),
            command: None,
            workdir: None,
            default_timeout_ms: None,
            region: None,
        }
    }
}

fn process_kind() -> String {
    "process".to_owned()
}

fn one() -> u32 {
    1
}
