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
//! - **One door for writes.** The server and the CLI change tasks and
//!   agents only through the orchestrator's commands (`engine/tasks.rs`,
//!   `engine/agents.rs`), so each publishes its events, wakes the dispatcher
//!   and applies budgets here; they fail with an [`EngineError`] by meaning.
//!   Reads may go to the store directly.
//! - **Many tenants per orchestrator.** Commands act for the tenant of the
//!   [`TenantScope`] they go through (the orchestrator's own, for
//!   `EngineConfig::tenant`), and the dispatcher claims for every tenant it
//!   serves, in turn (`engine/tenants.rs`). Whatever follows a claim uses the
//!   lease's tenant.
//!
//! The run loop's parts live beside this file: `dispatch.rs` (claims and
//! starts executions), `reap.rs` (what a crash left running), `reclaim.rs`
//! (the lapsed-lease sweep), `health.rs` (agent health checks),
//! `execute.rs` (one attempt), `batch.rs` (group commit) and `cluster.rs`
//! (nodes sharing a store).

mod agents;
mod batch;
pub(crate) mod budget;
mod cluster;
mod config;
mod dispatch;
mod error;
mod execute;
mod health;
mod reap;
mod reclaim;
mod scheduler;
mod tasks;
mod tenants;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

pub use crate::engine::agents::MemberEntry;
pub use crate::engine::budget::{Budget, Budgets};
pub use crate::engine::cluster::ClusterAgent;
pub use crate::engine::config::{AgentConfig, EngineConfig, SchedulingPolicy};
pub use crate::engine::error::EngineError;
pub use crate::engine::tenants::TenantScope;
pub use crate::money::{format_micros, micros_from_units};

use crate::InvalidInput;
use crate::bus::{EventBus, Subscription};
use crate::clock::{Clock, SystemClock};
use crate::engine::batch::{Batcher, Turn};
use crate::engine::scheduler::Scheduler;
use crate::engine::tenants::Served;
use crate::event::{Event, EventKind, EventPattern};
use crate::ids::{AgentId, TaskId, TenantId};
use crate::session::Session;
use crate::store::{Completion, Lease, LeaseWrite, Store, StoreError, WriteOutcome};

/// How often buffered session changes are written.
const SESSION_FLUSH: Duration = Duration::from_millis(50);

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
    /// The tenants the dispatcher claims for.
    served: Mutex<Served>,
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
        let bound: Vec<TenantId> = agents.iter().filter_map(|a| a.tenant.clone()).collect();
        let orchestrator = Orchestrator {
            inner: Arc::new(Inner {
                store: self.store,
                clock: self.clock,
                bus: self.bus,
                scheduler: Mutex::new(
                    Scheduler::new(self.config.policy, agents).prefer_region(self.config.region.clone()),
                ),
                served: Mutex::new(Served::new(self.config.tenant.clone())),
                config: self.config,
                wake: Notify::new(),
                agents_changed: Notify::new(),
                running: Mutex::new(HashMap::new()),
                sessions: Mutex::new(Vec::new()),
                writes: Batcher::new(),
            }),
        };
        for tenant in &bound {
            orchestrator.inner.serve(tenant);
        }
        Ok(orchestrator)
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
        // Processes and directories of runs that a crash left behind.
        self.reap_orphans().await;
        // Sessions this engine's agents had open when it last stopped died with it.
        let ids: Vec<AgentId> = inner.lock_scheduler().agents.iter().map(|a| a.config.id.clone()).collect();
        let abandoned = inner.sweep_all(&ids).await?;
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
}

impl Inner {
    /// Publishes an event of the configured tenant (agents and the engine itself).
    fn publish(&self, kind: EventKind) {
        self.publish_for(&self.config.tenant, kind);
    }

    /// Publishes an event of `tenant` (its tasks, sessions and budget).
    fn publish_for(&self, tenant: &TenantId, kind: EventKind) {
        self.bus.publish(Event { tenant: tenant.clone(), at: self.clock.now(), kind });
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
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a task execution panicked; its slot was released and its lease will lapse");
    }
}
