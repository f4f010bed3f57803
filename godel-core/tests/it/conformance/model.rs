//! A model-based test of the store contract. proptest draws random sequences
//! of enqueue, claim, start, heartbeat, complete, fail, release, cancel,
//! reclaim and replay, with a manual clock that moves past leases, and plays
//! each one against a fresh store of every backend and against [`Model`], a
//! small reference of the contract written to be read rather than to be
//! fast. After every step both must give the same answer and agree on every
//! task's state, on the queue depth and on the health counts; a disagreement
//! is shrunk to a minimal failing sequence, which the failure prints.
//!
//! Leases are drawn from every lease ever handed out, so most writes present
//! a stale one and must be fenced (rule 3). On PostgreSQL and Redis each step
//! goes through one of two handles on the same namespace, as two nodes would.
//!
//! Cases are few by default, so that CI spends seconds per backend;
//! `GODEL_PROPTEST_CASES=2000` digs deeper.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use godel_core::store::{
    CancelOutcome, ClaimRequest, FailOutcome, Failure, Lease, QueueCounts, Retry, Store, StoreError, TaskQuery,
};
use godel_core::{AgentId, NewTask, Priority, Task, TaskError, TaskErrorKind, TaskId, TaskStatus, TenantId, Timestamp};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

use crate::conformance::Fixture;

/// Where every case starts; any fixed instant will do.
const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

/// How long a claim's lease lasts.
const LEASE: Duration = Duration::from_secs(30);

/// Cases per backend unless `GODEL_PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 64;

/// Fewer on PostgreSQL, where each case creates and drops a schema (about a second).
#[cfg(feature = "postgres")]
const POSTGRES_CASES: u32 = 24;

