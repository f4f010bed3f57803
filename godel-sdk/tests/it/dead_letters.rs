//! Tasks that keep failing: retries, the dead-letter queue, and getting tasks
//! out of it (`dead_letters`, `replay_dead_letter`, `replay_dead_letters`,
//! `export_dead_letters`).

use anyhow::Result;
use godel_sdk::embed::{Priority, TaskErrorKind, TaskStatus};
use godel_sdk::{Error, ErrorCode, ListTasks, SubmitTask, Task};

use crate::support::{TestServer, wait_for};

fn failing(priority: Priority, attempts: u32) -> SubmitTask {
    SubmitTask::command(["sh", "-c", "echo boom >&2; exit 3"]).priority(priority).max_attempts(attempts)
}

#[tokio::test]
async fn failing_tasks_retry_then_land_in_the_dead_letter_queue() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let twice = client.submit(&failing(Priority::High, 2)).await?;
    let once = client.submit(&failing(Priority::Low, 1)).await?;
    let twice = wait_for(client, twice.id, TaskStatus::DeadLetter).await?;
    let once = wait_for(client, once.id, TaskStatus::DeadLetter).await?;
    assert_eq!((twice.attempt, once.attempt), (2, 1));
    assert!(twice.dead_lettered_at.is_some());
    assert_eq!(twice.error.as_ref().map(|e| e.kind), Some(TaskErrorKind::Error));

    let kinds: Vec<String> = client.task_events(twice.id).await?.into_iter().map(|e| e.kind).collect();
    let lifecycle: Vec<&str> = kinds.iter().map(String::as_str).filter(|k| *k != "task.output").collect();
    assert_eq!(
        lifecycle,
        [
            "task.created",
            "task.assigned",
            "task.started",
            "task.retrying",
            "task.assigned",
            "task.started",
            "task.dead_lettered"
        ]
    );
    let history = client.task_events(twice.id).await?;
    let retrying = history.iter().find(|e| e.kind == "task.retrying").expect("a retry");
    assert_eq!((retrying.attempt, retrying.error.as_ref().map(|e| e.kind)), (1, Some(TaskErrorKind::Error)));
    let dead = history.iter().find(|e| e.kind == "task.dead_lettered").expect("a dead letter");
    assert_eq!((dead.attempt, dead.status), (2, Some(TaskStatus::DeadLetter)));
    assert_eq!(dead.error.as_ref().map(|e| e.kind), Some(TaskErrorKind::Error));
    let stderr: String =
        history.iter().filter(|e| e.stream.as_deref() == Some("stderr")).filter_map(|e| e.data.clone()).collect();
    assert_eq!(stderr, "boom\nboom\n", "both attempts' output is kept");

    let health = client.queue_health().await?;
    assert_eq!(health.dead_letters, 2);
    assert_eq!(health.status, "degraded");
    assert!(!health.reasons.is_empty());
    server.stop().await
}

#[tokio::test]
async fn dead_letters_are_listed_exported_and_replayed() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let high = client.submit(&failing(Priority::High, 1)).await?;
    let low = client.submit(&failing(Priority::Low, 1)).await?;
    let ok = client.submit(&SubmitTask::command(["true"])).await?;
    for id in [high.id, low.id] {
        wait_for(client, id, TaskStatus::DeadLetter).await?;
    }
    wait_for(client, ok.id, TaskStatus::Completed).await?;
    let ids = |tasks: &[Task]| tasks.iter().map(|t| t.id).collect::<Vec<_>>();

    let all = client.dead_letters(&ListTasks::default()).await?;
    assert_eq!(ids(&all.items), [high.id, low.id]);
    assert!(all.items.iter().all(|t| t.status == TaskStatus::DeadLetter));
    // A status in the query is ignored: the listing is dead letters only.
    let ignored = ListTasks { status: vec![TaskStatus::Completed], ..ListTasks::default() };
    assert_eq!(ids(&client.dead_letters(&ignored).await?.items), [high.id, low.id]);
    let first = client.dead_letters(&ListTasks { limit: Some(1), ..ListTasks::default() }).await?;
    assert_eq!(ids(&first.items), [high.id]);
    let second =
        client.dead_letters(&ListTasks { limit: Some(1), cursor: first.next_cursor, ..ListTasks::default() }).await?;
    assert_eq!(ids(&second.items), [low.id]);
    let low_only = client.dead_letters(&ListTasks { priority: vec![Priority::Low], ..ListTasks::default() }).await?;
    assert_eq!(ids(&low_only.items), [low.id]);

    let export = client.export_dead_letters().await?;
    let exported: Vec<Task> = export.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(ids(&exported), [high.id, low.id]);
    assert_eq!(exported, all.items, "the export has the same tasks as the listing");

    // Replaying one gives it fresh attempts; it fails again, once.
    let replayed = client.replay_dead_letter(high.id).await?;
    assert_eq!((replayed.status, replayed.attempt), (TaskStatus::Pending, 0));
    let again = wait_for(client, high.id, TaskStatus::DeadLetter).await?;
    assert_eq!(again.attempt, 1);
    let err = client.replay_dead_letter(ok.id).await.unwrap_err();
    assert!(matches!(err, Error::Api { status: 409, code: ErrorCode::Conflict, .. }), "{err:?}");

    // In bulk: by priority, then everything left.
    assert_eq!(client.replay_dead_letters(&[Priority::Low]).await?, 1);
    wait_for(client, low.id, TaskStatus::DeadLetter).await?;
    assert_eq!(client.replay_dead_letters(&[Priority::Critical]).await?, 0);
    assert_eq!(client.replay_dead_letters(&[]).await?, 2);
    for id in [high.id, low.id] {
        wait_for(client, id, TaskStatus::DeadLetter).await?;
    }
    server.stop().await
}
