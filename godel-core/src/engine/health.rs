//! Agent health: every `agent_health_interval` the run loop asks each
//! agent's adapter whether it is healthy; an agent without a successful
//! check for `agent_offline_after` goes offline and gets no work until it
//! recovers, and one whose check fails for good is in error.

use std::time::Duration;

use crate::adapter::AdapterError;
use crate::agent::AgentStatus;
use crate::engine::{AgentConfig, Orchestrator};
use crate::event::EventKind;

/// How long a health check may take before it counts as failed.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

impl Orchestrator {
    /// Health-checks every agent; one without a successful check for
    /// `agent_offline_after` goes offline and gets no work until it recovers.
    pub(crate) async fn check_agents(&self) {
        let inner = &self.inner;
        let agents: Vec<AgentConfig> = inner.lock_scheduler().agents.iter().map(|a| a.config.clone()).collect();
        for agent in agents {
            let healthy = match tokio::time::timeout(HEALTH_TIMEOUT, agent.adapter.health()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(AdapterError::transient("health check timed out")),
            };
            let now = inner.clock.now();
            let change = {
                let mut scheduler = inner.lock_scheduler();
                let Some(state) = scheduler.agent_mut(&agent.id) else { continue };
                let before = state.status();
                match &healthy {
                    Ok(()) => {
                        state.last_heartbeat = Some(now);
                        state.down = None;
                    }
                    Err(e) if !e.retryable => state.down = Some(AgentStatus::Error),
                    Err(_) => {
                        let stale = state
                            .last_heartbeat
                            .is_none_or(|t| now.saturating_since(t) >= inner.config.agent_offline_after);
                        if stale {
                            state.down = Some(AgentStatus::Offline);
                        }
                    }
                }
                let after = state.status();
                (before != after).then_some((before, after))
            };
            if let Err(e) = &healthy {
                tracing::warn!(agent = %agent.id, error = %e, "agent health check failed");
            }
            if let Some((before, after)) = change {
                tracing::info!(agent = %agent.id, from = %before, to = %after, "agent status changed");
                if after == AgentStatus::Offline {
                    let reason = healthy.err().map_or_else(|| "no heartbeat".to_owned(), |e| e.message);
                    inner.publish(EventKind::AgentDisconnected { agent: agent.id.clone(), reason });
                } else if matches!(before, AgentStatus::Offline | AgentStatus::Error) {
                    inner.publish(EventKind::AgentConnected { agent: agent.id.clone() });
                    inner.wake.notify_one();
                }
                inner.publish(EventKind::AgentStatus { agent: agent.id.clone(), status: after });
            }
        }
    }
}
