//! [`FaultyStore`]: a store that breaks on purpose, for tests.
//!
//! It wraps any backend and, following a seeded [`FaultPlan`], makes chosen
//! calls of chosen methods fail, answer late, time out, or reach the backend
//! and then lose their answer (the write happened, the caller hears an
//! error). Every other call goes straight through. Engine tests use it to
//! prove that no single failed store call loses a task, runs it to
//! completion twice or leaks an agent slot.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use godel_core::store::MemoryStore;
//! use godel_core::store::faulty::{Calls, FaultPlan, FaultyStore, Method};
//!
//! let plan = FaultPlan::new(7)
//!     .fail(Method::Claim, Calls::nth(3))
//!     .lose_reply(Method::WriteBatch, Calls::nth(1))
//!     .delay(Method::Heartbeat, Calls::always(), Duration::from_millis(5));
//! let store = FaultyStore::new(Arc::new(MemoryStore::new()), plan);
//! assert_eq!(store.calls(Method::Claim), 0);
//! ```
//!
//! Injected errors are [`StoreError::Unavailable`], what a dropped
//! connection gives, so callers see them as retryable.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::credential::{ApiKey, AuditEntry, AuditQuery, KeyHash};
use crate::ids::{AgentId, KeyId, SessionId, TaskId, TenantId};
use crate::money::Micros;
use crate::output::OutputChunk;
use crate::session::Session;
use crate::store::{
    BatchCompletion, CancelOutcome, ClaimRequest, Claimed, ClusterChannel, ClusterMessage, Completion, Credentials,
    Enqueued, FailOutcome, Failure, HistoryEntry, Lease, LeaseStatus, LeaseWrite, Ledger, Member, MemberKind,
    OutputRecord, Page, QuarantineQuery, Quarantined, QueueCounts, QueueDepth, Reclaimed, Registry, Result,
    SessionQuery, SessionStore, Store, StoreError, TaskFilter, TaskQuery, TaskStore, WriteOutcome,
};
use crate::task::{NewTask, Task, TaskStatus};
use crate::time::Timestamp;

/// A store method a fault can target: one per method of [`Store`] and its concerns.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
#[allow(missing_docs)] // each is the method of the same name
pub enum Method {
    Ping,
    Enqueue,
    EnqueueBatch,
    Claim,
    Start,
    WriteBatch,
    Heartbeat,
    AppendOutput,
    Complete,
    CompleteBatch,
    Fail,
    Release,
    ConfirmCancel,
    Cancel,
    ReclaimExpired,
    Replay,
    ReplayIf,
    ReplayDeadLetters,
    Purge,
    PurgeFinished,
    Get,
    List,
    Quarantined,
    GetQuarantined,
    DropQuarantined,
    PurgeQuarantined,
    Output,
    History,
    Depth,
    Counts,
    SaveSessions,
    GetSession,
    ListSessions,
    AbandonSessions,
    PutMember,
    RemoveMember,
    Members,
    AddSpend,
    Spend,
    Broadcast,
    CreateKey,
    KeyByHash,
    GetKey,
    ListKeys,
    RevokeKey,
    ExpireKey,
    TouchKeys,
    HasKeys,
    AppendAudit,
    ListAudit,
    PruneAudit,
}

/// Which calls of a method a fault hits, counting the method's calls from 1.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Calls(Which);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Which {
    Between { first: u64, last: u64 },
    Chance(f64),
}

impl Calls {
    /// Only the `k`th call (from 1).
    pub fn nth(k: u64) -> Self {
        Self(Which::Between { first: k, last: k })
    }

    /// Calls `first` to `last`, both included.
    pub fn between(first: u64, last: u64) -> Self {
        Self(Which::Between { first, last })
    }

    /// The `k`th call and every one after it.
    pub fn from(k: u64) -> Self {
        Self(Which::Between { first: k, last: u64::MAX })
    }

    /// Every call.
    pub fn always() -> Self {
        Self::from(1)
    }

    /// Each call with probability `p`, drawn from the plan's seeded generator.
    pub fn chance(p: f64) -> Self {
        Self(Which::Chance(p))
    }
}

/// What happens to a call a fault hits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// Fails at once without reaching the backend.
    Fail,
    /// Reaches the backend after this long.
    Delay(Duration),
    /// Fails after this long without reaching the backend.
    Timeout(Duration),
    /// Reaches the backend, whose answer is then lost: the caller gets an
    /// error although the call took effect (a reply lost on the way back).
    LoseReply,
}

/// Which faults a [`FaultyStore`] injects. For each call, the first rule
/// (in the order added) that targets the method and matches the call's
/// number decides.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    seed: u64,
    rules: Vec<(Method, Calls, Fault)>,
}

