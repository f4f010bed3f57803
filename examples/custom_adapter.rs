//! Writing your own adapter: a "reverser" agent runtime that streams a
//! task's prompt back reversed, word by word, and honours aborts. Anything
//! that can run a task (an API, a device, a queue of humans) plugs into the
//! orchestrator the same way.
//!
//! Run it with `cargo run -p godel-examples --example custom_adapter`.

#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use godel_core::adapter::{AbortMode, Adapter, AdapterError, AgentSession, Outcome, OutputSink};
use godel_core::event::{EventKind, OutputStream};
use godel_core::store::MemoryStore;
use godel_core::{
    AgentConfig, AgentId, AgentKind, CancellationToken, NewTask, Orchestrator, Task, TaskError, TaskErrorKind,
};
use tokio::sync::Notify;

/// The runtime: stateless here, but an adapter would typically hold a client or a connection pool.
#[derive(Debug)]
struct Reverser {
    delay: Duration,
}

#[async_trait]
impl Adapter for Reverser {
    async fn open_session(&self, task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        if task.payload.prompt.is_none() {
            // Permanent: retrying a task without a prompt would not help.
            return Err(AdapterError::permanent("the reverser needs a prompt"));
        }
        Ok(Box::new(ReverserSession { delay: self.delay, aborted: Notify::new() }))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

struct ReverserSession {
    delay: Duration,
    aborted: Notify,
}

#[async_trait]
impl AgentSession for ReverserSession {
    async fn run(&self, task: &Task, output: OutputSink) -> Outcome {
        let prompt = task.payload.prompt.clone().unwrap_or_default();
        let mut reversed = Vec::new();
        for word in prompt.split_whitespace().rev() {
            // Stop promptly when the engine aborts (cancel, timeout, shutdown).
            tokio::select! {
                () = self.aborted.notified() => {
                    let error = TaskError::new(TaskErrorKind::Aborted, "aborted mid-sentence");
                    return Outcome::Failed { error, retryable: true };
                }
                () = tokio::time::sleep(self.delay) => {}
            }
            let word: String = word.chars().rev().collect();
            output.send(OutputStream::Stdout, format!("{word} ")).await;
            reversed.push(word);
        }
        Outcome::Completed { result: serde_json::json!({ "reversed": reversed.join(" ") }) }
    }

    async fn abort(&self, _mode: AbortMode) {
        self.aborted.notify_one();
    }

    async fn close(&self, _outcome: &Outcome) {}
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let adapter = Arc::new(Reverser { delay: Duration::from_millis(50) });
    let orchestrator = Orchestrator::builder(Arc::new(MemoryStore::new()))
        .agent(AgentConfig::new(AgentId::new("reverser")?, AgentKind::Http, adapter).capacity(2))
        .build()?;
    let mut events = orchestrator.subscribe(vec!["task.*".parse()?]);
    let shutdown = CancellationToken::new();
    let engine = tokio::spawn({
        let (orchestrator, shutdown) = (orchestrator.clone(), shutdown.clone());
        async move { orchestrator.run(shutdown).await }
    });

    let done = orchestrator.submit(NewTask::prompt("a man a plan a canal panama")).await?;
    let slow = orchestrator.submit(NewTask::prompt("on and on ".repeat(50))).await?;
    let mut finished = 0;
    while finished < 2 {
        let published = events.recv().await?;
        match &published.event.kind {
            EventKind::TaskOutput { task, data, .. } if *task == done.id => print!("{data}"),
            EventKind::TaskStarted { task, .. } if *task == slow.id => {
                orchestrator.cancel(slow.id).await?;
            }
            EventKind::TaskCompleted { task, .. } | EventKind::TaskCancelled { task, .. } => {
                finished += 1;
                let task = orchestrator.get(*task).await?;
                println!("\n{} {}: {}", task.id, task.status, task.result.unwrap_or_default());
            }
            _ => {}
        }
    }
    shutdown.cancel();
    engine.await??;
    Ok(())
}
