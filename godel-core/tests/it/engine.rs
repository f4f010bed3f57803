//! The engine end to end inside one process: a real orchestrator over a real
//! SQLite store, running real processes (small shell commands). Timeouts,
//! backoff and leases are set short so the suite stays fast; waits poll for
//! a condition with a deadline instead of sleeping a fixed time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use godel_core::adapter::{AbortMode, Adapter, AdapterError, AgentSession, Outcome, OutputSink, WorkDir};
use godel_core::adapter::{Cleanup, ProcessAdapter, ProcessConfig};
use godel_core::event::{EventKind, OutputStream};
use godel_core::store::faulty::{Calls, FaultPlan, FaultyStore, Method};
use godel_core::store::{SessionQuery, SqliteStore, Store, TaskFilter};
use godel_core::{
    AgentConfig, AgentId, AgentKind, AgentStatus, CancellationToken, EngineConfig, EngineError, ManualClock, NewTask,
    Orchestrator, Priority, SchedulingPolicy, SessionState, Task, TaskErrorKind, TaskId, TaskStatus, Timestamp,
};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::support::fast_engine;

fn process_agent(id: &str, config: ProcessConfig) -> AgentConfig {
    AgentConfig::new(AgentId::new(id).unwrap(), AgentKind::Process, Arc::new(ProcessAdapter::new(config).unwrap()))
}

fn shell(script: &str) -> NewTask {
    NewTask::command(["sh", "-c", script])
}

/// A running engine over a fresh SQLite store; stops it when dropped.
struct Harness {
    orchestrator: Orchestrator,
    shutdown: CancellationToken,
    engine: Option<JoinHandle<Result<(), godel_core::StoreError>>>,
    _dir: TempDir,
}

impl Harness {
    async fn new(agents: Vec<AgentConfig>, config: EngineConfig) -> Self {
        Self::build(agents, config, |b| b).await
    }

