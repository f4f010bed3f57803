//! The daemon's life as an operator sees it: SIGTERM drains and exits 143,
//! closing WebSockets as "going away", removing the PID file and releasing
//! the tasks it was running, so that a restart on the same store finishes
//! every task exactly once (and tells a client resuming the old run's event
//! numbers that they are gone); SIGINT exits 130; a second server is
//! refused, with exit code 1 and a message, when the PID file names a live
//! server or its port is taken; and the probes and metrics that supervisors
//! scrape answer.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use godel_core::store::{SqliteStore, TaskQuery, TaskStore};
use godel_core::{TaskStatus, TenantId};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::server::harness::{FAST_ENGINE, Launch, eventually, gated};

/// How many tasks the SIGTERM test submits, and how many the agent runs at once.
const TASKS: usize = 6;
const SLOTS: usize = 2;

/// One agent with [`SLOTS`] slots.
fn config() -> String {
    format!("{FAST_ENGINE}\n[[agents]]\nid = \"pair\"\ncapacity = {SLOTS}\n")
}

#[tokio::test]
async fn sigterm_releases_running_tasks_and_a_restart_runs_each_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (gate, ledger, pid_file) = (dir.path().join("gate"), dir.path().join("ledger"), dir.path().join("godel.pid"));
    let server = Launch::new(dir.path(), &config()).pid_file(&pid_file).start().await?;
    assert_eq!(read_pid(&pid_file)?, server.pid()?, "the PID file names the server");

    // Each task appends its id to the ledger only once the gate opens, so a
    // line in the ledger is a run that finished.
    let then = "echo \"$GODEL_TASK_ID\" >> \"$2\"";
    let mut ids = HashSet::new();
    for _ in 0..TASKS {
        let ledger = ledger.to_str().context("a UTF-8 temporary path")?;
        ids.insert(server.submit(&json!({"command": gated(&gate, then, ledger)})).await?);
    }
    let running = eventually("both slots to run a task", async || {
        let (_, page) = server.get("/api/v1/tasks?status=running").await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        Ok((items.len() == SLOTS).then_some(items))
    })
    .await?;
    let running: HashSet<String> = running.iter().filter_map(|t| t["id"].as_str().map(str::to_owned)).collect();
    let mut events = server.events("").await?;
    let welcome = events.next_of_type("welcome").await?;
    let (seq, epoch) = (welcome["seq"].clone(), welcome["epoch"].as_str().context("an epoch")?.to_owned());

    server.signal(Signal::SIGTERM)?;
    assert_eq!(events.closed().await?, 1001, "WebSockets close as going away at shutdown");
    let status = server.exit().await?;
    assert_eq!(status.code(), Some(143), "exit status after SIGTERM: {status}");
    assert!(!pid_file.exists(), "the PID file outlived the server");
    assert!(!ledger.exists(), "a task finished although its gate never opened");
    assert_all_pending(dir.path(), &ids, &running).await?;

    // The restart, on the same store, finishes the lot.
    std::fs::write(&gate, "")?;
    let server = Launch::new(dir.path(), &config()).pid_file(&pid_file).start().await?;
    assert_eq!(read_pid(&pid_file)?, server.pid()?, "the restart rewrote the PID file");
    // Sequence numbers belong to one run: resuming the old run's is refused, not misread.
    let mut events = server.events(&format!("?since={seq}&epoch={epoch}")).await?;
    let welcome = events.next_of_type("welcome").await?;
    assert_ne!(welcome["epoch"], epoch.as_str(), "a restart starts a new epoch");
    events.next_of_type("replay_unavailable").await?;
    events.close().await?;
    for id in &ids {
        let task = server.wait_for_status(id, "completed").await?;
        let (_, history) = server.get(&format!("/api/v1/tasks/{id}/events")).await?;
        let kinds: Vec<&str> =
            history["items"].as_array().into_iter().flatten().filter_map(|e| e["type"].as_str()).collect();
        let released = kinds.contains(&"task.released");
        assert_eq!(released, running.contains(id), "task {id} was released iff it ran at SIGTERM: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"task.completed"), "task {id}: {kinds:?}");
        assert_eq!(
            task["attempt"], 1,
            "a release gives the attempt back, so every task completes in attempt 1: {task}"
        );
    }
    let lines = std::fs::read_to_string(&ledger)?;
    let mut finished: Vec<&str> = lines.lines().collect();
    finished.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(finished, expected, "every task finished exactly once");

    server.stop().await?;
    assert!(!pid_file.exists(), "the PID file outlived the restart");
    Ok(())
}

