//! `godel-engine-child <sqlite-path> [--submit <n> | --sleepers <n>]`: an
//! orchestrator for the engine crash test to kill in the middle of its work,
//! and then to restart on the same file.
//!
//! It opens the SQLite store, builds an orchestrator with a few local process
//! agents and a short lease, and (with `--submit`) submits `n` short shell
//! commands in one batch, reporting `submitted <id>` for each once the batch
//! is stored; `--sleepers` submits `n` tasks that sleep until killed, with
//! one attempt each. Its agents run each task in a directory of its own and
//! record their live runs, both beside the store file, so that a restart
//! reaps what a killed run left. It then runs the engine, reporting task events as lines on
//! stdout (`started`, `completed`, `retrying`, ...), until no task of its
//! tenant in the store is left pending, assigned or running; then it shuts
//! the engine down gracefully, reports the last events and exits 0. A
//! restart without `--submit` therefore finishes what a killed run left.
//!
//! Each line is written and flushed whole, after the event it reports was
//! published. The protocol (tenant, agents, timings, commands, line format)
//! lives in `godel_e2e::engine_child`. This binary is a test fixture, not a
//! product, so it keeps its logic here rather than in a library `run`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use godel_core::adapter::{Cleanup, ProcessAdapter, ProcessConfig, WorkDir};
use godel_core::bus::RecvError;
use godel_core::store::{SqliteStore, Store};
use godel_core::{
    AgentConfig, AgentId, AgentKind, Backoff, CancellationToken, EngineConfig, EventBus, EventKind, EventPattern,
    NewTask, Orchestrator, Subscription, TaskStatus, Timestamp,
};
use godel_e2e::engine_child::{self, AGENTS, CAPACITY, LEASE, MAX_ATTEMPTS, Report};

/// How often the child asks the store whether any work is left.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Events the bus buffers for the child's one subscriber: far more than a run
/// publishes, so the child never lags (and it fails loudly if it does).
const BUS_CAPACITY: usize = 1 << 16;

/// How long the last events may take to arrive once the engine has stopped.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let sqlite = SqliteStore::open(&args.path).await.context("open the store")?;
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());
    let orchestrator = build(store.clone(), &args.path)?;
    let mut events = orchestrator.subscribe(vec![EventPattern::new("task.*")?]);

    // Submitted before the engine runs, so every `submitted` line comes
    // before any line about the work; the wake-up it leaves starts the
    // dispatcher as soon as `run` begins.
    let tasks = match args.submit {
        Some(Submit::Tasks(n)) => {
            (0..n).map(|i| NewTask::command(engine_child::command(i)).max_attempts(MAX_ATTEMPTS)).collect()
        }
        Some(Submit::Sleepers(n)) => {
            (0..n).map(|_| NewTask::command(engine_child::sleeper()).max_attempts(1)).collect()
        }
        None => Vec::new(),
    };
    if !tasks.is_empty() {
        let submitted = orchestrator.submit_batch(tasks).await.context("submit the batch")?;
        for task in &submitted {
            report(Report::Submitted(task.id))?;
        }
    }

    let shutdown = CancellationToken::new();
    let mut engine = tokio::spawn({
        let orchestrator = orchestrator.clone();
        let shutdown = shutdown.clone();
        async move { orchestrator.run(shutdown).await }
    });
    let watched = tokio::select! {
        watched = watch(store.as_ref(), &mut events) => watched,
        ended = &mut engine => {
            // The engine only returns early on an error; report it below.
            let ended = ended.context("the engine panicked")?;
            ended.context("the engine stopped before the work was done")?;
            bail!("the engine stopped before the work was done")
        }
    };
    shutdown.cancel();
    let ended = engine.await.context("the engine panicked")?;
    // The engine has stopped and nothing else holds the bus once this handle
    // goes, so the subscription yields what is left and then ends.
    drop(orchestrator);
    let drained = tokio::time::timeout(DRAIN_DEADLINE, drain(&mut events)).await;
    watched?;
    ended.context("the engine failed")?;
    drained.context("the event bus stayed open after the engine stopped")??;
    // Checkpoints the WAL, so the next run (or the test) opens a tidy file.
    sqlite.close().await;
    Ok(())
}

