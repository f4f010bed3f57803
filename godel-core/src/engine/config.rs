//! Engine and agent configuration, validated once when the orchestrator is built.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::InvalidInput;
use crate::adapter::Adapter;
use crate::agent::{AgentKind, MAX_CAPACITY};
use crate::engine::budget::Budgets;
use crate::ids::{AgentId, TenantId};
use crate::retry::Backoff;
use crate::task::{validate_capability, validate_text, validate_timeout};

/// How the dispatcher picks among agents that could run a task.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum SchedulingPolicy {
    /// The agent with the lowest load relative to its capacity.
    #[default]
    LeastLoaded,
    /// Agents in turn.
    RoundRobin,
    /// The agent with the fewest capabilities beyond what the work needs,
    /// keeping specialists free for the tasks only they can run.
    CapabilityMatch,
    /// Tasks with the same affinity key go to the agent that ran the last one
    /// when it is free; least-loaded otherwise.
    SessionAffinity,
}

impl SchedulingPolicy {
    /// The kebab-case name used in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            SchedulingPolicy::LeastLoaded => "least-loaded",
            SchedulingPolicy::RoundRobin => "round-robin",
            SchedulingPolicy::CapabilityMatch => "capability-match",
            SchedulingPolicy::SessionAffinity => "session-affinity",
        }
    }
}

impl fmt::Display for SchedulingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for SchedulingPolicy {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        [Self::LeastLoaded, Self::RoundRobin, Self::CapabilityMatch, Self::SessionAffinity]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                InvalidInput::new(
                    "policy",
                    format!("expected least-loaded, round-robin, capability-match or session-affinity; got {s:?}"),
                )
            })
    }
}

/// One agent the orchestrator dispatches to.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Its id (unique within the orchestrator).
    pub id: AgentId,
    /// A display name.
    pub name: String,
    /// Its runtime kind.
    pub kind: AgentKind,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// How many tasks it runs at once.
    pub max_capacity: u32,
    /// Timeout for tasks that do not set their own.
    pub default_timeout: Option<Duration>,
    /// Where it runs.
    pub region: Option<String>,
    /// The only tenant whose tasks it runs (a remote worker's, from its
    /// credential); `None` runs the tasks of every tenant the orchestrator
    /// serves.
    pub tenant: Option<TenantId>,
    /// The runtime behind it.
    pub adapter: Arc<dyn Adapter>,
}

impl AgentConfig {
    /// An agent with capacity 1 and no capabilities.
    pub fn new(id: AgentId, kind: AgentKind, adapter: Arc<dyn Adapter>) -> Self {
        Self {
            name: id.to_string(),
            id,
            kind,
            capabilities: Vec::new(),
            max_capacity: 1,
            default_timeout: None,
            region: None,
            tenant: None,
            adapter,
        }
    }

    /// Sets the capacity.
    #[must_use]
    pub fn capacity(mut self, max: u32) -> Self {
        self.max_capacity = max;
        self
    }

    /// Adds capabilities.
    #[must_use]
    pub fn capabilities<I: IntoIterator<Item = S>, S: Into<String>>(mut self, caps: I) -> Self {
        self.capabilities.extend(caps.into_iter().map(Into::into));
        self
    }

    /// Runs only `tenant`'s tasks.
    #[must_use]
    pub fn only_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Sets the default timeout.
    #[must_use]
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    pub(crate) fn validate(&mut self) -> Result<(), InvalidInput> {
        if !(1..=MAX_CAPACITY).contains(&self.max_capacity) {
            return Err(InvalidInput::new(
                "max_capacity",
                format!("agent {} needs a capacity of 1 to {MAX_CAPACITY}, got {}", self.id, self.max_capacity),
            ));
        }
        for cap in &self.capabilities {
            validate_capability(cap)?;
        }
        self.capabilities.sort();
        self.capabilities.dedup();
        if let Some(timeout) = self.default_timeout {
            validate_timeout("default_timeout", timeout)?;
        }
        validate_text("name", &self.name)?;
        if let Some(region) = &self.region {
            validate_text("region", region)?;
        }
        Ok(())
    }
}

