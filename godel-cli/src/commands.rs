//! What each command does.

use std::time::{Duration, Instant};

use futures::StreamExt;
use godel_sdk::embed::{AgentStatus, InvalidInput, Priority, SessionState, TaskId, TaskStatus, Timestamp};
use godel_sdk::{Client, DEFAULT_SERVER, EventStream, ListSessions, ListTasks, SubmitTask, Task};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::args::{self, Command, DlqCommand, InstancesCommand, QueueCommand};
use crate::output::{self, clip, paint, table};
use crate::{CliResult, Failure};

/// Runs a command against the server.
pub(crate) async fn run(server: Option<String>, command: Command, command_tail: Vec<String>) -> CliResult {
    let (url, _) = server_address(server);
    let client = Client::new(&url)?;
    match command {
        Command::Serve(_) => unreachable!("handled before the runtime starts"),
        Command::Submit(a) => submit(&client, a, command_tail).await,
        Command::Do(a) => run_do(&client, a).await,
        Command::List(a) => list(&client, a).await,
        Command::Show(a) => show(&client, a).await,
        Command::Logs(a) => logs(&client, a).await,
        Command::Cancel(a) => stop(&client, &a.id, false).await,
        Command::Kill(a) => stop(&client, &a.id, true).await,
        Command::Retry(a) => {
            let task = client.retry(task_id(&a.id)?).await?;
            output::out(&format!("task {} is pending again (attempts reset)", task.id));
            Ok(())
        }
        Command::Purge(a) => {
            let id = task_id(&a.id)?;
            client.purge(id).await?;
            output::out(&format!("task {id} purged"));
            Ok(())
        }
        Command::Queue(q) => match q.command {
            QueueCommand::Depth(a) => queue_depth(&client, a.json).await,
            QueueCommand::Health(a) => queue_health(&client, a.json).await,
        },
        Command::Dlq(d) => match d.command {
            DlqCommand::List(a) => dlq_list(&client, a).await,
            DlqCommand::Replay(a) => dlq_replay(&client, a).await,
            DlqCommand::Export(a) => dlq_export(&client, a).await,
        },
        Command::Agents(a) => agents(&client, a.json).await,
        Command::Sessions(a) => sessions(&client, a).await,
        Command::Watch(a) => watch(&client, a).await,
        Command::Doctor(_) => doctor(&client, server_address(None).1).await,
        Command::Worker(_) => unreachable!("handled by `worker`"),
        Command::Instances(i) => match i.command {
            InstancesCommand::List(a) => instances(&client, a.json).await,
            InstancesCommand::Register(a) => register_instance(&client, a).await,
            InstancesCommand::Deregister(a) => {
                client.deregister_instance(&a.name).await?;
                output::out(&format!("deregistered {}", a.name));
                Ok(())
            }
            InstancesCommand::Health(a) => instance_health(&client, a).await,
        },
    }
}

/// The server URL and where it came from: --server, GODEL_SERVER, the
/// `bind` of ./godel.toml (or GODEL_CONFIG), else the default.
fn server_address(flag: Option<String>) -> (String, &'static str) {
    if let Some(url) = flag {
        return (url, "--server");
    }
    if let Ok(url) = std::env::var("GODEL_SERVER") {
        return (url, "GODEL_SERVER");
    }
    let path = std::env::var("GODEL_CONFIG").unwrap_or_else(|_| "godel.toml".to_owned());
    let bind = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("bind").and_then(|b| b.as_str()).map(str::to_owned));
    if let Some(bind) = bind {
        let bind = bind.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
        return (format!("http://{bind}"), "godel.toml");
    }
    (DEFAULT_SERVER.to_owned(), "the default")
}

fn task_id(raw: &str) -> CliResult<TaskId> {
    raw.parse().map_err(|_| {
        Failure::usage(format!("{raw:?} is not a task id (expected a UUID such as those `godel list` prints)"))
    })
}