#[test]
fn memory() {
    check(DEFAULT_CASES, async || crate::conformance::memory().await.map(Case::plain));
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite() {
    check(DEFAULT_CASES, async || crate::conformance::sqlite().await.map(Case::plain));
}

#[cfg(feature = "postgres")]
#[test]
fn postgres() {
    check(POSTGRES_CASES, Case::postgres);
}

#[cfg(feature = "redis")]
#[test]
fn redis() {
    check(DEFAULT_CASES, async || crate::conformance::redis().await.map(Case::plain));
}

/// One step of a sequence. Leases and tasks are picked by [`Index`] among
/// those that exist when the step runs, so that shrinking keeps them valid;
/// a step that needs one when there is none does nothing.
#[derive(Clone, Debug)]
enum Op {
    Enqueue { priority: Priority, delay_secs: u64, max_attempts: u32, key: Option<u8> },
    Claim { limit: usize, peer: bool },
    Start { lease: Index, peer: bool },
    Heartbeat { lease: Index, extend_secs: u64, peer: bool },
    Complete { lease: Index, peer: bool },
    Fail { lease: Index, retry_secs: Option<u64>, peer: bool },
    Release { lease: Index, peer: bool },
    ConfirmCancel { lease: Index, peer: bool },
    Cancel { task: Index, peer: bool },
    Replay { task: Index, peer: bool },
    Advance { secs: u64 },
    Reclaim { peer: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let priority = prop::sample::select(Priority::ALL.to_vec());
    let delay = prop_oneof![3 => Just(0u64), 1 => 1..=20u64];
    let key = prop::option::weighted(0.3, 0..3u8);
    prop_oneof![
        4 => (priority, delay, 1..=3u32, key).prop_map(|(priority, delay_secs, max_attempts, key)| {
            Op::Enqueue { priority, delay_secs, max_attempts, key }
        }),
        4 => (1..=3usize, any::<bool>()).prop_map(|(limit, peer)| Op::Claim { limit, peer }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(lease, peer)| Op::Start { lease, peer }),
        2 => (any::<Index>(), 1..=60u64, any::<bool>())
            .prop_map(|(lease, extend_secs, peer)| Op::Heartbeat { lease, extend_secs, peer }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(lease, peer)| Op::Complete { lease, peer }),
        2 => (any::<Index>(), prop::option::of(0..=20u64), any::<bool>())
            .prop_map(|(lease, retry_secs, peer)| Op::Fail { lease, retry_secs, peer }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(lease, peer)| Op::Release { lease, peer }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(lease, peer)| Op::ConfirmCancel { lease, peer }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(task, peer)| Op::Cancel { task, peer }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(task, peer)| Op::Replay { task, peer }),
        2 => (1..=40u64).prop_map(|secs| Op::Advance { secs }),
        2 => any::<bool>().prop_map(|peer| Op::Reclaim { peer }),
    ]
}

/// Runs `cases` cases (or `GODEL_PROPTEST_CASES`) against stores from
/// `open`, one fresh store per case. Skips (having printed why) when `open`
/// finds its service missing.
fn check<F, Fut>(cases: u32, open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<Case>>,
{
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    match runtime.block_on(open()) {
        Some(case) => runtime.block_on(case.close()),
        None => return,
    }
    let cases = std::env::var("GODEL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    let config = Config {
        cases,
        // Each shrinking step opens a store: enough to find a short sequence, bounded in time.
        max_shrink_iters: 1_000,
        // The seed of a failure is printed; no regression files in the source tree.
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..=40), |ops| {
        runtime.block_on(async {
            let case = open().await.expect("the service answered for the first case");
            let outcome = Run::new(&case.fixture).play(&ops).await;
            case.close().await;
            outcome
        })
    });
    if let Err(e) = result {
        panic!("the store disagrees with the model of its contract: {e}");
    }
}

/// A fresh store for one case, and how to clean up after it.
struct Case {
    fixture: Fixture,
    /// The PostgreSQL schema to drop once the case is over: shrinking opens
    /// hundreds of stores, too many to leave for the stale-schema sweep.
    #[cfg(feature = "postgres")]
    schema: Option<String>,
}

impl Case {
    fn plain(fixture: Fixture) -> Self {
        Self {
            fixture,
            #[cfg(feature = "postgres")]
            schema: None,
        }
    }

    /// Two handles on a fresh schema, as `conformance::postgres` opens them,
    /// remembering the schema so that [`Case::close`] can drop it.
    #[cfg(feature = "postgres")]
    async fn postgres() -> Option<Self> {
        use godel_core::store::PostgresStore;

        use crate::conformance::{drop_stale_schemas, fresh_schema, postgres_url, service_missing, with_param};

        let base = postgres_url();
        drop_stale_schemas(&base).await;
        let schema = fresh_schema();
        let url = with_param(&base, "schema", &schema);
        let store = match PostgresStore::open(&url).await {
            Ok(store) => store,
            Err(e @ StoreError::Open { .. }) => return service_missing("PostgreSQL", e),
            Err(e) => panic!("opening the PostgreSQL store failed: {e}"),
        };
        let peer = PostgresStore::open(&url).await.expect("open a second PostgreSQL handle");
        let fixture = Fixture { store: Arc::new(store), peer: Some(Arc::new(peer)), raw: None, _dir: None };
        Some(Self { fixture, schema: Some(schema) })
    }

    async fn close(self) {
        #[cfg(feature = "postgres")]
        if let Some(schema) = self.schema {
            drop(self.fixture);
            let pool = sqlx::PgPool::connect(&crate::conformance::postgres_url()).await.expect("connect to PostgreSQL");
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&pool)
                .await
                .expect("drop the case's schema");
            pool.close().await;
        }
    }
}

/// Why a store refused a step, for comparison with the model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Refusal {
    LeaseLost,
    InvalidTransition,
}

/// A task's state as the contract defines it: what the model predicts and
/// the comparison reads back. The lease's expiry counts only while leased.
#[derive(Clone, PartialEq, Eq, Debug)]
struct TaskState {
    priority: Priority,
    status: TaskStatus,
    attempt: u32,
    max_attempts: u32,
    run_at: Timestamp,
    lease_expires_at: Option<Timestamp>,
    cancel_requested: bool,
}

impl TaskState {
    fn of(task: &Task) -> Self {
        Self {
            priority: task.priority,
            status: task.status,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            run_at: task.run_at,
            lease_expires_at: task.lease_expires_at.filter(|_| task.status.is_leased()),
            cancel_requested: task.cancel_requested,
        }
    }
}

/// The reference: tasks in enqueue order, each with the lease (an index into
/// every lease handed out) that currently holds it.
#[derive(Debug)]
struct Model {
    now: Timestamp,
    tasks: Vec<(TaskState, Option<usize>)>,
    /// For each lease handed out, its task.
    leases: Vec<usize>,
    keys: HashMap<u8, usize>,
}

