//! `engine-bench`: tasks per second through the full orchestrator (submit to
//! completed) and submit-to-start latency, with a no-op adapter so that what
//! is measured is Godel's own overhead: store round trips, dispatch, sessions
//! and events.
//!
//! For each backend and slot count it starts a fresh store and one
//! orchestrator with default settings, then measures, in this order:
//!
//! 1. **latency**: on an idle engine with every slot free, submit one task and
//!    wait for its `task.started` event; one task at a time.
//! 2. **throughput**: submit `--tasks` tasks in batches of 500 as fast as the
//!    store takes them, while the engine runs them; the time runs from the
//!    first submit to the last `task.completed` event.
//!
//! Each run then checks that the store agrees (every task completed exactly
//! once, nothing left in the queue) and that every slot was given back, so a
//! broken engine cannot post a fast figure.
//!
//! `cargo run --release -p godel-benches --bin engine-bench -- --backend all`

// This binary is a report tool: its output is the table it prints.
#![allow(clippy::print_stdout)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use argh::FromArgs;
use godel_benches::{percentile, short, thousands};
use godel_core::adapter::NoopAdapter;
use godel_core::bus::RecvError;
use godel_core::event::EventKind;
use godel_core::store::{MemoryStore, SqliteStore, Store};
use godel_core::{
    AgentConfig, AgentId, AgentKind, CancellationToken, EngineConfig, EventBus, NewTask, Orchestrator, TaskStatus,
    Timestamp,
};

/// Throughput the engine must reach at 50 slots on SQLite (tasks/s).
const THROUGHPUT_TARGET: f64 = 10_000.0;
/// Submit-to-start p99 the engine must stay under with free slots.
const LATENCY_TARGET: Duration = Duration::from_millis(10);
/// Tasks per `submit_batch` call in the throughput run.
const SUBMIT_BATCH: usize = 500;
/// Latency samples thrown away first, so that warm-up does not count.
const LATENCY_WARMUP: usize = 50;
/// The longest a throughput run may take before it counts as stuck.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Measure the orchestrator's throughput and submit-to-start latency with a no-op adapter.
#[derive(FromArgs, Debug)]
struct Args {
    /// memory, sqlite or all (default all)
    #[argh(option, default = "Backend::All")]
    backend: Backend,
    /// comma-separated agent slot counts (default 10,25,50)
    #[argh(option, default = "String::from(\"10,25,50\")")]
    slots: String,
    /// agents the slots are spread over, evenly (default 1)
    #[argh(option, default = "1")]
    agents: u32,
    /// tasks per throughput run (default 50000)
    #[argh(option, default = "50_000")]
    tasks: usize,
    /// submit-to-start latency samples per run (default 1000)
    #[argh(option, default = "1_000")]
    samples: usize,
}

/// The `--backend` flag.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Memory,
    Sqlite,
    All,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(Self::Memory),
            "sqlite" => Ok(Self::Sqlite),
            "all" => Ok(Self::All),
            _ => Err(format!("expected memory, sqlite or all; got {s:?}")),
        }
    }
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = argh::from_env();
    ensure!(args.tasks >= 1, "invalid --tasks: expected at least 1, got 0");
    ensure!(args.samples >= 1, "invalid --samples: expected at least 1, got 0");
    ensure!(args.agents >= 1, "invalid --agents: expected at least 1, got 0");
    let backends: &[Backend] = match args.backend {
        Backend::All => &[Backend::Memory, Backend::Sqlite],
        Backend::Memory => &[Backend::Memory],
        Backend::Sqlite => &[Backend::Sqlite],
    };
    let slots: Vec<u32> = args
        .slots
        .split(',')
        .map(|s| s.trim().parse::<u32>().with_context(|| format!("invalid --slots: {s:?} is not a number")))
        .collect::<Result<_, _>>()?;
    ensure!(slots.iter().all(|n| *n >= args.agents), "invalid --slots: every count needs at least one slot per agent");
    println!(
        "engine-bench: no-op adapter, {} tasks per throughput run (submitted {SUBMIT_BATCH} per call), \
         {} latency samples, {} agent(s), {} CPUs, default engine settings",
        args.tasks,
        args.samples,
        args.agents,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "  {:<8} {:>5} {:>12} {:>11} {:>11} {:>11}  target",
        "backend", "slots", "tasks/s", "start p50", "start p99", "start max"
    );
    for &backend in backends {
        for &n in &slots {
            let report = run(backend, n, &args).await.with_context(|| format!("{backend:?} with {n} slots"))?;
            let mut verdicts = Vec::new();
            if backend == Backend::Sqlite && n == 50 {
                verdicts.push(verdict("tasks/s", report.per_second >= THROUGHPUT_TARGET));
            }
            verdicts.push(verdict("p99", report.p99 < LATENCY_TARGET));
            println!(
                "  {:<8} {n:>5} {:>12} {:>11} {:>11} {:>11}  {}",
                format!("{backend:?}").to_lowercase(),
                thousands(report.per_second),
                short(report.p50),
                short(report.p99),
                short(report.max),
                verdicts.join(", ")
            );
        }
    }
    Ok(())
}

