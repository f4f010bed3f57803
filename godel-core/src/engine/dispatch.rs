//! Dispatch: claims ready tasks for every agent with free slots, in the
//! scheduling policy's order, and starts one execution per claim. The run loop
//! calls it on every wake-up (a submit, a freed slot, a replay, a cluster
//! `Wake`) and on the slow poll that catches scheduled tasks.
//!
//! Claims are per tenant (the store's walls). An agent tries the served
//! tenants in turn, starting after the last one it claimed for, and moves to
//! the next while it has free slots, so a tenant with a long backlog and one
//! with a single ready task alternate. With one tenant that is one claim per
//! agent, as it always was. An agent bound to one tenant (a remote worker,
//! by its credential) claims for that tenant only; adding it serves it.

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::engine::execute::Execution;
use crate::engine::scheduler::AgentState;
use crate::engine::{Control, Orchestrator, Running};
use crate::event::EventKind;
use crate::store::ClaimRequest;

impl Orchestrator {
    /// Claims work for every agent with free slots, in the policy's order,
    /// until slots or ready tasks run out.
    pub(crate) async fn dispatch(&self, executions: &mut JoinSet<()>) {
        let inner = &self.inner;
        let tenants = inner.claimable().await;
        if tenants.is_empty() {
            return;
        }
        loop {
            let order = inner.lock_scheduler().claim_order();
            let mut progress = false;
            for (claimer, _) in order {
                // Recomputed per agent: an affinity hand-off may have used this agent's slot.
                let Some((mut free, capabilities, first, only)) = inner.lock_scheduler().agent(&claimer).map(|a| {
                    (claimable_slots(a), a.config.capabilities.clone(), a.next_tenant, a.config.tenant.clone())
                }) else {
                    continue;
                };
                // A bound tenant is claimed for once it is served (its stale sessions closed).
                let tenants = match &only {
                    Some(tenant) => match tenants.iter().find(|t| *t == tenant) {
                        Some(tenant) => std::slice::from_ref(tenant),
                        None => continue,
                    },
                    None => &tenants[..],
                };
                let mut request = ClaimRequest {
                    tenant: tenants[first % tenants.len()].clone(),
                    agent: claimer.clone(),
                    capabilities,
                    limit: 0,
                    lease_for: inner.config.lease,
                };
                let mut served = None;
                for turn in 0..tenants.len() {
                    if free == 0 {
                        break;
                    }
                    let i = (first + turn) % tenants.len();
                    if turn > 0 {
                        request.tenant = tenants[i].clone();
                    }
                    request.limit = free as usize;
                    let claims = match inner.store.claim_or_quarantine(&request, inner.clock.now()).await {
                        Ok(claimed) => {
                            for q in claimed.quarantined {
                                inner.publish_for(
                                    &request.tenant,
                                    EventKind::TaskQuarantined { task: q.id, error: q.error },
                                );
                            }
                            claimed.claims
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, tenant = %request.tenant, "claim failed; retrying on the next poll");
                            return;
                        }
                    };
                    if claims.is_empty() {
                        continue;
                    }
                    progress = true;
                    served = Some(i);
                    for claim in claims {
                        let (agent, control) = {
                            let mut scheduler = inner.lock_scheduler();
                            let target = scheduler.pick(&claim.task, &claimer);
                            let agent = scheduler.reserve(&target, &claim.task).expect("picked agent exists");
                            let (tx, rx) = watch::channel(Control::Run);
                            inner.lock_running().insert(claim.task.id, Running { agent: target, control: tx });
                            (agent, rx)
                        };
                        let execution = Execution::new(self.inner.clone(), agent, claim, control);
                        executions.spawn(execution.run());
                    }
                    free = inner.lock_scheduler().agent(&claimer).map_or(0, claimable_slots);
                }
                if let Some(i) = served.filter(|_| tenants.len() > 1)
                    && let Some(state) = inner.lock_scheduler().agent_mut(&claimer)
                {
                    state.next_tenant = i + 1;
                }
            }
            if !progress {
                return;
            }
        }
    }
}

/// Slots `state` may claim for now.
fn claimable_slots(state: &AgentState) -> u32 {
    if state.down.is_some() { 0 } else { state.config.max_capacity.saturating_sub(state.load) }
}
