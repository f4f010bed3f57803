//! The API's JSON shapes as the routes use them: godel-wire's types (one
//! definition shared with the SDK and the OpenAPI test), converted by hand
//! from core's records here. Requests are strict (unknown fields are errors
//! that name the field, see [`parse_body`]).

use std::time::Duration;

use godel_core::adapter::ProcessConfig;
use godel_core::agent::MAX_CAPACITY;
use godel_core::event::EventKind;
use godel_core::session::Session;
use godel_core::store::{HistoryEntry, OutputRecord, QueueDepth};
use godel_core::task::{validate_text, validate_timeout};
use godel_core::{Agent, NewTask, Priority, Published, Task, TaskId, TaskPayload, Timestamp};
pub(crate) use godel_wire::Page;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};

/// Parses a JSON body; errors name the offending field (`tasks[2].priority: …`).
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::invalid("the request needs a JSON body"));
    }
    // One JSON value and nothing after it but whitespace.
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    whole_numbers_as_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(format!("invalid body: {inner}"))
        } else {
            ApiError::invalid(format!("invalid {path}: {inner}"))
        }
    })
}

/// JSON has one number type: `3.0` is the integer 3 (as the OpenAPI
/// document's schemas say), so it is one here too before serde, which
/// would refuse it for an integer field.
fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15) {
                // Exact: every whole number below 2^53 is an f64.
                #[allow(clippy::cast_possible_truncation, reason = "a whole number within i64")]
                let i = f as i64;
                *value = Value::from(i);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

fn ts(t: Timestamp) -> String {
    t.to_string()
}

pub(crate) fn opt_ts(t: Option<Timestamp>) -> Option<String> {
    t.map(ts)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A task as the API shows it: godel-wire's [`godel_wire::Task`], built
/// from the store's record.
#[derive(Serialize, Debug)]
#[serde(transparent)]
pub(crate) struct TaskDto(godel_wire::Task);

impl From<&Task> for TaskDto {
    fn from(t: &Task) -> Self {
        let mut dto = godel_wire::Task::new(t.id, t.priority, t.status, t.created_at);
        dto.prompt.clone_from(&t.payload.prompt);
        dto.command.clone_from(&t.payload.command);
        dto.metadata.clone_from(&t.payload.extra);
        dto.capabilities.clone_from(&t.capabilities);
        dto.affinity_key.clone_from(&t.affinity_key);
        dto.idempotency_key.clone_from(&t.idempotency_key);
        dto.parent_id = t.parent;
        dto.attempt = t.attempt;
        dto.max_attempts = t.max_attempts;
        dto.timeout_ms = t.timeout.map(millis);
        dto.run_at = t.run_at;
        dto.agent_id = t.agent.as_ref().map(ToString::to_string);
        dto.cancel_requested = t.cancel_requested;
        dto.result.clone_from(&t.result);
        dto.error.clone_from(&t.error);
        dto.updated_at = t.updated_at;
        dto.started_at = t.started_at;
        dto.completed_at = t.completed_at;
        dto.dead_lettered_at = t.dead_lettered_at;
        Self(dto)
    }
}

/// Longest `delay_ms` a task may ask for: 365 days.
pub(crate) const MAX_DELAY_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// The body of `POST /tasks` (and each entry of a batch): godel-wire's
/// [`godel_wire::SubmitTask`], strict about unknown fields.
#[derive(Deserialize, Debug)]
#[serde(transparent)]
pub(crate) struct CreateTask(godel_wire::SubmitTask);

impl CreateTask {
    /// Validates and converts; `now` resolves `delay_ms`.
    pub(crate) fn into_new_task(self, now: Timestamp) -> ApiResult<NewTask> {
        let request = self.0;
        let payload = TaskPayload { prompt: request.prompt, command: request.command, extra: request.metadata };
        let mut task = NewTask::with_payload(payload);
        if let Some(p) = request.priority {
            task.priority = p;
        }
        task.capabilities = request.capabilities;
        task.affinity_key = request.affinity_key;
        task.idempotency_key = request.idempotency_key;
        if let Some(parent) = request.parent_id {
            task.parent = Some(
                parent.parse::<TaskId>().map_err(|e| ApiError::invalid(format!("invalid parent_id: {}", e.reason)))?,
            );
        }
        if let Some(n) = request.max_attempts {
            task.max_attempts = n;
        }
        if let Some(ms) = request.timeout_ms {
            let timeout = Duration::from_millis(ms);
            validate_timeout("timeout_ms", timeout)?;
            task.timeout = Some(timeout);
        }
        task.run_at = match (request.run_at, request.delay_ms) {
            (Some(_), Some(_)) => return Err(ApiError::invalid("give run_at or delay_ms, not both")),
            (Some(at), None) => Some(Timestamp::parse_rfc3339("run_at", &at)?),
            (None, Some(ms)) if ms > MAX_DELAY_MS => {
                return Err(ApiError::invalid(format!("invalid delay_ms: expected 0 to {MAX_DELAY_MS}, got {ms}")));
            }
            (None, Some(ms)) => Some(now + Duration::from_millis(ms)),
            (None, None) => None,
        };
        task.validate()?;
        Ok(task)
    }
}

/// The body of `POST /tasks/batch`.
pub(crate) type CreateBatch = godel_wire::SubmitBatch<CreateTask>;

/// The rows a listing moved to the quarantine, as its page names them.
pub(crate) fn quarantined(rows: &[godel_core::store::Quarantined]) -> Vec<godel_wire::QuarantinedTask> {
    rows.iter().map(|q| godel_wire::QuarantinedTask { id: q.id.clone(), error: q.error.clone() }).collect()
}

pub(crate) fn depth_json(depth: &QueueDepth) -> godel_wire::QueueDepth {
    godel_wire::QueueDepth {
        critical: depth.get(Priority::Critical),
        high: depth.get(Priority::High),
        medium: depth.get(Priority::Medium),
        low: depth.get(Priority::Low),
        total: depth.total(),
    }
}

/// An agent with what it runs now: godel-wire's [`godel_wire::Agent`].
#[derive(Serialize, Debug)]
#[serde(transparent)]
pub(crate) struct AgentDto(godel_wire::Agent);

impl AgentDto {
    pub(crate) fn new(agent: &Agent, active: &[TaskId], node: &str) -> Self {
        Self(godel_wire::Agent {
            id: agent.id.to_string(),
            name: agent.name.clone(),
            kind: agent.kind,
            capabilities: agent.capabilities.clone(),
            max_capacity: agent.max_capacity,
            current_load: agent.current_load,
            status: agent.status,
            last_heartbeat: agent.last_heartbeat,
            region: agent.region.clone(),
            active_tasks: active.iter().map(ToString::to_string).collect(),
            node: Some(node.to_owned()),
        })
    }

    pub(crate) fn id(&self) -> &str {
        &self.0.id
    }
}

/// The body of `POST /agents`: godel-wire's [`godel_wire::RegisterAgent`],
/// a local process agent.
#[derive(Deserialize, Debug)]
#[serde(transparent)]
pub(crate) struct RegisterAgent(godel_wire::RegisterAgent);

impl std::ops::Deref for RegisterAgent {
    type Target = godel_wire::RegisterAgent;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl RegisterAgent {
    pub(crate) fn process_config(&self) -> ApiResult<ProcessConfig> {
        if self.kind != "process" {
            return Err(ApiError::invalid(format!(
                "invalid kind: only process agents can be registered over the API, got {:?}",
                self.kind
            )));
        }
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(ApiError::invalid(format!(
                "invalid capacity: expected 1 to {MAX_CAPACITY}, got {}",
                self.capacity
            )));
        }
        let workdir = match &self.workdir {
            Some(dir) => {
                validate_text("workdir", dir)?;
                godel_core::adapter::WorkDir::Shared(dir.into())
            }
            None => godel_core::adapter::WorkDir::Inherit,
        };
        Ok(ProcessConfig { command: self.command.clone(), workdir, env: Vec::new(), runs: None })
    }
}

/// A session as the API shows it: godel-wire's [`godel_wire::Session`].
#[derive(Serialize, Debug)]
#[serde(transparent)]
pub(crate) struct SessionDto(godel_wire::Session);

impl From<&Session> for SessionDto {
    fn from(s: &Session) -> Self {
        Self(godel_wire::Session {
            id: s.id,
            agent_id: s.agent.to_string(),
            task_id: s.task,
            state: s.state,
            error: s.error.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }
}

/// One entry of a task's event history: lifecycle changes and output, by time.
pub(crate) fn history_json(history: &[HistoryEntry], output: &[OutputRecord]) -> Vec<Value> {
    let mut entries: Vec<(Timestamp, u8, usize, Value)> = Vec::new();
    let mut previous: Option<&HistoryEntry> = None;
    for (i, h) in history.iter().enumerate() {
        let kind = match (h.status, previous) {
            (godel_core::TaskStatus::Pending, None) => "task.created",
            (godel_core::TaskStatus::Pending, Some(p)) if h.attempt == 0 && p.status.is_terminal() => "task.replayed",
            (godel_core::TaskStatus::Pending, Some(p)) if h.attempt < p.attempt => "task.released",
            (godel_core::TaskStatus::Pending, Some(_)) => "task.retrying",
            (godel_core::TaskStatus::Assigned, _) => "task.assigned",
            (godel_core::TaskStatus::Running, Some(p)) if p.status == godel_core::TaskStatus::Running => {
                "task.cancel_requested"
            }
            (godel_core::TaskStatus::Running, _) => "task.started",
            (godel_core::TaskStatus::Completed, _) => "task.completed",
            (godel_core::TaskStatus::Failed, _) => "task.failed",
            (godel_core::TaskStatus::Cancelled, _) => "task.cancelled",
            (godel_core::TaskStatus::DeadLetter, _) => "task.dead_lettered",
        };
        let kind = if h.cancel_requested && previous.is_some_and(|p| !p.cancel_requested) && !h.status.is_terminal() {
            "task.cancel_requested"
        } else {
            kind
        };
        let mut value = json!({
            "type": kind,
            "at": ts(h.at),
            "attempt": h.attempt,
            "status": h.status,
            "agent_id": h.agent.as_ref().map(ToString::to_string),
        });
        if matches!(kind, "task.retrying" | "task.failed" | "task.dead_lettered") {
            value["error"] = json!(h.error);
        }
        // At one instant, output comes before the transition that ends the task.
        let rank = if h.status.is_terminal() { 2 } else { 0 };
        entries.push((h.at, rank, i, value));
        previous = Some(h);
    }
    for (i, o) in output.iter().enumerate() {
        let value = json!({"type": "task.output", "at": ts(o.at), "attempt": o.attempt, "stream": o.stream.as_str(), "data": o.data});
        entries.push((o.at, 1, history.len() + i, value));
    }
    entries.sort_by_key(|(at, rank, i, _)| (*at, *rank, *i));
    entries.into_iter().map(|(_, _, _, v)| v).collect()
}

/// An event as WebSocket subscribers and the history see it.
pub(crate) fn event_json(published: &Published) -> Value {
    let event = &published.event;
    let data = match &event.kind {
        EventKind::TaskCreated { task, priority } => json!({"task_id": task.to_string(), "priority": priority}),
        EventKind::TaskAssigned { task, priority, agent, attempt } => {
            json!({"task_id": task.to_string(), "priority": priority, "agent_id": agent.to_string(), "attempt": attempt})
        }
        EventKind::TaskStarted { task, session, attempt } => {
            json!({"task_id": task.to_string(), "session_id": session.to_string(), "attempt": attempt})
        }
        EventKind::TaskOutput { task, attempt, stream, data } => {
            json!({"task_id": task.to_string(), "attempt": attempt, "stream": stream.as_str(), "data": data})
        }
        EventKind::TaskCompleted { task, priority, attempt } => {
            json!({"task_id": task.to_string(), "priority": priority, "attempt": attempt})
        }
        EventKind::TaskFailed { task, priority, attempt, error } => {
            json!({"task_id": task.to_string(), "priority": priority, "attempt": attempt, "error": error})
        }
        EventKind::TaskRetrying { task, attempt, run_at, error } => json!({
            "task_id": task.to_string(), "attempt": attempt, "run_at": ts(*run_at), "error": error
        }),
        EventKind::TaskDeadLettered { task, priority, attempts, error } => json!({
            "task_id": task.to_string(), "priority": priority, "attempts": attempts, "error": error
        }),
        EventKind::TaskCancelled { task, priority } => json!({"task_id": task.to_string(), "priority": priority}),
        EventKind::TaskReplayed { task, priority } => json!({"task_id": task.to_string(), "priority": priority}),
        EventKind::TaskQuarantined { task, error } => json!({"task_id": task, "error": error}),
        EventKind::AgentConnected { agent } => json!({"agent_id": agent.to_string()}),
        EventKind::AgentDisconnected { agent, reason } => json!({"agent_id": agent.to_string(), "reason": reason}),
        EventKind::AgentStatus { agent, status } => json!({"agent_id": agent.to_string(), "status": status}),
        EventKind::SessionOpened { session, agent } => {
            json!({"session_id": session.to_string(), "agent_id": agent.to_string()})
        }
        EventKind::SessionStateChanged { session, from, to } => {
            json!({"session_id": session.to_string(), "from": from, "to": to})
        }
        EventKind::SessionClosed { session, state } => json!({"session_id": session.to_string(), "state": state}),
        EventKind::SessionError { session, message } => json!({"session_id": session.to_string(), "message": message}),
        EventKind::System { message, .. } => json!({"message": message}),
        EventKind::BudgetExceeded { period, spent_micros, limit_micros, hard } => json!({
            "period": period, "spent_micros": spent_micros, "limit_micros": limit_micros, "hard": hard,
        }),
        _ => json!({}),
    };
    let envelope = godel_wire::Event { seq: published.seq, kind: event.kind.name().to_owned(), at: event.at, data };
    serde_json::to_value(envelope).expect("an event envelope serializes")
}