/// The agent standing for an OpenClaw gateway: its owner (the server) adds
/// a gateway to the registry and registers this with the orchestrator.
#[cfg(feature = "openclaw")]
impl From<crate::adapter::openclaw::Gateway> for AgentConfig {
    fn from(gateway: crate::adapter::openclaw::Gateway) -> Self {
        let mut agent = AgentConfig::new(gateway.agent, AgentKind::Openclaw, gateway.adapter)
            .capacity(gateway.capacity)
            .capabilities(gateway.capabilities);
        agent.name = gateway.name;
        agent.region = gateway.region;
        agent
    }
}

/// How the engine behaves. The defaults suit a local machine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The tenant whose queue this orchestrator serves.
    pub tenant: TenantId,
    /// How agents are picked.
    pub policy: SchedulingPolicy,
    /// How long a claim's lease lasts without a heartbeat.
    pub lease: Duration,
    /// How often a running task renews its lease (and learns of cancels made elsewhere).
    pub heartbeat_interval: Duration,
    /// The fallback poll: picks up scheduled tasks and submits from other processes.
    pub poll_interval: Duration,
    /// How often lapsed leases are swept.
    pub reclaim_interval: Duration,
    /// Delay before each retry.
    pub backoff: Backoff,
    /// How long a cancelled run may take to stop before it is killed.
    pub kill_grace: Duration,
    /// How long shutdown waits for running tasks before aborting and releasing them.
    pub shutdown_grace: Duration,
    /// Output kept per attempt; beyond it output is dropped and the truncation noted.
    pub max_output_bytes: usize,
    /// How often agents are health-checked.
    pub agent_health_interval: Duration,
    /// An agent without a successful heartbeat for this long is offline.
    pub agent_offline_after: Duration,
    /// Timeout for tasks that set none, when their agent sets none either.
    pub default_timeout: Option<Duration>,
    /// Spending limits per tenant (see `engine/budget.rs`); none by default.
    pub budgets: Budgets,
    /// This node's name in the cluster registry (agents it announces carry
    /// it). Defaults to `<hostname>-<pid>`.
    pub node: String,
    /// This node's region: its agents in that region claim work before the
    /// others (a preference, not a requirement; see `engine/scheduler.rs`).
    pub region: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            tenant: TenantId::default_tenant(),
            policy: SchedulingPolicy::default(),
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            reclaim_interval: Duration::from_secs(5),
            backoff: Backoff::default(),
            kill_grace: Duration::from_secs(3),
            shutdown_grace: Duration::from_secs(10),
            max_output_bytes: 1 << 20,
            agent_health_interval: Duration::from_secs(5),
            agent_offline_after: Duration::from_secs(30),
            default_timeout: None,
            budgets: Budgets::default(),
            node: default_node_name(),
            region: None,
        }
    }
}

/// `<hostname>-<pid>`: unique among the processes of a cluster.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

impl EngineConfig {
    /// Checks that durations are positive and that heartbeats come well
    /// within the lease; names the field that is wrong.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let positive = [
            ("lease", self.lease),
            ("heartbeat_interval", self.heartbeat_interval),
            ("poll_interval", self.poll_interval),
            ("reclaim_interval", self.reclaim_interval),
            ("agent_health_interval", self.agent_health_interval),
            ("agent_offline_after", self.agent_offline_after),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(InvalidInput::new(field, "expected a positive duration"));
            }
        }
        if self.node.is_empty() || self.node.len() > 128 {
            return Err(InvalidInput::new("node", format!("expected 1 to 128 bytes, got {}", self.node.len())));
        }
        self.budgets.validate()?;
        if self.heartbeat_interval >= self.lease {
            return Err(InvalidInput::new(
                "heartbeat_interval",
                format!("must be shorter than the lease ({:?}), or leases lapse while tasks run", self.lease),
            ));
        }
        Ok(())
    }
}