    /// Over a store that injects the faults of `plan`.
    pub(crate) async fn faulty(
        agents: Vec<AgentConfig>,
        config: EngineConfig,
        plan: FaultPlan,
    ) -> (Self, Arc<FaultyStore>) {
        let dir = tempfile::tempdir().unwrap();
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("godel.db")).await.unwrap());
        let store = Arc::new(FaultyStore::new(sqlite, plan));
        (Self::over(dir, store.clone(), agents, config, |b| b), store)
    }

    async fn build(
        agents: Vec<AgentConfig>,
        config: EngineConfig,
        customise: impl FnOnce(godel_core::engine::OrchestratorBuilder) -> godel_core::engine::OrchestratorBuilder,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("godel.db")).await.unwrap());
        Self::over(dir, store, agents, config, customise)
    }

    fn over(
        dir: TempDir,
        store: Arc<dyn Store>,
        agents: Vec<AgentConfig>,
        config: EngineConfig,
        customise: impl FnOnce(godel_core::engine::OrchestratorBuilder) -> godel_core::engine::OrchestratorBuilder,
    ) -> Self {
        let mut builder = Orchestrator::builder(store).config(config);
        for agent in agents {
            builder = builder.agent(agent);
        }
        let orchestrator = customise(builder).build().unwrap();
        Self { orchestrator, shutdown: CancellationToken::new(), engine: None, _dir: dir }
    }

    fn start(&mut self) {
        let orchestrator = self.orchestrator.clone();
        let shutdown = self.shutdown.clone();
        self.engine = Some(tokio::spawn(async move { orchestrator.run(shutdown).await }));
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(engine) = self.engine.take() {
            engine.await.unwrap().unwrap();
        }
    }

    async fn wait_terminal(&self, ids: &[TaskId]) -> Vec<Task> {
        wait_for(Duration::from_secs(30), || async {
            let mut tasks = Vec::new();
            for id in ids {
                let task = self.orchestrator.get(*id).await.unwrap();
                if !task.status.is_terminal() {
                    return None;
                }
                tasks.push(task);
            }
            Some(tasks)
        })
        .await
    }

    async fn stdout(&self, id: TaskId) -> String {
        let output = self.orchestrator.store().output(&self.orchestrator.config().tenant, id).await.unwrap();
        output.iter().filter(|o| o.stream == OutputStream::Stdout).map(|o| o.data.as_str()).collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` until it returns `Some`, failing the test after `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Processes whose command line contains `marker`, excluding zombies.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

async fn assert_no_process_with(marker: &str) {
    wait_for(Duration::from_secs(5), || async {
        let left = processes_with(marker);
        left.is_empty().then_some(())
    })
    .await;
}

fn assert_agents_idle(orchestrator: &Orchestrator) {
    for agent in orchestrator.agents() {
        assert_eq!(agent.current_load, 0, "agent {} still counts load", agent.id);
        assert_eq!(agent.status, AgentStatus::Idle, "agent {}", agent.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_runs_tasks_in_priority_order() {
    let mut h = Harness::new(vec![process_agent("solo", ProcessConfig::default())], fast_engine()).await;
    let mut events = h.orchestrator.subscribe(vec!["task.started".parse().unwrap()]);
    let mut expected: Vec<(Priority, TaskId)> = Vec::new();
    // Submitted before the engine starts, lowest priority first.
    for (i, p) in
        [Priority::Low, Priority::Medium, Priority::High, Priority::Critical].repeat(3).into_iter().enumerate()
    {
        let task = h.orchestrator.submit(shell(&format!("echo {i}")).priority(p)).await.unwrap();
        expected.push((p, task.id));
    }
    expected.sort_by_key(|(p, _)| *p); // stable: FIFO within a priority
    h.start();
    let mut started = Vec::new();
    while started.len() < expected.len() {
        if let EventKind::TaskStarted { task, .. } = events.recv().await.unwrap().event.kind {
            started.push(task);
        }
    }
    assert_eq!(started, expected.iter().map(|(_, id)| *id).collect::<Vec<_>>());
    let tasks = h.wait_terminal(&started).await;
    assert!(tasks.iter().all(|t| t.status == TaskStatus::Completed));
    h.stop().await;
    assert_agents_idle(&h.orchestrator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_route_tasks() {
    let agents = vec![
        process_agent("plain", ProcessConfig::default()).capacity(3),
        process_agent("rusty", ProcessConfig::default()).capabilities(["rust"]),
    ];
    let mut h = Harness::new(agents, fast_engine()).await;
    h.start();
    let mut rust = Vec::new();
    let mut generic = Vec::new();
    for i in 0..6 {
        rust.push(h.orchestrator.submit(shell(&format!("echo rust {i}")).capability("rust")).await.unwrap().id);
        generic.push(h.orchestrator.submit(shell(&format!("echo any {i}"))).await.unwrap().id);
    }
    let python = h.orchestrator.submit(shell("echo py").capability("python")).await.unwrap();
    for task in h.wait_terminal(&rust).await {
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.agent.as_ref().map(AgentId::as_str), Some("rusty"), "a rust task ran elsewhere");
    }
    h.wait_terminal(&generic).await;
    // Nobody can run it, so it waits rather than failing.
    assert_eq!(h.orchestrator.get(python.id).await.unwrap().status, TaskStatus::Pending);
    h.stop().await;
    assert_agents_idle(&h.orchestrator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_group() {
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default())], fast_engine()).await;
    h.start();
    let marker = "60.7071";
    let task =
        shell(&format!("sleep {marker} & sleep {marker}; wait")).timeout(Duration::from_millis(400)).max_attempts(1);
    let task = h.orchestrator.submit(task).await.unwrap();
    let started = tokio::time::Instant::now();
    let done = h.wait_terminal(&[task.id]).await.remove(0);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(done.status, TaskStatus::DeadLetter);
    assert_eq!(done.error.as_ref().map(|e| e.kind), Some(TaskErrorKind::Timeout));
    assert_no_process_with(marker).await;
    h.stop().await; // flushes buffered session writes
    let query = SessionQuery { task: Some(task.id), ..SessionQuery::default() };
    let sessions = h.orchestrator.store().list_sessions(&done.tenant, &query).await.unwrap();
    assert_eq!(sessions[0].state, SessionState::Timeout);
    assert_agents_idle(&h.orchestrator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_kill_stop_running_tasks_fast() {
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default()).capacity(3)], fast_engine()).await;
    let mut events = h.orchestrator.subscribe(vec!["task.started".parse().unwrap(), "task.output".parse().unwrap()]);
    h.start();
    let polite = h.orchestrator.submit(shell("sleep 60.8081")).await.unwrap();
    // These ignore SIGTERM: cancel escalates to SIGKILL after the grace period.
    let stubborn = h.orchestrator.submit(shell("trap '' TERM; echo trapped; sleep 60.8082")).await.unwrap();
    let killed = h.orchestrator.submit(shell("trap '' TERM; echo trapped; sleep 60.8083")).await.unwrap();
    // A task counts as started before its process runs, so also wait for the
    // traps: a SIGTERM that beat one would end its shell at once.
    let (mut started, mut trapped) = (0, 0);
    while started < 3 || trapped < 2 {
        match &events.recv().await.unwrap().event.kind {
            EventKind::TaskStarted { .. } => started += 1,
            EventKind::TaskOutput { data, .. } if data.contains("trapped") => trapped += 1,
            _ => {}
        }
    }
    let t0 = tokio::time::Instant::now();
    h.orchestrator.cancel(polite.id).await.unwrap();
    h.orchestrator.kill(killed.id).await.unwrap();
    h.orchestrator.cancel(stubborn.id).await.unwrap();
    let done = h.wait_terminal(&[polite.id, killed.id]).await;
    assert!(t0.elapsed() < Duration::from_secs(1), "cancel took {:?}", t0.elapsed());
    assert!(done.iter().all(|t| t.status == TaskStatus::Cancelled));
    let stubborn_done = h.wait_terminal(&[stubborn.id]).await.remove(0);
    assert_eq!(stubborn_done.status, TaskStatus::Cancelled);
    assert!(t0.elapsed() >= Duration::from_millis(500), "the grace period was skipped");
    for marker in ["60.8081", "60.8082", "60.8083"] {
        assert_no_process_with(marker).await;
    }
    wait_for(Duration::from_secs(5), || async { (h.orchestrator.agents()[0].current_load == 0).then_some(()) }).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_process_is_seen_on_heartbeat() {
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default())], fast_engine()).await;
    let mut events = h.orchestrator.subscribe(vec!["task.started".parse().unwrap()]);
    h.start();
    let task = h.orchestrator.submit(shell("sleep 60.9091")).await.unwrap();
    events.recv().await.unwrap();
    // Straight to the store, as another Godel process would.
    let store = h.orchestrator.store();
    store.cancel(&task.tenant, task.id, Timestamp::now()).await.unwrap();
    let done = h.wait_terminal(&[task.id]).await.remove(0);
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert_no_process_with("60.9091").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_backoff_then_dead_letter() {
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default())], fast_engine()).await;
    let mut events = h.orchestrator.subscribe(vec!["task.*".parse().unwrap()]);
    h.start();
    let task = h.orchestrator.submit(shell("echo oops >&2; exit 7").max_attempts(3)).await.unwrap();
    let done = h.wait_terminal(&[task.id]).await.remove(0);
    assert_eq!((done.status, done.attempt), (TaskStatus::DeadLetter, 3));
    assert_eq!(done.error.as_ref().map(|e| e.message.as_str()), Some("exit code 7: oops"));
    let mut seen: HashMap<String, u32> = HashMap::new();
    while let Ok(Ok(p)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
        if p.event.kind.task() == Some(task.id) {
            *seen.entry(p.event.kind.name()).or_default() += 1;
        }
    }
    assert_eq!(seen.get("task.started"), Some(&3));
    assert_eq!(seen.get("task.retrying"), Some(&2));
    assert_eq!(seen.get("task.dead_lettered"), Some(&1));
    assert_eq!(seen.get("task.completed"), None);

    // A program that does not exist fails at once, without retries.
    let missing = h.orchestrator.submit(NewTask::command(["/nonexistent/godel-test"]).max_attempts(5)).await.unwrap();
    let missing = h.wait_terminal(&[missing.id]).await.remove(0);
    assert_eq!((missing.status, missing.attempt), (TaskStatus::Failed, 1));
    assert!(missing.error.unwrap().message.contains("cannot start"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counters_return_to_zero_after_a_mixed_run() {
    let agents = vec![
        process_agent("a", ProcessConfig::default()).capacity(3),
        process_agent("b", ProcessConfig::default()).capacity(2),
        process_agent("c", ProcessConfig::default()).capabilities(["gpu"]),
    ];
    let mut h = Harness::new(agents, fast_engine()).await;
    h.start();
    let mut ids = Vec::new();
    let mut to_cancel = Vec::new();
    for i in 0..8 {
        ids.push(h.orchestrator.submit(shell(&format!("echo ok {i}"))).await.unwrap().id);
        ids.push(h.orchestrator.submit(shell("exit 1").max_attempts(2)).await.unwrap().id);
        ids.push(
            h.orchestrator
                .submit(shell("sleep 60.1111").timeout(Duration::from_millis(200)).max_attempts(1))
                .await
                .unwrap()
                .id,
        );
        ids.push(h.orchestrator.submit(NewTask::command(["/nonexistent"])).await.unwrap().id);
        ids.push(h.orchestrator.submit(shell("echo gpu").capability("gpu").priority(Priority::High)).await.unwrap().id);
        let slow = h.orchestrator.submit(shell("sleep 60.1112")).await.unwrap().id;
        to_cancel.push(slow);
        ids.push(slow);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in &to_cancel {
        h.orchestrator.cancel(*id).await.unwrap();
    }
    let tasks = h.wait_terminal(&ids).await;
    let count = |s: TaskStatus| tasks.iter().filter(|t| t.status == s).count();
    assert_eq!(count(TaskStatus::Completed), 16);
    assert_eq!(count(TaskStatus::DeadLetter), 16);
    assert_eq!(count(TaskStatus::Failed), 8);
    assert_eq!(count(TaskStatus::Cancelled), 8);
    wait_for(Duration::from_secs(5), || async {
        h.orchestrator.agents().iter().all(|a| a.current_load == 0).then_some(())
    })
    .await;
    h.stop().await;
    assert_agents_idle(&h.orchestrator);
    assert_no_process_with("60.111").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_reach_argv_unchanged() {
    // printf '%s' "$1" echoes its argument byte for byte.
    let template = ["sh", "-c", "printf '%s' \"$1\"", "sh", "{prompt}"].map(String::from).to_vec();
    let config = ProcessConfig { command: Some(template), ..ProcessConfig::default() };
    let mut h = Harness::new(vec![process_agent("claude-ish", config).capacity(4)], fast_engine()).await;
    h.start();
    let prompts = [
        "it's \"quoted\" and 'single'",
        "$(touch /tmp/godel-pwned) `id` ${HOME} $HOME; rm -rf / && echo no",
        "line one\nline two\n\nline four\r\n",
        "tabs\tand ☃ é 😀 \u{1b}[31mred\u{1b}[0m \u{7f} \u{fffd}",
        "{task_id} {{prompt}} %s %n \\ \\\\",
        "-e -n --version",
        "",
    ];
    let mut ids = Vec::new();
    for prompt in prompts {
        ids.push(h.orchestrator.submit(NewTask::prompt(prompt)).await.unwrap().id);
    }
    // A NUL cannot be passed in argv: refused at submit, naming the field.
    match h.orchestrator.submit(NewTask::prompt("nul \0 byte")).await {
        Err(EngineError::InvalidInput(e)) => assert_eq!(e.field, "prompt", "{e:?}"),
        other => panic!("a prompt with a NUL byte was not refused: {other:?}"),
    }
    for (task, prompt) in h.wait_terminal(&ids).await.iter().zip(prompts) {
        assert_eq!(task.status, TaskStatus::Completed, "{prompt:?}: {:?}", task.error);
        assert_eq!(h.stdout(task.id).await, prompt);
    }
    assert!(!Path::new("/tmp/godel-pwned").exists());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_bounded_and_truncation_marked() {
    let config = EngineConfig { max_output_bytes: 1_000, ..fast_engine() };
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default())], config).await;
    h.start();
    let task = h.orchestrator.submit(shell("head -c 200000 /dev/zero | tr '\\0' a; echo done >&2")).await.unwrap();
    let done = h.wait_terminal(&[task.id]).await.remove(0);
    assert_eq!(done.status, TaskStatus::Completed);
    let output = h.orchestrator.store().output(&done.tenant, task.id).await.unwrap();
    let bytes: usize = output.iter().filter(|o| o.stream != OutputStream::System).map(|o| o.data.len()).sum();
    assert_eq!(bytes, 1_000);
    let notes: Vec<_> = output.iter().filter(|o| o.stream == OutputStream::System).collect();
    assert_eq!(notes.len(), 1);
    assert!(notes[0].data.contains("truncated"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_follow_the_lifecycle_table() {
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default())], fast_engine()).await;
    let mut events = h.orchestrator.subscribe(vec!["session.*".parse().unwrap()]);
    h.start();
    let task = h.orchestrator.submit(shell("echo hi")).await.unwrap();
    h.wait_terminal(&[task.id]).await;
    let mut path = Vec::new();
    while !path.ends_with(&[SessionState::Completed]) {
        if let EventKind::SessionStateChanged { to, .. } = events.recv().await.unwrap().event.kind {
            path.push(to);
        }
    }
    use SessionState::*;
    assert_eq!(path, [Initializing, Ready, Running, Completing, Completed]);
    h.stop().await; // flushes buffered session writes
    let query = SessionQuery { task: Some(task.id), ..SessionQuery::default() };
    let sessions = h.orchestrator.store().list_sessions(&task.tenant, &query).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!((sessions[0].state, sessions[0].agent.as_str()), (Completed, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_is_pushed_not_polled() {
    let config = EngineConfig { poll_interval: Duration::from_secs(3_600), ..fast_engine() };
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default())], config).await;
    h.start();
    tokio::time::sleep(Duration::from_millis(100)).await; // past the first, immediate poll
    for _ in 0..3 {
        let t0 = tokio::time::Instant::now();
        let task = h.orchestrator.submit(shell("true")).await.unwrap();
        h.wait_terminal(&[task.id]).await;
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?} without a poll", t0.elapsed());
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_tasks_start_at_their_time() {
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default())], fast_engine()).await;
    h.start();
    let at = Timestamp::now() + Duration::from_millis(400);
    let task = h.orchestrator.submit(shell("true").run_at(at)).await.unwrap();
    let done = h.wait_terminal(&[task.id]).await.remove(0);
    assert_eq!(done.status, TaskStatus::Completed);
    assert!(done.started_at.unwrap() >= at, "started at {:?}, scheduled for {at}", done.started_at);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_running_tasks_for_the_next_start() {
    let config = EngineConfig { shutdown_grace: Duration::from_millis(200), ..fast_engine() };
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default()).capacity(2)], config).await;
    let mut events = h.orchestrator.subscribe(vec!["task.started".parse().unwrap()]);
    h.start();
    let a = h.orchestrator.submit(shell("sleep 60.2221")).await.unwrap();
    let b = h.orchestrator.submit(shell("sleep 60.2222")).await.unwrap();
    let quick = h.orchestrator.submit(shell("sleep 0.1").priority(Priority::Low)).await.unwrap();
    events.recv().await.unwrap();
    events.recv().await.unwrap();
    h.stop().await;
    for id in [a.id, b.id] {
        let task = h.orchestrator.get(id).await.unwrap();
        assert_eq!((task.status, task.attempt, task.lease_expires_at), (TaskStatus::Pending, 0, None));
    }
    assert_eq!(h.orchestrator.get(quick.id).await.unwrap().status, TaskStatus::Pending, "nothing new was claimed");
    assert_no_process_with("60.222").await;
    assert_agents_idle(&h.orchestrator);

    // The next start on the same store picks them up.
    let store = h.orchestrator.store().clone();
    let next = Orchestrator::builder(store)
        .config(fast_engine())
        .agent(process_agent("a", ProcessConfig::default()).capacity(3))
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn({
        let next = next.clone();
        let shutdown = shutdown.clone();
        async move { next.run(shutdown).await }
    });
    wait_for(Duration::from_secs(10), || async {
        let tasks = [next.get(a.id).await.unwrap(), next.get(b.id).await.unwrap()];
        tasks.iter().all(|t| t.status == TaskStatus::Running && t.attempt == 1).then_some(())
    })
    .await;
    next.kill(a.id).await.unwrap();
    next.kill(b.id).await.unwrap();
    shutdown.cancel();
    engine.await.unwrap().unwrap();
    assert_no_process_with("60.222").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_keeps_a_key_on_its_agent() {
    let agents = vec![
        process_agent("first", ProcessConfig::default()),
        process_agent("second", ProcessConfig::default()).capabilities(["x"]),
    ];
    let config = EngineConfig { policy: SchedulingPolicy::SessionAffinity, ..fast_engine() };
    let mut h = Harness::new(agents, config).await;
    h.start();
    // Only "second" can run the first task; the key then sticks to it,
    // although least-loaded alone would pick "first".
    let seed = h.orchestrator.submit(shell("true").capability("x").affinity_key("repo-1")).await.unwrap();
    h.wait_terminal(&[seed.id]).await;
    for _ in 0..4 {
        let task = h.orchestrator.submit(shell("true").affinity_key("repo-1")).await.unwrap();
        let done = h.wait_terminal(&[task.id]).await.remove(0);
        assert_eq!(done.agent.as_ref().map(AgentId::as_str), Some("second"));
    }
    let other = h.orchestrator.submit(shell("true").affinity_key("repo-2")).await.unwrap();
    let other = h.wait_terminal(&[other.id]).await.remove(0);
    assert_eq!(other.agent.as_ref().map(AgentId::as_str), Some("first"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_worktrees_isolate_tasks() {
    let repo_parent = tempfile::tempdir().unwrap();
    let repo = repo_parent.path().join("project");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git").arg("-C").arg(&repo).args(args).status().unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git(&["add", "README"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init"]);

    let config = ProcessConfig {
        workdir: WorkDir::GitWorktree { repo: repo.clone(), cleanup: Cleanup::OnSuccess },
        ..ProcessConfig::default()
    };
    let mut h = Harness::new(vec![process_agent("a", config).capacity(2)], fast_engine()).await;
    h.start();
    let ok = h.orchestrator.submit(shell("pwd; cat README; echo scratch > new-file").max_attempts(1)).await.unwrap();
    let bad = h.orchestrator.submit(shell("echo scratch > new-file; exit 1").max_attempts(1)).await.unwrap();
    let done = h.wait_terminal(&[ok.id, bad.id]).await;
    assert_eq!(done[0].status, TaskStatus::Completed);
    let expected = repo_parent.path().join(format!("project-godel-{}", ok.id));
    let stdout = h.stdout(ok.id).await;
    assert!(stdout.starts_with(&expected.display().to_string()), "{stdout}");
    assert!(stdout.contains("hello"));
    assert!(!expected.exists(), "a successful task's worktree is removed");
    let kept = repo_parent.path().join(format!("project-godel-{}", bad.id));
    assert!(kept.join("new-file").exists(), "a failed task's worktree is kept for inspection");
    assert!(!repo.join("new-file").exists(), "the repository itself is untouched");
    h.stop().await;
}

/// A custom adapter whose health can be switched off, completing tasks at once.
#[derive(Debug, Default)]
struct Switchable {
    down: AtomicBool,
    /// Health checks begun.
    checks: AtomicU64,
}

#[async_trait]
impl Adapter for Switchable {
    async fn open_session(&self, _task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        Ok(Box::new(Instant))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) { Err(AdapterError::transient("unreachable")) } else { Ok(()) }
    }
}