fn duration(flag: &str, value: &str) -> CliResult<Duration> {
    humantime::parse_duration(value)
        .map_err(|e| Failure::usage(format!("--{flag}: expected a duration like 30s or 10m, got {value:?} ({e})")))
}

fn list_of<T: std::str::FromStr<Err = InvalidInput>>(flag: &str, value: Option<&str>) -> CliResult<Vec<T>> {
    value.unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(|s| parsed(flag, s)).collect()
}

fn parsed<T: std::str::FromStr<Err = InvalidInput>>(flag: &str, value: &str) -> CliResult<T> {
    value.parse().map_err(|e: InvalidInput| Failure::usage(format!("--{flag}: {}", e.reason)))
}

async fn submit(client: &Client, a: args::Submit, command: Vec<String>) -> CliResult {
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

async fn run_do(client: &Client, a: args::Do) -> CliResult {
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
            Err(Failure::task(format!("task {} ended {status} after {} attempt(s){why}", task.id, task.attempt)))
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

fn what(task: &Task) -> String {
    match (&task.prompt, &task.command) {
        (_, Some(argv)) => argv.join(" "),
        (Some(prompt), None) => prompt.clone(),
        (None, None) => String::new(),
    }
}

fn age(t: Timestamp) -> String {
    let d = Timestamp::now().saturating_since(t);
    match d.as_secs() {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3_600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3_600),
        s => format!("{}d ago", s / 86_400),
    }
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

const TASK_HEADERS: [&str; 7] = ["ID", "STATUS", "PRIORITY", "ATTEMPT", "AGENT", "CREATED", "TASK"];

async fn list(client: &Client, a: args::List) -> CliResult {
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
    if let Some(cursor) = page.next_cursor {
        output::err(&format!("more: godel list --cursor {cursor}"));
    }
    Ok(())
}

async fn show(client: &Client, a: args::Show) -> CliResult {
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

async fn logs(client: &Client, a: args::Logs) -> CliResult {
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

async fn stop(client: &Client, id: &str, force: bool) -> CliResult {
    let id = task_id(id)?;
    let reply = if force { client.kill(id).await? } else { client.cancel(id).await? };
    let what = match reply.outcome {
        godel_sdk::CancelOutcome::Cancelled => "cancelled".to_owned(),
        godel_sdk::CancelOutcome::CancelRequested if force => "is being killed".to_owned(),
        godel_sdk::CancelOutcome::CancelRequested => "is being cancelled (it was running)".to_owned(),
    };
    output::out(&format!("task {id} {what}"));
    Ok(())
}

async fn queue_depth(client: &Client, json: bool) -> CliResult {
    let depth = client.queue_depth().await?;
    if json {
        output::json(&depth);
        return Ok(());
    }
    let rows = vec![
        vec!["critical".into(), depth.critical.to_string()],
        vec!["high".into(), depth.high.to_string()],
        vec!["medium".into(), depth.medium.to_string()],
        vec!["low".into(), depth.low.to_string()],
        vec![paint("total", "1"), depth.total.to_string()],
    ];
    output::out(&table(&["PRIORITY", "READY"], &rows));
    Ok(())
}

async fn queue_health(client: &Client, json: bool) -> CliResult {
    let h = client.queue_health().await?;
    if json {
        output::json(&h);
        return Ok(());
    }
    let colour = match h.status.as_str() {
        "healthy" => "32",
        "degraded" => "33",
        _ => "31",
    };
    output::out(&format!("status   {}", paint(&h.status, colour)));
    for reason in &h.reasons {
        output::out(&format!("         - {reason}"));
    }
    output::out(&format!(
        "tasks    {} ready, {} scheduled, {} running, {} dead-lettered, {} stale leases",
        h.ready,
        h.scheduled,
        h.running + h.assigned,
        h.dead_letters,
        h.stale_leases
    ));
    if let Some(ms) = h.oldest_pending_age_ms {
        output::out(&format!(
            "oldest   waiting {}",
            humantime::format_duration(Duration::from_millis(ms / 1000 * 1000))
        ));
    }
    output::out(&format!(
        "agents   {} of {} online, {} free slots",
        h.agents.online, h.agents.total, h.agents.free_slots
    ));
    output::out(&format!("rate     {} completed in the last minute", h.completed_last_minute));
    Ok(())
}

async fn dlq_list(client: &Client, a: args::DlqList) -> CliResult {
    let query = ListTasks {
        limit: a.limit,
        priority: list_of("priority", a.priority.as_deref())?,
        newest_first: true,
        ..ListTasks::default()
    };
    let page = client.dead_letters(&query).await?;
    if a.json {
        output::json(&page);
        return Ok(());
    }
    if page.items.is_empty() {
        output::err("the dead-letter queue is empty");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.priority.to_string(),
                t.attempt.to_string(),
                t.dead_lettered_at.map_or_else(|| "-".into(), age),
                clip(t.error.as_ref().map_or("", |e| &e.message), 60),
            ]
        })
        .collect();
    output::out(&table(&["ID", "PRIORITY", "ATTEMPTS", "DEAD", "ERROR"], &rows));
    Ok(())
}

async fn dlq_replay(client: &Client, a: args::DlqReplay) -> CliResult {
    match (a.id, a.all) {
        (Some(id), false) => {
            if a.priority.is_some() {
                return Err(Failure::usage("--priority goes with --all"));
            }
            let task = client.replay_dead_letter(task_id(&id)?).await?;
            output::out(&format!("task {} is pending again", task.id));
        }
        (None, true) => {
            let priorities: Vec<Priority> = list_of("priority", a.priority.as_deref())?;
            let n = client.replay_dead_letters(&priorities).await?;
            output::out(&format!("{n} dead-lettered task(s) replayed"));
        }
        _ => return Err(Failure::usage("give a task id, or --all to replay every dead-lettered task")),
    }
    Ok(())
}

async fn dlq_export(client: &Client, a: args::DlqExport) -> CliResult {
    let ndjson = client.export_dead_letters().await?;
    match a.output {
        Some(path) => {
            std::fs::write(&path, &ndjson).map_err(|e| Failure::io(&format!("cannot write {}", path.display()), &e))?;
            output::err(&format!("{} task(s) written to {}", ndjson.lines().count(), path.display()));
        }
        None => output::out_raw(&ndjson),
    }
    Ok(())
}

async fn agents(client: &Client, json: bool) -> CliResult {
    let agents = client.agents().await?;
    if json {
        output::json(&agents);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let status = a.status.to_string();
            let colour = match status.as_str() {
                "idle" => "32",
                "busy" => "33",
                _ => "31",
            };
            vec![
                a.id.clone(),
                format!("{:?}", a.kind).to_lowercase(),
                paint(&status, colour),
                format!("{}/{}", a.current_load, a.max_capacity),
                if a.capabilities.is_empty() { "-".into() } else { a.capabilities.join(",") },
                a.last_heartbeat.map_or_else(|| "-".into(), age),
                a.node.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::out(&table(&["ID", "KIND", "STATUS", "LOAD", "CAPABILITIES", "HEARTBEAT", "NODE"], &rows));
    Ok(())
}

async fn sessions(client: &Client, a: args::Sessions) -> CliResult {
    let query = ListSessions {
        state: list_of::<SessionState>("state", a.state.as_deref())?,
        agent_id: a.agent,
        task_id: a.task.as_deref().map(task_id).transpose()?,
        limit: a.limit,
    };
    let sessions = client.sessions(&query).await?;
    if a.json {
        output::json(&sessions);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.agent_id.clone(),
                s.task_id.map_or_else(|| "-".into(), |t| t.to_string()),
                s.state.to_string(),
                age(s.updated_at),
            ]
        })
        .collect();
    output::out(&table(&["ID", "AGENT", "TASK", "STATE", "UPDATED"], &rows));
    Ok(())
}

async fn watch(client: &Client, a: args::Watch) -> CliResult {
    for pattern in &a.patterns {
        godel_sdk::embed::EventPattern::new(pattern).map_err(|e| Failure::usage(e.to_string()))?;
    }
    let patterns: Vec<&str> =
        if a.patterns.is_empty() { vec!["*"] } else { a.patterns.iter().map(String::as_str).collect() };
    let mut events = match a.since {
        Some(since) => client.events_since(&patterns, since),
        None => client.events(&patterns),
    };
    let mut seen = 0;
    let mut failures = 0;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e @ godel_sdk::Error::Unreachable { .. }) => {
                failures += 1;
                if failures == 1 && seen == 0 {
                    return Err(e.into());
                }
                output::err(&paint(&format!("reconnecting: {e}"), "2"));
                continue;
            }
            Err(e) => {
                output::err(&paint(&format!("warning: {e}"), "33"));
                continue;
            }
        };
        failures = 0;
        if a.json {
            output::out(&serde_json::to_string(&event).unwrap_or_default());
        } else {
            output::out(&format!("{:>6} {} {:<22} {}", event.seq, event.at, event.kind, summary(&event.data)));
        }
        seen += 1;
        if a.count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
    }
    Ok(())
}