impl Model {
    fn new() -> Self {
        Self { now: T0, tasks: Vec::new(), leases: Vec::new(), keys: HashMap::new() }
    }

    /// Returns the task's index and whether it is new (rule 7).
    fn enqueue(&mut self, priority: Priority, delay: Duration, max_attempts: u32, key: Option<u8>) -> (usize, bool) {
        if let Some(task) = key.and_then(|k| self.keys.get(&k)) {
            return (*task, false);
        }
        let state = TaskState {
            priority,
            status: TaskStatus::Pending,
            attempt: 0,
            max_attempts,
            run_at: self.now + delay,
            lease_expires_at: None,
            cancel_requested: false,
        };
        self.tasks.push((state, None));
        let task = self.tasks.len() - 1;
        if let Some(k) = key {
            self.keys.insert(k, task);
        }
        (task, true)
    }

    /// The ready tasks in contract order (rule 2): priority, run_at, then enqueue order.
    fn ready(&self) -> Vec<usize> {
        let mut ready: Vec<usize> = (0..self.tasks.len())
            .filter(|&t| self.tasks[t].0.status == TaskStatus::Pending && self.tasks[t].0.run_at <= self.now)
            .collect();
        ready.sort_by_key(|&t| (self.tasks[t].0.priority, self.tasks[t].0.run_at, t));
        ready
    }

    /// Claims up to `limit` ready tasks; returns them in order.
    fn claim(&mut self, limit: usize) -> Vec<usize> {
        let picked: Vec<usize> = self.ready().into_iter().take(limit).collect();
        for &t in &picked {
            self.leases.push(t);
            let (state, lease) = &mut self.tasks[t];
            state.status = TaskStatus::Assigned;
            state.attempt += 1;
            state.lease_expires_at = Some(self.now + LEASE);
            state.cancel_requested = false;
            *lease = Some(self.leases.len() - 1);
        }
        picked
    }

    /// The task `lease` holds, if it still holds it (rule 3).
    fn held(&mut self, lease: usize) -> Result<&mut TaskState, Refusal> {
        let (state, current) = &mut self.tasks[self.leases[lease]];
        if *current == Some(lease) && state.status.is_leased() { Ok(state) } else { Err(Refusal::LeaseLost) }
    }

    /// Ends the lease on a held task and moves it to `status`.
    fn settle(&mut self, lease: usize, status: TaskStatus) {
        let (state, current) = &mut self.tasks[self.leases[lease]];
        state.status = status;
        state.lease_expires_at = None;
        *current = None;
    }

    fn start(&mut self, lease: usize) -> Result<(Timestamp, bool), Refusal> {
        let state = self.held(lease)?;
        state.status = TaskStatus::Running;
        Ok((state.lease_expires_at.expect("leased"), state.cancel_requested))
    }

    fn heartbeat(&mut self, lease: usize, extend: Duration) -> Result<(Timestamp, bool), Refusal> {
        let now = self.now;
        let state = self.held(lease)?;
        state.lease_expires_at = Some(now + extend);
        Ok((now + extend, state.cancel_requested))
    }

    fn complete(&mut self, lease: usize) -> Result<(), Refusal> {
        self.held(lease)?;
        self.settle(lease, TaskStatus::Completed);
        Ok(())
    }

    fn fail(&mut self, lease: usize, retry: Retry) -> Result<FailOutcome, Refusal> {
        let now = self.now;
        let state = self.held(lease)?;
        let outcome = match retry {
            _ if state.cancel_requested => FailOutcome::Cancelled,
            Retry::Never => FailOutcome::Failed,
            Retry::After(_) if state.attempt >= state.max_attempts => FailOutcome::DeadLettered,
            Retry::After(delay) => FailOutcome::Retrying { run_at: now + delay },
        };
        let status = match outcome {
            FailOutcome::Cancelled => TaskStatus::Cancelled,
            FailOutcome::Failed => TaskStatus::Failed,
            FailOutcome::DeadLettered => TaskStatus::DeadLetter,
            FailOutcome::Retrying { run_at } => {
                state.run_at = run_at;
                TaskStatus::Pending
            }
        };
        self.settle(lease, status);
        Ok(outcome)
    }

