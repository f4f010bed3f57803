//! The dispatcher's view of its agents: load, health, and the policy that
//! orders them. Pure bookkeeping under one mutex; it never awaits.
//!
//! **Invariant:** an agent's `load` equals the number of executions holding
//! one of its slots. Slots are taken by [`Scheduler::reserve`] in the
//! dispatcher and given back by [`Scheduler::release`] from a drop guard, so
//! every path (success, failure, timeout, cancel, panic) returns them.

use std::collections::HashMap;

use crate::agent::{Agent, AgentStatus};
use crate::engine::config::{AgentConfig, SchedulingPolicy};
use crate::ids::{AgentId, TenantId};
use crate::task::Task;
use crate::time::Timestamp;

/// Most affinity keys remembered; the oldest half is forgotten past this.
const AFFINITY_LIMIT: usize = 10_000;

#[derive(Debug)]
pub(crate) struct AgentState {
    pub(crate) config: AgentConfig,
    pub(crate) load: u32,
    /// Offline or error; `None` while healthy (idle or busy follows from load).
    pub(crate) down: Option<AgentStatus>,
    pub(crate) last_heartbeat: Option<Timestamp>,
    /// Deregistered: takes no new work and disappears once its load is zero.
    pub(crate) removing: bool,
    /// Where in the served tenants this agent starts its next claims: just
    /// after the last tenant it claimed for, so tenants take turns.
    pub(crate) next_tenant: usize,
}

impl AgentState {
    fn new(config: AgentConfig) -> Self {
        Self { config, load: 0, down: None, last_heartbeat: None, removing: false, next_tenant: 0 }
    }

    pub(crate) fn status(&self) -> AgentStatus {
        match self.down {
            Some(status) => status,
            None if self.load >= self.config.max_capacity => AgentStatus::Busy,
            None => AgentStatus::Idle,
        }
    }

    /// Slots it may claim for now: none while down or draining.
    pub(crate) fn free(&self) -> u32 {
        if self.down.is_some() || self.removing { 0 } else { self.config.max_capacity.saturating_sub(self.load) }
    }

    fn can_run(&self, task: &Task) -> bool {
        self.free() > 0
            && self.config.tenant.as_ref().is_none_or(|t| *t == task.tenant)
            && task.capabilities.iter().all(|c| self.config.capabilities.contains(c))
    }