struct Instant;

#[async_trait]
impl AgentSession for Instant {
    async fn run(&self, _task: &Task, output: OutputSink) -> Outcome {
        output.send(OutputStream::Stdout, "done".into()).await;
        Outcome::Completed { result: serde_json::json!("ok") }
    }

    async fn abort(&self, _mode: AbortMode) {}

    async fn close(&self, _outcome: &Outcome) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_heartbeating_goes_offline_and_gets_no_work() {
    let flaky = Arc::new(Switchable::default());
    let steady = Arc::new(Switchable::default());
    let clock = ManualClock::new(Timestamp::now());
    let agents = vec![
        AgentConfig::new(AgentId::new("flaky").unwrap(), AgentKind::Http, flaky.clone()).capacity(4),
        AgentConfig::new(AgentId::new("steady").unwrap(), AgentKind::Http, steady.clone()),
    ];
    let config = EngineConfig { agent_offline_after: Duration::from_secs(30), ..fast_engine() };
    let clock_for_engine = clock.clone();
    let mut h = Harness::build(agents, config, |b| b.clock(Arc::new(clock_for_engine))).await;
    let mut events = h.orchestrator.subscribe(vec!["agent.*".parse().unwrap()]);
    h.start();
    let status_of =
        |h: &Harness, id: &str| h.orchestrator.agents().into_iter().find(|a| a.id.as_str() == id).unwrap().status;

    // Wait for the first health check, then stop answering.
    wait_for(Duration::from_secs(5), || async {
        h.orchestrator.agents().iter().all(|a| a.last_heartbeat.is_some()).then_some(())
    })
    .await;
    flaky.down.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(29));
    // The next check of "flaky" starts after the advance, and once the one
    // after it has started, the engine has acted on it.
    let seen = flaky.checks.load(Ordering::SeqCst);
    wait_for(Duration::from_secs(5), || async { (flaky.checks.load(Ordering::SeqCst) >= seen + 2).then_some(()) })
        .await;
    assert_eq!(status_of(&h, "flaky"), AgentStatus::Idle, "offline too early");
    clock.advance(Duration::from_secs(2));
    wait_for(Duration::from_secs(5), || async { (status_of(&h, "flaky") == AgentStatus::Offline).then_some(()) }).await;
    let mut disconnected = false;
    while let Ok(Ok(p)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
        disconnected |=
            matches!(&p.event.kind, EventKind::AgentDisconnected { agent, .. } if agent.as_str() == "flaky");
    }
    assert!(disconnected, "agent.disconnected was published");

    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(h.orchestrator.submit(NewTask::prompt("hi")).await.unwrap().id);
    }
    for task in h.wait_terminal(&ids).await {
        assert_eq!(task.agent.as_ref().map(AgentId::as_str), Some("steady"));
        assert_eq!(task.result, Some(serde_json::json!("ok")));
    }
    assert_eq!(h.stdout(ids[0]).await, "done");

    flaky.down.store(false, Ordering::SeqCst);
    wait_for(Duration::from_secs(5), || async { (status_of(&h, "flaky") == AgentStatus::Idle).then_some(()) }).await;
    h.stop().await;
}