struct Args {
    path: PathBuf,
    submit: Option<Submit>,
}

enum Submit {
    Tasks(usize),
    Sleepers(usize),
}

fn parse_args() -> Result<Args> {
    const USAGE: &str = "usage: godel-engine-child <sqlite-path> [--submit <n> | --sleepers <n>]";
    let mut args = std::env::args_os().skip(1);
    let path = PathBuf::from(args.next().context(USAGE)?);
    let submit = match (args.next(), args.next(), args.next()) {
        (None, _, _) => None,
        (Some(flag), Some(n), None) if flag == "--submit" || flag == "--sleepers" => {
            let n = n.to_str().and_then(|s| s.parse().ok());
            let n = n.with_context(|| format!("invalid {}: expected a number of tasks; {USAGE}", flag.display()))?;
            Some(if flag == "--submit" { Submit::Tasks(n) } else { Submit::Sleepers(n) })
        }
        _ => bail!(USAGE),
    };
    Ok(Args { path, submit })
}

/// The orchestrator under test: [`AGENTS`] local process agents with
/// [`CAPACITY`] slots each, a [`LEASE`]-long lease and quick timers, so a
/// restart recovers a dead run's tasks in seconds.
fn build(store: Arc<dyn Store>, path: &Path) -> Result<Orchestrator> {
    let process = ProcessConfig {
        workdir: WorkDir::PerTask { base: engine_child::work_dir(path), cleanup: Cleanup::Always },
        runs: Some(engine_child::runs_dir(path)),
        ..ProcessConfig::default()
    };
    let adapter = Arc::new(ProcessAdapter::new(process)?);
    let config = EngineConfig {
        tenant: engine_child::tenant(),
        lease: LEASE,
        heartbeat_interval: Duration::from_millis(500),
        poll_interval: Duration::from_millis(100),
        reclaim_interval: Duration::from_millis(200),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max: Duration::from_millis(200),
            jitter: 0.2,
        },
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let mut builder = Orchestrator::builder(store).config(config).bus(EventBus::new(BUS_CAPACITY, 0));
    for i in 1..=AGENTS {
        let id = AgentId::new(format!("local-{i}"))?;
        builder = builder.agent(AgentConfig::new(id, AgentKind::Process, adapter.clone()).capacity(CAPACITY));
    }
    Ok(builder.build()?)
}

/// Reports events until the store holds no task of the tenant that is still
/// pending, assigned or running.
async fn watch(store: &dyn Store, events: &mut Subscription) -> Result<()> {
    let tenant = engine_child::tenant();
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            received = events.recv() => report_event(&received?.event.kind)?,
            _ = check.tick() => {
                let counts = store.counts(&tenant, Timestamp::now()).await.context("count the tasks")?;
                let open: u64 = TaskStatus::ALL.iter().filter(|s| !s.is_terminal()).map(|&s| counts.status(s)).sum();
                if open == 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// Reports the events still in the subscription until the bus closes.
async fn drain(events: &mut Subscription) -> Result<()> {
    loop {
        match events.recv().await {
            Ok(published) => report_event(&published.event.kind)?,
            Err(RecvError::Closed) => return Ok(()),
            Err(e @ RecvError::Lagged(_)) => return Err(e.into()),
        }
    }
}

fn report_event(kind: &EventKind) -> Result<()> {
    let line = match *kind {
        EventKind::TaskStarted { task, attempt, .. } => Report::Started { task, attempt },
        EventKind::TaskCompleted { task, attempt, .. } => Report::Completed { task, attempt },
        EventKind::TaskRetrying { task, attempt, ref error, .. } => {
            Report::Retrying { task, attempt, kind: error.kind }
        }
        EventKind::TaskFailed { task, attempt, .. } => Report::Failed { task, attempt },
        EventKind::TaskDeadLettered { task, attempts, .. } => Report::DeadLettered { task, attempts },
        EventKind::TaskCancelled { task, .. } => Report::Cancelled(task),
        _ => return Ok(()),
    };
    report(line)
}

/// Writes one whole line and flushes it. A kill can at worst cut the last
/// line short, and the test ignores a tail without its newline. The stdout
/// lock is taken per line rather than held across `.await`.
fn report(report: Report) -> Result<()> {
    let line = format!("{report}\n");
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}
