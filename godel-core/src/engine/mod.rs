//! The orchestrator: turns queued tasks into agent sessions and back into
//! results.
//!
//! An [`Orchestrator`] is a cheap handle (an `Arc`) built from a store, a set
//! of agents and an [`EngineConfig`]. Whoever embeds it calls
//! [`Orchestrator::run`] with a cancellation token and awaits it; everything
//! the engine spawns is owned by that call and stopped by that token.
//!
//! - **Dispatch is pushed.** [`Orchestrator::submit`] and every freed slot
//!   wake the dispatcher at once; a slow poll only catches scheduled tasks
//!   and submits made by other processes.
//! - **The store is the truth.** Claims, leases and cancel flags live there,
//!   so a crash loses nothing: leases lapse and another engine (or the next
//!   start) picks the work up.
//! - **Writes are group-committed.** Executions' starts and completions go
//!   to the store together: at once when nothing else is being written, else
//!   in one batch with everything that queued meanwhile (`engine/batch.rs`).
//! - **One tenant per orchestrator.** It serves `EngineConfig::tenant`.

mod batch;
pub(crate) mod budget;
mod cluster;
mod config;
mod execute;
mod scheduler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

pub use crate::engine::budget::{Budget, Budgets};
pub use crate::engine::cluster::ClusterAgent;
pub use crate::engine::config::{AgentConfig, EngineConfig, SchedulingPolicy};
pub use crate::money::{format_micros, micros_from_units};

use crate::InvalidInput;
use crate::agent::{Agent, AgentStatus};
use crate::bus::{EventBus, Subscription};
use crate::clock::{Clock, SystemClock};
use crate::engine::batch::{Batcher, Turn};
use crate::engine::scheduler::Scheduler;
use crate::event::{Event, EventKind, EventPattern};
use crate::ids::{AgentId, TaskId};
use crate::session::Session;
use crate::store::{CancelOutcome, ClaimRequest, Completion, Lease, LeaseWrite, Store, StoreError, WriteOutcome};
use crate::task::{NewTask, Task, TaskStatus};

/// Most leases reclaimed per sweep.
const RECLAIM_BATCH: usize = 1_000;
/// How often buffered session changes are written.
const SESSION_FLUSH: Duration = Duration::from_millis(50);
/// How long a health check may take before it counts as failed.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The engine. Clone it freely: clones share one engine.
#[derive(Clone, Debug)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    bus: EventBus,
    config: EngineConfig,
    scheduler: Mutex<Scheduler>,
    wake: Notify,
    /// Agents were added or removed: announce them now.
    agents_changed: Notify,
    /// Control channels of the executions running in this process.
    running: Mutex<HashMap<TaskId, Running>>,
    /// Session changes waiting to be written in one batch.
    sessions: Mutex<Vec<Session>>,
    /// Executions' starts and completions, written together (group commit).
    writes: Batcher<LeaseWrite, Result<WriteOutcome, StoreError>>,
}

/// An execution running in this process.
#[derive(Debug)]
struct Running {
    agent: AgentId,
    control: watch::Sender<Control>,
}

/// What the orchestrator tells a running execution.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Control {
    Run,
    /// Stop gracefully (cancel): SIGTERM, then kill after the grace period.
    Cancel,
    /// Stop now (force kill).
    Kill,
    /// Stop now and give the task back (shutdown).
    Shutdown,
}

/// Builds an [`Orchestrator`].
#[derive(Debug)]
pub struct OrchestratorBuilder {
    store: Arc<dyn Store>,
    config: EngineConfig,
    agents: Vec<AgentConfig>,
    clock: Arc<dyn Clock>,
    bus: EventBus,
}

impl OrchestratorBuilder {
    /// Replaces the configuration.
    #[must_use]
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds an agent.
    #[must_use]
    pub fn agent(mut self, agent: AgentConfig) -> Self {
        self.agents.push(agent);
        self
    }

    /// Replaces the clock (tests use [`crate::clock::ManualClock`]).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Publishes on this bus instead of a private one.
    #[must_use]
    pub fn bus(mut self, bus: EventBus) -> Self {
        self.bus = bus;
        self
    }