impl FaultPlan {
    /// A plan without faults; `seed` drives [`Calls::chance`].
    pub fn new(seed: u64) -> Self {
        Self { seed, rules: Vec::new() }
    }

    /// Adds a rule.
    #[must_use]
    pub fn inject(mut self, method: Method, calls: Calls, fault: Fault) -> Self {
        self.rules.push((method, calls, fault));
        self
    }

    /// The chosen calls fail without reaching the backend.
    #[must_use]
    pub fn fail(self, method: Method, calls: Calls) -> Self {
        self.inject(method, calls, Fault::Fail)
    }

    /// The chosen calls reach the backend `by` late.
    #[must_use]
    pub fn delay(self, method: Method, calls: Calls, by: Duration) -> Self {
        self.inject(method, calls, Fault::Delay(by))
    }

    /// The chosen calls fail after `after`, without reaching the backend.
    #[must_use]
    pub fn timeout(self, method: Method, calls: Calls, after: Duration) -> Self {
        self.inject(method, calls, Fault::Timeout(after))
    }

    /// The chosen calls take effect but their callers hear an error.
    #[must_use]
    pub fn lose_reply(self, method: Method, calls: Calls) -> Self {
        self.inject(method, calls, Fault::LoseReply)
    }
}

/// A store that injects the faults of a [`FaultPlan`] into calls to the
/// store it wraps. For tests.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    plan: FaultPlan,
    rng: StdRng,
    calls: Vec<(Method, u64)>,
    injected: u64,
    healed: bool,
}

impl FaultyStore {
    /// Wraps `inner`, injecting the faults of `plan`.
    pub fn new(inner: Arc<dyn Store>, plan: FaultPlan) -> Self {
        let rng = StdRng::seed_from_u64(plan.seed);
        Self { inner, state: Mutex::new(State { plan, rng, calls: Vec::new(), injected: 0, healed: false }) }
    }

    /// How many times `method` was called so far, faulty calls included.
    pub fn calls(&self, method: Method) -> u64 {
        let state = self.lock();
        state.calls.iter().find(|(m, _)| *m == method).map_or(0, |(_, n)| *n)
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Stops injecting faults: every later call goes straight through.
    pub fn heal(&self) {
        self.lock().healed = true;
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the call and picks its fault, if any.
    fn fault_for(&self, method: Method) -> Option<Fault> {
        let mut state = self.lock();
        let n = match state.calls.iter_mut().find(|(m, _)| *m == method) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                state.calls.push((method, 1));
                1
            }
        };
        if state.healed {
            return None;
        }
        let State { plan, rng, .. } = &mut *state;
        let fault = plan.rules.iter().filter(|(m, ..)| *m == method).find_map(|&(_, calls, fault)| {
            let hit = match calls.0 {
                Which::Between { first, last } => (first..=last).contains(&n),
                Which::Chance(p) => rng.random_bool(p.clamp(0.0, 1.0)),
            };
            hit.then_some(fault)
        });
        if let Some(fault) = fault {
            state.injected += 1;
            tracing::debug!(?method, call = n, ?fault, "injecting a store fault");
        }
        fault
    }

    /// Runs `call` as the plan says for `method`.
    async fn around<T>(&self, method: Method, call: impl Future<Output = Result<T>>) -> Result<T> {
        match self.fault_for(method) {
            None => call.await,
            Some(Fault::Fail) => Err(injected(method, "injected failure")),
            Some(Fault::Delay(by)) => {
                tokio::time::sleep(by).await;
                call.await
            }
            Some(Fault::Timeout(after)) => {
                tokio::time::sleep(after).await;
                Err(injected(method, "injected timeout"))
            }
            Some(Fault::LoseReply) => {
                // Whatever the backend answered, the caller never hears it.
                let _ = call.await;
                Err(injected(method, "injected lost reply"))
            }
        }
    }
}

fn injected(method: Method, what: &str) -> StoreError {
    StoreError::Unavailable { backend: "faulty", source: format!("{what} in {method:?}").into() }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.around(Method::Ping, self.inner.ping()).await
    }
}

#[async_trait]
impl TaskStore for FaultyStore {
    async fn enqueue(&self, tenant: &TenantId, task: NewTask, now: Timestamp) -> Result<Enqueued> {
        self.around(Method::Enqueue, self.inner.enqueue(tenant, task, now)).await
    }

    async fn enqueue_batch(&self, tenant: &TenantId, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        self.around(Method::EnqueueBatch, self.inner.enqueue_batch(tenant, tasks, now)).await
    }

    async fn claim_or_quarantine(&self, request: &ClaimRequest, now: Timestamp) -> Result<Claimed> {
        self.around(Method::Claim, self.inner.claim_or_quarantine(request, now)).await
    }