#[tokio::test]
async fn bad_configuration_is_refused_with_the_field_named() {
    let store: Arc<dyn Store> = Arc::new(godel_core::store::MemoryStore::new());
    let config = EngineConfig { heartbeat_interval: Duration::from_secs(60), ..EngineConfig::default() };
    let err = Orchestrator::builder(store.clone()).config(config).build().unwrap_err();
    assert_eq!(err.field, "heartbeat_interval");
    let err = Orchestrator::builder(store.clone())
        .agent(process_agent("a", ProcessConfig::default()))
        .agent(process_agent("a", ProcessConfig::default()))
        .build()
        .unwrap_err();
    assert_eq!(err.field, "agent id");
    let err = Orchestrator::builder(store)
        .agent(process_agent("a", ProcessConfig::default()).capacity(0))
        .build()
        .unwrap_err();
    assert_eq!(err.field, "max_capacity");
    assert_eq!("fastest".parse::<SchedulingPolicy>().unwrap_err().field, "policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_replays_are_published_and_woken() {
    let config = EngineConfig { poll_interval: Duration::from_secs(3_600), ..fast_engine() };
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default())], config).await;
    let mut events = h.orchestrator.subscribe(vec!["task.replayed".parse().unwrap()]);
    h.start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ready");
    let script = format!("test -e {}", marker.display());
    let mut failing = shell(&script);
    failing.max_attempts = 1;
    let first = h.orchestrator.submit(failing.clone()).await.unwrap().id;
    let second = h.orchestrator.submit(failing).await.unwrap().id;
    let settled = h.wait_terminal(&[first, second]).await;
    assert!(settled.iter().all(|t| t.status == TaskStatus::DeadLetter), "{settled:?}");
    std::fs::write(&marker, b"").unwrap();

    // One by id, through the door: its event, and it runs without a poll.
    let replayed = h.orchestrator.replay_dead_letter(first).await.unwrap();
    assert_eq!(replayed.status, TaskStatus::Pending);
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
    assert!(matches!(event.event.kind, EventKind::TaskReplayed { task, .. } if task == first), "{event:?}");
    assert_eq!(h.wait_terminal(&[first]).await[0].status, TaskStatus::Completed);
    assert!(matches!(
        h.orchestrator.replay_dead_letter(first).await,
        Err(EngineError::NotDeadLettered { status: TaskStatus::Completed, .. })
    ));

    // By filter: woken too.
    assert_eq!(h.orchestrator.replay_dead_letters(&TaskFilter::default()).await.unwrap(), 1);
    assert_eq!(h.wait_terminal(&[second]).await[0].status, TaskStatus::Completed);

    // A retry of a completed task is an invalid transition; of a missing one, not found.
    assert!(matches!(h.orchestrator.retry(first).await, Err(EngineError::InvalidTransition { .. })));
    assert!(matches!(h.orchestrator.retry(TaskId::new()).await, Err(EngineError::TaskNotFound(_))));
    h.stop().await;
}