async fn run(backend: Backend, slots: u32, args: &Args) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new().prefix("godel-engine-bench").tempdir()?;
    let sqlite = match backend {
        Backend::Sqlite => Some(SqliteStore::open(&dir.path().join("bench.db")).await?),
        _ => None,
    };
    let store: Arc<dyn Store> = match &sqlite {
        Some(store) => Arc::new(store.clone()),
        None => Arc::new(MemoryStore::new()),
    };
    // A buffer big enough that the event counter below never lags: a no-op
    // task publishes about ten events.
    let bus = EventBus::new(1 << 20, 10_000);
    let mut builder = Orchestrator::builder(store.clone()).config(EngineConfig::default()).bus(bus);
    for i in 0..args.agents {
        let capacity = slots / args.agents + u32::from(i < slots % args.agents);
        let id = AgentId::new(format!("noop-{i}"))?;
        builder = builder.agent(AgentConfig::new(id, AgentKind::Process, Arc::new(NoopAdapter)).capacity(capacity));
    }
    let orchestrator = builder.build()?;
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn({
        let (o, s) = (orchestrator.clone(), shutdown.clone());
        async move { o.run(s).await }
    });
    let result = measure(&orchestrator, args).await;
    shutdown.cancel();
    engine.await??;
    let report = result?;

    let tenant = orchestrator.config().tenant.clone();
    let counts = store.counts(&tenant, Timestamp::now()).await?;
    let expected = (args.tasks + LATENCY_WARMUP + args.samples) as u64;
    ensure!(counts.status(TaskStatus::Completed) == expected, "{counts:?}, expected {expected} completed");
    ensure!(counts.ready == 0 && counts.scheduled == 0, "tasks left in the queue: {counts:?}");
    for agent in orchestrator.agents() {
        ensure!(agent.current_load == 0, "agent {} still counts {} slots in use", agent.id, agent.current_load);
    }
    if let Some(store) = sqlite {
        store.close().await;
    }
    Ok(report)
}

async fn measure(orchestrator: &Orchestrator, args: &Args) -> anyhow::Result<Report> {
    // All events, unfiltered: matching on the kind here is cheaper than a pattern.
    let mut events = orchestrator.subscribe(Vec::new());

    // Latency first, on an idle engine: one task at a time, slots free.
    let mut samples = Vec::with_capacity(args.samples);
    let mut completed = 0;
    for i in 0..LATENCY_WARMUP + args.samples {
        let t0 = Instant::now();
        let task = orchestrator.submit(NewTask::prompt("x")).await?;
        loop {
            match events.recv().await?.event.kind {
                EventKind::TaskStarted { task: id, .. } if id == task.id => break,
                EventKind::TaskCompleted { .. } => completed += 1,
                _ => {}
            }
        }
        if i >= LATENCY_WARMUP {
            samples.push(t0.elapsed());
        }
    }
    // Let the last sample finish, so the throughput run starts from an idle engine.
    while completed < LATENCY_WARMUP + args.samples {
        if matches!(events.recv().await?.event.kind, EventKind::TaskCompleted { .. }) {
            completed += 1;
        }
    }
    samples.sort_unstable();

    // Throughput: submit in batches while the engine works, until all are completed.
    let t0 = Instant::now();
    let submitter = async {
        let mut left = args.tasks;
        while left > 0 {
            let n = left.min(SUBMIT_BATCH);
            orchestrator.submit_batch((0..n).map(|_| NewTask::prompt("x")).collect()).await?;
            left -= n;
        }
        anyhow::Ok(())
    };
    let counter = async {
        let mut done = 0;
        while done < args.tasks {
            match events.recv().await {
                Ok(published) if matches!(published.event.kind, EventKind::TaskCompleted { .. }) => done += 1,
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => bail!("the event counter lagged and missed {n} events"),
                Err(RecvError::Closed) => bail!("the event bus closed"),
            }
            if t0.elapsed() > RUN_LIMIT {
                bail!("only {done} of {} tasks completed in {RUN_LIMIT:?}", args.tasks);
            }
        }
        anyhow::Ok(t0.elapsed())
    };
    let ((), elapsed) = tokio::try_join!(submitter, counter)?;
    Ok(Report {
        per_second: args.tasks as f64 / elapsed.as_secs_f64(),
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        max: *samples.last().expect("at least one sample"),
    })
}

fn verdict(what: &str, met: bool) -> String {
    format!("{what} {}", if met { "met" } else { "MISSED" })
}
