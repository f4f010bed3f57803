//! Priority order as a client sees it through the API: with one agent slot
//! held by a blocker, tasks of every priority are submitted in a mixed
//! order; once the blocker lets go they must run critical, high, medium,
//! low, first come first served within each priority (rule 2 of the store
//! contract), as their `started_at` and their event histories show.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::server::harness::{FAST_ENGINE, Launch, Server, gated};

/// Submission order, interleaved so that first-come-first-served within a
/// priority is tested across submissions of other priorities.
const SUBMITTED: [&str; 8] = ["low-1", "medium-1", "critical-1", "high-1", "low-2", "critical-2", "medium-2", "high-2"];

/// The order the slot must run them in.
const EXPECTED: [&str; 8] = ["critical-1", "critical-2", "high-1", "high-2", "medium-1", "medium-2", "low-1", "low-2"];

/// One agent with one slot, running the tasks' own commands.
fn config() -> String {
    format!("{FAST_ENGINE}\n[[agents]]\nid = \"solo\"\ncapacity = 1\n")
}

#[tokio::test]
async fn one_slot_runs_critical_high_medium_low_and_fifo_within_a_priority() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let gate = dir.path().join("gate");

    // The blocker is low priority: holding the slot, not its rank, is what makes the others wait.
    let blocker = server.submit(&json!({"command": gated(&gate, "true", ""), "priority": "low"})).await?;
    server.wait_for_status(&blocker, "running").await?;
    let mut ids = Vec::new();
    for label in SUBMITTED {
        let priority = label.split('-').next().context("a label starts with its priority")?;
        // Each run takes at least 10 ms, so no two can start in the same millisecond.
        let task = json!({"command": ["sleep", "0.01"], "priority": priority, "metadata": {"label": label}});
        ids.push(server.submit(&task).await?);
    }
    for id in &ids {
        assert_eq!(server.task(id).await?["status"], "pending", "task {id} ran while the slot was held");
    }
    std::fs::write(&gate, "")?;

    let blocker = server.wait_for_status(&blocker, "completed").await?;
    let mut runs: Vec<(String, String)> = Vec::new();
    for id in &ids {
        let task = server.wait_for_status(id, "completed").await?;
        let started = task["started_at"].as_str().with_context(|| format!("no started_at in {task}"))?;
        let label = task["metadata"]["label"].as_str().with_context(|| format!("no label in {task}"))?;
        assert!(
            started > blocker["started_at"].as_str().unwrap_or_default(),
            "{label} started at {started}, before the blocker it waited for: {blocker}"
        );
        assert_eq!(task["attempt"], 1, "{label} ran more than once: {task}");
        assert_history(&server, id, label).await?;
        runs.push((started.to_owned(), label.to_owned()));
    }
    // RFC 3339 timestamps of one format sort as text. One slot runs one
    // task at a time, so no two may share a millisecond.
    runs.sort();
    for pair in runs.windows(2) {
        assert!(pair[0].0 < pair[1].0, "two tasks started at the same instant: {pair:?}");
    }
    let order: Vec<&str> = runs.iter().map(|(_, label)| label.as_str()).collect();
    assert_eq!(order, EXPECTED, "the order the slot ran the tasks in");

    server.stop().await
}

/// The task's event history tells the same story: created, assigned,
/// started and completed, once each and in that order.
async fn assert_history(server: &Server, id: &str, label: &str) -> Result<()> {
    let (status, body) = server.get(&format!("/api/v1/tasks/{id}/events")).await?;
    assert_eq!(status, 200, "history of {label}: {body}");
    let items = body["items"].as_array().with_context(|| format!("no items in the history of {label}: {body}"))?;
    let kinds: Vec<&str> = items.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["task.created", "task.assigned", "task.started", "task.completed"], "history of {label}");
    let times: Vec<&Value> = items.iter().map(|e| &e["at"]).collect();
    assert!(times.iter().all(|t| t.is_string()), "history of {label} has entries without a time: {body}");
    Ok(())
}