#[tokio::test]
async fn agent_commands_report_by_meaning() {
    let h = Harness::new(vec![process_agent("a", ProcessConfig::default())], fast_engine()).await;
    let nobody = AgentId::new("nobody").unwrap();
    assert!(matches!(h.orchestrator.remove_agent(&nobody), Err(EngineError::AgentNotFound(id)) if id == nobody));
    assert!(matches!(h.orchestrator.agent_heartbeat(&nobody), Err(EngineError::AgentNotFound(_))));
    assert!(matches!(h.orchestrator.set_capacity(&nobody, 2), Err(EngineError::AgentNotFound(_))));
    let again = process_agent("a", ProcessConfig::default());
    assert!(matches!(h.orchestrator.add_agent(again), Err(EngineError::AgentExists(id)) if id.as_str() == "a"));
    let removed = h.orchestrator.remove_agent(&AgentId::new("a").unwrap()).unwrap();
    assert_eq!(removed.id.as_str(), "a");
    assert!(h.orchestrator.agents().is_empty());
}

/// Waits for a session to reach `state`.
async fn session_reaches(events: &mut godel_core::Subscription, state: SessionState) {
    loop {
        if let EventKind::SessionStateChanged { to, .. } = events.recv().await.unwrap().event.kind
            && to == state
        {
            return;
        }
    }
}

