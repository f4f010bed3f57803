//! The in-memory backend: one mutex over plain maps. Fast, exact and gone when
//! the process exits; for tests, benchmarks and throwaway embedding.
//!
//! Rule 1 (atomic claim) holds because every operation runs under the one
//! lock, which is never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::credential::{ApiKey, AuditEntry, AuditQuery, KeyHash};
use crate::ids::{AgentId, KeyId, LeaseToken, SessionId, TaskId, TenantId};
use crate::money::Micros;
use crate::output::OutputChunk;
use crate::session::Session;
use crate::store::{
    BatchCompletion, CancelOutcome, Claim, ClaimRequest, Claimed, ClusterChannel, Completion, Credentials, Cursor,
    Enqueued, FailOutcome, Failure, HistoryEntry, Lease, LeaseStatus, LeaseWrite, Ledger, Member, MemberKind,
    OutputRecord, Page, QuarantineQuery, Quarantined, QueueCounts, QueueDepth, Reclaimed, Registry, Result, Retry,
    SessionQuery, SessionStore, SortOrder, Store, StoreError, TaskFilter, TaskQuery, TaskStore, WriteOutcome,
};
use crate::task::{NewTask, Priority, Task, TaskError, TaskErrorKind, TaskStatus};
use crate::time::Timestamp;

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation below validates before it writes, so a panic cannot
        // leave half-applied changes behind; a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct State {
    next_seq: i64,
    tenants: HashMap<TenantId, TenantQueue>,
    /// Lease expiry index across tenants, for `reclaim_expired`.
    leases: BTreeSet<(Timestamp, i64, TenantId)>,
    members: BTreeMap<(TenantId, MemberKind, String), Member>,
    spend: HashMap<(TenantId, String), Micros>,
    keys: HashMap<KeyId, ApiKey>,
    key_ids: HashMap<KeyHash, KeyId>,
    next_audit_seq: u64,
    audit: BTreeMap<u64, AuditEntry>,
}

#[derive(Debug, Default)]
struct TenantQueue {
    tasks: BTreeMap<i64, Entry>,
    sessions: HashMap<SessionId, Session>,
    by_id: HashMap<TaskId, i64>,
    /// Pending tasks in claim order: (priority rank, run_at, seq).
    pending: BTreeSet<(u8, Timestamp, i64)>,
    idempotency: HashMap<String, i64>,
    output: HashMap<i64, Vec<OutputRecord>>,
    history: HashMap<i64, Vec<HistoryEntry>>,
}

#[derive(Debug)]
struct Entry {
    task: Task,
    token: Option<LeaseToken>,
}

impl TenantQueue {
    fn seq_of(&self, id: TaskId) -> Result<i64> {
        self.by_id.get(&id).copied().ok_or(StoreError::NotFound(id))
    }

    fn insert_pending(&mut self, seq: i64) {
        let task = &self.tasks[&seq].task;
        self.pending.insert((task.priority.rank(), task.run_at, seq));
    }

    fn remove_pending(&mut self, seq: i64) {
        let task = &self.tasks[&seq].task;
        self.pending.remove(&(task.priority.rank(), task.run_at, seq));
    }

    /// Appends a history entry if the task's status, attempt or cancel flag
    /// changed since the last one (what the SQLite triggers do).
    fn record(&mut self, seq: i64) {
        let task = &self.tasks[&seq].task;
        let history = self.history.entry(seq).or_default();
        if history.last().is_none_or(|last| !last.same_state(task)) {
            history.push(HistoryEntry::of(task));
        }
    }

    fn remove(&mut self, seq: i64) {
        if let Some(entry) = self.tasks.remove(&seq) {
            self.by_id.remove(&entry.task.id);
            if let Some(key) = &entry.task.idempotency_key {
                self.idempotency.remove(key);
            }
            self.output.remove(&seq);
            self.history.remove(&seq);
        }
    }
}

