//! Cancelling through the API: a running task is asked to stop
//! (`cancel_requested`), its process is signalled and gone, and the task ends
//! `cancelled` long before its command would have finished; a pending task
//! is cancelled at once; a finished one cannot be cancelled again.

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::json;

use crate::server::harness::{FAST_ENGINE, Launch, eventually};

/// One agent with one slot, so that a second task waits behind the first.
fn config() -> String {
    format!("{FAST_ENGINE}\n[[agents]]\nid = \"solo\"\ncapacity = 1\n")
}

#[tokio::test]
async fn cancel_stops_a_running_task_and_its_process() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;

    // The task writes its PID, then becomes a sleep far longer than the test may take.
    let pid_file = dir.path().join("task.pid");
    let script = "echo $$ > \"$1.tmp\" && mv \"$1.tmp\" \"$1\" && exec sleep 600";
    let running =
        server.submit(&json!({"command": ["sh", "-c", script, "sh", pid_file], "priority": "medium"})).await?;
    let waiting = server.submit(&json!({"command": ["true"], "priority": "medium"})).await?;
    server.wait_for_status(&running, "running").await?;
    let pid = eventually("the task to write its PID", async || {
        Ok(std::fs::read_to_string(&pid_file).ok().and_then(|text| text.trim().parse::<i32>().ok()))
    })
    .await?;
    let pid = Pid::from_raw(pid);
    assert_eq!(kill(pid, None), Ok(()), "the task's process runs");

    // A pending task is cancelled on the spot.
    let (status, body) = server.request(Method::POST, &format!("/api/v1/tasks/{waiting}/cancel"), None).await?;
    assert_eq!(status, 200, "cancel a pending task: {body}");
    assert_eq!(body["outcome"], "cancelled", "{body}");
    assert_eq!(body["task"]["status"], "cancelled", "{body}");

    // A running one is asked to stop; the answer says so and shows the flag.
    let (status, body) = server.request(Method::POST, &format!("/api/v1/tasks/{running}/cancel"), None).await?;
    assert_eq!(status, 200, "cancel a running task: {body}");
    assert_eq!(body["outcome"], "cancel_requested", "{body}");
    assert_eq!(body["task"]["id"], running.as_str(), "{body}");
    assert_eq!(body["task"]["cancel_requested"], true, "{body}");

    // It stops well within the harness deadline, far sooner than its sleep.
    server.wait_for_status(&running, "cancelled").await?;
    eventually("the task's process to be gone", async || Ok((kill(pid, None) == Err(Errno::ESRCH)).then_some(())))
        .await
        .context("the cancelled task's process still runs")?;

    let (_, history) = server.get(&format!("/api/v1/tasks/{running}/events")).await?;
    let kinds: Vec<&str> =
        history["items"].as_array().into_iter().flatten().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"task.created"), "{history}");
    assert!(kinds.contains(&"task.started"), "{history}");
    assert_eq!(kinds.last(), Some(&"task.cancelled"), "{history}");
    assert_eq!(server.task(&waiting).await?["status"], "cancelled", "the pending task never ran");

    // Cancelling what has ended is a conflict, not a silent success.
    let (status, body) = server.request(Method::POST, &format!("/api/v1/tasks/{running}/cancel"), None).await?;
    assert_eq!(status, 409, "cancel a cancelled task: {body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");

    server.stop().await
}
