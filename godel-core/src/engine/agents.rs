//! The orchestrator's agent commands: register, deregister (drain), change
//! capacity, record heartbeats, and the registry entries a node keeps in the
//! store beside its agents (e.g. the server's gateways). Each publishes its
//! event, wakes the dispatcher when capacity appeared, and tells the cluster
//! side to announce the change.

use std::time::Duration;

use serde_json::Value;

use crate::agent::{Agent, AgentStatus};
use crate::engine::{AgentConfig, ClusterAgent, EngineError, Orchestrator};
use crate::event::EventKind;
use crate::ids::{AgentId, TaskId};
use crate::store::{Member, MemberKind};
use crate::time::Timestamp;

/// A registry entry to write with [`Orchestrator::put_member`].
#[derive(Clone, PartialEq, Debug)]
pub struct MemberEntry {
    /// What it is.
    pub kind: MemberKind,
    /// Its id, unique per kind within the tenant.
    pub id: String,
    /// Its description.
    pub doc: Value,
    /// Kept until removed when `None`; else listed until `ttl` passes without another put.
    pub ttl: Option<Duration>,
}

impl Orchestrator {
    /// The agents with their load and status.
    pub fn agents(&self) -> Vec<Agent> {
        let tenant = &self.inner.config.tenant;
        self.inner.lock_scheduler().agents.iter().map(|a| a.snapshot(tenant)).collect()
    }

    /// Adds an agent while the engine runs. Its id must be new
    /// ([`EngineError::AgentExists`]).
    pub fn add_agent(&self, agent: AgentConfig) -> Result<Agent, EngineError> {
        let mut agent = agent;
        agent.validate()?;
        let id = agent.id.clone();
        let bound = agent.tenant.clone();
        let snapshot = {
            let mut scheduler = self.inner.lock_scheduler();
            if !scheduler.add(agent) {
                return Err(EngineError::AgentExists(id));
            }
            scheduler.agent(&id).expect("just added").snapshot(&self.inner.config.tenant)
        };
        if let Some(tenant) = &bound {
            self.inner.serve(tenant);
        }
        self.inner.publish(EventKind::AgentConnected { agent: id });
        self.inner.wake.notify_one();
        self.inner.agents_changed.notify_one();
        Ok(snapshot)
    }

    /// Deregisters (drains) an agent: it takes no new work, finishes what it
    /// runs, then disappears. Returns the agent as it was.
    pub fn remove_agent(&self, agent: &AgentId) -> Result<Agent, EngineError> {
        let snapshot = {
            let mut scheduler = self.inner.lock_scheduler();
            let snapshot = scheduler.agent(agent).map(|a| a.snapshot(&self.inner.config.tenant));
            match snapshot {
                Some(snapshot) if scheduler.remove(agent) => snapshot,
                _ => return Err(EngineError::AgentNotFound(agent.clone())),
            }
        };
        self.inner.publish(EventKind::AgentDisconnected { agent: agent.clone(), reason: "deregistered".into() });
        self.inner.agents_changed.notify_one();
        Ok(snapshot)
    }

    /// Every agent announced by the nodes sharing the store (this one
    /// included; see `engine/cluster.rs`), by node and agent id. Announcements
    /// are renewed every few seconds, so load and status may be that old.
    pub async fn cluster_agents(&self) -> Result<Vec<ClusterAgent>, EngineError> {
        Ok(self.inner.cluster_agents().await?)
    }

    /// Changes how many tasks `agent` may run at once (e.g. this node's share
    /// of a gateway that several nodes use). Lowering it takes effect for new
    /// work only: running tasks finish.
    pub fn set_capacity(&self, agent: &AgentId, max_capacity: u32) -> Result<(), EngineError> {
        {
            let mut scheduler = self.inner.lock_scheduler();
            let state = scheduler.agent_mut(agent).ok_or_else(|| EngineError::AgentNotFound(agent.clone()))?;
            state.config.max_capacity = max_capacity;
        }
        self.inner.wake.notify_one();
        self.inner.agents_changed.notify_one();
        Ok(())
    }

    /// Tasks running on `agent` in this process.
    pub fn active_tasks(&self, agent: &AgentId) -> Vec<TaskId> {
        self.inner.lock_running().iter().filter(|(_, r)| r.agent == *agent).map(|(id, _)| *id).collect()
    }

    /// Records a heartbeat from an agent (e.g. a remote worker): it counts as alive until
    /// `agent_offline_after` passes without another.
    pub fn agent_heartbeat(&self, agent: &AgentId) -> Result<(), EngineError> {
        let now = self.inner.clock.now();
        let revived = {
            let mut scheduler = self.inner.lock_scheduler();
            let state = scheduler.agent_mut(agent).ok_or_else(|| EngineError::AgentNotFound(agent.clone()))?;
            state.last_heartbeat = Some(now);
            let revived = state.down == Some(AgentStatus::Offline);
            if revived {
                state.down = None;
            }
            revived.then(|| state.status())
        };
        if let Some(status) = revived {
            self.inner.publish(EventKind::AgentConnected { agent: agent.clone() });
            self.inner.publish(EventKind::AgentStatus { agent: agent.clone(), status });
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Writes a registry entry of this node for the engine's tenant, stamped
    /// with the engine's clock.
    pub async fn put_member(&self, entry: MemberEntry) -> Result<Member, EngineError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let member = Member {
            tenant: inner.config.tenant.clone(),
            kind: entry.kind,
            id: entry.id,
            node: inner.config.node.clone(),
            doc: entry.doc,
            updated_at: now,
            expires_at: entry.ttl.map_or(Timestamp::from_millis(i64::MAX), |ttl| now + ttl),
        };
        inner.store.put_member(&member).await?;
        Ok(member)
    }

    /// Removes a registry entry of the engine's tenant; false if there was none.
    pub async fn remove_member(&self, kind: MemberKind, id: &str) -> Result<bool, EngineError> {
        Ok(self.inner.store.remove_member(&self.inner.config.tenant, kind, id).await?)
    }

    /// The current registry entries of `kind` for the engine's tenant, by the engine's clock.
    pub async fn members(&self, kind: MemberKind) -> Result<Vec<Member>, EngineError> {
        Ok(self.inner.store.members(&self.inner.config.tenant, kind, self.inner.clock.now()).await?)
    }
}
