//! No single failed store call loses a task, completes it twice or leaks an
//! agent slot: for every store method the engine calls while it runs work,
//! the engine runs a small mixed batch (tasks that succeed, one that fails
//! once, one cancelled while it runs) over a [`FaultyStore`] that fails the
//! method's `k`th call, or lets it through and loses its answer, for several
//! `k`. Once the faults are spent every task ends exactly once, each
//! completed task ran to success exactly once, and every agent's load is
//! back to 0. Stamped out per backend (memory, SQLite); the tasks run on an
//! in-process adapter, so each case takes about a lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use godel_core::adapter::{AbortMode, Adapter, AdapterError, AgentSession, Outcome, OutputSink};
use godel_core::event::{EventKind, OutputStream};
use godel_core::store::faulty::{Calls, Fault, FaultPlan, FaultyStore, Method};
use godel_core::store::{MemoryStore, SqliteStore, Store};
use godel_core::{
    AgentConfig, AgentId, AgentKind, Backoff, CancellationToken, EngineConfig, NewTask, Orchestrator, Task, TaskError,
    TaskErrorKind, TaskId, TaskStatus,
};
use tempfile::TempDir;
use tokio::sync::Notify;

/// How long one task's run takes: past a heartbeat, so that every run renews its lease.
const RUN: Duration = Duration::from_millis(150);

/// Attempts per task: one lost to a lapsed lease and one to the flaky
/// failure still leave room to succeed.
const ATTEMPTS: u32 = 4;

/// The engine with a short lease, so that a start whose answer was lost
/// comes back within a second.
fn config() -> EngineConfig {
    EngineConfig {
        lease: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(100),
        poll_interval: Duration::from_millis(50),
        reclaim_interval: Duration::from_millis(100),
        backoff: Backoff {
            initial: Duration::from_millis(10),
            multiplier: 2.0,
            max: Duration::from_millis(50),
            jitter: 0.0,
        },
        kill_grace: Duration::from_millis(100),
        agent_health_interval: Duration::from_millis(100),
        ..EngineConfig::default()
    }
}

/// Runs prompts: `ok` succeeds, `flaky` fails its first run, `hang` runs
/// until aborted. Counts the successful runs of each task.
#[derive(Clone, Debug, Default)]
struct Scripted(Arc<Runs>);

#[derive(Debug, Default)]
struct Runs {
    successes: Mutex<HashMap<TaskId, u32>>,
    failed_once: Mutex<Vec<TaskId>>,
}

struct Run {
    runs: Arc<Runs>,
    aborted: Notify,
}

#[async_trait]
impl Adapter for Scripted {
    async fn open_session(&self, _task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        Ok(Box::new(Run { runs: self.0.clone(), aborted: Notify::new() }))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

#[async_trait]
impl AgentSession for Run {
    async fn run(&self, task: &Task, output: OutputSink) -> Outcome {
        let prompt = task.payload.prompt.as_deref().unwrap_or_default();
        output.send(OutputStream::Stdout, format!("{prompt} attempt {}\n", task.attempt)).await;
        let aborted = || Outcome::Failed { error: TaskError::new(TaskErrorKind::Aborted, "aborted"), retryable: true };
        if prompt == "hang" {
            self.aborted.notified().await;
            return aborted();
        }
        tokio::select! {
            () = tokio::time::sleep(RUN) => {}
            () = self.aborted.notified() => return aborted(),
        }
        if prompt == "flaky" {
            let mut failed = self.runs.failed_once.lock().unwrap();
            if !failed.contains(&task.id) {
                failed.push(task.id);
                return Outcome::Failed { error: TaskError::new(TaskErrorKind::Error, "flaky"), retryable: true };
            }
        }
        *self.runs.successes.lock().unwrap().entry(task.id).or_default() += 1;
        Outcome::Completed { result: serde_json::json!("ok") }
    }

    async fn abort(&self, _mode: AbortMode) {
        self.aborted.notify_one();
    }

    async fn close(&self, _outcome: &Outcome) {}
}

/// A fresh store of one backend; the directory holds a SQLite file.
type Open = fn(&TempDir) -> std::pin::Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>>;

fn memory(_dir: &TempDir) -> std::pin::Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
    Box::pin(async { Arc::new(MemoryStore::new()) as Arc<dyn Store> })
}

fn sqlite(dir: &TempDir) -> std::pin::Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
    Box::pin(async { Arc::new(SqliteStore::open(&dir.path().join("godel.db")).await.unwrap()) as Arc<dyn Store> })
}

