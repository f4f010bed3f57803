//! A tour of Godel's durable queue on its embedded default, SQLite under
//! `./.godel/`: a mixed-priority batch of real commands is enqueued, then a
//! small worker loop claims them in priority order, runs each one (argv, no
//! shell), records its output and settles it: completed, retried with backoff,
//! or dead-lettered. The full engine (agents, sessions, timeouts, events)
//! builds on exactly these store calls.
//!
//! Run it with `cargo run -p godel-examples --example queue_tour`.

#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::time::Duration;

use anyhow::Context;
use godel_core::store::{self, ClaimRequest, Failure, Retry, Store};
use godel_core::{AgentId, Backoff, NewTask, Priority, TaskError, TaskErrorKind, TenantId, Timestamp};
use godel_core::{OutputChunk, OutputStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("GODEL_STORE").unwrap_or_else(|_| "sqlite://.godel/godel.db".to_owned());
    let store = store::open(&url).await.with_context(|| format!("opening {url}"))?;
    let tenant = TenantId::default_tenant();
    println!("store: {url} ({})", store.backend());

    let batch = vec![
        NewTask::command(["echo", "low: tidy up"]).priority(Priority::Low),
        NewTask::command(["uname", "-sr"]).priority(Priority::Medium),
        NewTask::command(["sh", "-c", "echo 'flaky: exits 3' >&2; exit 3"]).priority(Priority::High).max_attempts(2),
        NewTask::command(["echo", "critical: page the on-call"]).priority(Priority::Critical),
        NewTask::command(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]).priority(Priority::High),
        NewTask::command(["echo", "$(not expanded) \"quotes\" stay literal"]).priority(Priority::Medium),
    ];
    let enqueued = store.enqueue_batch(&tenant, batch, Timestamp::now()).await?;
    println!("enqueued {} tasks; ready: {}", enqueued.len(), store.depth(&tenant, Timestamp::now()).await?);

    let backoff = Backoff { initial: Duration::from_millis(300), ..Backoff::default() };
    let request = ClaimRequest {
        tenant: tenant.clone(),
        agent: AgentId::new("tour-worker")?,
        capabilities: Vec::new(),
        limit: 1,
        lease_for: Duration::from_secs(30),
    };
    let ids: Vec<_> = enqueued.iter().map(|e| e.task.id).collect();
    loop {
        let now = Timestamp::now();
        let Some(claim) = store.claim(&request, now).await?.pop() else {
            let live = unfinished(&*store, &tenant, &ids).await?;
            if live == 0 {
                break;
            }
            // Something is backing off; wait for it to become ready.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let task = &claim.task;
        let argv = task.payload.command.clone().unwrap_or_default();
        println!("[{}] task {} attempt {}: {argv:?}", task.priority, task.id, claim.lease.attempt);
        store.start(&claim.lease, &request.agent, now).await?;
        let out = tokio::process::Command::new(&argv[0]).args(&argv[1..]).output().await;
        let now = Timestamp::now();
        match out {
            Ok(out) => {
                let chunks = [
                    OutputChunk {
                        stream: OutputStream::Stdout,
                        data: String::from_utf8_lossy(&out.stdout).into_owned(),
                    },
                    OutputChunk {
                        stream: OutputStream::Stderr,
                        data: String::from_utf8_lossy(&out.stderr).into_owned(),
                    },
                ];
                let chunks: Vec<_> = chunks.into_iter().filter(|c| !c.data.is_empty()).collect();
                store.append_output(&claim.lease, &chunks, now).await?;
                for c in &chunks {
                    println!("    {}: {}", c.stream.as_str(), c.data.trim_end());
                }
                if out.status.success() {
                    store.complete(&claim.lease, serde_json::json!({"exit_code": 0}), now).await?;
                    println!("    completed");
                } else {
                    let error = TaskError::new(TaskErrorKind::Error, format!("exit status {}", out.status));
                    let delay = backoff.delay(claim.lease.attempt, &mut rand::rng());
                    let outcome = store.fail(&claim.lease, &Failure { error, retry: Retry::After(delay) }, now).await?;
                    println!("    failed: {outcome:?}");
                }
            }
            Err(e) => {
                let error = TaskError::new(TaskErrorKind::Error, format!("cannot start {}: {e}", argv[0]));
                let outcome = store.fail(&claim.lease, &Failure { error, retry: Retry::Never }, now).await?;
                println!("    failed: {outcome:?}");
            }
        }
    }
    let counts = store.counts(&tenant, Timestamp::now()).await?;
    println!(
        "done: {} completed, {} dead-lettered (all runs of this store so far)",
        counts.status(godel_core::TaskStatus::Completed),
        counts.status(godel_core::TaskStatus::DeadLetter)
    );
    Ok(())
}

/// How many of this run's tasks are still not terminal.
async fn unfinished(store: &dyn Store, tenant: &TenantId, ids: &[godel_core::TaskId]) -> anyhow::Result<usize> {
    let mut live = 0;
    for id in ids {
        if !store.get(tenant, *id).await?.status.is_terminal() {
            live += 1;
        }
    }
    Ok(live)
}
