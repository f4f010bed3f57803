//! Agents: the things that run tasks (local processes, remote workers,
//! OpenClaw gateway sessions, OpenAI-compatible endpoints).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TenantId};
use crate::time::Timestamp;

/// Most tasks one agent may run at once (and sessions one gateway may
/// allow). Far above what one machine runs, and low enough that the free
/// slots of many agents add up without overflow.
pub const MAX_CAPACITY: u32 = 10_000;

/// The runtime behind an agent; each kind has its adapter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// A local process per task.
    Process,
    /// A remote `godel worker` connected over WebSocket.
    Worker,
    /// A session on an OpenClaw gateway.
    Openclaw,
    /// An OpenAI-compatible chat-completions endpoint.
    Http,
}

/// An agent's health and occupancy as the scheduler sees it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Connected with free capacity.
    Idle,
    /// Connected and at capacity.
    Busy,
    /// Stopped heartbeating; receives no work.
    Offline,
    /// Reported an error; receives no work until it recovers.
    Error,
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            AgentStatus::Idle => "idle",
            AgentStatus::Busy => "busy",
            AgentStatus::Offline => "offline",
            AgentStatus::Error => "error",
        })
    }
}

/// Something that can run tasks. Serializable so that nodes sharing a store
/// can list each other's agents (see [`crate::store::Member`]).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Agent {
    /// Its id.
    pub id: AgentId,
    /// Its owner.
    pub tenant: TenantId,
    /// A display name.
    pub name: String,
    /// Its runtime.
    pub kind: AgentKind,
    /// What it can do, sorted; a task runs here only if it needs a subset of these.
    pub capabilities: Vec<String>,
    /// How many tasks it may run at once.
    pub max_capacity: u32,
    /// How many it runs now.
    pub current_load: u32,
    /// Health and occupancy.
    pub status: AgentStatus,
    /// When it last proved it was alive.
    pub last_heartbeat: Option<Timestamp>,
    /// Where it runs, for region-aware routing.
    pub region: Option<String>,
}

impl Agent {
    /// True if the agent has every capability in `required`.
    pub fn has_capabilities(&self, required: &[String]) -> bool {
        required.iter().all(|c| self.capabilities.contains(c))
    }

    /// Slots left before it is at capacity.
    pub fn free_capacity(&self) -> u32 {
        self.max_capacity.saturating_sub(self.current_load)
    }

    /// True if the scheduler may give it a task needing `required`.
    pub fn can_take(&self, required: &[String]) -> bool {
        matches!(self.status, AgentStatus::Idle | AgentStatus::Busy)
            && self.free_capacity() > 0
            && self.has_capabilities(required)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility_needs_capabilities_capacity_and_health() {
        let mut agent = Agent {
            id: AgentId::new("a1").unwrap(),
            tenant: TenantId::default_tenant(),
            name: "a1".into(),
            kind: AgentKind::Process,
            capabilities: vec!["git".into(), "rust".into()],
            max_capacity: 1,
            current_load: 0,
            status: AgentStatus::Idle,
            last_heartbeat: None,
            region: None,
        };
        assert!(agent.can_take(&["rust".into()]));
        assert!(!agent.can_take(&["python".into()]));
        agent.current_load = 1;
        assert!(!agent.can_take(&[]));
        agent.current_load = 0;
        agent.status = AgentStatus::Offline;
        assert!(!agent.can_take(&[]));
    }
}
