//! The commands on one task or on the task list: `list`, `show`, `logs`,
//! `cancel`, `kill`, `retry` and `purge`.

use std::time::Duration;

use godel_sdk::embed::Timestamp;
use godel_sdk::{CancelOutcome, Client, ListTasks, Task};

use crate::args;
use crate::commands::{age, list_of, note_quarantined, task_id};
use crate::exit::CliResult;
use crate::output::{self, clip, paint, table};

const TASK_HEADERS: [&str; 7] = ["ID", "STATUS", "PRIORITY", "ATTEMPT", "AGENT", "CREATED", "TASK"];

pub(crate) async fn list(client: &Client, a: args::List) -> CliResult {
    let query = ListTasks {
        limit: a.limit,
        cursor: a.cursor,
        newest_first: !a.oldest,
        status: list_of("status", a.status.as_deref())?,
        priority: list_of("priority", a.priority.as_deref())?,
        agent_id: a.agent,
        ..ListTasks::default()
    };
    let page = client.tasks(&query).await?;
    if a.json {
        output::json(&page);
        return Ok(());
    }
    if page.items.is_empty() {
        output::err("no tasks");
    } else {
        output::out(&table(&TASK_HEADERS, &task_rows(&page.items)));
    }
    note_quarantined(&page.quarantined);
    if let Some(cursor) = page.next_cursor {
        output::err(&format!("more: godel list --cursor {cursor}"));
    }
    Ok(())
}

pub(crate) async fn show(client: &Client, a: args::Show) -> CliResult {
    let t = client.task(task_id(&a.id)?).await?;
    if a.json {
        output::json(&t);
        return Ok(());
    }
    let opt = |v: Option<Timestamp>| v.map_or_else(|| "-".to_owned(), |t| t.to_string());
    let mut rows = vec![
        ("id", t.id.to_string()),
        ("status", output::status(t.status)),
        ("priority", t.priority.to_string()),
        ("attempt", format!("{} of {}", t.attempt, t.max_attempts)),
        ("agent", t.agent_id.clone().unwrap_or_else(|| "-".into())),
    ];
    if let Some(prompt) = &t.prompt {
        rows.push(("prompt", clip(prompt, 200)));
    }
    if let Some(command) = &t.command {
        rows.push(("command", format!("{command:?}")));
    }
    if !t.capabilities.is_empty() {
        rows.push(("capabilities", t.capabilities.join(", ")));
    }
    if let Some(ms) = t.timeout_ms {
        rows.push(("timeout", humantime::format_duration(Duration::from_millis(ms)).to_string()));
    }
    rows.push(("created", t.created_at.to_string()));
    rows.push(("run at", t.run_at.to_string()));
    rows.push(("started", opt(t.started_at)));
    rows.push(("finished", opt(t.completed_at)));
    if let Some(error) = &t.error {
        rows.push(("error", paint(&error.message, "31")));
    }
    if let Some(result) = &t.result {
        rows.push(("result", result.to_string()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        output::out(&format!("{k:>width$}  {v}"));
    }
    Ok(())
}

pub(crate) async fn logs(client: &Client, a: args::Logs) -> CliResult {
    let id = task_id(&a.id)?;
    let mut printed = 0;
    loop {
        let events = client.task_events(id).await?;
        for event in events.iter().skip(printed) {
            if a.json {
                output::out(&serde_json::to_string(event).unwrap_or_default());
            } else if event.kind == "task.output" {
                let text = event.data.as_deref().unwrap_or_default();
                match event.stream.as_deref() {
                    Some("stderr") | Some("system") => output::err_raw(text),
                    _ => output::out_raw(text),
                }
            } else {
                let mut line = format!("# {} {} attempt {}", event.at, event.kind, event.attempt);
                if let Some(agent) = &event.agent_id {
                    line.push_str(&format!(" on {agent}"));
                }
                if let Some(error) = &event.error {
                    line.push_str(&format!(": {}", error.message));
                }
                output::err(&paint(&line, "2"));
            }
        }
        printed = events.len();
        if !a.follow {
            return Ok(());
        }
        if client.task(id).await?.status.is_terminal() {
            // One more read picks up anything recorded with the final transition.
            if client.task_events(id).await?.len() == printed {
                return Ok(());
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `cancel` (with a grace period for a running task) or `kill` (`force`).
pub(crate) async fn stop(client: &Client, id: &str, force: bool) -> CliResult {
    let id = task_id(id)?;
    let reply = if force { client.kill(id).await? } else { client.cancel(id).await? };
    let what = match reply.outcome {
        CancelOutcome::Cancelled => "cancelled".to_owned(),
        CancelOutcome::CancelRequested if force => "is being killed".to_owned(),
        CancelOutcome::CancelRequested => "is being cancelled (it was running)".to_owned(),
    };
    output::out(&format!("task {id} {what}"));
    Ok(())
}

pub(crate) async fn retry(client: &Client, a: args::Retry) -> CliResult {
    let task = client.retry(task_id(&a.id)?).await?;
    output::out(&format!("task {} is pending again (attempts reset)", task.id));
    Ok(())
}

pub(crate) async fn purge(client: &Client, a: args::Purge) -> CliResult {
    let id = task_id(&a.id)?;
    client.purge(id).await?;
    output::out(&format!("task {id} purged"));
    Ok(())
}

fn task_rows(tasks: &[Task]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                output::status(t.status),
                t.priority.to_string(),
                format!("{}/{}", t.attempt, t.max_attempts),
                t.agent_id.clone().unwrap_or_else(|| "-".into()),
                age(t.created_at),
                clip(&what(t), 48),
            ]
        })
        .collect()
}

fn what(task: &Task) -> String {
    match (&task.prompt, &task.command) {
        (_, Some(argv)) => argv.join(" "),
        (Some(prompt), None) => prompt.clone(),
        (None, None) => String::new(),
    }
}
