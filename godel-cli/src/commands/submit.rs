//! `godel submit` and `godel do`: create a task and, when asked, follow it
//! to its end through the event stream, with a spinner or the task's own
//! output. Both exit 0 only when the task completed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use godel_sdk::embed::{Priority, TaskId, TaskStatus};
use godel_sdk::{Client, EventStream, SubmitTask, Task};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args;
use crate::commands::{duration, parsed};
use crate::exit::{CliResult, Failure};
use crate::output::{self, clip, paint};

pub(crate) async fn submit(client: &Client, a: args::Submit, command: Vec<String>) -> CliResult {
    let mut task = match (&a.prompt, command.is_empty()) {
        (None, true) => {
            return Err(Failure::usage(
                "nothing to submit: give a prompt (godel submit \"fix the tests\") or a command after -- (godel submit -- make test)",
            ));
        }
        (Some(prompt), true) => SubmitTask::prompt(prompt),
        (None, false) => SubmitTask::command(command),
        (Some(_), false) => return Err(Failure::usage("give a prompt or a command after --, not both")),
    };
    if let Some(p) = &a.priority {
        task = task.priority(parsed("priority", p)?);
    }
    for cap in &a.capability {
        task = task.capability(cap);
    }
    if let Some(t) = &a.timeout {
        task = task.timeout(duration("timeout", t)?);
    }
    if let Some(n) = a.max_attempts {
        task = task.max_attempts(n);
    }
    match (&a.at, &a.delay) {
        (Some(_), Some(_)) => return Err(Failure::usage("give --at or --in, not both")),
        (Some(at), None) => {
            task = task.run_at(parsed("at", at)?);
        }
        (None, Some(delay)) => task = task.delay(duration("in", delay)?),
        (None, None) => {}
    }
    if let Some(key) = &a.idempotency_key {
        task = task.idempotency_key(key);
    }
    if let Some(key) = &a.affinity {
        task = task.affinity_key(key);
    }
    if !a.wait {
        let task = client.submit(&task).await?;
        if a.json {
            output::json(&task);
        } else {
            output::out(&task.id.to_string());
        }
        return Ok(());
    }
    // Subscribe before submitting so no event of the task can be missed.
    let mut events = client.events(&["task.*"]);
    events.subscribed().await?;
    let task = client.submit(&task).await?;
    output::err(&format!("submitted {} ({})", task.id, task.priority));
    let done = follow(client, task.id, events, Follow { stream_output: false, spinner: !a.json }).await?;
    finish(&done, a.json)
}

pub(crate) async fn run_do(client: &Client, a: args::Do) -> CliResult {
    let mut task = SubmitTask::prompt(&a.intent).priority(match &a.priority {
        Some(p) => parsed("priority", p)?,
        None => Priority::High,
    });
    for cap in &a.capability {
        task = task.capability(cap);
    }
    if let Some(t) = &a.timeout {
        task = task.timeout(duration("timeout", t)?);
    }
    let mut events = client.events(&["task.*"]);
    events.subscribed().await?;
    let task = client.submit(&task).await?;
    output::err(&paint(&format!("→ task {}", task.id), "2"));
    let done = follow(client, task.id, events, Follow { stream_output: true, spinner: false }).await?;
    finish(&done, false)
}

/// Prints the outcome; exit code 0 only for a completed task.
fn finish(task: &Task, json: bool) -> CliResult {
    if json {
        output::json(task);
    }
    let took = match (task.started_at, task.completed_at) {
        (Some(start), Some(end)) => format!(" in {:.1}s", end.saturating_since(start).as_secs_f64()),
        _ => String::new(),
    };
    match task.status {
        TaskStatus::Completed => {
            if !json {
                output::err(&format!("{} {}{took}", output::status(task.status), task.id));
            }
            Ok(())
        }
        status => {
            let why = task.error.as_ref().map(|e| format!(": {}", e.message)).unwrap_or_default();
            Err(Failure::failed(format!("task {} ended {status} after {} attempt(s){why}", task.id, task.attempt)))
        }
    }
}

struct Follow {
    stream_output: bool,
    spinner: bool,
}

/// Follows a task to its end through the event stream, with a status poll
/// as a safety net for events the stream could not deliver.
async fn follow(client: &Client, id: TaskId, mut events: EventStream, how: Follow) -> CliResult<Task> {
    let bar = (how.spinner && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(100));
        bar.set_message("pending");
        bar
    });
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let started = Instant::now();
    let task = loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { continue };
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        // Unreachable while waiting: keep trying, the poll below also checks.
                        tracing_note(&bar, &format!("event stream: {e}"));
                        continue;
                    }
                };
                if event.task_id() != Some(id) {
                    continue;
                }
                let data = &event.data;
                match event.kind.as_str() {
                    "task.output" if how.stream_output => {
                        let text = data["data"].as_str().unwrap_or_default();
                        match data["stream"].as_str() {
                            Some("stderr") | Some("system") => output::err_raw(text),
                            _ => output::out_raw(text),
                        }
                    }
                    "task.output" => {
                        if let Some(bar) = &bar {
                            let line = data["data"].as_str().unwrap_or_default().lines().last().unwrap_or_default().to_owned();
                            bar.set_message(format!("running: {}", clip(&line, 60)));
                        }
                    }
                    "task.assigned" => set(&bar, &format!("assigned to {} (attempt {})", data["agent_id"].as_str().unwrap_or("?"), data["attempt"])),
                    "task.started" => set(&bar, &format!("running (attempt {})", data["attempt"])),
                    "task.retrying" => {
                        let why = data["error"]["message"].as_str().unwrap_or_default();
                        let line = format!("attempt {} failed: {}; retrying", data["attempt"], clip(why, 80));
                        match &bar {
                            Some(bar) => bar.set_message(line),
                            None => output::err(&line),
                        }
                    }
                    "task.completed" | "task.failed" | "task.dead_lettered" | "task.cancelled" => {
                        break client.task(id).await?;
                    }
                    _ => {}
                }
            }
            _ = poll.tick() => {
                if started.elapsed() > Duration::from_secs(1) {
                    let task = client.task(id).await?;
                    if task.status.is_terminal() {
                        break task;
                    }
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(task)
}

fn set(bar: &Option<ProgressBar>, message: &str) {
    if let Some(bar) = bar {
        bar.set_message(message.to_owned());
    }
}

fn tracing_note(bar: &Option<ProgressBar>, message: &str) {
    match bar {
        Some(bar) => bar.set_message(message.to_owned()),
        None => output::err(&paint(message, "2")),
    }
}
