//! Stopping and restarting tasks: `cancel` and `kill` of pending and running
//! tasks, `retry`, `purge` (refused while a task runs), and the sessions a
//! running task has: `sessions`, `session`, `terminate_session`.

use anyhow::Result;
use godel_sdk::embed::{SessionState, TaskErrorKind, TaskStatus};
use godel_sdk::{CancelOutcome, Error, ErrorCode, ListSessions, SubmitTask};

use crate::support::{TestServer, eventually, wait_for};

/// A task that runs until it is stopped (or for a minute, so that a failed
/// test leaves nothing behind for long).
fn sleeper() -> SubmitTask {
    SubmitTask::command(["sleep", "60"])
}

fn is_conflict(err: &Error) -> bool {
    matches!(err, Error::Api { status: 409, code: ErrorCode::Conflict, retryable: false, .. })
}

#[tokio::test]
async fn cancelling_a_running_task_stops_it_and_purge_waits_for_the_end() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let task = client.submit(&sleeper()).await?;
    wait_for(client, task.id, TaskStatus::Running).await?;

    let err = client.purge(task.id).await.unwrap_err();
    assert!(is_conflict(&err), "purging a running task is a conflict: {err:?}");
    assert_eq!(err.code(), Some(&ErrorCode::Conflict));
    assert!(!err.is_retryable());

    let cancelled = client.cancel(task.id).await?;
    assert_eq!(cancelled.outcome, CancelOutcome::CancelRequested);
    assert_eq!(cancelled.task.id, task.id);
    assert!(cancelled.task.cancel_requested);
    let done = wait_for(client, task.id, TaskStatus::Cancelled).await?;
    assert!(done.completed_at.is_some());
    let kinds: Vec<String> = client.task_events(task.id).await?.into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"task.cancel_requested".to_owned()), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("task.cancelled"));

    let err = client.cancel(task.id).await.unwrap_err();
    assert!(is_conflict(&err), "a finished task cannot be cancelled: {err:?}");

    client.purge(task.id).await?;
    let err = client.task(task.id).await.unwrap_err();
    assert!(matches!(err, Error::Api { status: 404, code: ErrorCode::NotFound, .. }), "{err:?}");
    server.stop().await
}

#[tokio::test]
async fn killing_a_running_task_stops_it_and_retry_runs_it_again() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let task = client.submit(&sleeper()).await?;
    wait_for(client, task.id, TaskStatus::Running).await?;

    let killed = client.kill(task.id).await?;
    assert_eq!(killed.outcome, CancelOutcome::CancelRequested);
    wait_for(client, task.id, TaskStatus::Cancelled).await?;

    // Retry gives a cancelled task fresh attempts; it runs again.
    let retried = client.retry(task.id).await?;
    assert_eq!((retried.status, retried.attempt, retried.cancel_requested), (TaskStatus::Pending, 0, false));
    let running = wait_for(client, task.id, TaskStatus::Running).await?;
    assert_eq!(running.attempt, 1);
    client.kill(task.id).await?;
    wait_for(client, task.id, TaskStatus::Cancelled).await?;

    // A completed task has nothing to retry.
    let quick = client.submit(&SubmitTask::command(["true"])).await?;
    wait_for(client, quick.id, TaskStatus::Completed).await?;
    let err = client.retry(quick.id).await.unwrap_err();
    assert!(is_conflict(&err), "{err:?}");
    server.stop().await
}

#[tokio::test]
async fn a_pending_task_is_cancelled_at_once() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let task = client.submit(&SubmitTask::prompt("never runs").capability("gpu")).await?;
    let cancelled = client.cancel(task.id).await?;
    assert_eq!(cancelled.outcome, CancelOutcome::Cancelled);
    assert_eq!(cancelled.task.status, TaskStatus::Cancelled);

    let other = client.submit(&SubmitTask::prompt("never runs either").capability("gpu")).await?;
    let killed = client.kill(other.id).await?;
    assert_eq!((killed.outcome, killed.task.status), (CancelOutcome::Cancelled, TaskStatus::Cancelled));
    client.purge(other.id).await?;
    assert_eq!(client.task(task.id).await?.status, TaskStatus::Cancelled, "purge removes only its task");
    server.stop().await
}

#[tokio::test]
async fn a_running_task_has_a_session_that_can_be_terminated() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let task = client.submit(&sleeper()).await?;
    wait_for(client, task.id, TaskStatus::Running).await?;

    let by_task = ListSessions { task_id: Some(task.id), ..ListSessions::default() };
    let session = eventually("the task's session to be running", async || {
        let sessions = client.sessions(&by_task).await?;
        Ok(sessions.into_iter().find(|s| s.state == SessionState::Running))
    })
    .await?;
    assert_eq!((session.agent_id.as_str(), session.task_id), ("worker", Some(task.id)));
    assert_eq!(client.session(session.id).await?.id, session.id);

    let running =
        ListSessions { state: vec![SessionState::Running], agent_id: Some("worker".into()), ..ListSessions::default() };
    assert_eq!(client.sessions(&running).await?.iter().map(|s| s.id).collect::<Vec<_>>(), [session.id]);
    let elsewhere = ListSessions { agent_id: Some("nobody".into()), ..ListSessions::default() };
    assert!(client.sessions(&elsewhere).await?.is_empty());

    client.terminate_session(session.id).await?;
    let done = wait_for(client, task.id, TaskStatus::Cancelled).await?;
    assert!(done.error.as_ref().is_none_or(|e| e.kind == TaskErrorKind::Aborted), "{:?}", done.error);
    let closed = eventually("the session to end", async || {
        let s = client.session(session.id).await?;
        Ok((s.state != SessionState::Running).then_some(s))
    })
    .await?;
    assert_eq!(closed.state, SessionState::Cancelled);
    let err = client.terminate_session(session.id).await.unwrap_err();
    assert!(is_conflict(&err), "an ended session has nothing to terminate: {err:?}");

    let limited = ListSessions { limit: Some(1), ..ListSessions::default() };
    assert_eq!(client.sessions(&limited).await?.len(), 1);
    server.stop().await
}
