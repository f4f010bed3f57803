//! One orchestrator serving several tenants: tasks of each run, a tenant's
//! backlog does not starve another's, a tenant scope cannot reach another
//! tenant's tasks, events carry their tenant, and budgets are per tenant.
//! Runs are held by a gate the test opens, and waits follow events, so
//! nothing depends on timing. Claiming for several tenants is also run on
//! every store backend, whose tenant walls (PostgreSQL's row-level security
//! among them) each claim passes through, and across two nodes on the
//! backends with a cluster channel.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use godel_core::adapter::{AbortMode, Adapter, AdapterError, AgentSession, Outcome, OutputSink};
use godel_core::engine::{Budget, Budgets};
use godel_core::event::OutputStream;
use godel_core::store::{MemoryStore, SessionQuery, Store, TaskFilter};
use godel_core::{
    AgentConfig, AgentId, AgentKind, CancellationToken, EngineConfig, EngineError, Event, EventKind, ManualClock,
    NewTask, Orchestrator, Session, SessionState, StoreError, Subscription, TaskErrorKind, TaskId, TaskStatus,
    TenantId, Timestamp,
};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::conformance::{self, Fixture};
use crate::support::fast_engine;

/// Runs complete once the test hands out a permit, with `cost` micros in
/// their result; aborting a held run fails it.
#[derive(Debug)]
struct Gate {
    permits: Arc<Semaphore>,
    cost: u64,
}

struct GateSession {
    permits: Arc<Semaphore>,
    cost: u64,
    aborted: Notify,
}

