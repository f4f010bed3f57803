//! `openclaw-bench`: what the openclaw adapter costs, against fake gateways
//! on loopback (`godel-fakes`), through a whole orchestrator.
//!
//! 1. **overhead**: one gateway, one task at a time, each run instant on the
//!    gateway. Submit-to-completed latency minus the fake's own time per run
//!    (from the `agent` request to its final response) is Godel's overhead per
//!    dispatched task: store writes, dispatch, session open, the request, the
//!    streamed events and the settle. The same loop with a no-op adapter
//!    shows how much of it the engine costs without any gateway.
//! 2. **throughput**: 3 gateways whose capacities add up to 50 sessions
//!    (session limits 19, 19 and 18, of which Godel uses 90%), `--tasks`
//!    tasks submitted at once, with instant runs and with runs of
//!    `--run-ms` milliseconds. The time runs from the first submit to the last
//!    `task.completed`. Each run checks that every task completed, that each
//!    gateway started exactly one run per task it got, and that no more than 50
//!    sessions were open at once.
//!
//! `cargo run --release -p godel-benches --bin openclaw-bench`

// This binary is a report tool: its output is the table it prints.
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use argh::FromArgs;
use godel_benches::{percentile, short, thousands};
use godel_core::adapter::NoopAdapter;
use godel_core::adapter::openclaw::{DeviceIdentity, GatewayConfig, GatewayState, OpenclawRegistry};
use godel_core::bus::RecvError;
use godel_core::event::{EventKind, EventPattern};
use godel_core::store::{MemoryStore, Store};
use godel_core::{AgentConfig, AgentId, AgentKind, CancellationToken, EngineConfig, NewTask, Orchestrator, TaskStatus};
use godel_fakes::openclaw::{FakeConfig, FakeGateway, RunEnd, RunScript, Step};

/// Measure the openclaw adapter's per-task overhead and its throughput across 3 gateways.
#[derive(FromArgs, Debug)]
struct Args {
    /// sequential tasks in the overhead run (default 500)
    #[argh(option, default = "500")]
    samples: usize,
    /// tasks in each throughput run (default 5000)
    #[argh(option, default = "5000")]
    tasks: usize,
    /// length of a run on the gateway in the second throughput run, in ms (default 100)
    #[argh(option, default = "100")]
    run_ms: u64,
}

const WARMUP: usize = 20;

fn script(run: Duration) -> godel_fakes::openclaw::Script {
    Arc::new(move |message: &str| RunScript {
        steps: vec![Step::Text(message.to_owned())],
        step_delay: run,
        usage: (10, 10),
        end: RunEnd::Ok,
    })
}

fn engine_config() -> EngineConfig {
    EngineConfig { agent_health_interval: Duration::from_millis(50), ..EngineConfig::default() }
}

struct Running {
    orchestrator: Orchestrator,
    stop: CancellationToken,
    engine: tokio::task::JoinHandle<Result<(), godel_core::StoreError>>,
}

impl Running {
    fn start(agents: Vec<AgentConfig>) -> anyhow::Result<Self> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        // Room for every event of a burst, so that the measuring subscriber never lags.
        let bus = godel_core::EventBus::new(1 << 20, 1);
        let mut builder = Orchestrator::builder(store).config(engine_config()).bus(bus);
        for a in agents {
            builder = builder.agent(a);
        }
        let orchestrator = builder.build()?;
        let stop = CancellationToken::new();
        let engine = tokio::spawn({
            let (o, s) = (orchestrator.clone(), stop.clone());
            async move { o.run(s).await }
        });
        Ok(Self { orchestrator, stop, engine })
    }

    async fn finish(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.engine.await??;
        Ok(())
    }

    /// Submits one task at a time and returns each one's submit-to-completed time.
    async fn sequential(&self, n: usize) -> anyhow::Result<Vec<Duration>> {
        let mut events = self.orchestrator.subscribe(vec![EventPattern::new("task.completed")?]);
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let started = Instant::now();
            let id = self.orchestrator.submit(NewTask::prompt(format!("t{i}"))).await?.id;
            loop {
                let e = tokio::time::timeout(Duration::from_secs(30), events.recv()).await.context("a task hung")?;
                match e {
                    Ok(p) => {
                        if matches!(p.event.kind, EventKind::TaskCompleted { task, .. } if task == id) {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(e) => anyhow::bail!("event stream ended: {e:?}"),
                }
            }
            samples.push(started.elapsed());
        }
        Ok(samples)
    }

    /// Submits `n` tasks at once; returns the time to the last completion.
    async fn burst(&self, n: usize) -> anyhow::Result<Duration> {
        let mut events = self.orchestrator.subscribe(vec![EventPattern::new("task.completed")?]);
        let started = Instant::now();
        let mut ids = HashSet::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let tasks = chunk.iter().map(|i| NewTask::prompt(format!("b{i}"))).collect();
            ids.extend(self.orchestrator.submit_batch(tasks).await?.into_iter().map(|t| t.id));
        }
        let mut done = 0;
        while done < n {
            match tokio::time::timeout(Duration::from_secs(120), events.recv()).await.context("the burst hung")? {
                Ok(p) => {
                    if matches!(p.event.kind, EventKind::TaskCompleted { task, .. } if ids.contains(&task)) {
                        done += 1;
                    }
                }
                Err(RecvError::Lagged(_)) => anyhow::bail!("the benchmark lagged behind the event bus"),
                Err(e) => anyhow::bail!("event stream ended: {e:?}"),
            }
        }
        let elapsed = started.elapsed();
        for id in ids {
            let task = self.orchestrator.get(id).await?;
            ensure!(task.status == TaskStatus::Completed && task.attempt == 1, "task {id} is {}", task.status);
        }
        Ok(elapsed)
    }
}