impl State {
    /// Finds the entry a lease points at, or `LeaseLost` if the lease is stale.
    fn leased(&mut self, lease: &Lease) -> Result<(i64, &mut TenantQueue)> {
        let lost = || StoreError::LeaseLost(lease.task);
        let queue = self.tenants.get_mut(&lease.tenant).ok_or_else(lost)?;
        let seq = *queue.by_id.get(&lease.task).ok_or_else(lost)?;
        let entry = &queue.tasks[&seq];
        let holds =
            entry.token == Some(lease.token) && entry.task.attempt == lease.attempt && entry.task.status.is_leased();
        if holds { Ok((seq, queue)) } else { Err(lost()) }
    }

    /// Ends the lease on a leased entry: clears the token and the expiry index.
    fn unlease(&mut self, tenant: &TenantId, seq: i64) -> &mut Entry {
        let entry = self.tenants.get_mut(tenant).and_then(|q| q.tasks.get_mut(&seq)).expect("leased entry exists");
        if let Some(expires) = entry.task.lease_expires_at.take() {
            self.leases.remove(&(expires, seq, tenant.clone()));
        }
        entry.token = None;
        entry
    }

    fn insert_task(&mut self, tenant: &TenantId, mut new: NewTask, now: Timestamp) -> Result<Enqueued> {
        new.validate()?;
        let queue = self.tenants.entry(tenant.clone()).or_default();
        if let Some(seq) = new.idempotency_key.as_ref().and_then(|k| queue.idempotency.get(k)) {
            return Ok(Enqueued { task: queue.tasks[seq].task.clone(), created: false });
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        let task = Task::pending(TaskId::new(), tenant.clone(), new, now);
        if let Some(key) = &task.idempotency_key {
            queue.idempotency.insert(key.clone(), seq);
        }
        queue.by_id.insert(task.id, seq);
        queue.tasks.insert(seq, Entry { task: task.clone(), token: None });
        queue.insert_pending(seq);
        queue.record(seq);
        Ok(Enqueued { task, created: true })
    }

    fn claim(&mut self, request: &ClaimRequest, now: Timestamp) -> Vec<Claim> {
        let Some(queue) = self.tenants.get_mut(&request.tenant) else { return Vec::new() };
        let mut picked = Vec::new();
        'ranks: for p in Priority::ALL {
            let range = (p.rank(), Timestamp::from_millis(i64::MIN), i64::MIN)..=(p.rank(), now, i64::MAX);
            for &(_, _, seq) in queue.pending.range(range) {
                if picked.len() == request.limit {
                    break 'ranks;
                }
                let caps = &queue.tasks[&seq].task.capabilities;
                if caps.iter().all(|c| request.capabilities.contains(c)) {
                    picked.push(seq);
                }
            }
        }
        let expires = now + request.lease_for;
        let mut claims = Vec::with_capacity(picked.len());
        for seq in picked {
            queue.remove_pending(seq);
            let entry = queue.tasks.get_mut(&seq).expect("picked from index");
            let token = LeaseToken::random();
            entry.token = Some(token);
            let task = &mut entry.task;
            task.status = TaskStatus::Assigned;
            task.attempt += 1;
            task.agent = Some(request.agent.clone());
            task.lease_expires_at = Some(expires);
            task.cancel_requested = false;
            task.started_at = None;
            task.updated_at = now;
            let claim = Claim {
                lease: Lease { tenant: request.tenant.clone(), task: task.id, attempt: task.attempt, token },
                task: task.clone(),
            };
            self.leases.insert((expires, seq, request.tenant.clone()));
            queue.record(seq);
            claims.push(claim);
        }
        claims
    }