    pub(crate) fn snapshot(&self, tenant: &TenantId) -> Agent {
        Agent {
            id: self.config.id.clone(),
            tenant: self.config.tenant.as_ref().unwrap_or(tenant).clone(),
            name: self.config.name.clone(),
            kind: self.config.kind,
            capabilities: self.config.capabilities.clone(),
            max_capacity: self.config.max_capacity,
            current_load: self.load,
            status: self.status(),
            last_heartbeat: self.last_heartbeat,
            region: self.config.region.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    pub(crate) policy: SchedulingPolicy,
    pub(crate) agents: Vec<AgentState>,
    next: usize,
    affinity: HashMap<String, (AgentId, u64)>,
    affinity_clock: u64,
    /// This node's region: its agents there claim before the others.
    region: Option<String>,
}

impl Scheduler {
    pub(crate) fn new(policy: SchedulingPolicy, agents: Vec<AgentConfig>) -> Self {
        let agents = agents.into_iter().map(AgentState::new).collect();
        Self { policy, agents, next: 0, affinity: HashMap::new(), affinity_clock: 0, region: None }
    }

    /// Prefers agents in `region`: they claim first, the others get what they leave.
    pub(crate) fn prefer_region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
    }

    /// Agents with free slots, in the order they should claim work: the
    /// policy's order of preference.
    pub(crate) fn claim_order(&mut self) -> Vec<(AgentId, u32)> {
        let mut order: Vec<usize> = (0..self.agents.len()).filter(|i| self.agents[*i].free() > 0).collect();
        match self.policy {
            SchedulingPolicy::LeastLoaded | SchedulingPolicy::SessionAffinity => {
                order.sort_by(|a, b| load_ratio(&self.agents[*a]).total_cmp(&load_ratio(&self.agents[*b])));
            }
            SchedulingPolicy::RoundRobin => {
                let n = self.agents.len();
                let start = self.next % n.max(1);
                order.sort_by_key(|i| (i + n - start) % n);
            }
            SchedulingPolicy::CapabilityMatch => {
                order.sort_by_key(|i| (self.agents[*i].config.capabilities.len(), self.agents[*i].load));
            }
        }
        if let Some(region) = &self.region {
            // Stable: the policy's order holds within each group.
            order.sort_by_key(|i| self.agents[*i].config.region.as_ref() != Some(region));
        }
        order.into_iter().map(|i| (self.agents[i].config.id.clone(), self.agents[i].free())).collect()
    }

    /// The agent that should run `task` claimed by `claimer`: under session
    /// affinity, the agent that ran the key's last task if it can take it now;
    /// else, for a task whose payload names a `region` the claimer is not in,
    /// the least-loaded agent of that region that can take it now (a
    /// preference: without one, the claimer runs it).
    pub(crate) fn pick(&self, task: &Task, claimer: &AgentId) -> AgentId {
        if self.policy == SchedulingPolicy::SessionAffinity {
            let preferred = task.affinity_key.as_ref().and_then(|k| self.affinity.get(k)).map(|(a, _)| a);
            if let Some(state) = preferred.and_then(|a| self.agent(a)).filter(|s| s.can_run(task)) {
                return state.config.id.clone();
            }
        }
        let wanted = task.payload.extra.get("region").and_then(serde_json::Value::as_str);
        let claimer_region = self.agent(claimer).and_then(|a| a.config.region.as_deref());
        if let Some(wanted) = wanted.filter(|w| claimer_region != Some(*w)) {
            let in_region = self
                .agents
                .iter()
                .filter(|s| s.config.region.as_deref() == Some(wanted) && s.can_run(task))
                .min_by(|a, b| load_ratio(a).total_cmp(&load_ratio(b)));
            if let Some(state) = in_region {
                return state.config.id.clone();
            }
        }
        claimer.clone()
    }

    /// Takes a slot on `agent` for `task`; returns the agent's config.
    pub(crate) fn reserve(&mut self, agent: &AgentId, task: &Task) -> Option<AgentConfig> {
        let i = self.agents.iter().position(|s| s.config.id == *agent)?;
        self.agents[i].load += 1;
        if self.policy == SchedulingPolicy::RoundRobin {
            self.next = i + 1;
        }
        if let Some(key) = &task.affinity_key {
            self.affinity_clock += 1;
            self.affinity.insert(key.clone(), (agent.clone(), self.affinity_clock));
            if self.affinity.len() > AFFINITY_LIMIT {
                let cutoff = self.affinity_clock - (AFFINITY_LIMIT as u64) / 2;
                self.affinity.retain(|_, (_, used)| *used > cutoff);
            }
        }
        Some(self.agents[i].config.clone())
    }

    /// Gives a slot back; a deregistered agent goes away with its last slot.
    pub(crate) fn release(&mut self, agent: &AgentId) {
        if let Some(state) = self.agents.iter_mut().find(|s| s.config.id == *agent) {
            debug_assert!(state.load > 0, "load of {agent} would go negative");
            state.load = state.load.saturating_sub(1);
        }
        self.agents.retain(|s| !(s.removing && s.load == 0));
    }

    /// Adds an agent; false if one with this id exists.
    pub(crate) fn add(&mut self, config: AgentConfig) -> bool {
        if self.agents.iter().any(|s| s.config.id == config.id) {
            return false;
        }
        self.agents.push(AgentState::new(config));
        true
    }

    /// Deregisters an agent: it takes no new work and is dropped once idle.
    /// Returns false if there is no such agent.
    pub(crate) fn remove(&mut self, agent: &AgentId) -> bool {
        let Some(state) = self.agent_mut(agent) else { return false };
        state.removing = true;
        self.agents.retain(|s| !(s.removing && s.load == 0));
        true
    }

    pub(crate) fn agent(&self, id: &AgentId) -> Option<&AgentState> {
        self.agents.iter().find(|s| s.config.id == *id)
    }

    pub(crate) fn agent_mut(&mut self, id: &AgentId) -> Option<&mut AgentState> {
        self.agents.iter_mut().find(|s| s.config.id == *id)
    }
}

fn load_ratio(state: &AgentState) -> f64 {
    f64::from(state.load) / f64::from(state.config.max_capacity.max(1))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::adapter::NoopAdapter;
    use crate::agent::AgentKind;
    use crate::task::NewTask;

    fn agent(id: &str, capacity: u32, caps: &[&str]) -> AgentConfig {
        AgentConfig::new(AgentId::new(id).unwrap(), AgentKind::Process, Arc::new(NoopAdapter))
            .capacity(capacity)
            .capabilities(caps.iter().copied())
    }

    fn task(affinity: Option<&str>, caps: &[&str]) -> Task {
        let mut new = NewTask::prompt("x");
        new.affinity_key = affinity.map(str::to_owned);
        new.capabilities = caps.iter().map(|c| (*c).to_owned()).collect();
        Task {
            id: crate::TaskId::new(),
            tenant: TenantId::default_tenant(),
            priority: new.priority,
            status: crate::TaskStatus::Assigned,
            payload: new.payload,
            capabilities: new.capabilities,
            affinity_key: new.affinity_key,
            idempotency_key: None,
            parent: None,
            attempt: 1,
            max_attempts: 3,
            timeout: None,
            run_at: Timestamp::EPOCH,
            agent: None,
            lease_expires_at: None,
            cancel_requested: false,
            result: None,
            error: None,
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
            started_at: None,
            completed_at: None,
            dead_lettered_at: None,
        }
    }

    fn ids(order: &[(AgentId, u32)]) -> Vec<&str> {
        order.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn least_loaded_prefers_the_emptiest_agent() {
        let mut s = Scheduler::new(SchedulingPolicy::LeastLoaded, vec![agent("a", 2, &[]), agent("b", 4, &[])]);
        s.reserve(&AgentId::new("a").unwrap(), &task(None, &[]));
        assert_eq!(ids(&s.claim_order()), ["b", "a"]);
        assert_eq!(s.claim_order()[1].1, 1);
        s.reserve(&AgentId::new("a").unwrap(), &task(None, &[]));
        assert_eq!(ids(&s.claim_order()), ["b"], "a full agent does not claim");
        s.release(&AgentId::new("a").unwrap());
        assert_eq!(s.agents[0].load, 1);
    }

    #[test]
    fn round_robin_rotates() {
        let mut s = Scheduler::new(
            SchedulingPolicy::RoundRobin,
            vec![agent("a", 9, &[]), agent("b", 9, &[]), agent("c", 9, &[])],
        );
        let mut firsts = Vec::new();
        for _ in 0..4 {
            let first = s.claim_order()[0].0.clone();
            s.reserve(&first, &task(None, &[]));
            firsts.push(first.to_string());
        }
        assert_eq!(firsts, ["a", "b", "c", "a"]);
    }

    #[test]
    fn capability_match_lets_generalists_claim_first() {
        let mut s = Scheduler::new(
            SchedulingPolicy::CapabilityMatch,
            vec![agent("gpu", 1, &["gpu", "rust"]), agent("plain", 1, &[])],
        );
        assert_eq!(ids(&s.claim_order()), ["plain", "gpu"]);
    }

    #[test]
    fn affinity_hands_work_to_the_last_agent_when_it_can_take_it() {
        let mut s =
            Scheduler::new(SchedulingPolicy::SessionAffinity, vec![agent("a", 1, &[]), agent("b", 2, &["rust"])]);
        let b = AgentId::new("b").unwrap();
        let a = AgentId::new("a").unwrap();
        s.reserve(&b, &task(Some("repo-1"), &[]));
        s.release(&b);
        assert_eq!(s.pick(&task(Some("repo-1"), &[]), &a), b);
        assert_eq!(s.pick(&task(Some("other"), &[]), &a), a);
        s.reserve(&b, &task(None, &[]));
        s.reserve(&b, &task(None, &[]));
        assert_eq!(s.pick(&task(Some("repo-1"), &[]), &a), a, "falls back when the preferred agent is full");
    }

    #[test]
    fn removed_agents_drain_then_disappear() {
        let mut s = Scheduler::new(SchedulingPolicy::LeastLoaded, vec![agent("a", 2, &[]), agent("b", 1, &[])]);
        let a = AgentId::new("a").unwrap();
        s.reserve(&a, &task(None, &[]));
        assert!(s.remove(&a));
        assert_eq!(ids(&s.claim_order()), ["b"], "a draining agent takes nothing new");
        assert!(s.agent(&a).is_some(), "still listed while it runs a task");
        s.release(&a);
        assert!(s.agent(&a).is_none());
        assert!(!s.remove(&a));
        assert!(s.add(agent("a", 1, &[])));
        assert!(!s.add(agent("a", 1, &[])), "ids are unique");
    }

    #[test]
    fn down_agents_get_nothing() {
        let mut s = Scheduler::new(SchedulingPolicy::LeastLoaded, vec![agent("a", 1, &[])]);
        s.agents[0].down = Some(AgentStatus::Offline);
        assert!(s.claim_order().is_empty());
        assert_eq!(s.agents[0].status(), AgentStatus::Offline);
    }

    fn in_region(config: AgentConfig, region: &str) -> AgentConfig {
        let mut config = config;
        config.region = Some(region.to_owned());
        config
    }

    #[test]
    fn agents_in_the_node_s_region_claim_first() {
        let agents =
            vec![in_region(agent("us", 4, &[]), "us"), in_region(agent("eu", 1, &[]), "eu"), agent("none", 9, &[])];
        let mut s = Scheduler::new(SchedulingPolicy::LeastLoaded, agents).prefer_region(Some("eu".into()));
        assert_eq!(ids(&s.claim_order()), ["eu", "us", "none"]);
        s.reserve(&AgentId::new("eu").unwrap(), &task(None, &[]));
        assert_eq!(ids(&s.claim_order()), ["us", "none"], "a full preferred agent leaves the work to the others");
    }

    #[test]
    fn a_task_s_region_is_a_preference() {
        let agents = vec![
            agent("plain", 4, &[]),
            in_region(agent("eu-1", 2, &["rust"]), "eu"),
            in_region(agent("eu-2", 2, &[]), "eu"),
        ];
        let mut s = Scheduler::new(SchedulingPolicy::LeastLoaded, agents);
        let plain = AgentId::new("plain").unwrap();
        let mut t = task(None, &[]);
        t.payload.extra.insert("region".into(), serde_json::json!("eu"));
        let first = s.pick(&t, &plain);
        assert!(first.as_str().starts_with("eu-"), "handed to an agent in the region: {first}");
        s.reserve(&AgentId::new("eu-1").unwrap(), &t);
        s.reserve(&AgentId::new("eu-1").unwrap(), &t);
        assert_eq!(s.pick(&t, &plain).as_str(), "eu-2", "the least-loaded one that can take it");
        s.reserve(&AgentId::new("eu-2").unwrap(), &t);
        s.reserve(&AgentId::new("eu-2").unwrap(), &t);
        assert_eq!(s.pick(&t, &plain), plain, "every eu agent is full: the claimer runs it");
        let mut rust = task(None, &["rust"]);
        rust.payload.extra.insert("region".into(), serde_json::json!("us"));
        assert_eq!(s.pick(&rust, &plain), plain, "no agent in the region: the claimer runs it");
    }

    #[test]
    fn a_task_is_never_handed_to_an_agent_bound_to_another_tenant() {
        let acme = TenantId::new("acme").unwrap();
        let agents = vec![agent("plain", 4, &[]), in_region(agent("eu", 4, &[]), "eu").only_tenant(acme.clone())];
        let s = Scheduler::new(SchedulingPolicy::LeastLoaded, agents);
        let plain = AgentId::new("plain").unwrap();
        let mut t = task(None, &[]);
        t.payload.extra.insert("region".into(), serde_json::json!("eu"));
        assert_eq!(s.pick(&t, &plain), plain, "the default tenant's task stays with the claimer");
        t.tenant = acme;
        assert_eq!(s.pick(&t, &plain).as_str(), "eu", "acme's task may go to acme's agent");
    }
}