    /// Gives the task back: the attempt does not count and it keeps its place.
    fn release(&mut self, lease: usize) -> Result<TaskStatus, Refusal> {
        let state = self.held(lease)?;
        let status = if state.cancel_requested {
            TaskStatus::Cancelled
        } else {
            state.attempt -= 1;
            TaskStatus::Pending
        };
        self.settle(lease, status);
        Ok(status)
    }

    fn confirm_cancel(&mut self, lease: usize) -> Result<(), Refusal> {
        self.held(lease)?;
        self.settle(lease, TaskStatus::Cancelled);
        Ok(())
    }

    /// Rule 5: a pending task is cancelled at once, a leased one is flagged.
    fn cancel(&mut self, task: usize) -> Result<CancelOutcome, Refusal> {
        let state = &mut self.tasks[task].0;
        match state.status {
            TaskStatus::Pending => {
                state.status = TaskStatus::Cancelled;
                Ok(CancelOutcome::Cancelled)
            }
            TaskStatus::Assigned | TaskStatus::Running => {
                state.cancel_requested = true;
                Ok(CancelOutcome::Requested)
            }
            _ => Err(Refusal::InvalidTransition),
        }
    }

    fn replay(&mut self, task: usize) -> Result<(), Refusal> {
        let now = self.now;
        let state = &mut self.tasks[task].0;
        if !godel_core::store::REPLAYABLE.contains(&state.status) {
            return Err(Refusal::InvalidTransition);
        }
        state.status = TaskStatus::Pending;
        state.attempt = 0;
        state.run_at = now;
        state.cancel_requested = false;
        Ok(())
    }

    /// Rule 4: every lapsed lease ends; its task is cancelled if a cancel was
    /// asked, dead-lettered if its attempts are spent, and ready again
    /// otherwise. Returns what moved, by task.
    fn reclaim(&mut self) -> Vec<(usize, TaskStatus)> {
        let lapsed: Vec<usize> = (0..self.tasks.len())
            .filter(|&t| {
                let state = &self.tasks[t].0;
                state.status.is_leased() && state.lease_expires_at.is_some_and(|at| at <= self.now)
            })
            .collect();
        lapsed
            .into_iter()
            .map(|t| {
                let (state, current) = &mut self.tasks[t];
                state.status = if state.cancel_requested {
                    TaskStatus::Cancelled
                } else if state.attempt >= state.max_attempts {
                    TaskStatus::DeadLetter
                } else {
                    TaskStatus::Pending
                };
                state.lease_expires_at = None;
                *current = None;
                (t, state.status)
            })
            .collect()
    }

    /// Rule 8: ready tasks per priority.
    fn depth(&self) -> [u64; 4] {
        let mut depth = [0; 4];
        for t in self.ready() {
            depth[usize::from(self.tasks[t].0.priority.rank())] += 1;
        }
        depth
    }

    fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (state, _) in &self.tasks {
            counts.by_status[state.status.index()] += 1;
            if state.status == TaskStatus::Pending {
                if state.run_at <= self.now {
                    counts.ready += 1;
                    counts.oldest_ready = Some(counts.oldest_ready.map_or(state.run_at, |t| t.min(state.run_at)));
                } else {
                    counts.scheduled += 1;
                }
            }
            if state.status.is_leased() && state.lease_expires_at.is_some_and(|t| t <= self.now) {
                counts.expired_leases += 1;
            }
        }
        counts
    }
}

/// [`QueueCounts`] as plain fields, to compare with the model's.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
struct Counts {
    by_status: [u64; 7],
    ready: u64,
    scheduled: u64,
    expired_leases: u64,
    oldest_ready: Option<Timestamp>,
}

impl Counts {
    fn of(counts: &QueueCounts) -> Self {
        Self {
            by_status: TaskStatus::ALL.map(|s| counts.status(s)),
            ready: counts.ready,
            scheduled: counts.scheduled,
            expired_leases: counts.expired_leases,
            oldest_ready: counts.oldest_ready,
        }
    }
}

/// One case: the store under test, the model, and what maps one onto the other.
struct Run<'a> {
    fixture: &'a Fixture,
    tenant: TenantId,
    model: Model,
    /// The store's id of each model task.
    ids: Vec<TaskId>,
    /// Every lease the store handed out, in the model's numbering.
    leases: Vec<Lease>,
}

