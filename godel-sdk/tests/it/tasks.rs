//! Submitting and reading tasks: `submit` with every option, `submit_batch`,
//! `task`, `tasks` with its filters and cursors, `task_events`, and the
//! queue's depth and health.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use godel_sdk::embed::{Priority, TaskStatus, Timestamp};
use godel_sdk::{Error, ErrorCode, ListTasks, SubmitTask, Task};
use serde_json::json;

use crate::support::{TestServer, eventually, wait_for};

/// Capability no agent of the test server has: tasks needing it stay pending.
const NOBODY: &str = "gpu";

#[tokio::test]
async fn a_command_task_runs_and_its_history_has_lifecycle_and_output() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let submitted = client.submit(&SubmitTask::command(["sh", "-c", "echo hello; echo oops >&2"])).await?;
    assert_eq!(submitted.status, TaskStatus::Pending);
    assert_eq!(submitted.attempt, 0);
    assert_eq!(
        submitted.command.as_deref(),
        Some(&["sh".to_owned(), "-c".into(), "echo hello; echo oops >&2".into()][..])
    );

    let done = wait_for(client, submitted.id, TaskStatus::Completed).await?;
    assert_eq!(done.id, submitted.id);
    assert_eq!(done.attempt, 1);
    assert_eq!(done.agent_id.as_deref(), Some("worker"));
    assert_eq!(done.result, Some(json!({"exit_code": 0})));
    assert!(done.error.is_none());
    assert!(done.started_at.is_some() && done.completed_at >= done.started_at);

    let history = client.task_events(submitted.id).await?;
    let lifecycle: Vec<&str> = history.iter().filter(|e| e.kind != "task.output").map(|e| e.kind.as_str()).collect();
    assert_eq!(lifecycle, ["task.created", "task.assigned", "task.started", "task.completed"]);
    let completed = history.iter().find(|e| e.kind == "task.completed").expect("a completion");
    assert_eq!((completed.status, completed.attempt), (Some(TaskStatus::Completed), 1));
    assert_eq!(completed.agent_id.as_deref(), Some("worker"));
    let output = |stream: &str| -> String {
        history
            .iter()
            .filter(|e| e.kind == "task.output" && e.stream.as_deref() == Some(stream))
            .filter_map(|e| e.data.clone())
            .collect()
    };
    assert_eq!(output("stdout"), "hello\n");
    assert_eq!(output("stderr"), "oops\n");
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at), "history is in time order");
    server.stop().await
}

#[tokio::test]
async fn a_prompt_task_runs_through_the_agent_template() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let task = client.submit(&SubmitTask::prompt("it's \"quoted\" $(not run)")).await?;
    assert_eq!(task.prompt.as_deref(), Some("it's \"quoted\" $(not run)"));
    wait_for(client, task.id, TaskStatus::Completed).await?;
    let printed: String = client
        .task_events(task.id)
        .await?
        .into_iter()
        .filter(|e| e.kind == "task.output")
        .filter_map(|e| e.data)
        .collect();
    assert_eq!(printed, "it's \"quoted\" $(not run)\n");
    server.stop().await
}

