//! The `/events` WebSocket during a run: a client subscribed to `task.*`
//! sees every task created, assigned, started, print its output and
//! complete, with increasing sequence numbers; a client that leaves half-way
//! and comes back with `?since=<last seq it saw>` gets exactly the events it
//! missed, the same ones a client that never left received, and nothing more.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::server::harness::{FAST_ENGINE, Launch, gated};

/// One agent with one slot, so that the run's order is known.
fn config() -> String {
    format!("{FAST_ENGINE}\n[[agents]]\nid = \"solo\"\ncapacity = 1\n")
}

#[tokio::test]
async fn a_run_streams_in_order_and_a_reconnect_with_since_gets_exactly_what_it_missed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let gate = dir.path().join("gate");

    // One client stays for the whole run; the other leaves before the work starts.
    let mut stayer = server.events("").await?;
    let welcome = stayer.next_of_type("welcome").await?;
    assert!(welcome["seq"].is_u64(), "the welcome names the current sequence number: {welcome}");
    let epoch = welcome["epoch"].as_str().context("the welcome names the server run")?.to_owned();
    let subscribed = stayer.subscribe(&["task.*"]).await?;
    assert_eq!(subscribed["patterns"], json!(["task.*"]));
    let mut leaver = server.events("").await?;
    leaver.next_of_type("welcome").await?;
    leaver.subscribe(&["task.*"]).await?;

    let blocker = server.submit(&json!({"command": gated(&gate, "echo blocker", ""), "priority": "low"})).await?;
    let mut tasks = vec![("blocker".to_owned(), blocker)];
    for priority in ["low", "high", "critical", "medium"] {
        let id = server.submit(&json!({"command": ["echo", priority], "priority": priority})).await?;
        tasks.push((priority.to_owned(), id));
    }

    // The leaver reads until the last submission, then goes away while the gate opens.
    let last = &tasks.last().context("tasks were submitted")?.1;
    let mut seen = Vec::new();
    while !is(seen.last(), "task.created", last) {
        seen.push(leaver.next().await?);
    }
    let since = seen.last().and_then(|e| e["seq"].as_u64()).context("the leaver saw events")?;
    leaver.close().await?;
    std::fs::write(&gate, "")?;

    let mut all = Vec::new();
    while all.iter().filter(|e: &&Value| e["type"] == "task.completed").count() < tasks.len() {
        all.push(stayer.next().await?);
    }
    assert_stream(&all, &tasks)?;
    assert_eq!(seen, all[..seen.len()], "the leaver saw the same events as the stayer while it was there");

    // Back with `since` (and the run it counts in): first the answer to the
    // subscription, then exactly the missed events.
    let mut back = server.events(&format!("?since={since}&epoch={epoch}")).await?;
    let welcome = back.next_of_type("welcome").await?;
    assert_eq!(welcome["epoch"], epoch.as_str(), "the same server run");
    back.subscribe(&["task.*"]).await?;
    let missed: Vec<&Value> = all.iter().filter(|e| e["seq"].as_u64() > Some(since)).collect();
    assert!(missed.len() > tasks.len() * 3, "the leaver missed most of the run: {} events", missed.len());
    let mut replayed = Vec::new();
    for _ in 0..missed.len() {
        replayed.push(back.next().await?);
    }
    let replayed: Vec<&Value> = replayed.iter().collect();
    assert_eq!(replayed, missed, "the replay after since={since}");
    // The run is over, so a ping's answer must come next: nothing was repeated after the replay.
    back.send(&json!({"action": "ping"})).await?;
    let pong = back.next().await?;
    assert_eq!(pong["type"], "pong", "after the replay: {pong}");

    stayer.close().await?;
    back.close().await?;
    server.stop().await
}

/// True if `event` is of `kind` and about `task`.
fn is(event: Option<&Value>, kind: &str, task: &str) -> bool {
    event.is_some_and(|e| e["type"] == kind && e["data"]["task_id"] == task)
}

/// Checks the stayer's stream: only task events, each with a time and a
/// sequence number greater than the one before; every task's lifecycle in
/// order with its output; and the slot taken by priority once the blocker
/// let go.
fn assert_stream(all: &[Value], tasks: &[(String, String)]) -> Result<()> {
    let mut previous = 0;
    for event in all {
        let seq = event["seq"].as_u64().with_context(|| format!("no seq in {event}"))?;
        assert!(seq > previous, "seq {seq} came after {previous}: {event}");
        previous = seq;
        assert!(event["at"].is_string(), "no time in {event}");
        let kind = event["type"].as_str().with_context(|| format!("no type in {event}"))?;
        assert!(kind.starts_with("task."), "a task.* subscription received {event}");
    }
    let names: HashMap<&str, &str> = tasks.iter().map(|(name, id)| (id.as_str(), name.as_str())).collect();
    for (name, id) in tasks {
        let mine: Vec<&Value> = all.iter().filter(|e| e["data"]["task_id"] == id.as_str()).collect();
        let kinds: Vec<&str> = mine.iter().filter_map(|e| e["type"].as_str()).collect();
        let outputs = kinds.iter().filter(|k| **k == "task.output").count();
        let lifecycle: Vec<&str> = kinds.iter().copied().filter(|k| *k != "task.output").collect();
        assert_eq!(lifecycle, ["task.created", "task.assigned", "task.started", "task.completed"], "{name}: {kinds:?}");
        let first_output = kinds.iter().position(|k| *k == "task.output");
        let started = kinds.iter().position(|k| *k == "task.started");
        assert!(
            outputs >= 1 && first_output > started,
            "{name}: output must come between start and completion: {kinds:?}"
        );
        let printed: String =
            mine.iter().filter(|e| e["type"] == "task.output").filter_map(|e| e["data"]["data"].as_str()).collect();
        assert_eq!(printed, format!("{name}\n"), "the output of {name}");
    }
    let started: Vec<&str> = all
        .iter()
        .filter(|e| e["type"] == "task.started")
        .map(|e| names.get(e["data"]["task_id"].as_str().unwrap_or_default()).copied().unwrap_or("unknown"))
        .collect();
    if started != ["blocker", "critical", "high", "medium", "low"] {
        bail!("the slot ran the tasks in the order {started:?}");
    }
    Ok(())
}