impl<'a> Run<'a> {
    fn new(fixture: &'a Fixture) -> Self {
        let tenant = TenantId::new("model").expect("a valid tenant");
        Self { fixture, tenant, model: Model::new(), ids: Vec::new(), leases: Vec::new() }
    }

    /// Plays `ops`, checking every answer and then the whole state after each step.
    async fn play(mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        for (n, op) in ops.iter().enumerate() {
            self.step(op).await.map_err(|e| TestCaseError::fail(format!("step {n} ({op:?}): {e}")))?;
            self.agree().await.map_err(|e| TestCaseError::fail(format!("after step {n} ({op:?}): {e}")))?;
        }
        Ok(())
    }

    fn node(&self, peer: bool) -> &Arc<dyn Store> {
        match &self.fixture.peer {
            Some(other) if peer => other,
            _ => &self.fixture.store,
        }
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.model.now;
        match *op {
            Op::Enqueue { priority, delay_secs, max_attempts, key } => {
                let delay = Duration::from_secs(delay_secs);
                let mut new =
                    NewTask::prompt("model").priority(priority).max_attempts(max_attempts).run_at(now + delay);
                if let Some(k) = key {
                    new = new.idempotency_key(format!("key-{k}"));
                }
                let got = self.fixture.store.enqueue(&self.tenant, new, now).await.map_err(unexpected)?;
                let (task, created) = self.model.enqueue(priority, delay, max_attempts, key);
                prop_assert_eq!(got.created, created, "created");
                if created {
                    self.ids.push(got.task.id);
                }
                prop_assert_eq!(got.task.id, self.ids[task], "the task enqueued or found by its key");
            }
            Op::Claim { limit, peer } => {
                let request = ClaimRequest {
                    tenant: self.tenant.clone(),
                    agent: AgentId::new("model").expect("a valid agent"),
                    capabilities: Vec::new(),
                    limit,
                    lease_for: LEASE,
                };
                let claims = self.node(peer).claim(&request, now).await.map_err(unexpected)?;
                let got: Vec<TaskId> = claims.iter().map(|c| c.task.id).collect();
                let expected: Vec<TaskId> = self.model.claim(limit).into_iter().map(|t| self.ids[t]).collect();
                prop_assert_eq!(got, expected, "the claimed tasks, in contract order");
                self.leases.extend(claims.into_iter().map(|c| c.lease));
            }
            Op::Start { lease, peer } => {
                let Some(l) = self.pick_lease(lease) else { return Ok(()) };
                let agent = AgentId::new("model").expect("a valid agent");
                let got = refusal(self.node(peer).start(&self.leases[l], &agent, now).await)?;
                let got = got.map(|s| (s.expires_at, s.cancel_requested));
                prop_assert_eq!(got, self.model.start(l), "start's answer (expiry, cancel requested)");
            }
            Op::Heartbeat { lease, extend_secs, peer } => {
                let Some(l) = self.pick_lease(lease) else { return Ok(()) };
                let extend = Duration::from_secs(extend_secs);
                let got = refusal(self.node(peer).heartbeat(&self.leases[l], extend, now).await)?;
                let got = got.map(|s| (s.expires_at, s.cancel_requested));
                prop_assert_eq!(got, self.model.heartbeat(l, extend), "heartbeat's answer (expiry, cancel requested)");
            }
            Op::Complete { lease, peer } => {
                let Some(l) = self.pick_lease(lease) else { return Ok(()) };
                let got = refusal(self.node(peer).complete(&self.leases[l], json!({"ok": true}), now).await)?;
                prop_assert_eq!(got, self.model.complete(l), "complete's answer");
            }
            Op::Fail { lease, retry_secs, peer } => {
                let Some(l) = self.pick_lease(lease) else { return Ok(()) };
                let retry = retry_secs.map_or(Retry::Never, |s| Retry::After(Duration::from_secs(s)));
                let failure = Failure { error: TaskError::new(TaskErrorKind::Error, "exit code 1"), retry };
                let got = refusal(self.node(peer).fail(&self.leases[l], &failure, now).await)?;
                prop_assert_eq!(got, self.model.fail(l, retry), "fail's answer");
            }
            Op::Release { lease, peer } => {
                let Some(l) = self.pick_lease(lease) else { return Ok(()) };
                let got = refusal(self.node(peer).release(&self.leases[l], now).await)?;
                prop_assert_eq!(got, self.model.release(l), "release's answer");
            }
            Op::ConfirmCancel { lease, peer } => {
                let Some(l) = self.pick_lease(lease) else { return Ok(()) };
                let got = refusal(self.node(peer).confirm_cancel(&self.leases[l], now).await)?;
                prop_assert_eq!(got, self.model.confirm_cancel(l), "confirm_cancel's answer");
            }
            Op::Cancel { task, peer } => {
                let Some(t) = pick(task, self.ids.len()) else { return Ok(()) };
                let got = refusal(self.node(peer).cancel(&self.tenant, self.ids[t], now).await)?;
                prop_assert_eq!(got, self.model.cancel(t), "cancel's answer");
            }
            Op::Replay { task, peer } => {
                let Some(t) = pick(task, self.ids.len()) else { return Ok(()) };
                let got = refusal(self.node(peer).replay(&self.tenant, self.ids[t], now).await)?;
                if let Ok(replayed) = &got {
                    prop_assert_eq!(replayed.id, self.ids[t], "the replayed task");
                }
                prop_assert_eq!(got.map(drop), self.model.replay(t), "replay's answer");
            }
            Op::Advance { secs } => self.model.now = now + Duration::from_secs(secs),
            Op::Reclaim { peer } => {
                let moved = self.node(peer).reclaim_expired(now, 100).await.map_err(unexpected)?;
                let index: HashMap<TaskId, usize> = self.ids.iter().enumerate().map(|(t, id)| (*id, t)).collect();
                let mut got = Vec::new();
                for r in moved {
                    prop_assert_eq!(&r.tenant, &self.tenant, "reclaimed a task of another tenant");
                    let t = *index.get(&r.task).ok_or_else(|| TestCaseError::fail("reclaimed an unknown task"))?;
                    prop_assert_eq!(r.attempt, self.model.tasks[t].0.attempt, "the reclaimed attempt");
                    got.push((t, r.status));
                }
                got.sort_unstable();
                prop_assert_eq!(got, self.model.reclaim(), "the reclaimed tasks and where they went");
            }
        }
        Ok(())
    }