    /// Validates the configuration and builds the orchestrator. It does nothing until [`Orchestrator::run`].
    pub fn build(self) -> Result<Orchestrator, InvalidInput> {
        self.config.validate()?;
        let mut agents = self.agents;
        for agent in &mut agents {
            agent.validate()?;
        }
        for (i, agent) in agents.iter().enumerate() {
            if agents[..i].iter().any(|a| a.id == agent.id) {
                return Err(InvalidInput::new("agent id", format!("{} is configured twice", agent.id)));
            }
        }
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                store: self.store,
                clock: self.clock,
                bus: self.bus,
                scheduler: Mutex::new(
                    Scheduler::new(self.config.policy, agents).prefer_region(self.config.region.clone()),
                ),
                config: self.config,
                wake: Notify::new(),
                agents_changed: Notify::new(),
                running: Mutex::new(HashMap::new()),
                sessions: Mutex::new(Vec::new()),
                writes: Batcher::new(),
            }),
        })
    }
}

impl Orchestrator {
    /// Starts building an orchestrator over `store`.
    pub fn builder(store: Arc<dyn Store>) -> OrchestratorBuilder {
        OrchestratorBuilder {
            store,
            config: EngineConfig::default(),
            agents: Vec::new(),
            clock: Arc::new(SystemClock),
            bus: EventBus::default(),
        }
    }

    /// The store it works on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Its configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The bus it publishes on.
    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    /// Subscribes to events matching `patterns` (everything if empty).
    pub fn subscribe(&self, patterns: Vec<EventPattern>) -> Subscription {
        self.inner.bus.subscribe(patterns)
    }

    /// Queues a task and wakes the dispatcher. With an idempotency key already
    /// used, returns the first task unchanged.
    pub async fn submit(&self, task: NewTask) -> Result<Task, StoreError> {
        Ok(self.enqueue(task).await?.task)
    }

    /// Like [`Orchestrator::submit`], saying whether the task is new or an
    /// earlier one returned for its idempotency key.
    pub async fn enqueue(&self, task: NewTask) -> Result<crate::store::Enqueued, StoreError> {
        let inner = &self.inner;
        inner.check_budget().await?;
        let enqueued = inner.store.enqueue(&inner.config.tenant, task, inner.clock.now()).await?;
        if enqueued.created {
            inner.publish(EventKind::TaskCreated { task: enqueued.task.id, priority: enqueued.task.priority });
            inner.wake.notify_one();
        }
        Ok(enqueued)
    }