#[tokio::test]
async fn every_submit_option_reaches_the_server() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let parent = client.submit(&SubmitTask::command(["true"]).capability(NOBODY)).await?;
    let run_at = Timestamp::from_millis(Timestamp::now().as_millis() + 3_600_000);
    let request = SubmitTask::prompt("later")
        .priority(Priority::Critical)
        .capability(NOBODY)
        .capability("sh")
        .affinity_key("repo-a")
        .idempotency_key("key-1")
        .parent(parent.id)
        .max_attempts(7)
        .timeout(Duration::from_millis(1_500))
        .run_at(run_at)
        .metadata("ticket", json!(42))
        .metadata("labels", json!(["a", "b"]));
    let task = client.submit(&request).await?;
    assert_eq!(task.priority, Priority::Critical);
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.capabilities, ["gpu", "sh"]);
    assert_eq!(task.affinity_key.as_deref(), Some("repo-a"));
    assert_eq!(task.idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(task.parent_id, Some(parent.id));
    assert_eq!(task.max_attempts, 7);
    assert_eq!(task.timeout_ms, Some(1_500));
    assert_eq!(task.run_at, run_at);
    assert_eq!(task.metadata.get("ticket"), Some(&json!(42)));
    assert_eq!(task.metadata.get("labels"), Some(&json!(["a", "b"])));
    assert_eq!(client.task(task.id).await?, task, "what submit returns is what the server keeps");

    // The idempotency key returns the first task, whatever else is asked.
    let again = client.submit(&SubmitTask::command(["false"]).idempotency_key("key-1")).await?;
    assert_eq!(again.id, task.id);

    // A delay schedules relative to the server's clock.
    let before = Timestamp::now();
    let delayed = client.submit(&SubmitTask::command(["true"]).delay(Duration::from_secs(600))).await?;
    assert!(delayed.run_at >= before + Duration::from_secs(600));
    assert!(delayed.run_at <= Timestamp::now() + Duration::from_secs(600));
    server.stop().await
}

#[tokio::test]
async fn a_batch_is_created_in_order_and_all_or_nothing() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let requests: Vec<SubmitTask> =
        (0..3).map(|i| SubmitTask::prompt(format!("batch {i}")).capability(NOBODY)).collect();
    let created = client.submit_batch(&requests).await?;
    let prompts: Vec<Option<&str>> = created.iter().map(|t| t.prompt.as_deref()).collect();
    assert_eq!(prompts, [Some("batch 0"), Some("batch 1"), Some("batch 2")]);
    assert_eq!(created.iter().map(|t| t.id).collect::<HashSet<_>>().len(), 3);
    for task in &created {
        assert_eq!(client.task(task.id).await?.status, TaskStatus::Pending);
    }

    // One bad task (an empty command) rejects the whole batch.
    let bad = [SubmitTask::prompt("fine"), SubmitTask::command(Vec::<String>::new())];
    let err = client.submit_batch(&bad).await.unwrap_err();
    assert!(
        matches!(err, Error::Api { status: 400, code: ErrorCode::InvalidRequest, retryable: false, .. }),
        "{err:?}"
    );
    assert_eq!(client.tasks(&ListTasks::default()).await?.items.len(), 3, "nothing of the bad batch was created");
    server.stop().await
}