async fn ready(registry: &OpenclawRegistry, orchestrator: &Orchestrator) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all_ready = registry.list().iter().all(|g| g.state == GatewayState::Ready);
        let agents_up = orchestrator.agents().iter().all(|a| a.can_take(&[]));
        if all_ready && agents_up {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "gateways did not become ready: {:?}", registry.list());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn row(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    println!(
        "| {name} | {} | {} | {} | {} |",
        short(mean),
        short(percentile(samples, 0.5)),
        short(percentile(samples, 0.99)),
        samples.len()
    );
    percentile(samples, 0.5)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = argh::from_env();

    // 1. Overhead per task.
    let fake = FakeGateway::start(FakeConfig { script: script(Duration::ZERO), ..FakeConfig::default() }).await?;
    let registry = OpenclawRegistry::new(DeviceIdentity::generate());
    let agent = registry.add(GatewayConfig::new("solo", fake.url()))?.into();
    let run = Running::start(vec![agent])?;
    ready(&registry, &run.orchestrator).await?;
    run.sequential(WARMUP).await?;
    let mut openclaw = run.sequential(args.samples).await?;
    run.finish().await?;
    let mut gateway = fake.run_times().split_off(WARMUP);
    ensure!(fake.total_runs_started() as usize == WARMUP + args.samples, "one run per task");
    registry.shutdown().await;

    let noop = AgentConfig::new(AgentId::new("noop")?, AgentKind::Process, Arc::new(NoopAdapter)).capacity(9);
    let run = Running::start(vec![noop])?;
    run.sequential(WARMUP).await?;
    let mut baseline = run.sequential(args.samples).await?;
    run.finish().await?;

    println!("## Overhead per task (one at a time, instant runs, memory store)\n");
    println!("| | mean | p50 | p99 | samples |\n| --- | --- | --- | --- | --- |");
    let e2e = row("submit to completed, openclaw", &mut openclaw);
    let own = row("the fake gateway's own time", &mut gateway);
    let base = row("submit to completed, no-op adapter", &mut baseline);
    println!(
        "\nGodel's overhead per dispatched task (p50): {} (of which the engine without a gateway: {}; the adapter and protocol: {})\n",
        short(e2e.saturating_sub(own)),
        short(base),
        short(e2e.saturating_sub(own).saturating_sub(base)),
    );

    // 2. Throughput: 50 sessions across 3 gateways.
    println!("## Throughput: 50 concurrent sessions across 3 gateways\n");
    println!(
        "| run on the gateway | tasks | time | tasks/s | peak sessions per gateway |\n| --- | --- | --- | --- | --- |"
    );
    for run_for in [Duration::ZERO, Duration::from_millis(args.run_ms)] {
        let mut fakes = Vec::new();
        for _ in 0..3 {
            fakes.push(FakeGateway::start(FakeConfig { script: script(run_for), ..FakeConfig::default() }).await?);
        }
        let registry = OpenclawRegistry::new(DeviceIdentity::generate());
        let mut agents: Vec<AgentConfig> = Vec::new();
        for (i, (f, limit)) in fakes.iter().zip([19, 19, 18]).enumerate() {
            agents.push(
                registry
                    .add(GatewayConfig { max_sessions: limit, ..GatewayConfig::new(format!("g{i}"), f.url()) })?
                    .into(),
            );
        }
        ensure!(agents.iter().map(|a| a.max_capacity).sum::<u32>() == 50, "capacities add up to 50");
        let run = Running::start(agents)?;
        ready(&registry, &run.orchestrator).await?;
        let elapsed = run.burst(args.tasks).await?;
        run.finish().await?;
        registry.shutdown().await;
        let started: u32 = fakes.iter().map(FakeGateway::total_runs_started).sum();
        ensure!(started as usize == args.tasks, "{started} runs for {} tasks", args.tasks);
        for f in &fakes {
            ensure!(f.run_keys().iter().all(|k| f.runs_started(k) == 1), "a run started twice");
        }
        let peaks: Vec<String> = fakes.iter().map(|f| f.peak_active_runs().to_string()).collect();
        ensure!(fakes.iter().map(FakeGateway::peak_active_runs).sum::<usize>() <= 50, "more than 50 sessions at once");
        println!(
            "| {} | {} | {:.2} s | {} | {} |",
            if run_for.is_zero() { "instant".to_owned() } else { format!("{} ms", run_for.as_millis()) },
            thousands(args.tasks as f64),
            elapsed.as_secs_f64(),
            thousands(args.tasks as f64 / elapsed.as_secs_f64()),
            peaks.join(" / "),
        );
    }
    Ok(())
}