    /// Every task's state, the depth and the counts, as the model has them.
    async fn agree(&self) -> Result<(), TestCaseError> {
        let store = &self.fixture.store;
        let now = self.model.now;
        let query = TaskQuery { limit: 1_000, ..TaskQuery::default() };
        let page = store.list(&self.tenant, &query).await.map_err(unexpected)?;
        let got: Vec<(TaskId, TaskState)> = page.items.iter().map(|t| (t.id, TaskState::of(t))).collect();
        let expected: Vec<(TaskId, TaskState)> =
            self.ids.iter().copied().zip(self.model.tasks.iter().map(|(s, _)| s.clone())).collect();
        prop_assert_eq!(got, expected, "the tasks");
        let depth = store.depth(&self.tenant, now).await.map_err(unexpected)?;
        prop_assert_eq!(Priority::ALL.map(|p| depth.get(p)), self.model.depth(), "the depth per priority");
        let counts = store.counts(&self.tenant, now).await.map_err(unexpected)?;
        prop_assert_eq!(Counts::of(&counts), self.model.counts(), "the counts");
        Ok(())
    }

    fn pick_lease(&self, lease: Index) -> Option<usize> {
        pick(lease, self.leases.len())
    }
}

fn pick(index: Index, len: usize) -> Option<usize> {
    (len > 0).then(|| index.index(len))
}

/// The store's answer with the refusals the contract names taken apart from failures.
fn refusal<T>(result: Result<T, StoreError>) -> Result<Result<T, Refusal>, TestCaseError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(StoreError::LeaseLost(_)) => Ok(Err(Refusal::LeaseLost)),
        Err(StoreError::InvalidTransition { .. }) => Ok(Err(Refusal::InvalidTransition)),
        Err(e) => Err(unexpected(e)),
    }
}

fn unexpected(e: StoreError) -> TestCaseError {
    TestCaseError::fail(format!("unexpected store error: {e}"))
}