    fn start(&mut self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus> {
        let (seq, queue) = self.leased(lease)?;
        let task = &mut queue.tasks.get_mut(&seq).expect("leased").task;
        task.agent = Some(agent.clone());
        if task.status == TaskStatus::Assigned {
            task.status = TaskStatus::Running;
            task.started_at = Some(now);
            task.updated_at = now;
        }
        let status =
            LeaseStatus { expires_at: task.lease_expires_at.expect("leased"), cancel_requested: task.cancel_requested };
        queue.record(seq);
        Ok(status)
    }

    fn complete(&mut self, lease: &Lease, result: Value, now: Timestamp) -> Result<()> {
        let (seq, _) = self.leased(lease)?;
        let task = &mut self.unlease(&lease.tenant, seq).task;
        task.status = TaskStatus::Completed;
        task.result = Some(result);
        task.completed_at = Some(now);
        task.updated_at = now;
        self.record(&lease.tenant, seq);
        Ok(())
    }

    fn record(&mut self, tenant: &TenantId, seq: i64) {
        if let Some(queue) = self.tenants.get_mut(tenant) {
            queue.record(seq);
        }
    }
}

fn finish(task: &mut Task, status: TaskStatus, now: Timestamp) {
    task.status = status;
    task.completed_at = Some(now);
    task.updated_at = now;
    if status == TaskStatus::DeadLetter {
        task.dead_lettered_at = Some(now);
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<()> {
        drop(self.lock());
        Ok(())
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn enqueue(&self, tenant: &TenantId, task: NewTask, now: Timestamp) -> Result<Enqueued> {
        self.lock().insert_task(tenant, task, now)
    }

    async fn enqueue_batch(&self, tenant: &TenantId, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        let mut tasks = tasks;
        crate::store::validate_batch(&mut tasks)?;
        let mut state = self.lock();
        tasks.into_iter().map(|t| state.insert_task(tenant, t, now)).collect()
    }

    async fn claim_or_quarantine(&self, request: &ClaimRequest, now: Timestamp) -> Result<Claimed> {
        Ok(Claimed { claims: self.lock().claim(request, now), quarantined: Vec::new() })
    }

    async fn start(&self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus> {
        self.lock().start(lease, agent, now)
    }

    async fn write_batch(&self, writes: &[LeaseWrite], now: Timestamp) -> Result<Vec<WriteOutcome>> {
        let mut state = self.lock();
        let mut out = Vec::with_capacity(writes.len());
        for write in writes {
            let done = match write {
                LeaseWrite::Start { lease, agent } => state
                    .start(lease, agent, now)
                    .map(|s| WriteOutcome::Started { cancel_requested: s.cancel_requested }),
                LeaseWrite::Complete(c) => {
                    state.complete(&c.lease, c.result.clone(), now).map(|()| WriteOutcome::Completed)
                }
            };
            match done {
                Ok(outcome) => out.push(outcome),
                Err(StoreError::LeaseLost(_)) => out.push(WriteOutcome::LeaseLost),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn heartbeat(&self, lease: &Lease, extend_by: Duration, now: Timestamp) -> Result<LeaseStatus> {
        let mut guard = self.lock();
        let (seq, _) = guard.leased(lease)?;
        let State { tenants, leases, .. } = &mut *guard;
        let task = &mut tenants.get_mut(&lease.tenant).and_then(|q| q.tasks.get_mut(&seq)).expect("leased").task;
        let expires = now + extend_by;
        if let Some(old) = task.lease_expires_at.replace(expires) {
            leases.remove(&(old, seq, lease.tenant.clone()));
        }
        leases.insert((expires, seq, lease.tenant.clone()));
        task.updated_at = now;
        Ok(LeaseStatus { expires_at: expires, cancel_requested: task.cancel_requested })
    }

    async fn append_output(&self, lease: &Lease, chunks: &[OutputChunk], now: Timestamp) -> Result<()> {
        let mut state = self.lock();
        let (seq, queue) = state.leased(lease)?;
        let records = queue.output.entry(seq).or_default();
        records.extend(chunks.iter().map(|c| OutputRecord {
            attempt: lease.attempt,
            stream: c.stream,
            data: c.data.clone(),
            at: now,
        }));
        Ok(())
    }

    async fn complete(&self, lease: &Lease, result: Value, now: Timestamp) -> Result<()> {
        self.lock().complete(lease, result, now)
    }

    async fn complete_batch(&self, completions: &[Completion], now: Timestamp) -> Result<BatchCompletion> {
        let mut state = self.lock();
        let mut out = BatchCompletion::default();
        for c in completions {
            match state.complete(&c.lease, c.result.clone(), now) {
                Ok(()) => out.completed.push(c.lease.task),
                Err(StoreError::LeaseLost(id)) => out.lease_lost.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn fail(&self, lease: &Lease, failure: &Failure, now: Timestamp) -> Result<FailOutcome> {
        let mut state = self.lock();
        let (seq, _) = state.leased(lease)?;
        let task = &mut state.unlease(&lease.tenant, seq).task;
        task.error = Some(failure.error.clone());
        let outcome = match failure.retry {
            _ if task.cancel_requested => FailOutcome::Cancelled,
            Retry::Never => FailOutcome::Failed,
            Retry::After(_) if task.attempt >= task.max_attempts => FailOutcome::DeadLettered,
            Retry::After(delay) => FailOutcome::Retrying { run_at: now + delay },
        };
        match outcome {
            FailOutcome::Cancelled => finish(task, TaskStatus::Cancelled, now),
            FailOutcome::Failed => finish(task, TaskStatus::Failed, now),
            FailOutcome::DeadLettered => finish(task, TaskStatus::DeadLetter, now),
            FailOutcome::Retrying { run_at } => {
                task.status = TaskStatus::Pending;
                task.run_at = run_at;
                task.updated_at = now;
                state.tenants.get_mut(&lease.tenant).expect("leased").insert_pending(seq);
            }
        }
        state.record(&lease.tenant, seq);
        Ok(outcome)
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<TaskStatus> {
        let mut state = self.lock();
        let (seq, _) = state.leased(lease)?;
        let task = &mut state.unlease(&lease.tenant, seq).task;
        if task.cancel_requested {
            finish(task, TaskStatus::Cancelled, now);
            state.record(&lease.tenant, seq);
            return Ok(TaskStatus::Cancelled);
        }
        // The attempt never ran to an outcome, so it does not count, and the
        // task keeps its original run_at and therefore its place in line.
        task.status = TaskStatus::Pending;
        task.attempt -= 1;
        task.updated_at = now;
        state.tenants.get_mut(&lease.tenant).expect("leased").insert_pending(seq);
        state.record(&lease.tenant, seq);
        Ok(TaskStatus::Pending)
    }

    async fn confirm_cancel(&self, lease: &Lease, now: Timestamp) -> Result<()> {
        let mut state = self.lock();
        let (seq, _) = state.leased(lease)?;
        finish(&mut state.unlease(&lease.tenant, seq).task, TaskStatus::Cancelled, now);
        state.record(&lease.tenant, seq);
        Ok(())
    }

    async fn cancel(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        let mut state = self.lock();
        let queue = state.tenants.get_mut(tenant).ok_or(StoreError::NotFound(id))?;
        let seq = queue.seq_of(id)?;
        match queue.tasks[&seq].task.status {
            TaskStatus::Pending => {
                queue.remove_pending(seq);
                finish(&mut queue.tasks.get_mut(&seq).expect("exists").task, TaskStatus::Cancelled, now);
                queue.record(seq);
                Ok(CancelOutcome::Cancelled)
            }
            TaskStatus::Assigned | TaskStatus::Running => {
                let task = &mut queue.tasks.get_mut(&seq).expect("exists").task;
                task.cancel_requested = true;
                task.updated_at = now;
                queue.record(seq);
                Ok(CancelOutcome::Requested)
            }
            from => Err(StoreError::InvalidTransition { task: id, from, action: "cancel" }),
        }
    }

    async fn reclaim_expired(&self, now: Timestamp, limit: usize) -> Result<Vec<Reclaimed>> {
        let mut state = self.lock();
        let lapsed: Vec<(i64, TenantId)> = state
            .leases
            .range(..=(now, i64::MAX, TenantId::default_tenant()))
            .filter(|(expires, _, _)| *expires <= now)
            .take(limit)
            .map(|(_, seq, tenant)| (*seq, tenant.clone()))
            .collect();
        let mut out = Vec::with_capacity(lapsed.len());
        for (seq, tenant) in lapsed {
            let task = &mut state.unlease(&tenant, seq).task;
            let status = if task.cancel_requested {
                TaskStatus::Cancelled
            } else if task.attempt >= task.max_attempts {
                TaskStatus::DeadLetter
            } else {
                TaskStatus::Pending
            };
            task.error =
                Some(TaskError::new(TaskErrorKind::LeaseExpired, format!("lease of attempt {} expired", task.attempt)));
            if status == TaskStatus::Pending {
                task.status = TaskStatus::Pending;
                task.updated_at = now;
            } else {
                finish(task, status, now);
            }
            out.push(Reclaimed {
                tenant: tenant.clone(),
                task: task.id,
                priority: task.priority,
                attempt: task.attempt,
                status,
            });
            if status == TaskStatus::Pending {
                state.tenants.get_mut(&tenant).expect("leased").insert_pending(seq);
            }
            state.record(&tenant, seq);
        }
        Ok(out)
    }

    async fn replay_if(&self, tenant: &TenantId, id: TaskId, only_from: &[TaskStatus], now: Timestamp) -> Result<Task> {
        crate::store::replay_from(only_from)?;
        let mut state = self.lock();
        let queue = state.tenants.get_mut(tenant).ok_or(StoreError::NotFound(id))?;
        let seq = queue.seq_of(id)?;
        replay_entry(queue, seq, only_from, now)
    }

    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64> {
        let filter = filter.for_dead_letters()?;
        let mut state = self.lock();
        let Some(queue) = state.tenants.get_mut(tenant) else { return Ok(0) };
        let seqs: Vec<i64> = queue.tasks.iter().filter(|(_, e)| filter.matches(&e.task)).map(|(s, _)| *s).collect();
        for &seq in &seqs {
            replay_entry(queue, seq, &[TaskStatus::DeadLetter], now)?;
        }
        Ok(seqs.len() as u64)
    }

    async fn purge(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        let mut state = self.lock();
        let queue = state.tenants.get_mut(tenant).ok_or(StoreError::NotFound(id))?;
        let seq = queue.seq_of(id)?;
        let status = queue.tasks[&seq].task.status;
        if !status.is_terminal() {
            return Err(StoreError::InvalidTransition { task: id, from: status, action: "purge" });
        }
        queue.remove(seq);
        Ok(())
    }

    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64> {
        let filter = filter.for_purge()?;
        let mut state = self.lock();
        let Some(queue) = state.tenants.get_mut(tenant) else { return Ok(0) };
        let seqs: Vec<i64> = queue
            .tasks
            .iter()
            .filter(|(_, e)| filter.matches(&e.task) && e.task.completed_at.is_some_and(|t| t < finished_before))
            .map(|(s, _)| *s)
            .collect();
        for &seq in &seqs {
            queue.remove(seq);
        }
        Ok(seqs.len() as u64)
    }

    async fn get(&self, tenant: &TenantId, id: TaskId) -> Result<Task> {
        let state = self.lock();
        let queue = state.tenants.get(tenant).ok_or(StoreError::NotFound(id))?;
        Ok(queue.tasks[&queue.seq_of(id)?].task.clone())
    }

    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>> {
        let after = query.validate()?;
        let state = self.lock();
        let Some(queue) = state.tenants.get(tenant) else {
            return Ok(Page { items: Vec::new(), next_cursor: None, quarantined: Vec::new() });
        };
        let matching = |(_, e): &(&i64, &Entry)| query.filter.matches(&e.task);
        let mut rows: Vec<(i64, Task)> = match query.order {
            SortOrder::Ascending => queue
                .tasks
                .range(after.map_or(i64::MIN, |s| s.saturating_add(1))..)
                .filter(matching)
                .take(query.limit + 1)
                .map(|(s, e)| (*s, e.task.clone()))
                .collect(),
            SortOrder::Descending => queue
                .tasks
                .range(..after.unwrap_or(i64::MAX))
                .rev()
                .filter(matching)
                .take(query.limit + 1)
                .map(|(s, e)| (*s, e.task.clone()))
                .collect(),
        };
        let next_cursor = (rows.len() > query.limit).then(|| {
            rows.truncate(query.limit);
            Cursor::after(query.order, rows.last().expect("non-empty").0)
        });
        Ok(Page { items: rows.into_iter().map(|(_, t)| t).collect(), next_cursor, quarantined: Vec::new() })
    }

    async fn output(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<OutputRecord>> {
        let state = self.lock();
        let queue = state.tenants.get(tenant).ok_or(StoreError::NotFound(id))?;
        let seq = queue.seq_of(id)?;
        Ok(queue.output.get(&seq).cloned().unwrap_or_default())
    }

    async fn history(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<HistoryEntry>> {
        let state = self.lock();
        let queue = state.tenants.get(tenant).ok_or(StoreError::NotFound(id))?;
        let seq = queue.seq_of(id)?;
        Ok(queue.history.get(&seq).cloned().unwrap_or_default())
    }

    async fn depth(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueDepth> {
        let state = self.lock();
        let mut depth = QueueDepth::default();
        if let Some(queue) = state.tenants.get(tenant) {
            for p in Priority::ALL {
                let range = (p.rank(), Timestamp::from_millis(i64::MIN), i64::MIN)..=(p.rank(), now, i64::MAX);
                depth.add(p, queue.pending.range(range).count() as u64);
            }
        }
        Ok(depth)
    }

    async fn counts(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueCounts> {
        let state = self.lock();
        let mut counts = QueueCounts::default();
        let Some(queue) = state.tenants.get(tenant) else { return Ok(counts) };
        for entry in queue.tasks.values() {
            let task = &entry.task;
            counts.add_status(task.status, 1);
            if task.status == TaskStatus::Pending {
                if task.run_at <= now {
                    counts.ready += 1;
                    counts.oldest_ready = Some(counts.oldest_ready.map_or(task.run_at, |t| t.min(task.run_at)));
                } else {
                    counts.scheduled += 1;
                }
            }
            if task.status.is_leased() && task.lease_expires_at.is_some_and(|t| t <= now) {
                counts.expired_leases += 1;
            }
        }
        Ok(counts)
    }

    // Tasks in memory are values, never decoded from stored text, so the
    // quarantine is always empty.
    async fn quarantined(&self, _tenant: &TenantId, query: &QuarantineQuery) -> Result<Page<Quarantined>> {
        query.validate()?;
        Ok(Page { items: Vec::new(), next_cursor: None, quarantined: Vec::new() })
    }

    async fn get_quarantined(&self, _tenant: &TenantId, id: TaskId) -> Result<Quarantined> {
        Err(StoreError::NotFound(id))
    }

    async fn drop_quarantined(&self, _tenant: &TenantId, id: TaskId) -> Result<()> {
        Err(StoreError::NotFound(id))
    }

    async fn purge_quarantined(&self, _tenant: &TenantId) -> Result<u64> {
        Ok(0)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn save_sessions(&self, sessions: &[Session]) -> Result<()> {
        let mut state = self.lock();
        for session in sessions {
            let queue = state.tenants.entry(session.tenant.clone()).or_default();
            queue.sessions.insert(session.id, session.clone());
        }
        Ok(())
    }

    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session> {
        let state = self.lock();
        state.tenants.get(tenant).and_then(|q| q.sessions.get(&id)).cloned().ok_or(StoreError::SessionNotFound(id))
    }

    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>> {
        query.validate()?;
        let state = self.lock();
        let Some(queue) = state.tenants.get(tenant) else { return Ok(Vec::new()) };
        let mut sessions: Vec<Session> = queue.sessions.values().filter(|s| query.matches(s)).cloned().collect();
        sessions.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
        sessions.truncate(query.limit);
        Ok(sessions)
    }

    async fn abandon_sessions(&self, tenant: &TenantId, agents: &[AgentId], why: &str, now: Timestamp) -> Result<u64> {
        let mut state = self.lock();
        let Some(queue) = state.tenants.get_mut(tenant) else { return Ok(0) };
        let mut n = 0;
        for session in queue.sessions.values_mut() {
            if !session.state.is_terminal() && agents.contains(&session.agent) {
                session.state = crate::session::SessionState::Error;
                session.error = Some(why.to_owned());
                session.updated_at = now;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl Registry for MemoryStore {
    async fn put_member(&self, member: &Member) -> Result<()> {
        member.validate()?;
        let key = (member.tenant.clone(), member.kind, member.id.clone());
        self.lock().members.insert(key, member.clone());
        Ok(())
    }

    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool> {
        Ok(self.lock().members.remove(&(tenant.clone(), kind, id.to_owned())).is_some())
    }

    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>> {
        let state = self.lock();
        let from = (tenant.clone(), kind, String::new());
        let rows = state.members.range(from..).take_while(|((t, k, _), _)| t == tenant && *k == kind);
        Ok(rows.map(|(_, m)| m).filter(|m| m.expires_at > now).cloned().collect())
    }
}

#[async_trait]
impl Ledger for MemoryStore {
    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros> {
        let mut state = self.lock();
        let total = state.spend.entry((tenant.clone(), period.to_owned())).or_default();
        *total = total.saturating_add(amount);
        Ok(*total)
    }

    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros> {
        Ok(self.lock().spend.get(&(tenant.clone(), period.to_owned())).copied().unwrap_or(0))
    }
}

impl ClusterChannel for MemoryStore {}

#[async_trait]
impl Credentials for MemoryStore {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let mut state = self.lock();
        if state.keys.contains_key(&key.id) || state.key_ids.contains_key(&key.hash) {
            return Err(StoreError::Conflict(format!("key {}", key.id)));
        }
        state.key_ids.insert(key.hash, key.id);
        state.keys.insert(key.id, key.clone());
        Ok(())
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        let state = self.lock();
        Ok(state.key_ids.get(hash).and_then(|id| state.keys.get(id)).cloned())
    }

    async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        self.lock().keys.get(id).cloned().ok_or(StoreError::KeyNotFound(*id))
    }

    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>> {
        let state = self.lock();
        let mut keys: Vec<ApiKey> =
            state.keys.values().filter(|k| tenant.is_none_or(|t| k.tenant == *t)).cloned().collect();
        keys.sort_by_key(|k| std::cmp::Reverse((k.created_at, k.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, id: &KeyId, now: Timestamp) -> Result<ApiKey> {
        let mut state = self.lock();
        let key = state.keys.get_mut(id).ok_or(StoreError::KeyNotFound(*id))?;
        key.revoked_at.get_or_insert(now);
        Ok(key.clone())
    }

    async fn expire_key(&self, id: &KeyId, at: Timestamp) -> Result<ApiKey> {
        let mut state = self.lock();
        let key = state.keys.get_mut(id).ok_or(StoreError::KeyNotFound(*id))?;
        key.expires_at = Some(key.expires_at.map_or(at, |e| e.min(at)));
        Ok(key.clone())
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        let mut state = self.lock();
        for (id, at) in used {
            if let Some(key) = state.keys.get_mut(id) {
                key.last_used_at = Some(key.last_used_at.map_or(*at, |t| t.max(*at)));
            }
        }
        Ok(())
    }

    async fn has_keys(&self) -> Result<bool> {
        Ok(!self.lock().keys.is_empty())
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        let mut state = self.lock();
        for entry in entries {
            state.next_audit_seq += 1;
            let seq = state.next_audit_seq;
            state.audit.insert(seq, AuditEntry { seq, ..entry.clone() });
        }
        Ok(())
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let below = crate::store::audit_start(query)?.map_or(u64::MAX, |s| u64::try_from(s).unwrap_or(0));
        let state = self.lock();
        let rows = state.audit.range(..below).rev().map(|(_, e)| e).filter(|e| query.matches(e)).take(query.limit + 1);
        Ok(crate::store::audit_page(rows.cloned().collect(), query.limit))
    }

    async fn prune_audit(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut state = self.lock();
        let old: Vec<u64> = state.audit.values().filter(|e| e.at < before).take(limit).map(|e| e.seq).collect();
        for seq in &old {
            state.audit.remove(seq);
        }
        Ok(old.len() as u64)
    }
}

fn replay_entry(queue: &mut TenantQueue, seq: i64, only_from: &[TaskStatus], now: Timestamp) -> Result<Task> {
    let task = &mut queue.tasks.get_mut(&seq).expect("exists").task;
    if !only_from.contains(&task.status) {
        return Err(StoreError::InvalidTransition { task: task.id, from: task.status, action: "replay" });
    }
    task.status = TaskStatus::Pending;
    task.attempt = 0;
    task.run_at = now;
    task.cancel_requested = false;
    task.result = None;
    task.completed_at = None;
    task.dead_lettered_at = None;
    task.updated_at = now;
    let task = task.clone();
    queue.insert_pending(seq);
    queue.record(seq);
    Ok(task)
}
