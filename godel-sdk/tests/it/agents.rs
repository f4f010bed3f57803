//! Agents: listing them, registering a process agent at runtime, heartbeats
//! and deregistering.

use anyhow::Result;
use godel_sdk::embed::{AgentKind, AgentStatus, TaskStatus};
use godel_sdk::{Error, ErrorCode, RegisterAgent, SubmitTask};

use crate::support::{TestServer, eventually, wait_for};

fn is(err: &Error, status: u16, code: &ErrorCode) -> bool {
    matches!(err, Error::Api { status: s, code: c, .. } if *s == status && c == code)
}

#[tokio::test]
async fn the_configured_agent_is_listed_with_its_load() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let agents = client.agents().await?;
    assert_eq!(agents.len(), 1);
    let worker = &agents[0];
    assert_eq!((worker.id.as_str(), worker.name.as_str(), worker.kind), ("worker", "worker", AgentKind::Process));
    assert_eq!((worker.capabilities.as_slice(), worker.max_capacity), (&["sh".to_owned()][..], 4));
    assert_eq!((worker.current_load, worker.status), (0, AgentStatus::Idle));
    assert!(worker.active_tasks.is_empty());

    let task = client.submit(&SubmitTask::command(["sleep", "60"])).await?;
    wait_for(client, task.id, TaskStatus::Running).await?;
    let busy = client.agent("worker").await?;
    assert_eq!((busy.current_load, busy.active_tasks.clone()), (1, vec![task.id.to_string()]));
    client.kill(task.id).await?;
    wait_for(client, task.id, TaskStatus::Cancelled).await?;

    let err = client.agent("nobody").await.unwrap_err();
    assert!(is(&err, 404, &ErrorCode::NotFound), "{err:?}");
    server.stop().await
}

#[tokio::test]
async fn a_registered_agent_runs_work_until_it_is_deregistered() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    // Waits for an agent with the capability.
    let task = client.submit(&SubmitTask::prompt("on the gpu box").capability("gpu")).await?;

    let request = RegisterAgent {
        id: "gpu-box".into(),
        name: Some("GPU box".into()),
        capabilities: vec!["gpu".into()],
        capacity: 2,
        command: Some(vec!["sh".into(), "-c".into(), "printf 'gpu: %s' \"$1\"".into(), "sh".into(), "{prompt}".into()]),
        workdir: Some(server.dir().display().to_string()),
        default_timeout_ms: Some(30_000),
        region: Some("eu-west".into()),
        ..RegisterAgent::default()
    };
    let agent = client.register_agent(&request).await?;
    assert_eq!((agent.id.as_str(), agent.name.as_str(), agent.kind), ("gpu-box", "GPU box", AgentKind::Process));
    assert_eq!((agent.capabilities.as_slice(), agent.max_capacity), (&["gpu".to_owned()][..], 2));
    assert_eq!(agent.region.as_deref(), Some("eu-west"));
    assert_eq!(client.agents().await?.len(), 2);

    let done = wait_for(client, task.id, TaskStatus::Completed).await?;
    assert_eq!(done.agent_id.as_deref(), Some("gpu-box"));
    let printed: String = client
        .task_events(task.id)
        .await?
        .into_iter()
        .filter(|e| e.kind == "task.output")
        .filter_map(|e| e.data)
        .collect();
    assert_eq!(printed, "gpu: on the gpu box");

    let err = client.register_agent(&request).await.unwrap_err();
    assert!(is(&err, 409, &ErrorCode::Conflict), "the id is taken: {err:?}");
    let bad = RegisterAgent { id: "no spaces allowed".into(), ..RegisterAgent::default() };
    let err = client.register_agent(&bad).await.unwrap_err();
    assert!(is(&err, 400, &ErrorCode::InvalidRequest), "{err:?}");

    client.agent_heartbeat("gpu-box").await?;
    let beat = client.agent("gpu-box").await?;
    assert!(beat.last_heartbeat.is_some());
    let err = client.agent_heartbeat("nobody").await.unwrap_err();
    assert!(is(&err, 404, &ErrorCode::NotFound), "{err:?}");

    client.deregister_agent("gpu-box").await?;
    eventually("the agent to be gone", async || {
        Ok(client.agents().await?.iter().all(|a| a.id != "gpu-box").then_some(()))
    })
    .await?;
    let err = client.agent("gpu-box").await.unwrap_err();
    assert!(is(&err, 404, &ErrorCode::NotFound), "{err:?}");
    let err = client.deregister_agent("gpu-box").await.unwrap_err();
    assert!(is(&err, 404, &ErrorCode::NotFound), "{err:?}");
    server.stop().await
}