    async fn start(&self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus> {
        self.around(Method::Start, self.inner.start(lease, agent, now)).await
    }

    async fn write_batch(&self, writes: &[LeaseWrite], now: Timestamp) -> Result<Vec<WriteOutcome>> {
        self.around(Method::WriteBatch, self.inner.write_batch(writes, now)).await
    }

    async fn heartbeat(&self, lease: &Lease, extend_by: Duration, now: Timestamp) -> Result<LeaseStatus> {
        self.around(Method::Heartbeat, self.inner.heartbeat(lease, extend_by, now)).await
    }

    async fn append_output(&self, lease: &Lease, chunks: &[OutputChunk], now: Timestamp) -> Result<()> {
        self.around(Method::AppendOutput, self.inner.append_output(lease, chunks, now)).await
    }

    async fn complete(&self, lease: &Lease, result: Value, now: Timestamp) -> Result<()> {
        self.around(Method::Complete, self.inner.complete(lease, result, now)).await
    }

    async fn complete_batch(&self, completions: &[Completion], now: Timestamp) -> Result<BatchCompletion> {
        self.around(Method::CompleteBatch, self.inner.complete_batch(completions, now)).await
    }

    async fn fail(&self, lease: &Lease, failure: &Failure, now: Timestamp) -> Result<FailOutcome> {
        self.around(Method::Fail, self.inner.fail(lease, failure, now)).await
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<TaskStatus> {
        self.around(Method::Release, self.inner.release(lease, now)).await
    }

    async fn confirm_cancel(&self, lease: &Lease, now: Timestamp) -> Result<()> {
        self.around(Method::ConfirmCancel, self.inner.confirm_cancel(lease, now)).await
    }

    async fn cancel(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        self.around(Method::Cancel, self.inner.cancel(tenant, id, now)).await
    }

    async fn reclaim_expired(&self, now: Timestamp, limit: usize) -> Result<Vec<Reclaimed>> {
        self.around(Method::ReclaimExpired, self.inner.reclaim_expired(now, limit)).await
    }

    async fn replay(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<Task> {
        self.around(Method::Replay, self.inner.replay(tenant, id, now)).await
    }

    async fn replay_if(&self, tenant: &TenantId, id: TaskId, only_from: &[TaskStatus], now: Timestamp) -> Result<Task> {
        self.around(Method::ReplayIf, self.inner.replay_if(tenant, id, only_from, now)).await
    }

    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64> {
        self.around(Method::ReplayDeadLetters, self.inner.replay_dead_letters(tenant, filter, now)).await
    }

    async fn purge(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        self.around(Method::Purge, self.inner.purge(tenant, id)).await
    }

    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64> {
        self.around(Method::PurgeFinished, self.inner.purge_finished(tenant, filter, finished_before)).await
    }

    async fn get(&self, tenant: &TenantId, id: TaskId) -> Result<Task> {
        self.around(Method::Get, self.inner.get(tenant, id)).await
    }

    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>> {
        self.around(Method::List, self.inner.list(tenant, query)).await
    }

    async fn quarantined(&self, tenant: &TenantId, query: &QuarantineQuery) -> Result<Page<Quarantined>> {
        self.around(Method::Quarantined, self.inner.quarantined(tenant, query)).await
    }

    async fn get_quarantined(&self, tenant: &TenantId, id: TaskId) -> Result<Quarantined> {
        self.around(Method::GetQuarantined, self.inner.get_quarantined(tenant, id)).await
    }

    async fn drop_quarantined(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        self.around(Method::DropQuarantined, self.inner.drop_quarantined(tenant, id)).await
    }

    async fn purge_quarantined(&self, tenant: &TenantId) -> Result<u64> {
        self.around(Method::PurgeQuarantined, self.inner.purge_quarantined(tenant)).await
    }

    async fn output(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<OutputRecord>> {
        self.around(Method::Output, self.inner.output(tenant, id)).await
    }

    async fn history(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<HistoryEntry>> {
        self.around(Method::History, self.inner.history(tenant, id)).await
    }

    async fn depth(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueDepth> {
        self.around(Method::Depth, self.inner.depth(tenant, now)).await
    }

    async fn counts(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueCounts> {
        self.around(Method::Counts, self.inner.counts(tenant, now)).await
    }
}

#[async_trait]
impl SessionStore for FaultyStore {
    async fn save_sessions(&self, sessions: &[Session]) -> Result<()> {
        self.around(Method::SaveSessions, self.inner.save_sessions(sessions)).await
    }

    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session> {
        self.around(Method::GetSession, self.inner.get_session(tenant, id)).await
    }

    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>> {
        self.around(Method::ListSessions, self.inner.list_sessions(tenant, query)).await
    }

    async fn abandon_sessions(&self, tenant: &TenantId, agents: &[AgentId], why: &str, now: Timestamp) -> Result<u64> {
        self.around(Method::AbandonSessions, self.inner.abandon_sessions(tenant, agents, why, now)).await
    }
}

#[async_trait]
impl Registry for FaultyStore {
    async fn put_member(&self, member: &Member) -> Result<()> {
        self.around(Method::PutMember, self.inner.put_member(member)).await
    }

    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool> {
        self.around(Method::RemoveMember, self.inner.remove_member(tenant, kind, id)).await
    }

    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>> {
        self.around(Method::Members, self.inner.members(tenant, kind, now)).await
    }
}

#[async_trait]
impl Ledger for FaultyStore {
    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros> {
        self.around(Method::AddSpend, self.inner.add_spend(tenant, period, amount)).await
    }

    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros> {
        self.around(Method::Spend, self.inner.spend(tenant, period)).await
    }
}

#[async_trait]
impl ClusterChannel for FaultyStore {
    fn cluster_messages(&self) -> Option<tokio::sync::broadcast::Receiver<ClusterMessage>> {
        self.inner.cluster_messages()
    }

    async fn broadcast(&self, message: &ClusterMessage) -> Result<()> {
        self.around(Method::Broadcast, self.inner.broadcast(message)).await
    }
}

#[async_trait]
impl Credentials for FaultyStore {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        self.around(Method::CreateKey, self.inner.create_key(key)).await
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        self.around(Method::KeyByHash, self.inner.key_by_hash(hash)).await
    }

    async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        self.around(Method::GetKey, self.inner.get_key(id)).await
    }

    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>> {
        self.around(Method::ListKeys, self.inner.list_keys(tenant)).await
    }

    async fn revoke_key(&self, id: &KeyId, now: Timestamp) -> Result<ApiKey> {
        self.around(Method::RevokeKey, self.inner.revoke_key(id, now)).await
    }

    async fn expire_key(&self, id: &KeyId, at: Timestamp) -> Result<ApiKey> {
        self.around(Method::ExpireKey, self.inner.expire_key(id, at)).await
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        self.around(Method::TouchKeys, self.inner.touch_keys(used)).await
    }

    async fn has_keys(&self) -> Result<bool> {
        self.around(Method::HasKeys, self.inner.has_keys()).await
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        self.around(Method::AppendAudit, self.inner.append_audit(entries)).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        self.around(Method::ListAudit, self.inner.list_audit(query)).await
    }

    async fn prune_audit(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.around(Method::PruneAudit, self.inner.prune_audit(before, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn store(plan: FaultPlan) -> FaultyStore {
        FaultyStore::new(Arc::new(MemoryStore::new()), plan)
    }

    #[tokio::test]
    async fn the_chosen_call_fails_and_the_others_pass() {
        let store = store(FaultPlan::new(1).fail(Method::Ping, Calls::nth(2)));
        assert!(store.ping().await.is_ok());
        assert!(matches!(store.ping().await, Err(StoreError::Unavailable { .. })));
        assert!(store.ping().await.is_ok());
        assert_eq!((store.calls(Method::Ping), store.injected()), (3, 1));
    }

    #[tokio::test]
    async fn a_lost_reply_still_takes_effect() {
        let store = store(FaultPlan::new(1).lose_reply(Method::Enqueue, Calls::always()));
        let tenant = TenantId::default_tenant();
        let err = store.enqueue(&tenant, NewTask::prompt("hi"), Timestamp::now()).await.unwrap_err();
        assert!(err.is_retryable());
        let counts = store.counts(&tenant, Timestamp::now()).await.unwrap();
        assert_eq!(counts.status(TaskStatus::Pending), 1);
        store.heal();
        assert!(store.enqueue(&tenant, NewTask::prompt("hi"), Timestamp::now()).await.is_ok());
    }

    #[tokio::test]
    async fn delays_and_timeouts_take_their_time() {
        let by = Duration::from_millis(30);
        let store =
            store(FaultPlan::new(1).delay(Method::Ping, Calls::nth(1), by).timeout(Method::Ping, Calls::nth(2), by));
        let t0 = tokio::time::Instant::now();
        assert!(store.ping().await.is_ok());
        assert!(store.ping().await.is_err());
        assert!(t0.elapsed() >= by * 2);
    }

    #[test]
    fn chance_follows_the_seed() {
        let draws = |seed| {
            let store = store(FaultPlan::new(seed).fail(Method::Ping, Calls::chance(0.5)));
            (0..64).map(|_| store.fault_for(Method::Ping).is_some()).collect::<Vec<_>>()
        };
        assert_eq!(draws(3), draws(3));
        assert_ne!(draws(3), draws(4));
        assert!(draws(3).contains(&true) && draws(3).contains(&false));
    }
}