#[async_trait]
impl Adapter for Gate {
    async fn open_session(&self, _task: &godel_core::Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        Ok(Box::new(GateSession { permits: self.permits.clone(), cost: self.cost, aborted: Notify::new() }))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

#[async_trait]
impl AgentSession for GateSession {
    async fn run(&self, task: &godel_core::Task, output: OutputSink) -> Outcome {
        tokio::select! {
            permit = self.permits.acquire() => permit.expect("the gate stays open").forget(),
            () = self.aborted.notified() => {
                let error = godel_core::TaskError::new(TaskErrorKind::Error, "aborted");
                return Outcome::Failed { error, retryable: false };
            }
        }
        output.send(OutputStream::Stdout, task.tenant.to_string()).await;
        Outcome::Completed { result: serde_json::json!({ "cost_micros": self.cost }) }
    }

    async fn abort(&self, _mode: AbortMode) {
        self.aborted.notify_one();
    }

    async fn close(&self, _outcome: &Outcome) {}
}

/// An orchestrator over a memory store with one gated agent; stops it when dropped.
struct Engine {
    orchestrator: Orchestrator,
    gate: Arc<Semaphore>,
    shutdown: CancellationToken,
    run: Option<JoinHandle<Result<(), StoreError>>>,
}

impl Engine {
    fn new(capacity: u32, cost: u64, config: EngineConfig) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        Self::over(store, capacity, cost, config)
    }

    fn over(store: Arc<dyn Store>, capacity: u32, cost: u64, config: EngineConfig) -> Self {
        let gate = Arc::new(Semaphore::new(0));
        let adapter = Arc::new(Gate { permits: gate.clone(), cost });
        let agent = AgentConfig::new(AgentId::new("a").unwrap(), AgentKind::Http, adapter).capacity(capacity);
        let orchestrator =
            Orchestrator::builder(store).config(config).agent(agent).clock(Arc::new(clock())).build().unwrap();
        Self { orchestrator, gate, shutdown: CancellationToken::new(), run: None }
    }

    fn start(&mut self) {
        let (orchestrator, shutdown) = (self.orchestrator.clone(), self.shutdown.clone());
        self.run = Some(tokio::spawn(async move { orchestrator.run(shutdown).await }));
    }

    async fn stop(&mut self) {
        self.gate.add_permits(1_000_000);
        self.shutdown.cancel();
        if let Some(run) = self.run.take() {
            run.await.unwrap().unwrap();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Every engine's clock: a fixed time, so nodes agree on what is ready and budgets on the month.
fn clock() -> ManualClock {
    ManualClock::new(Timestamp::parse_rfc3339("now", "2026-11-15T12:00:00Z").unwrap())
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

/// The next event, failing the test if none comes within a generous limit.
async fn next(events: &mut Subscription) -> Event {
    let published = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    published.expect("an event within 10s").expect("the bus stays open").event.clone()
}

/// Events until `done` says the last one was the one awaited.
async fn until(events: &mut Subscription, mut done: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = next(events).await;
        let last = done(&event);
        seen.push(event);
        if last {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_two_tenants_run_and_their_events_carry_their_tenant() {
    let mut engine = Engine::new(2, 0, fast_engine());
    engine.gate.add_permits(100);
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let mut events = engine.orchestrator.subscribe(Vec::new());
    engine.start();

    let a = engine.orchestrator.tenant(acme.clone()).submit(NewTask::prompt("a")).await.unwrap();
    let b = engine.orchestrator.tenant(globex.clone()).submit(NewTask::prompt("b")).await.unwrap();
    assert_eq!((&a.tenant, &b.tenant), (&acme, &globex));
    // A run's session closes after its task completes: the last events of both runs.
    let mut closed = 0;
    let seen = until(&mut events, |e| {
        closed += usize::from(matches!(e.kind, EventKind::SessionClosed { .. }));
        closed == 2
    })
    .await;
    // Stopping writes the sessions still buffered.
    engine.stop().await;

    let owner = |id: TaskId| if id == a.id { &acme } else { &globex };
    let mut sessions = 0;
    for event in &seen {
        if let Some(id) = event.kind.task() {
            assert_eq!(&event.tenant, owner(id), "{event:?}");
        }
        if let EventKind::SessionOpened { .. } | EventKind::SessionClosed { .. } = event.kind {
            sessions += 1;
            assert_ne!(event.tenant, TenantId::default_tenant(), "{event:?}");
        }
    }
    assert_eq!(sessions, 4, "each run opened and closed a session");
    for (scope, id) in [(acme.clone(), a.id), (globex.clone(), b.id)] {
        let task = engine.orchestrator.tenant(scope.clone()).get(id).await.unwrap();
        assert_eq!(task.status, TaskStatus::Completed);
        let store = engine.orchestrator.store();
        let output = store.output(&scope, id).await.unwrap();
        assert_eq!(output[0].data, scope.as_str(), "output is written under the task's tenant");
        let sessions = store.list_sessions(&scope, &SessionQuery::default()).await.unwrap();
        assert_eq!(sessions.iter().map(|s| s.task).collect::<Vec<_>>(), [Some(id)], "sessions are the task's tenant's");
    }
    assert_eq!(engine.orchestrator.served_tenants(), [TenantId::default_tenant(), acme, globex]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_tenant_s_tasks_run_though_submitted_elsewhere() {
    let mut engine = Engine::new(1, 0, fast_engine());
    engine.gate.add_permits(100);
    let initech = tenant("initech");
    let mut events = engine.orchestrator.subscribe(vec!["task.completed".parse().unwrap()]);
    engine.start();
    // Enqueued behind the engine's back, as another node would.
    let store = engine.orchestrator.store().clone();
    let task = store.enqueue(&initech, NewTask::prompt("x"), Timestamp::EPOCH).await.unwrap().task;
    engine.orchestrator.serve_tenant(initech.clone());
    engine.orchestrator.serve_tenant(initech.clone());
    let done = next(&mut events).await;
    assert_eq!(done.tenant, initech);
    assert!(matches!(done.kind, EventKind::TaskCompleted { task: id, .. } if id == task.id));
    assert_eq!(engine.orchestrator.served_tenants(), [TenantId::default_tenant(), initech]);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_backlog_does_not_starve_another() {
    let mut engine = Engine::new(1, 0, fast_engine());
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let backlog: Vec<NewTask> = (0..50).map(|i| NewTask::prompt(format!("a{i}"))).collect();
    engine.orchestrator.tenant(acme.clone()).submit_batch(backlog).await.unwrap();
    let mut assigned = engine.orchestrator.subscribe(vec!["task.assigned".parse().unwrap()]);
    engine.start();
    assert_eq!(next(&mut assigned).await.tenant, acme, "the only slot runs the backlog");

    let lone = engine.orchestrator.tenant(globex.clone()).submit(NewTask::prompt("b")).await.unwrap();
    let mut claims = Vec::new();
    while claims.len() < 3 {
        // Each permit lets the running task finish, which frees the slot for the next claim.
        engine.gate.add_permits(1);
        let event = next(&mut assigned).await;
        let first = matches!(event.kind, EventKind::TaskAssigned { task, .. } if task == lone.id);
        claims.push((event.tenant, first));
    }
    let lone_at = claims.iter().position(|(_, lone)| *lone).expect("globex's task was claimed");
    assert!(lone_at < 2, "globex waited behind acme's backlog: {claims:?}");
    assert_eq!(claims.iter().filter(|(t, _)| *t == acme).count(), 2, "acme's backlog goes on: {claims:?}");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_cannot_touch_another_tenant_s_task() {
    let mut engine = Engine::new(1, 0, fast_engine());
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let (a, b) = (engine.orchestrator.tenant(acme.clone()), engine.orchestrator.tenant(globex));
    assert_eq!(a.id(), &acme);
    let patterns = ["task.started", "task.cancelled"].map(|p| p.parse().unwrap());
    let mut events = engine.orchestrator.subscribe(patterns.into());
    engine.start();
    let running = a.submit(NewTask::prompt("held")).await.unwrap().id;
    let EventKind::TaskStarted { session, .. } = next(&mut events).await.kind else { panic!("expected task.started") };

    let not_found = |r: Result<(), EngineError>| matches!(r, Err(EngineError::TaskNotFound(id)) if id == running);
    assert!(not_found(b.get(running).await.map(|_| ())));
    assert!(not_found(b.cancel(running).await.map(|_| ())));
    assert!(not_found(b.kill(running).await.map(|_| ())));
    assert!(not_found(b.retry(running).await.map(|_| ())));
    assert!(not_found(b.replay_dead_letter(running).await.map(|_| ())));
    assert!(not_found(b.purge(running).await));
    assert!(not_found(engine.orchestrator.get(running).await.map(|_| ())), "nor through the configured tenant");
    assert!(matches!(b.terminate_session(session).await, Err(EngineError::SessionNotFound(id)) if id == session));
    assert_eq!(a.get(running).await.unwrap().status, TaskStatus::Running, "untouched");

    // Finished, it still cannot be purged, replayed or bulk-deleted through another tenant.
    a.cancel(running).await.unwrap();
    let cancelled = next(&mut events).await;
    assert!(matches!(cancelled.kind, EventKind::TaskCancelled { task, .. } if task == running));
    assert_eq!(cancelled.tenant, acme);
    assert_eq!(a.get(running).await.unwrap().status, TaskStatus::Cancelled);
    assert!(not_found(b.retry(running).await.map(|_| ())));
    assert!(not_found(b.purge(running).await));
    assert_eq!(b.purge_finished(&TaskFilter::default(), Timestamp::from_millis(i64::MAX)).await.unwrap(), 0);
    assert_eq!(b.replay_dead_letters(&TaskFilter::default()).await.unwrap(), 0);
    a.purge(running).await.unwrap();
    assert!(not_found(a.get(running).await.map(|_| ())));
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_per_tenant() {
    const COST: u64 = 150;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let mut budgets = Budgets::default();
    budgets.tenants.insert(acme.clone(), Budget { soft: None, hard: Some(100) });
    let mut engine = Engine::new(1, COST, EngineConfig { budgets, ..fast_engine() });
    engine.gate.add_permits(100);
    let mut events = engine.orchestrator.subscribe(vec!["budget.exceeded".parse().unwrap()]);
    engine.start();

    let a = engine.orchestrator.tenant(acme.clone());
    a.submit(NewTask::prompt("spend")).await.unwrap();
    let exceeded = next(&mut events).await;
    assert_eq!(exceeded.tenant, acme);
    assert!(matches!(
        exceeded.kind,
        EventKind::BudgetExceeded { spent_micros: COST, limit_micros: 100, hard: true, .. }
    ));
    let store = engine.orchestrator.store();
    assert_eq!(store.spend(&acme, "2026-11").await.unwrap(), COST);
    assert_eq!(store.spend(&globex, "2026-11").await.unwrap(), 0);
    assert_eq!(store.spend(&TenantId::default_tenant(), "2026-11").await.unwrap(), 0);

    match a.submit(NewTask::prompt("more")).await {
        Err(EngineError::BudgetExceeded { tenant, spent, limit, .. }) => {
            assert_eq!((tenant, spent, limit), (acme, COST, 100));
        }
        other => panic!("expected BudgetExceeded, got {other:?}"),
    }
    engine.orchestrator.tenant(globex.clone()).submit(NewTask::prompt("fine")).await.unwrap();
    engine.orchestrator.submit(NewTask::prompt("fine too")).await.unwrap();
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_left_open_are_closed_for_every_served_tenant() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let agent = AgentId::new("a").unwrap();
    let stale = |t: &TenantId| Session::new(t.clone(), agent.clone(), Timestamp::EPOCH);
    let (before, after) = (stale(&acme), stale(&globex));
    store.save_sessions(&[before.clone(), after.clone()]).await.unwrap();
    let mut engine = Engine::over(store.clone(), 1, 0, fast_engine());
    engine.gate.add_permits(100);
    engine.orchestrator.serve_tenant(acme.clone());
    let mut started = engine.orchestrator.subscribe(vec!["system.started".parse().unwrap()]);
    engine.start();
    next(&mut started).await;
    assert_eq!(store.get_session(&acme, before.id).await.unwrap().state, SessionState::Error, "closed at start");
    assert_eq!(store.get_session(&globex, after.id).await.unwrap().state, SessionState::Created, "not served yet");

    // Served later: closed before its first claim.
    let mut completed = engine.orchestrator.subscribe(vec!["task.completed".parse().unwrap()]);
    engine.orchestrator.tenant(globex.clone()).submit(NewTask::prompt("x")).await.unwrap();
    assert_eq!(next(&mut completed).await.tenant, globex);
    assert_eq!(store.get_session(&globex, after.id).await.unwrap().state, SessionState::Error);
    engine.stop().await;
}

/// Runs a task of each of two tenants on `fixture`'s store; nothing if the backend is unavailable.
async fn two_tenants_run_on(fixture: Option<Fixture>) {
    let Some(fixture) = fixture else { return };
    let mut engine = Engine::over(fixture.store.clone(), 2, 0, fast_engine());
    engine.gate.add_permits(100);
    let mut completed = engine.orchestrator.subscribe(vec!["task.completed".parse().unwrap()]);
    engine.start();
    let mut ids = Vec::new();
    for name in ["acme", "globex"] {
        let scope = engine.orchestrator.tenant(tenant(name));
        ids.push((scope.clone(), scope.submit(NewTask::prompt(name)).await.unwrap().id));
    }
    let done = [next(&mut completed).await, next(&mut completed).await];
    for (scope, id) in &ids {
        assert!(done.iter().any(|e| &e.tenant == scope.id() && e.kind.task() == Some(*id)), "{done:?}");
        assert_eq!(scope.get(*id).await.unwrap().status, TaskStatus::Completed);
    }
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_run_on_memory() {
    two_tenants_run_on(conformance::memory().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_run_on_sqlite() {
    two_tenants_run_on(conformance::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_run_on_postgres() {
    two_tenants_run_on(conformance::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_run_on_redis() {
    two_tenants_run_on(conformance::redis().await).await;
}

/// Two nodes on one store: the one with the agent serves globex, the other
/// takes globex's submit. The wake-up crosses over (the poll is an hour
/// away) and the completion is relayed back, both for globex.
async fn a_tenant_s_work_crosses_nodes_on(fixture: Option<Fixture>) {
    let Some(Fixture { store, peer: Some(peer), .. }) = fixture else { return };
    let slow_poll = EngineConfig { poll_interval: Duration::from_secs(3_600), ..fast_engine() };
    let mut worker = Engine::over(store, 1, 0, EngineConfig { node: "worker".into(), ..slow_poll.clone() });
    worker.gate.add_permits(100);
    let globex = tenant("globex");
    worker.orchestrator.serve_tenant(globex.clone());
    worker.start();
    let config = EngineConfig { node: "front".into(), ..slow_poll };
    let front = Orchestrator::builder(peer).config(config).clock(Arc::new(clock())).build().unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (front, shutdown) = (front.clone(), shutdown.clone());
        async move { front.run(shutdown).await }
    });
    // The worker listens once it announces its agent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !front.cluster_agents().await.unwrap().iter().any(|a| a.node == "worker") {
        assert!(tokio::time::Instant::now() < deadline, "the worker never announced its agent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut completed = front.subscribe(vec!["task.completed".parse().unwrap()]);
    let task = front.tenant(globex.clone()).submit(NewTask::prompt("x")).await.unwrap();
    let done = next(&mut completed).await;
    assert_eq!((done.tenant, done.kind.task()), (globex.clone(), Some(task.id)));
    let settled = front.tenant(globex).get(task.id).await.unwrap();
    assert_eq!(settled.agent.as_ref().map(AgentId::as_str), Some("a"), "run by the worker's agent");
    shutdown.cancel();
    run.await.unwrap().unwrap();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_work_crosses_nodes_on_postgres() {
    a_tenant_s_work_crosses_nodes_on(conformance::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_work_crosses_nodes_on_redis() {
    a_tenant_s_work_crosses_nodes_on(conformance::redis().await).await;
}
