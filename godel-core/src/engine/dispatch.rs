//! Dispatch: claims ready tasks for every agent with free slots, in the
//! scheduling policy's order, and starts one execution per claim. The run loop
//! calls it on every wake-up (a submit, a freed slot, a replay, a cluster
//! `Wake`) and on the slow poll that catches scheduled tasks.

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::engine::execute::Execution;
use crate::engine::{Control, Orchestrator, Running};
use crate::store::ClaimRequest;

impl Orchestrator {
    /// Claims work for every agent with free slots, in the policy's order,
    /// until slots or ready tasks run out.
    pub(crate) async fn dispatch(&self, executions: &mut JoinSet<()>) {
        let inner = &self.inner;
        loop {
            let order = inner.lock_scheduler().claim_order();
            let mut progress = false;
            for (claimer, _) in order {
                // Recomputed per agent: an affinity hand-off may have used this agent's slot.
                let free = inner
                    .lock_scheduler()
                    .agent(&claimer)
                    .map_or(0, |a| if a.down.is_some() { 0 } else { a.config.max_capacity.saturating_sub(a.load) });
                if free == 0 {
                    continue;
                }
                let capabilities = inner.lock_scheduler().agent(&claimer).map(|a| a.config.capabilities.clone());
                let request = ClaimRequest {
                    tenant: inner.config.tenant.clone(),
                    agent: claimer.clone(),
                    capabilities: capabilities.unwrap_or_default(),
                    limit: free as usize,
                    lease_for: inner.config.lease,
                };
                let claims = match inner.store.claim(&request, inner.clock.now()).await {
                    Ok(claims) => claims,
                    Err(e) => {
                        tracing::warn!(error = %e, "claim failed; retrying on the next poll");
                        return;
                    }
                };
                progress |= !claims.is_empty();
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
            }
            if !progress {
                return;
            }
        }
    }
}