fn summary(data: &Value) -> String {
    let Some(map) = data.as_object() else { return String::new() };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={}", clip(s, 60)),
            other => format!("{k}={}", clip(&other.to_string(), 60)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn doctor(client: &Client, source: &str) -> CliResult {
    let url = client.base_url().to_owned();
    let mut problems = 0;
    let mut check = |ok: bool, line: String| {
        if ok {
            output::out(&format!("{} {line}", paint("✓", "32")));
        } else {
            problems += 1;
            output::out(&format!("{} {line}", paint("✗", "31")));
        }
    };
    let warn = |line: String| output::out(&format!("{} {line}", paint("!", "33")));
    let health = match client.health().await {
        Ok(health) => {
            check(true, format!("server {url} answers (address from {source}), version {}", health.version));
            health
        }
        Err(e) => {
            check(false, format!("server {url} (address from {source}): {}", Failure::from(e).message));
            return Err(Failure::task(format!("{problems} problem(s) found")));
        }
    };
    let store = &health.store;
    check(
        store.ok,
        match &store.error {
            None => format!("store {} answers in {:.1} ms", store.backend, store.latency_ms),
            Some(e) => {
                format!("store {} fails: {e}; check the store URL and that the database is running", store.backend)
            }
        },
    );
    match client.ready().await {
        Ok(()) => check(true, "the server is ready for work".into()),
        Err(e) => check(false, format!("the server is not ready: {}", Failure::from(e).message)),
    }
    match client.agents().await {
        Ok(agents) => {
            let online = agents.iter().filter(|a| matches!(a.status, AgentStatus::Idle | AgentStatus::Busy)).count();
            check(
                online > 0,
                if online > 0 {
                    format!("{online} of {} agents online", agents.len())
                } else {
                    format!(
                        "no agent online ({} configured); add [[agents]] to godel.toml or register one",
                        agents.len()
                    )
                },
            );
            for agent in agents.iter().filter(|a| matches!(a.status, AgentStatus::Offline | AgentStatus::Error)) {
                check(false, format!("agent {} is {}; check its runtime", agent.id, agent.status));
            }
        }
        Err(e) => check(false, format!("cannot list agents: {}", Failure::from(e).message)),
    }
    if let Some(queue) = &health.queue {
        // A degraded queue (dead letters, a backlog) deserves a look but is not a broken setup.
        match queue.status.as_str() {
            "healthy" => check(true, "queue is healthy".into()),
            "degraded" => warn("queue is degraded".into()),
            other => check(false, format!("queue is {other}")),
        }
        for reason in &queue.reasons {
            output::out(&format!("    - {reason}"));
        }
    }
    if problems > 0 {
        return Err(Failure::task(format!("{problems} problem(s) found")));
    }
    output::out(&paint("no problems found", "32"));
    Ok(())
}

/// `godel worker`: runs until drained (by the server, or by the first
/// SIGTERM/SIGINT); a second signal exits at once with 130.
pub(crate) async fn worker(global_server: Option<String>, a: args::Worker, template: Vec<String>) -> CliResult {
    use godel_sdk::embed::{CancellationToken, ProcessConfig, WorkDir};
    use godel_sdk::worker::{Worker, WorkerOptions};

    let format = match a.log_format.as_deref().map(str::parse::<godel_server::config::LogFormat>).transpose() {
        Ok(format) => format.unwrap_or_default(),
        Err(e) => return Err(Failure::usage(format!("invalid --log-format: {e}"))),
    };
    godel_server::daemon::init_logging(format);
    let (server, _) = server_address(a.server.or(global_server));
    let name = match a.name {
        Some(name) => name,
        None => format!("worker-{}", hostname()),
    };
    let process = ProcessConfig {
        command: (!template.is_empty()).then_some(template),
        workdir: a.workdir.map_or(WorkDir::Inherit, WorkDir::Shared),
        env: Vec::new(),
    };
    let options = WorkerOptions {
        server,
        name,
        capabilities: a.capabilities,
        concurrency: a.concurrency,
        region: a.region,
        process,
    };
    let worker = Worker::new(options).map_err(|e| Failure::usage(e.to_string()))?;
    let drain = CancellationToken::new();
    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Failure { code: 6, message: format!("cannot handle SIGTERM: {e}") })?;
        let next = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        next.await;
        drain.cancel();
        let again = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        again.await;
        Err::<(), _>(Failure { code: 130, message: "interrupted while draining".into() })
    };
    tokio::select! {
        result = worker.run(drain.clone()) => {
            result?;
            Ok(())
        }
        Err(failure) = signals => Err(failure),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

fn state_colour(state: &str) -> &'static str {
    match state {
        "ready" => "32",
        "connecting" | "degraded" => "33",
        _ => "31",
    }
}

async fn instances(client: &Client, json: bool) -> CliResult {
    let instances = client.instances().await?;
    if json {
        output::json(&instances);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                paint(&g.state, state_colour(&g.state)),
                format!("{}/{}", g.current_sessions, g.max_sessions),
                g.region.clone().unwrap_or_else(|| "-".into()),
                if g.agents.is_empty() { "-".into() } else { g.agents.join(",") },
                g.url.clone(),
                g.source.clone(),
                g.node.clone(),
                g.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let headers = ["NAME", "STATE", "SESSIONS", "REGION", "AGENTS", "URL", "SOURCE", "NODE", "MESSAGE"];
    output::out(&table(&headers, &rows));
    Ok(())
}

async fn register_instance(client: &Client, a: args::InstancesRegister) -> CliResult {
    let registration = godel_sdk::RegisterInstance {
        name: a.name,
        url: a.url,
        token_env: a.token_env,
        token: None,
        password_env: a.password_env,
        agents: a.agents,
        capabilities: a.capabilities,
        max_sessions: a.max_sessions,
        region: a.region,
    };
    let g = client.register_instance(&registration).await?;
    output::out(&format!("registered {} ({}): {}", g.name, g.url, g.state));
    Ok(())
}

async fn instance_health(client: &Client, a: args::InstancesHealth) -> CliResult {
    let h = client.instance_health(&a.name).await?;
    if a.json {
        output::json(&h);
    } else {
        output::out(&format!(
            "{}  {}  {}/{} sessions",
            h.name,
            paint(&h.state, state_colour(&h.state)),
            h.current_sessions,
            h.max_sessions
        ));
        if let Some(message) = &h.message {
            output::out(&format!("  {message}"));
        }
    }
    if h.ok { Ok(()) } else { Err(Failure::task(format!("gateway {} is {}", h.name, h.state))) }
}
