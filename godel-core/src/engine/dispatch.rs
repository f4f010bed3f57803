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
use crate::engine::{Control, Inner, Orchestrator, Running};
use crate::event::EventKind;
use crate::store::{ClaimRequest, Lease};

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
                let Some((mut free, capabilities, first, only)) = inner
                    .lock_scheduler()
                    .agent(&claimer)
                    .map(|a| (a.free(), a.config.capabilities.clone(), a.next_tenant, a.config.tenant.clone()))
                else {
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
                        let placed = {
                            let mut scheduler = inner.lock_scheduler();
                            let target = scheduler.pick(&claim.task, &claimer);
                            // The claimer may have been removed or set draining while the claim was in flight.
                            let taken = scheduler.agent(&target).is_some_and(|a| !a.removing);
                            taken.then(|| scheduler.reserve(&target, &claim.task)).flatten().map(|agent| {
                                let (tx, rx) = watch::channel(Control::Run);
                                inner.lock_running().insert(claim.task.id, Running { agent: target, control: tx });
                                (agent, rx)
                            })
                        };
                        match placed {
                            Some((agent, control)) => {
                                let execution = Execution::new(self.inner.clone(), agent, claim, control);
                                executions.spawn(execution.run());
                            }
                            None => inner.give_back(&claim.lease).await,
                        }
                    }
                    free = inner.lock_scheduler().agent(&claimer).map_or(0, AgentState::free);
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

impl Inner {
    /// Releases a claim no agent here can take any more, so that it is
    /// claimed again at once rather than when its lease lapses.
    async fn give_back(&self, lease: &Lease) {
        match self.store.release(lease, self.clock.now()).await {
            Ok(_) => self.wake.notify_one(),
            Err(e) => {
                tracing::warn!(error = %e, task = %lease.task, "cannot release a claim; it is retried when its lease lapses")
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::sync::Arc;

    use sqlx::Connection;
    use tokio::task::JoinSet;

    use crate::adapter::NoopAdapter;
    use crate::agent::AgentKind;
    use crate::engine::{AgentConfig, Orchestrator};
    use crate::ids::{AgentId, TenantId};
    use crate::store::{SqliteStore, Store};
    use crate::task::{NewTask, Task, TaskStatus};

    /// An orchestrator on a SQLite file with one no-op agent `a`, its stale
    /// sessions swept, and a second connection to the file.
    async fn setup(capacity: u32, dir: &tempfile::TempDir) -> (Orchestrator, AgentId, sqlx::SqliteConnection) {
        let path = dir.path().join("dispatch.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let a = AgentId::new("a").unwrap();
        let orchestrator = Orchestrator::builder(store)
            .agent(AgentConfig::new(a.clone(), AgentKind::Process, Arc::new(NoopAdapter)).capacity(capacity))
            .build()
            .unwrap();
        let other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        (orchestrator, a, other)
    }

    /// Runs one dispatch whose first claim is held up by a write lock taken
    /// on `other`, and calls `meanwhile` while that claim is in flight.
    async fn dispatch_around(
        orchestrator: &Orchestrator,
        other: &mut sqlx::SqliteConnection,
        meanwhile: impl FnOnce(),
    ) {
        orchestrator.inner.sweep_all(&[]).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *other).await.unwrap();
        let mut executions = JoinSet::new();
        {
            let mut dispatch = std::pin::pin!(orchestrator.dispatch(&mut executions));
            assert!(futures::poll!(&mut dispatch).is_pending(), "the claim waits for the lock");
            meanwhile();
            sqlx::query("COMMIT").execute(&mut *other).await.unwrap();
            dispatch.await;
        }
        assert!(executions.is_empty(), "nothing may start on an agent that was removed");
    }

    async fn status(orchestrator: &Orchestrator, task: &Task) -> TaskStatus {
        orchestrator.store().get(&task.tenant, task.id).await.unwrap().status
    }

    #[tokio::test]
    async fn a_claim_for_an_agent_removed_meanwhile_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let (orchestrator, a, mut other) = setup(2, &dir).await;
        let task = orchestrator.submit(NewTask::prompt("x")).await.unwrap();
        dispatch_around(&orchestrator, &mut other, || {
            orchestrator.remove_agent(&a).unwrap();
        })
        .await;
        assert_eq!(status(&orchestrator, &task).await, TaskStatus::Pending);
        let again = orchestrator.store().get(&task.tenant, task.id).await.unwrap();
        assert_eq!(again.attempt, task.attempt, "a given-back claim costs no attempt");
    }

    #[tokio::test]
    async fn a_draining_agent_claims_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let (orchestrator, a, mut other) = setup(4, &dir).await;
        // One slot in use, so that removing the agent drains it rather than dropping it.
        let running = orchestrator.submit(NewTask::prompt("running")).await.unwrap();
        orchestrator.inner.lock_scheduler().reserve(&a, &running).unwrap();
        let home = orchestrator.submit(NewTask::prompt("home")).await.unwrap();
        let acme = orchestrator.tenant(TenantId::new("acme").unwrap());
        let elsewhere = acme.submit(NewTask::prompt("acme")).await.unwrap();
        dispatch_around(&orchestrator, &mut other, || {
            orchestrator.remove_agent(&a).unwrap();
        })
        .await;
        assert_eq!(status(&orchestrator, &elsewhere).await, TaskStatus::Pending, "not claimed by a draining agent");
        assert_eq!(status(&orchestrator, &home).await, TaskStatus::Pending, "given back");
    }
}
