//! `godel-store-child <sqlite-path> <now-millis>`: a process for the
//! durability test to kill in the middle of its work.
//!
//! It opens the SQLite store, enqueues and claims a few tasks and starts them
//! (reporting `claimed <id>`), then enqueues tasks one at a time forever,
//! reporting `ack <id>` after each. A line is printed and flushed only after
//! the store call it reports has returned `Ok`, so the test may hold the store
//! to every line it reads. Time is the `now` argument: the store never reads
//! the clock, and the test passes the same instant when it checks the leases.
//!
//! The protocol (tenant, lease, number of claims, line format) lives in
//! `godel_e2e::store_child`. This binary is a test fixture, not a product, so
//! it keeps its few lines of logic in `main` rather than in a library `run`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use godel_core::store::{ClaimRequest, SqliteStore, TaskStore};
use godel_core::{NewTask, Priority, Timestamp};
use godel_e2e::store_child::{self, CLAIMS, LEASE, Report};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let (path, now) = parse_args()?;
    let store = SqliteStore::open(&path).await.context("open the store")?;
    let tenant = store_child::tenant();

    // Critical priority puts these at the head of the queue, so the claim
    // below takes exactly them, and so does the test's claim after the
    // reclaim, whatever else is pending by then.
    let tasks =
        (0..CLAIMS).map(|i| NewTask::prompt(format!("claimed probe {i}")).priority(Priority::Critical)).collect();
    let enqueued = store.enqueue_batch(&tenant, tasks, now).await.context("enqueue the tasks to claim")?;
    let request = ClaimRequest {
        tenant: tenant.clone(),
        agent: store_child::agent(),
        capabilities: Vec::new(),
        limit: CLAIMS,
        lease_for: LEASE,
    };
    let claims = store.claim(&request, now).await.context("claim")?;
    let mut expected: Vec<_> = enqueued.iter().map(|e| e.task.id).collect();
    let mut got: Vec<_> = claims.iter().map(|c| c.task.id).collect();
    expected.sort();
    got.sort();
    ensure!(got == expected, "claimed {got:?}, expected the tasks just enqueued {expected:?}");
    for claim in &claims {
        store
            .start(&claim.lease, &store_child::agent(), now)
            .await
            .with_context(|| format!("start claimed task {}", claim.task.id))?;
        report(Report::Claimed(claim.task.id))?;
    }

    let mut n = 0_u64;
    loop {
        let task = NewTask::prompt(format!("acked probe {n}"));
        let enqueued = store.enqueue(&tenant, task, now).await.with_context(|| format!("enqueue probe {n}"))?;
        report(Report::Acked(enqueued.task.id))?;
        n += 1;
    }
}

fn parse_args() -> Result<(PathBuf, Timestamp)> {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), Some(now), None) = (args.next(), args.next(), args.next()) else {
        bail!("usage: godel-store-child <sqlite-path> <now-millis>");
    };
    let now = now.to_str().and_then(|s| s.parse::<i64>().ok()).with_context(|| {
        format!("invalid now-millis: expected milliseconds since the Unix epoch as an integer, got {now:?}")
    })?;
    Ok((PathBuf::from(path), Timestamp::from_millis(now)))
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