#[tokio::test]
async fn listings_filter_and_page_with_cursors() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let priorities = [Priority::High, Priority::Low, Priority::High, Priority::Medium, Priority::High];
    let mut submitted = Vec::new();
    for (i, p) in priorities.iter().enumerate() {
        submitted.push(client.submit(&SubmitTask::prompt(format!("task {i}")).priority(*p).capability(NOBODY)).await?);
    }
    let ids = |tasks: &[Task]| tasks.iter().map(|t| t.id).collect::<Vec<_>>();

    // Oldest first by default; pages of two chain through their cursors.
    let mut pages = Vec::new();
    let mut query = ListTasks { limit: Some(2), ..ListTasks::default() };
    loop {
        let page = client.tasks(&query).await?;
        pages.push(ids(&page.items));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), ids(&submitted));

    let newest = client.tasks(&ListTasks { newest_first: true, ..ListTasks::default() }).await?;
    assert_eq!(ids(&newest.items), ids(&submitted).into_iter().rev().collect::<Vec<_>>());
    assert_eq!(newest.next_cursor, None);

    let high = client.tasks(&ListTasks { priority: vec![Priority::High], ..ListTasks::default() }).await?;
    assert_eq!(ids(&high.items), [submitted[0].id, submitted[2].id, submitted[4].id]);
    let high_page =
        client.tasks(&ListTasks { priority: vec![Priority::High], limit: Some(2), ..ListTasks::default() }).await?;
    let rest =
        ListTasks { priority: vec![Priority::High], cursor: high_page.next_cursor.clone(), ..ListTasks::default() };
    assert_eq!(ids(&client.tasks(&rest).await?.items), [submitted[4].id], "cursors keep the filter's order");

    let two =
        client.tasks(&ListTasks { priority: vec![Priority::Low, Priority::Medium], ..ListTasks::default() }).await?;
    assert_eq!(ids(&two.items), [submitted[1].id, submitted[3].id]);

    // Status and agent: cancel one, run one on the worker.
    client.cancel(submitted[1].id).await?;
    let ran = client.submit(&SubmitTask::command(["true"])).await?;
    wait_for(client, ran.id, TaskStatus::Completed).await?;
    let cancelled = client.tasks(&ListTasks { status: vec![TaskStatus::Cancelled], ..ListTasks::default() }).await?;
    assert_eq!(ids(&cancelled.items), [submitted[1].id]);
    let finished = ListTasks { status: vec![TaskStatus::Cancelled, TaskStatus::Completed], ..ListTasks::default() };
    assert_eq!(ids(&client.tasks(&finished).await?.items), [submitted[1].id, ran.id]);
    let by_worker = client.tasks(&ListTasks { agent_id: Some("worker".into()), ..ListTasks::default() }).await?;
    assert_eq!(ids(&by_worker.items), [ran.id]);

    // Parent and creation time.
    let child = client.submit(&SubmitTask::command(["true"]).parent(submitted[0].id).capability(NOBODY)).await?;
    let children = client.tasks(&ListTasks { parent_id: Some(submitted[0].id), ..ListTasks::default() }).await?;
    assert_eq!(ids(&children.items), [child.id]);
    let after = ListTasks { created_after: Some(child.created_at), ..ListTasks::default() };
    assert_eq!(ids(&client.tasks(&after).await?.items), [child.id]);
    let before = ListTasks { created_before: Some(submitted[4].created_at), ..ListTasks::default() };
    let early = client.tasks(&before).await?;
    assert!(early.items.iter().all(|t| t.created_at < submitted[4].created_at));
    assert!(!early.items.iter().any(|t| t.id == child.id || t.id == ran.id));
    server.stop().await
}

#[tokio::test]
async fn queue_depth_and_health_count_what_waits() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let depth = client.queue_depth().await?;
    assert_eq!((depth.total, depth.critical, depth.high, depth.medium, depth.low), (0, 0, 0, 0, 0));

    for p in [Priority::Critical, Priority::High, Priority::High, Priority::Low] {
        client.submit(&SubmitTask::prompt("waits").priority(p).capability(NOBODY)).await?;
    }
    client.submit(&SubmitTask::prompt("scheduled").capability(NOBODY).delay(Duration::from_secs(600))).await?;
    let depth = client.queue_depth().await?;
    assert_eq!((depth.total, depth.critical, depth.high, depth.medium, depth.low), (4, 1, 2, 0, 1));

    let health = client.queue_health().await?;
    assert_eq!((health.pending, health.ready, health.scheduled), (5, 4, 1));
    assert_eq!((health.running, health.completed, health.dead_letters), (0, 0, 0));
    assert_eq!(health.depth, depth);
    assert_eq!((health.agents.total, health.agents.online, health.agents.free_slots), (1, 1, 4));
    assert!(health.oldest_pending_age_ms.is_some());
    assert_eq!(health.status, "healthy", "{:?}", health.reasons);

    let done = client.submit(&SubmitTask::command(["true"])).await?;
    wait_for(client, done.id, TaskStatus::Completed).await?;
    let health = eventually("the completion to be counted", async || {
        let health = client.queue_health().await?;
        Ok((health.completed_last_minute == 1).then_some(health))
    })
    .await?;
    assert_eq!(health.completed, 1);
    server.stop().await
}
