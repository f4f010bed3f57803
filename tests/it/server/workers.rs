//! Remote workers end to end: real `godel worker` processes connected to a
//! real server, taking pushed tasks, dying, draining and reconnecting.

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::server::harness::{FAST_ENGINE, Launch, Server, Worker, cli_binary, eventually, gated};

/// No local agent can take tasks that need `remote`: only workers can.
fn config() -> String {
    format!("{FAST_ENGINE}retry_initial = \"100ms\"\nretry_max = \"200ms\"\n[[agents]]\nid = \"local\"\ncapacity = 1\n")
}

/// The worker agent `name` as the server lists it, once it is there.
async fn wait_for_agent(server: &Server, name: &str) -> Result<Value> {
    eventually(&format!("agent {name} to be listed"), async || {
        let (_, body) = server.get("/api/v1/agents").await?;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        Ok(items.into_iter().find(|a| a["id"] == name && a["status"] == "idle"))
    })
    .await
}

async fn wait_for_agent_gone(server: &Server, name: &str) -> Result<()> {
    eventually(&format!("agent {name} to be gone"), async || {
        let (_, body) = server.get("/api/v1/agents").await?;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        Ok(items.iter().all(|a| a["id"] != name).then_some(()))
    })
    .await
}

fn remote(command: Value) -> Value {
    json!({"command": command, "capabilities": ["remote"], "max_attempts": 3})
}

#[tokio::test]
async fn a_worker_runs_pushed_tasks_and_streams_their_output() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let worker = Worker::start(dir.path(), &server, "w1")?;
    let agent = wait_for_agent(&server, "w1").await.with_context(|| worker.logs())?;
    assert_eq!(agent["kind"], "worker");
    assert_eq!(agent["capabilities"], json!(["remote"]));

    let id = server.submit(&remote(json!(["sh", "-c", "echo hello from $GODEL_TASK_ID"]))).await?;
    let task = server.wait_for_status(&id, "completed").await.with_context(|| worker.logs())?;
    assert_eq!(task["agent_id"], "w1");
    let (status, events) = server.get(&format!("/api/v1/tasks/{id}/events")).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(events.to_string().contains(&format!("hello from {id}")), "output came back: {events}");

    // A failing command fails the task with the worker's error.
    let id = server
        .submit(
            &json!({"command": ["sh", "-c", "echo oops >&2; exit 7"], "capabilities": ["remote"], "max_attempts": 1}),
        )
        .await?;
    let task = server.wait_for_status(&id, "dead_letter").await?;
    assert!(task["error"]["message"].as_str().unwrap_or_default().contains("oops"), "{task}");
    Ok(())
}

#[tokio::test]
async fn a_killed_worker_s_task_finishes_on_the_other() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let mut workers = [Worker::start(dir.path(), &server, "w1")?, Worker::start(dir.path(), &server, "w2")?];
    wait_for_agent(&server, "w1").await?;
    wait_for_agent(&server, "w2").await?;

    let gate = dir.path().join("gate");
    let id = server.submit(&remote(gated(&gate, "echo finished", ""))).await?;
    let running = server.wait_for_status(&id, "running").await?;
    let first = running["agent_id"].as_str().context("a running task has an agent")?.to_owned();
    let victim = usize::from(first == "w2");
    workers[victim].child.start_kill()?;
    workers[victim].child.wait().await?;

    // The task waits out the lease for the worker to come back, then runs again elsewhere.
    let survivor = if first == "w1" { "w2" } else { "w1" };
    eventually("the task to run on the other worker", async || {
        let task = server.task(&id).await?;
        Ok((task["status"] == "running" && task["agent_id"] == survivor).then_some(()))
    })
    .await
    .with_context(|| server.logs())?;
    std::fs::write(&gate, "")?;
    let task = server.wait_for_status(&id, "completed").await?;
    assert_eq!(task["agent_id"], survivor);
    assert_eq!(task["attempt"], 2, "{task}");
    wait_for_agent_gone(&server, &first).await?;
    Ok(())
}