#[tokio::test]
async fn sigint_exits_130_and_a_live_pid_file_refuses_a_second_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("godel.pid");
    let first = Launch::new(dir.path(), &config()).pid_file(&pid_file).start().await?;
    let pid = first.pid()?;

    let (status, stderr) = Launch::new(dir.path(), &config()).pid_file(&pid_file).expect_failure().await?;
    assert_eq!(status.code(), Some(1), "a second server on a live PID file: {status}, stderr {stderr:?}");
    assert!(stderr.contains(&pid_file.display().to_string()), "the message names the PID file: {stderr:?}");
    assert!(stderr.contains(&pid.to_string()), "the message names the running server's PID: {stderr:?}");
    assert_eq!(read_pid(&pid_file)?, pid, "the refused server left the PID file alone");
    let (live, _) = first.get("/health/live").await?;
    assert_eq!(live, 200, "the first server still serves");

    first.signal(Signal::SIGINT)?;
    let status = first.exit().await?;
    assert_eq!(status.code(), Some(130), "exit status after SIGINT: {status}");
    assert!(!pid_file.exists(), "the PID file outlived the server");
    Ok(())
}

#[tokio::test]
async fn a_second_server_on_a_port_in_use_exits_1_saying_so() -> Result<()> {
    let (one, two) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let first = Launch::new(one.path(), &config()).start().await?;
    let addr = first.addr();

    let (status, stderr) = Launch::new(two.path(), &config()).bind(addr).expect_failure().await?;
    assert_eq!(status.code(), Some(1), "a second server on {addr}: {status}, stderr {stderr:?}");
    assert!(stderr.contains(&addr.to_string()), "the message names the address: {stderr:?}");
    assert!(stderr.contains("in use"), "the message says the address is in use: {stderr:?}");
    let (live, _) = first.get("/health/live").await?;
    assert_eq!(live, 200, "the first server still serves");
    first.stop().await
}

#[tokio::test]
async fn probes_and_metrics_answer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let id = server.submit(&json!({"command": ["true"], "priority": "high"})).await?;
    server.wait_for_status(&id, "completed").await?;

    let (status, live) = server.get("/health/live").await?;
    assert_eq!((status.as_u16(), &live["status"]), (200, &json!("ok")), "{live}");
    let (status, ready) = server.get("/health/ready").await?;
    assert_eq!((status.as_u16(), &ready["status"]), (200, &json!("ready")), "{ready}");
    let (status, health) = server.get("/health").await?;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["store"]["ok"], true, "{health}");
    assert_eq!(health["ready"], true, "{health}");

    let metrics = server.http().get(server.url("/metrics")).send().await?;
    assert_eq!(metrics.status(), 200);
    let kind = metrics.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "metrics content type {kind:?}");
    let text = metrics.text().await?;
    assert!(text.contains("godel_tasks_created_total{priority=\"high\"} 1"), "metrics:\n{text}");
    assert!(text.trim_end().ends_with("# EOF"), "metrics end with # EOF:\n{text}");
    server.stop().await
}

/// The PID a PID file names.
fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.trim().parse().with_context(|| format!("{} holds {text:?}", path.display()))
}

/// Between the runs, straight from the store: every task is pending again,
/// unleased, and the ones that ran were handed back (released), not failed.
async fn assert_all_pending(dir: &Path, ids: &HashSet<String>, running: &HashSet<String>) -> Result<()> {
    let store = SqliteStore::open(&Launch::store_path(dir)).await.context("open the store between the runs")?;
    let tenant = TenantId::default_tenant();
    let page = store.list(&tenant, &TaskQuery { limit: 100, ..TaskQuery::default() }).await?;
    assert_eq!(page.items.len(), ids.len(), "the store holds every task");
    for task in &page.items {
        let id = task.id.to_string();
        assert!(ids.contains(&id), "unknown task {id}");
        assert_eq!(task.status, TaskStatus::Pending, "task {id} after SIGTERM");
        assert_eq!(task.lease_expires_at, None, "task {id} still holds a lease");
        assert_eq!(task.attempt, 0, "task {id} was charged an attempt for the shutdown");
        let history = store.history(&tenant, task.id).await?;
        let ran = history.iter().any(|h| h.status == TaskStatus::Running);
        assert_eq!(ran, running.contains(&id), "task {id} ran iff the API showed it running");
    }
    store.close().await;
    Ok(())
}
