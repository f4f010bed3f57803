//! An orchestrator embedded in a program: the SQLite store under `./.godel/`,
//! four local process agents, and a mixed-priority batch of real commands.
//! Events are printed as they happen; the program stops the engine
//! gracefully once every task it submitted has finished.
//!
//! Run it with `cargo run -p godel-examples --example embedded`.

#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use godel_core::adapter::{ProcessAdapter, ProcessConfig};
use godel_core::event::EventKind;
use godel_core::store;
use godel_core::{
    AgentConfig, AgentId, AgentKind, Backoff, CancellationToken, EngineConfig, NewTask, Orchestrator, Priority,
    TaskStatus,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("GODEL_STORE").unwrap_or_else(|_| "sqlite://.godel/godel.db".to_owned());
    let store = store::open(&url).await.with_context(|| format!("opening {url}"))?;

    // Four local agents. Tasks bring their own command; capabilities route
    // the ones that need a particular toolchain.
    let process = Arc::new(ProcessAdapter::new(ProcessConfig::default())?);
    let agent = |id: &str| -> anyhow::Result<AgentConfig> {
        Ok(AgentConfig::new(AgentId::new(id)?, AgentKind::Process, process.clone()))
    };
    let config = EngineConfig {
        backoff: Backoff { initial: Duration::from_millis(200), ..Backoff::default() },
        ..EngineConfig::default()
    };
    let orchestrator = Orchestrator::builder(store)
        .config(config)
        .agent(agent("local-1")?.capacity(2))
        .agent(agent("local-2")?.capacity(2))
        .agent(agent("builder")?.capabilities(["rust"]))
        .agent(agent("scripter")?.capabilities(["python"]))
        .build()?;

    let mut events = orchestrator.subscribe(Vec::new());
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn({
        let orchestrator = orchestrator.clone();
        let shutdown = shutdown.clone();
        async move { orchestrator.run(shutdown).await }
    });

    let batch = vec![
        NewTask::command(["echo", "low: tidy up"]).priority(Priority::Low),
        NewTask::command(["uname", "-sr"]),
        NewTask::command(["sh", "-c", "echo building; sleep 0.3; echo built"]).priority(Priority::High),
        NewTask::command(["rustc", "--version"]).priority(Priority::High).capability("rust"),
        NewTask::command(["python3", "-c", "print('hello from python')"]).capability("python"),
        NewTask::command(["sh", "-c", "echo 'flaky' >&2; exit 3"]).priority(Priority::High).max_attempts(2),
        NewTask::command(["sleep", "30"]).timeout(Duration::from_millis(500)).max_attempts(1),
        NewTask::command(["echo", "critical: page the on-call"]).priority(Priority::Critical),
    ];
    let submitted = orchestrator.submit_batch(batch).await?;
    let mut open: HashSet<_> = submitted.iter().map(|t| t.id).collect();

    while !open.is_empty() {
        let published = match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Ok(published)) => published,
            Ok(Err(e)) => anyhow::bail!("event stream broke: {e}"),
            Err(_) => anyhow::bail!("no event for 30 s; {} tasks still open", open.len()),
        };
        let event = &published.event;
        match &event.kind {
            EventKind::TaskOutput { task, data, .. } => println!("  {task} | {}", data.trim_end()),
            EventKind::TaskAssigned { task, agent, attempt, .. } => {
                println!("{} {task} -> {agent} (attempt {attempt})", event.kind.name())
            }
            EventKind::TaskRetrying { task, error, run_at, .. } => {
                println!("{} {task}: {} (again at {run_at})", event.kind.name(), error.message);
            }
            EventKind::TaskDeadLettered { task, error, .. } => {
                println!("{} {task}: {}", event.kind.name(), error.as_ref().map_or("", |e| &e.message));
            }
            EventKind::SessionStateChanged { .. }
            | EventKind::SessionOpened { .. }
            | EventKind::SessionClosed { .. } => {}
            other => println!("{} {}", other.name(), other.task().map(|t| t.to_string()).unwrap_or_default()),
        }
        if let Some(task) = event.kind.task()
            && open.contains(&task)
            && orchestrator.get(task).await?.status.is_terminal()
        {
            open.remove(&task);
        }
    }

    shutdown.cancel();
    engine.await??;
    println!();
    for task in &submitted {
        let task = orchestrator.get(task.id).await?;
        let argv = task.payload.command.unwrap_or_default().join(" ");
        let detail = match task.status {
            TaskStatus::Completed => String::new(),
            _ => task.error.map(|e| format!(" ({})", e.message)).unwrap_or_default(),
        };
        println!("{:<9} {:<11} after {} attempt(s): {argv}{detail}", task.priority, task.status, task.attempt);
    }
    for agent in orchestrator.agents() {
        println!("agent {:<9} load {}/{} {}", agent.id, agent.current_load, agent.max_capacity, agent.status);
    }
    Ok(())
}
