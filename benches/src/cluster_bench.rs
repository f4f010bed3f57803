//! `cluster-bench`: submit-to-start latency across nodes. Two orchestrators
//! share one store (two store handles, as two servers would open them):
//! node A has no-op agents with the capability `remote`, node B has none
//! that can take such tasks. Each sample submits one task on B and waits on
//! B's bus for the `task.started` that A raises: the backend's wake-up
//! (NOTIFY or pub/sub) reaches A, A claims and starts the task, and the
//! event is relayed back to B. One task at a time, on an idle cluster.
//!
//! `cargo run --release -p godel-benches --bin cluster-bench -- --store postgres://postgres@127.0.0.1:5432/test`

// This binary is a report tool: its output is the table it prints.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use argh::FromArgs;
use godel_benches::{percentile, short};
use godel_core::adapter::NoopAdapter;
use godel_core::event::EventKind;
use godel_core::{
    AgentConfig, AgentId, AgentKind, CancellationToken, EngineConfig, EventPattern, NewTask, Orchestrator, Store,
};

/// The cross-node wake-up p99 Godel aims for.
const TARGET: Duration = Duration::from_millis(10);
const WARMUP: usize = 50;

/// Measure submit-to-start latency across two nodes sharing a store.
#[derive(FromArgs, Debug)]
struct Args {
    /// store URL shared by both nodes (postgres://… or redis://…); a fresh
    /// namespace is used (`schema=` or `prefix=` is added)
    #[argh(option)]
    store: String,
    /// samples (default 1000)
    #[argh(option, default = "1_000")]
    samples: usize,
}

fn node(store: Arc<dyn Store>, name: &str, agents: bool) -> anyhow::Result<Orchestrator> {
    let config = EngineConfig { node: name.to_owned(), ..EngineConfig::default() };
    let mut builder = Orchestrator::builder(store).config(config);
    if agents {
        let agent = AgentConfig::new(AgentId::new("runner")?, AgentKind::Process, Arc::new(NoopAdapter))
            .capacity(8)
            .capabilities(["remote"]);
        builder = builder.agent(agent);
    }
    Ok(builder.build()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Args = argh::from_env();
    let namespace = format!("godel_bench_{}", std::process::id());
    let sep = if args.store.contains('?') { '&' } else { '?' };
    let url = match args.store.split_once("://").map(|(scheme, _)| scheme) {
        Some("postgres" | "postgresql") => format!("{}{sep}schema={namespace}", args.store),
        Some("redis") => format!("{}{sep}prefix={namespace}", args.store),
        _ => bail!("--store must be a postgres:// or redis:// URL (nodes need a shared channel)"),
    };
    let (store_a, store_b) = (godel_core::store::open(&url).await?, godel_core::store::open(&url).await?);
    let backend = store_a.backend();
    let a = node(store_a, "bench-a", true)?;
    let b = node(store_b, "bench-b", false)?;
    let stop = CancellationToken::new();
    let runs = [a.clone(), b.clone()].map(|o| {
        let stop = stop.clone();
        tokio::spawn(async move { o.run(stop).await })
    });

    let mut events = b.subscribe(vec![EventPattern::new("task.started")?]);
    let mut samples = Vec::with_capacity(args.samples);
    for i in 0..args.samples + WARMUP {
        let started = Instant::now();
        let task = b.submit(NewTask::prompt("ping").capability("remote")).await?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .context("no task.started within 10 s: is the cross-node channel working?")??;
            if event.relayed && matches!(event.event.kind, EventKind::TaskStarted { task: t, .. } if t == task.id) {
                break;
            }
        }
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    stop.cancel();
    for run in runs {
        run.await??;
    }
    samples.sort();
    let p99 = percentile(&samples, 0.99);
    println!("cross-node submit-to-start on {backend}, {} samples (after {WARMUP} warm-up)", samples.len());
    println!(
        "p50 {}  p90 {}  p99 {}  max {}  (target p99 < {})  {}",
        short(percentile(&samples, 0.50)),
        short(percentile(&samples, 0.90)),
        short(p99),
        short(*samples.last().unwrap_or(&Duration::ZERO)),
        short(TARGET),
        if p99 < TARGET { "met" } else { "MISSED" }
    );
    Ok(())
}