#[tokio::test]
async fn a_drained_worker_finishes_its_task_takes_nothing_new_and_exits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let mut w1 = Worker::start(dir.path(), &server, "w1")?;
    wait_for_agent(&server, "w1").await?;
    let gate = dir.path().join("gate");
    let first = server.submit(&remote(gated(&gate, "echo first", ""))).await?;
    server.wait_for_status(&first, "running").await?;

    let (status, body) = server.post("/api/v1/agents/w1/drain", &json!({})).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["worker"], true);
    let second = server.submit(&remote(json!(["echo", "second"]))).await?;
    std::fs::write(&gate, "")?;
    server.wait_for_status(&first, "completed").await?;
    assert_eq!(w1.exit_code().await?, Some(0), "a drained worker exits 0: {}", w1.logs());
    assert_eq!(server.task(&second).await?["status"], "pending", "nothing new went to the draining worker");

    // Another worker takes what is left.
    let w2 = Worker::start(dir.path(), &server, "w2")?;
    let task = server.wait_for_status(&second, "completed").await.with_context(|| w2.logs())?;
    assert_eq!(task["agent_id"], "w2");
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_a_worker() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let mut worker = Worker::start(dir.path(), &server, "w1")?;
    wait_for_agent(&server, "w1").await?;
    let gate = dir.path().join("gate");
    let id = server.submit(&remote(gated(&gate, "echo done", ""))).await?;
    server.wait_for_status(&id, "running").await?;
    worker.signal(Signal::SIGTERM)?;
    // Draining: the task in hand finishes, nothing new is taken.
    let second = server.submit(&remote(json!(["echo", "second"]))).await?;
    std::fs::write(&gate, "")?;
    server.wait_for_status(&id, "completed").await?;
    assert_eq!(worker.exit_code().await?, Some(0), "{}", worker.logs());
    wait_for_agent_gone(&server, "w1").await?;
    assert_eq!(server.task(&second).await?["status"], "pending", "nothing new ran on the draining worker");
    Ok(())
}

#[tokio::test]
async fn a_worker_reconnects_to_a_restarted_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let addr = server.addr();
    let worker = Worker::start(dir.path(), &server, "w1")?;
    wait_for_agent(&server, "w1").await?;
    server.stop().await?;

    let server = Launch::new(dir.path(), &config()).bind(addr).start().await?;
    wait_for_agent(&server, "w1").await.with_context(|| worker.logs())?;
    let id = server.submit(&remote(json!(["echo", "after the restart"]))).await?;
    let task = server.wait_for_status(&id, "completed").await?;
    assert_eq!(task["agent_id"], "w1");
    Ok(())
}

#[tokio::test]
async fn bad_worker_input_is_refused_with_a_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(cli_binary().expect("godel binary"));
        command.args(["worker", "--server", &server.url("")]).args(args);
        command.output()
    };
    let out = run(&["--name", "bad name"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid worker name"), "{out:?}");
    let out = run(&["--name", "w", "--concurrency", "0"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("concurrency must be 1 to 1024"), "{out:?}");

    // A hello the server cannot use is answered with an error frame naming the problem.
    let url = format!("ws://{}/api/v1/workers/connect", server.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws_request(&url)?).await?;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(r#"{"type":"hello","name":"w","concurrency":1}"#))
        .await?;
    let reply = socket.next().await.context("a reply")??;
    let reply: Value = serde_json::from_str(reply.to_text()?)?;
    assert_eq!(reply["type"], "error");
    if !reply["message"].as_str().unwrap_or_default().contains("version") {
        bail!("the error names the missing field: {reply}");
    }
    Ok(())
}

#[tokio::test]
async fn a_server_stopped_under_a_worker_s_task_releases_it_and_the_task_runs_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A long lease: the worker's reconnect grace, which the stop must not wait out.
    let config = config().replace("lease = \"2s\"", "lease = \"30s\"");
    assert!(config.contains("lease = \"30s\""));
    let server = Launch::new(dir.path(), &config).start().await?;
    let addr = server.addr();
    let worker = Worker::start(dir.path(), &server, "w1")?;
    wait_for_agent(&server, "w1").await?;
    let gate = dir.path().join("gate");
    let id = server.submit(&remote(gated(&gate, "echo done", ""))).await?;
    server.wait_for_status(&id, "running").await?;
    // The stop does not wait out the worker's reconnect grace (the engine's lease).
    let started = std::time::Instant::now();
    server.stop().await?;
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "stopped in {:?}", started.elapsed());

    let server = Launch::new(dir.path(), &config).bind(addr).start().await?;
    assert_eq!(server.task(&id).await?["status"], "pending", "released, not failed");
    std::fs::write(&gate, "")?;
    let task = server.wait_for_status(&id, "completed").await.with_context(|| worker.logs())?;
    assert_eq!(task["agent_id"], "w1");
    Ok(())
}