    /// Queues many tasks in one transaction.
    pub async fn submit_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        let inner = &self.inner;
        inner.check_budget().await?;
        let enqueued = inner.store.enqueue_batch(&inner.config.tenant, tasks, inner.clock.now()).await?;
        for e in enqueued.iter().filter(|e| e.created) {
            inner.publish(EventKind::TaskCreated { task: e.task.id, priority: e.task.priority });
        }
        inner.wake.notify_one();
        Ok(enqueued.into_iter().map(|e| e.task).collect())
    }

    /// One task.
    pub async fn get(&self, id: TaskId) -> Result<Task, StoreError> {
        self.inner.store.get(&self.inner.config.tenant, id).await
    }

    /// Cancels a task: at once if pending; a running one is asked to stop
    /// (SIGTERM, then killed after `kill_grace`), here or on whichever engine holds it.
    pub async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, StoreError> {
        self.stop(id, Control::Cancel).await
    }

    /// Like [`Orchestrator::cancel`] but skips the grace period.
    pub async fn kill(&self, id: TaskId) -> Result<CancelOutcome, StoreError> {
        self.stop(id, Control::Kill).await
    }

    async fn stop(&self, id: TaskId, control: Control) -> Result<CancelOutcome, StoreError> {
        let inner = &self.inner;
        let outcome = inner.store.cancel(&inner.config.tenant, id, inner.clock.now()).await?;
        match outcome {
            CancelOutcome::Cancelled => {
                let priority = inner.store.get(&inner.config.tenant, id).await.map(|t| t.priority).unwrap_or_default();
                inner.publish(EventKind::TaskCancelled { task: id, priority });
            }
            CancelOutcome::Requested => {
                if let Some(running) = inner.lock_running().get(&id) {
                    running.control.send_replace(control);
                }
            }
        }
        Ok(outcome)
    }

    /// The agents with their load and status.
    pub fn agents(&self) -> Vec<Agent> {
        let tenant = &self.inner.config.tenant;
        self.inner.lock_scheduler().agents.iter().map(|a| a.snapshot(tenant)).collect()
    }

    /// Adds an agent while the engine runs. Its id must be new.
    pub fn add_agent(&self, agent: AgentConfig) -> Result<Agent, InvalidInput> {
        let mut agent = agent;
        agent.validate()?;
        let id = agent.id.clone();
        let snapshot = {
            let mut scheduler = self.inner.lock_scheduler();
            if !scheduler.add(agent) {
                return Err(InvalidInput::new("agent id", format!("an agent {id} is already registered")));
            }
            scheduler.agent(&id).expect("just added").snapshot(&self.inner.config.tenant)
        };
        self.inner.publish(EventKind::AgentConnected { agent: id });
        self.inner.wake.notify_one();
        self.inner.agents_changed.notify_one();
        Ok(snapshot)
    }

    /// Deregisters an agent: it takes no new work, finishes what it runs, then disappears.
    pub fn remove_agent(&self, agent: &AgentId) -> Result<(), InvalidInput> {
        if !self.inner.lock_scheduler().remove(agent) {
            return Err(InvalidInput::new("agent id", format!("no agent {agent} is registered")));
        }
        self.inner.publish(EventKind::AgentDisconnected { agent: agent.clone(), reason: "deregistered".into() });
        self.inner.agents_changed.notify_one();
        Ok(())
    }

    /// Every agent announced by the nodes sharing the store (this one
    /// included; see `engine/cluster.rs`), by node and agent id. Announcements
    /// are renewed every few seconds, so load and status may be that old.
    pub async fn cluster_agents(&self) -> Result<Vec<ClusterAgent>, StoreError> {
        self.inner.cluster_agents().await
    }

    /// Changes how many tasks `agent` may run at once (e.g. this node's share
    /// of a gateway that several nodes use). Lowering it takes effect for new
    /// work only: running tasks finish.
    pub fn set_capacity(&self, agent: &AgentId, max_capacity: u32) -> Result<(), InvalidInput> {
        {
            let mut scheduler = self.inner.lock_scheduler();
            let state = scheduler
                .agent_mut(agent)
                .ok_or_else(|| InvalidInput::new("agent id", format!("no agent {agent} is registered")))?;
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
    pub fn agent_heartbeat(&self, agent: &AgentId) -> Result<(), InvalidInput> {
        let now = self.inner.clock.now();
        let revived = {
            let mut scheduler = self.inner.lock_scheduler();
            let state = scheduler
                .agent_mut(agent)
                .ok_or_else(|| InvalidInput::new("agent id", format!("no agent {agent} is configured")))?;
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

    /// Wakes the dispatcher (e.g. after tasks were enqueued behind the engine's back).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs the engine until `shutdown` is cancelled, then shuts down
    /// gracefully: stops claiming, gives running tasks `shutdown_grace` to
    /// finish, aborts the rest and releases their leases so the next start (or
    /// another engine) picks them up. Returns once nothing it started is left.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let now = inner.clock.now();
        // Sessions this engine's agents had open when it last stopped died with it.
        let ids: Vec<AgentId> = inner.lock_scheduler().agents.iter().map(|a| a.config.id.clone()).collect();
        let abandoned = inner.store.abandon_sessions(&cfg.tenant, &ids, "the engine restarted", now).await?;
        if abandoned > 0 {
            tracing::info!(sessions = abandoned, "closed sessions left open by a previous run");
        }
        for agent in &ids {
            inner.publish(EventKind::AgentConnected { agent: agent.clone() });
        }
        inner.publish(EventKind::System {
            name: "started".into(),
            message: format!("engine started with {} agents", ids.len()),
        });
        self.check_agents().await;

        // The group-commit flusher runs beside the loop below and stops after
        // the last execution, whose writes it carries.
        let stop_flusher = CancellationToken::new();
        let mut flusher = JoinSet::new();
        inner.writes.open();
        flusher.spawn({
            let (inner, stop) = (self.inner.clone(), stop_flusher.clone());
            async move { inner.flush_writes(&stop).await }
        });
        // Announcements and the cluster channel, until the very end.
        let stop_cluster = CancellationToken::new();
        let mut cluster = JoinSet::new();
        cluster.spawn(self.inner.clone().run_cluster(stop_cluster.clone()));

        let mut executions = JoinSet::new();
        let mut poll = tokio::time::interval(cfg.poll_interval);
        let mut reclaim = tokio::time::interval(cfg.reclaim_interval);
        let mut health = tokio::time::interval(cfg.agent_health_interval);
        let mut flush = tokio::time::interval(SESSION_FLUSH);
        for timer in [&mut poll, &mut reclaim, &mut health, &mut flush] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        health.reset(); // just checked
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(joined) = executions.join_next() => log_join(joined),
                () = inner.wake.notified() => self.dispatch(&mut executions).await,
                _ = poll.tick() => self.dispatch(&mut executions).await,
                _ = reclaim.tick() => self.reclaim().await,
                _ = health.tick() => self.check_agents().await,
                _ = flush.tick() => inner.flush_sessions().await,
            }
        }

        tracing::info!(running = executions.len(), grace = ?cfg.shutdown_grace, "shutting down: no new claims");
        let drained = tokio::time::timeout(cfg.shutdown_grace, async {
            loop {
                tokio::select! {
                    joined = executions.join_next() => match joined {
                        Some(joined) => log_join(joined),
                        None => break,
                    },
                    _ = flush.tick() => inner.flush_sessions().await,
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(running = executions.len(), "grace period over: aborting and releasing the rest");
            for running in inner.lock_running().values() {
                running.control.send_replace(Control::Shutdown);
            }
            while let Some(joined) = executions.join_next().await {
                log_join(joined);
            }
        }
        stop_flusher.cancel();
        while let Some(joined) = flusher.join_next().await {
            log_join(joined);
        }
        inner.flush_sessions().await;
        inner.publish(EventKind::System { name: "stopped".into(), message: "engine stopped".into() });
        stop_cluster.cancel();
        while let Some(joined) = cluster.join_next().await {
            log_join(joined);
        }
        Ok(())
    }

    /// Claims work for every agent with free slots, in the policy's order,
    /// until slots or ready tasks run out.
    async fn dispatch(&self, executions: &mut JoinSet<()>) {
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
                    let execution = execute::Execution::new(self.inner.clone(), agent, claim, control);
                    executions.spawn(execution.run());
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Sweeps lapsed leases (of any engine) and reports what moved.
    async fn reclaim(&self) {
        let inner = &self.inner;
        let now = inner.clock.now();
        let reclaimed = match inner.store.reclaim_expired(now, RECLAIM_BATCH).await {
            Ok(reclaimed) => reclaimed,
            Err(e) => {
                tracing::warn!(error = %e, "lease sweep failed");
                return;
            }
        };
        for r in reclaimed.iter().filter(|r| r.tenant == inner.config.tenant) {
            tracing::info!(task = %r.task, attempt = r.attempt, status = %r.status, "lease expired");
            let error = crate::TaskError::new(
                crate::TaskErrorKind::LeaseExpired,
                format!("lease of attempt {} expired", r.attempt),
            );
            let kind = match r.status {
                TaskStatus::Pending => EventKind::TaskRetrying { task: r.task, attempt: r.attempt, run_at: now, error },
                TaskStatus::DeadLetter => EventKind::TaskDeadLettered {
                    task: r.task,
                    priority: r.priority,
                    attempts: r.attempt,
                    error: Some(error),
                },
                _ => EventKind::TaskCancelled { task: r.task, priority: r.priority },
            };
            inner.publish(kind);
        }
        if !reclaimed.is_empty() {
            inner.wake.notify_one();
        }
    }

    /// Health-checks every agent; one without a successful check for
    /// `agent_offline_after` goes offline and gets no work until it recovers.
    async fn check_agents(&self) {
        let inner = &self.inner;
        let agents: Vec<AgentConfig> = inner.lock_scheduler().agents.iter().map(|a| a.config.clone()).collect();
        for agent in agents {
            let healthy = match tokio::time::timeout(HEALTH_TIMEOUT, agent.adapter.health()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(crate::adapter::AdapterError::transient("health check timed out")),
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

impl Inner {
    fn publish(&self, kind: EventKind) {
        self.bus.publish(Event { tenant: self.config.tenant.clone(), at: self.clock.now(), kind });
    }

    fn lock_scheduler(&self) -> MutexGuard<'_, Scheduler> {
        // The scheduler's methods cannot panic half-way; a poisoned lock is safe to reuse.
        self.scheduler.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_running(&self) -> MutexGuard<'_, HashMap<TaskId, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a claimed task as running on `agent` (see [`Inner::write`]).
    /// Returns whether a cancel was requested.
    async fn start(&self, lease: &Lease, agent: &AgentId) -> Result<bool, StoreError> {
        match self.write(LeaseWrite::Start { lease: lease.clone(), agent: agent.clone() }).await? {
            WriteOutcome::Started { cancel_requested } => Ok(cancel_requested),
            WriteOutcome::LeaseLost => Err(StoreError::LeaseLost(lease.task)),
            WriteOutcome::Completed => Err(self.unexpected("a start was reported as a completion")),
        }
    }

    /// Completes a task (see [`Inner::write`]).
    async fn complete(&self, lease: &Lease, result: serde_json::Value) -> Result<(), StoreError> {
        match self.write(LeaseWrite::Complete(Completion { lease: lease.clone(), result })).await? {
            WriteOutcome::Completed => Ok(()),
            WriteOutcome::LeaseLost => Err(StoreError::LeaseLost(lease.task)),
            WriteOutcome::Started { .. } => Err(self.unexpected("a completion was reported as a start")),
        }
    }

    /// Writes one lease holder's write: at once when nothing else is being
    /// written, else with everything queued meanwhile (group commit).
    async fn write(&self, write: LeaseWrite) -> Result<WriteOutcome, StoreError> {
        match self.writes.call(write).await {
            Turn::Done(answer) => answer,
            Turn::Yours(write, _busy) => {
                let outcome = self.store.write_batch(std::slice::from_ref(&write), self.clock.now()).await?;
                outcome.first().copied().ok_or_else(|| self.unexpected("a write got no outcome"))
            }
            Turn::Lost => Err(self.interrupted()),
        }
    }

    /// Writes queued lease holders' writes, one batch per store call, until
    /// `stop` and nothing is queued.
    async fn flush_writes(&self, stop: &CancellationToken) {
        let _closer = self.writes.closer();
        while let Some((batch, _busy)) = self.writes.next_batch(stop).await {
            let (writes, replies): (Vec<LeaseWrite>, Vec<_>) = batch.into_iter().unzip();
            let answers: Vec<Result<WriteOutcome, StoreError>> =
                match self.store.write_batch(&writes, self.clock.now()).await {
                    Ok(outcomes) if outcomes.len() == writes.len() => outcomes.into_iter().map(Ok).collect(),
                    Ok(_) => writes
                        .iter()
                        .map(|_| Err(self.unexpected("a batch got the wrong number of outcomes")))
                        .collect(),
                    Err(e) => writes.iter().map(|_| Err(self.shared_error(&e))).collect(),
                };
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The writer may be gone (its execution was aborted); nothing waits for the answer then.
                let _ = reply.send(answer);
            }
        }
    }

    /// A store that broke its contract.
    fn unexpected(&self, what: &str) -> StoreError {
        StoreError::Backend { backend: self.store.backend(), source: what.to_owned().into() }
    }

    /// A batch's error, for each of its writers: the same meaning (retryable
    /// or not) and message, since the error itself cannot be cloned.
    fn shared_error(&self, e: &StoreError) -> StoreError {
        let (backend, source) = (self.store.backend(), e.to_string().into());
        if e.is_retryable() {
            StoreError::Unavailable { backend, source }
        } else {
            StoreError::Backend { backend, source }
        }
    }

    /// The flusher stopped before it confirmed a write: whether it happened is
    /// unknown. Retryable, and a retry goes to the store directly.
    fn interrupted(&self) -> StoreError {
        StoreError::Unavailable {
            backend: self.store.backend(),
            source: "the engine stopped before the write was confirmed".into(),
        }
    }

    /// Queues a session change for the next batch write.
    fn record_session(&self, session: &Session) {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).push(session.clone());
    }

    async fn flush_sessions(&self) {
        let batch = std::mem::take(&mut *self.sessions.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return;
        }
        // Only the latest state of each session matters.
        let mut latest: HashMap<crate::SessionId, usize> = HashMap::new();
        for (i, s) in batch.iter().enumerate() {
            latest.insert(s.id, i);
        }
        let batch: Vec<Session> =
            batch.into_iter().enumerate().filter(|(i, s)| latest[&s.id] == *i).map(|(_, s)| s).collect();
        if let Err(e) = self.store.save_sessions(&batch).await {
            tracing::warn!(error = %e, sessions = batch.len(), "cannot save sessions; will retry");
            let mut pending = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            let newer = std::mem::take(&mut *pending);
            *pending = batch;
            pending.extend(newer);
        }
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        if e.is_panic() {
            tracing::error!(error = %e, "a task execution panicked; its slot was released and its lease will lapse");
        }
    }
}