fn per_task_dirs(base: &Path) -> ProcessConfig {
    let workdir = WorkDir::PerTask { base: base.to_owned(), cleanup: Cleanup::Always };
    ProcessConfig { workdir, ..ProcessConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_start_removes_its_directory() {
    let work = tempfile::tempdir().unwrap();
    // The first write is the task's start.
    let plan = FaultPlan::new(1).fail(Method::WriteBatch, Calls::nth(1));
    let (mut h, store) =
        Harness::faulty(vec![process_agent("a", per_task_dirs(work.path()))], fast_engine(), plan).await;
    let mut events = h.orchestrator.subscribe(vec!["session.state_changed".parse().unwrap()]);
    h.start();
    let task = h.orchestrator.submit(shell("true")).await.unwrap();
    session_reaches(&mut events, SessionState::Error).await;
    assert_eq!(store.injected(), 1);
    assert!(!work.path().join(task.id.to_string()).exists(), "the unstarted session's directory is left");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_before_it_starts_removes_its_directory() {
    let work = tempfile::tempdir().unwrap();
    // The start reaches the store late enough for a cancel to come first.
    let plan = FaultPlan::new(1).delay(Method::WriteBatch, Calls::nth(1), Duration::from_secs(1));
    let (mut h, _store) =
        Harness::faulty(vec![process_agent("a", per_task_dirs(work.path()))], fast_engine(), plan).await;
    let mut events = h.orchestrator.subscribe(vec!["session.state_changed".parse().unwrap()]);
    h.start();
    let task = h.orchestrator.submit(shell("echo ran")).await.unwrap();
    session_reaches(&mut events, SessionState::Ready).await;
    assert!(work.path().join(task.id.to_string()).is_dir(), "the session prepared its directory");
    h.orchestrator.cancel(task.id).await.unwrap();
    session_reaches(&mut events, SessionState::Cancelled).await;
    assert!(!work.path().join(task.id.to_string()).exists(), "the cancelled session's directory is left");
    let done = h.wait_terminal(&[task.id]).await.remove(0);
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert_eq!(h.stdout(task.id).await, "", "a task cancelled before its start never runs");
    h.stop().await;
    assert_agents_idle(&h.orchestrator);
}

/// Runs until it is aborted and then reports success: a run that finished in
/// the same instant as the abort that was meant to stop it.
#[derive(Debug, Default)]
struct FinishesAsKilled {
    aborted: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Adapter for FinishesAsKilled {
    async fn open_session(&self, _task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        Ok(Box::new(FinishesAsKilled { aborted: self.aborted.clone() }))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

#[async_trait]
impl AgentSession for FinishesAsKilled {
    async fn run(&self, _task: &Task, _output: OutputSink) -> Outcome {
        self.aborted.notified().await;
        Outcome::Completed { result: serde_json::json!("finished") }
    }

    async fn abort(&self, _mode: AbortMode) {
        self.aborted.notify_one();
    }

    async fn close(&self, _outcome: &Outcome) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_completes_at_shutdown_keeps_its_result() {
    let agent = AgentConfig::new(AgentId::new("a").unwrap(), AgentKind::Http, Arc::new(FinishesAsKilled::default()));
    let config = EngineConfig { shutdown_grace: Duration::from_millis(50), ..fast_engine() };
    let mut h = Harness::new(vec![agent], config).await;
    let mut events = h.orchestrator.subscribe(vec!["task.started".parse().unwrap()]);
    h.start();
    let task = h.orchestrator.submit(NewTask::prompt("work")).await.unwrap();
    events.recv().await.unwrap();
    h.stop().await;
    let done = h.orchestrator.get(task.id).await.unwrap();
    assert_eq!((done.status, done.result), (TaskStatus::Completed, Some(serde_json::json!("finished"))));
    assert_agents_idle(&h.orchestrator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_holds_up_neither_output_nor_the_deadline() {
    // Every heartbeat takes ten seconds to reach the store.
    let plan = FaultPlan::new(1).delay(Method::Heartbeat, Calls::always(), Duration::from_secs(10));
    let config = EngineConfig { heartbeat_interval: Duration::from_millis(50), ..fast_engine() };
    let (mut h, store) = Harness::faulty(vec![process_agent("a", ProcessConfig::default())], config, plan).await;
    let mut events = h.orchestrator.subscribe(vec!["task.output".parse().unwrap()]);
    h.start();
    let marker = "60.3331";
    let task = shell(&format!("echo first; sleep 0.3; echo second; sleep {marker}"))
        .timeout(Duration::from_millis(800))
        .max_attempts(1);
    let task = h.orchestrator.submit(task).await.unwrap();
    let mut first = None;
    loop {
        if let EventKind::TaskOutput { data, .. } = &events.recv().await.unwrap().event.kind {
            if data.contains("first") {
                first = Some(tokio::time::Instant::now());
            }
            if data.contains("second") {
                break;
            }
        }
    }
    let waited = first.expect("first came first").elapsed();
    assert!(waited < Duration::from_secs(3), "output waited {waited:?} for a heartbeat");
    let t0 = tokio::time::Instant::now();
    let done = h.wait_terminal(&[task.id]).await.remove(0);
    assert!(t0.elapsed() < Duration::from_secs(3), "the deadline waited {:?} for a heartbeat", t0.elapsed());
    assert_eq!(done.error.as_ref().map(|e| e.kind), Some(TaskErrorKind::Timeout));
    assert!(store.calls(Method::Heartbeat) > 0, "no heartbeat was sent");
    assert_no_process_with(marker).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_reaps_runs_a_dead_process_left_and_says_so() {
    let state = tempfile::tempdir().unwrap();
    let (runs, work) = (state.path().join("runs"), state.path().join("work"));
    let left = work.join("left-behind");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::create_dir_all(&runs).unwrap();
    // A run whose owner is gone (no process has pid 0) and whose process ended with it.
    let record = serde_json::json!({
        "run": "left-1",
        "owner": { "pid": 0, "start": 1 },
        "process": null,
        "dir": left,
        "repo": null,
        "remove": true,
    });
    std::fs::write(runs.join("left-1.json"), record.to_string()).unwrap();
    let config = ProcessConfig { runs: Some(runs.clone()), ..per_task_dirs(&work) };
    let mut h = Harness::new(vec![process_agent("a", config.clone()), process_agent("b", config)], fast_engine()).await;
    let mut events = h.orchestrator.subscribe(vec!["system.reaped".parse().unwrap()]);
    h.start();
    let reaped = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    let EventKind::System { message, .. } = &reaped.event.kind else { panic!("{reaped:?}") };
    assert!(message.contains("left-1") && message.contains("left-behind"), "{message}");
    assert!(!left.exists(), "the run's directory is left");
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0, "the record is left");

    // Its own runs are recorded while they run and forgotten once closed.
    let task = h.orchestrator.submit(shell("ls ../../runs")).await.unwrap();
    let done = h.wait_terminal(&[task.id]).await.remove(0);
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(h.stdout(task.id).await.trim(), format!("{}-1.json", task.id));
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0, "a closed run is still recorded");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_does_not_decode_is_quarantined_and_the_others_run() {
    let mut h = Harness::new(vec![process_agent("a", ProcessConfig::default()).capacity(3)], fast_engine()).await;
    let mut events =
        h.orchestrator.subscribe(vec!["task.quarantined".parse().unwrap(), "task.completed".parse().unwrap()]);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(h.orchestrator.submit(shell(&format!("echo {i}")).priority(Priority::High)).await.unwrap().id);
    }
    // The middle task's payload is overwritten behind the store's back.
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", h._dir.path().join("godel.db").display())).await.unwrap();
    sqlx::query("UPDATE tasks SET payload = '{not json' WHERE id = ?")
        .bind(ids[1].to_string())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    h.start();
    let mut completed = Vec::new();
    let mut quarantined = Vec::new();
    while completed.len() < 2 || quarantined.is_empty() {
        match &events.recv().await.unwrap().event.kind {
            EventKind::TaskCompleted { task, .. } => completed.push(*task),
            EventKind::TaskQuarantined { task, .. } => quarantined.push(task.clone()),
            _ => {}
        }
    }
    completed.sort();
    assert_eq!(completed, [ids[0], ids[2]]);
    assert_eq!(quarantined, [ids[1].to_string()]);
    let tenant = h.orchestrator.config().tenant.clone();
    let row = h.orchestrator.store().get_quarantined(&tenant, ids[1]).await.unwrap();
    assert!(row.raw.contains("{not json"), "{}", row.raw);
    h.stop().await;
    assert_agents_idle(&h.orchestrator);
}
