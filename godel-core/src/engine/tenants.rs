//! Tenants: one orchestrator serves many.
//!
//! A [`TenantScope`] carries the tenant of every command made through it; the
//! server makes one per request from the caller's credential, and the
//! orchestrator's own commands go through the scope of `EngineConfig::tenant`.
//! The store's tenant walls do the rest: a scope cannot see or touch another
//! tenant's tasks.
//!
//! The dispatcher claims for every tenant the orchestrator serves: the
//! configured one, every tenant that made work ready through a scope, and
//! every tenant added with [`Orchestrator::serve_tenant`]. The set only grows.
//! Each agent tries the tenants in turn, starting after the last one it
//! claimed for, so one tenant's backlog cannot starve another's ready tasks.
//! A tenant with nothing ready costs one empty claim per agent with free
//! slots per dispatch; with one tenant, dispatch costs what it always did.

use std::collections::HashSet;
use std::sync::{Arc, MutexGuard, PoisonError};

use crate::engine::{Inner, Orchestrator};
use crate::ids::{AgentId, TenantId};
use crate::store::StoreError;

/// Why the sessions of a tenant newly served are closed.
const ABANDONED: &str = "the engine restarted";

/// The orchestrator's task commands for one tenant (see
/// [`Orchestrator::tenant`]). Cheap to make and to clone.
///
/// ```
/// # async fn demo(orchestrator: godel_core::Orchestrator) -> Result<(), godel_core::EngineError> {
/// use godel_core::{NewTask, TenantId};
///
/// let acme = orchestrator.tenant(TenantId::new("acme").unwrap());
/// let task = acme.submit(NewTask::prompt("hello")).await?;
/// assert_eq!(task.tenant.as_str(), "acme");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TenantScope {
    pub(super) inner: Arc<Inner>,
    pub(super) tenant: TenantId,
}

impl TenantScope {
    /// The tenant every command of this scope acts for.
    pub fn id(&self) -> &TenantId {
        &self.tenant
    }
}

impl Orchestrator {
    /// The commands for `tenant`'s tasks. Making work ready through it (a
    /// submit, a retry, a replay) also makes the dispatcher serve `tenant`.
    pub fn tenant(&self, tenant: TenantId) -> TenantScope {
        TenantScope { inner: self.inner.clone(), tenant }
    }

    /// The scope of `EngineConfig::tenant`, which the orchestrator's own commands use.
    pub(crate) fn home(&self) -> TenantScope {
        self.tenant(self.inner.config.tenant.clone())
    }

    /// Makes the dispatcher claim `tenant`'s tasks too (e.g. tasks submitted
    /// through another node sharing the store), and wakes it if the tenant
    /// is new. Serving a tenant twice changes nothing.
    pub fn serve_tenant(&self, tenant: TenantId) {
        self.inner.serve(&tenant);
    }

    /// The tenants the dispatcher claims for, the configured one first, then
    /// in the order they were added.
    pub fn served_tenants(&self) -> Vec<TenantId> {
        self.inner.lock_served().list.to_vec()
    }
}

/// The tenants an orchestrator serves.
#[derive(Debug)]
pub(crate) struct Served {
    known: HashSet<TenantId>,
    /// In the order served; dispatch takes it without copying, and indices
    /// stay valid since the list only grows.
    list: Arc<[TenantId]>,
    /// Served, but this engine's agents' sessions left open by a previous
    /// run are not closed yet: no claim is made for these until they are.
    unswept: Vec<TenantId>,
}

impl Served {
    pub(crate) fn new(home: TenantId) -> Self {
        Self { known: HashSet::from([home.clone()]), list: Arc::from([home.clone()]), unswept: vec![home] }
    }
}

impl Inner {
    pub(crate) fn lock_served(&self) -> MutexGuard<'_, Served> {
        // Every critical section is a lookup, a push or a take; a poisoned lock is safe to reuse.
        self.served.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `tenant` to the served set; wakes the dispatcher if it is new.
    pub(crate) fn serve(&self, tenant: &TenantId) {
        // The configured tenant is always served: its submits take no lock.
        if *tenant == self.config.tenant {
            return;
        }
        {
            let mut served = self.lock_served();
            if !served.known.insert(tenant.clone()) {
                return;
            }
            served.list = served.list.iter().chain(std::iter::once(tenant)).cloned().collect();
            served.unswept.push(tenant.clone());
        }
        tracing::info!(%tenant, "serving a new tenant");
        self.wake.notify_one();
    }

    /// Whether the dispatcher claims `tenant`'s tasks.
    pub(crate) fn serves(&self, tenant: &TenantId) -> bool {
        *tenant == self.config.tenant || self.lock_served().known.contains(tenant)
    }

    /// Closes the sessions of every served tenant left open by `agents` in a
    /// previous run (they died with it). Returns how many were closed.
    pub(crate) async fn sweep_all(&self, agents: &[AgentId]) -> Result<u64, StoreError> {
        let tenants = {
            let mut served = self.lock_served();
            served.unswept.clear();
            served.list.clone()
        };
        let now = self.clock.now();
        let mut abandoned = 0;
        for tenant in tenants.iter() {
            abandoned += self.store.abandon_sessions(tenant, agents, ABANDONED, now).await?;
        }
        Ok(abandoned)
    }

    /// The tenants to claim for now. A tenant served since the run started
    /// first has its stale sessions closed; one whose close failed is left
    /// out until a later dispatch manages it.
    pub(crate) async fn claimable(&self) -> Arc<[TenantId]> {
        let (tenants, unswept) = {
            let mut served = self.lock_served();
            (served.list.clone(), std::mem::take(&mut served.unswept))
        };
        if unswept.is_empty() {
            return tenants;
        }
        let agents: Vec<AgentId> = self.lock_scheduler().agents.iter().map(|a| a.config.id.clone()).collect();
        let now = self.clock.now();
        let mut failed = Vec::new();
        for tenant in unswept {
            match self.store.abandon_sessions(&tenant, &agents, ABANDONED, now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(%tenant, sessions = n, "closed sessions left open by a previous run"),
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "cannot close stale sessions; claiming for the tenant later");
                    failed.push(tenant);
                }
            }
        }
        if failed.is_empty() {
            return tenants;
        }
        let claimable = tenants.iter().filter(|t| !failed.contains(t)).cloned().collect();
        self.lock_served().unswept.extend(failed);
        claimable
    }
}