/// Runs the batch with `fault` at the `k`th call of `method`, for every `k`
/// in `ks` and both ways a call can fail, all at once.
async fn survives(open: Open, method: Method, ks: &[u64]) {
    let mut cases = Vec::new();
    for &k in ks {
        for fault in [Fault::Fail, Fault::LoseReply] {
            cases.push(one_case(open, method, k, fault));
        }
    }
    futures::future::join_all(cases).await;
}

async fn one_case(open: Open, method: Method, k: u64, fault: Fault) {
    let case = format!("{fault:?} at call {k} of {method:?}");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::new(open(&dir).await, FaultPlan::new(k).inject(method, Calls::nth(k), fault)));
    let adapter = Scripted::default();
    let agent = |id: &str, capacity| {
        AgentConfig::new(AgentId::new(id).unwrap(), AgentKind::Http, Arc::new(adapter.clone())).capacity(capacity)
    };
    let orchestrator = Orchestrator::builder(store.clone())
        .config(config())
        .agent(agent("a", 2))
        .agent(agent("b", 1))
        .build()
        .unwrap();
    let mut events = orchestrator.subscribe(vec!["task.completed".parse().unwrap()]);
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn({
        let (orchestrator, shutdown) = (orchestrator.clone(), shutdown.clone());
        async move { orchestrator.run(shutdown).await }
    });

    let mut ids = Vec::new();
    for prompt in ["ok", "flaky", "ok", "ok", "hang", "ok"] {
        ids.push(orchestrator.submit(NewTask::prompt(prompt).max_attempts(ATTEMPTS)).await.unwrap().id);
    }
    let hang = ids[4];
    wait_for(&case, || async { (orchestrator.get(hang).await.unwrap().status == TaskStatus::Running).then_some(()) })
        .await;
    orchestrator.cancel(hang).await.unwrap();
    let tasks = wait_for(&case, || async {
        let mut tasks = Vec::new();
        for id in &ids {
            let task = orchestrator.get(*id).await.unwrap();
            if !task.status.is_terminal() {
                return None;
            }
            tasks.push(task);
        }
        Some(tasks)
    })
    .await;
    wait_for(&case, || async {
        let idle = orchestrator.agents().iter().all(|a| a.current_load == 0);
        let running = orchestrator.agents().iter().any(|a| !orchestrator.active_tasks(&a.id).is_empty());
        (idle && !running).then_some(())
    })
    .await;
    shutdown.cancel();
    engine.await.unwrap().unwrap_or_else(|e| panic!("{case}: the engine failed: {e}"));

    assert_eq!(store.injected(), 1, "{case}: the call never happened");
    let successes = adapter.0.successes.lock().unwrap().clone();
    for task in &tasks {
        let expected = if task.id == hang { TaskStatus::Cancelled } else { TaskStatus::Completed };
        assert_eq!(task.status, expected, "{case}: task {} ({:?})", task.id, task.error);
        let ran = successes.get(&task.id).copied().unwrap_or(0);
        assert_eq!(ran, u32::from(expected == TaskStatus::Completed), "{case}: task {} succeeded {ran} times", task.id);
    }
    let mut completed: HashMap<TaskId, u32> = HashMap::new();
    while let Ok(Ok(published)) = tokio::time::timeout(Duration::from_millis(50), events.recv()).await {
        if let EventKind::TaskCompleted { task, .. } = published.event.kind {
            *completed.entry(task).or_default() += 1;
        }
    }
    assert!(completed.values().all(|&n| n == 1), "{case}: completions published {completed:?}");
}

/// Polls `check` until it returns `Some`; a case that hangs fails.
async fn wait_for<T, F, Fut>(case: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{case}: the engine did not settle within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One test per store method the engine calls while it runs work, with the
/// calls to fail. Left out: `abandon_sessions`, whose failure at start makes
/// `run` return the error before anything is claimed, and the methods only
/// commands call (enqueue, cancel, reads), whose failures go to the caller.
macro_rules! fault_suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn claim() {
                survives(super::$backend, Method::Claim, &[1, 2, 3]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn write_batch() {
                survives(super::$backend, Method::WriteBatch, &[1, 2, 3, 5]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn heartbeat() {
                survives(super::$backend, Method::Heartbeat, &[1, 2, 3]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn append_output() {
                survives(super::$backend, Method::AppendOutput, &[1, 2, 3]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fail() {
                survives(super::$backend, Method::Fail, &[1]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn confirm_cancel() {
                survives(super::$backend, Method::ConfirmCancel, &[1]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reclaim_expired() {
                survives(super::$backend, Method::ReclaimExpired, &[1, 2, 3]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn save_sessions() {
                survives(super::$backend, Method::SaveSessions, &[1, 2, 3]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn put_member() {
                survives(super::$backend, Method::PutMember, &[1]).await;
            }
        }
    };
}

fault_suite!(memory);
fault_suite!(sqlite);
