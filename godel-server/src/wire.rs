//! The API's JSON shapes, converted by hand from core types. Requests are
//! strict (unknown fields are errors that name the field); responses are
//! plain structs so that the OpenAPI document can describe them exactly.

use std::time::Duration;

use godel_core::adapter::ProcessConfig;
use godel_core::event::EventKind;
use godel_core::session::Session;
use godel_core::store::{HistoryEntry, OutputRecord, QueueDepth};
use godel_core::{Agent, NewTask, Priority, Published, Task, TaskError, TaskId, TaskPayload, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

/// Parses a JSON body; errors name the offending field (`tasks[2].priority: …`).
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::invalid("the request needs a JSON body"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("malformed JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid(format!("invalid body: {inner}"))
        } else {
            ApiError::invalid(format!("invalid {path}: {inner}"))
        }
    })
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

/// A task as the API shows it.
#[derive(Serialize, Debug)]
pub(crate) struct TaskDto {
    id: String,
    priority: Priority,
    status: godel_core::TaskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    metadata: Map<String, Value>,
    capabilities: Vec<String>,
    affinity_key: Option<String>,
    idempotency_key: Option<String>,
    parent_id: Option<String>,
    attempt: u32,
    max_attempts: u32,
    timeout_ms: Option<u64>,
    run_at: String,
    agent_id: Option<String>,
    cancel_requested: bool,
    result: Option<Value>,
    error: Option<ErrorDto>,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    dead_lettered_at: Option<String>,
}

#[derive(Serialize, Debug)]
pub(crate) struct ErrorDto {
    kind: godel_core::TaskErrorKind,
    message: String,
}

impl From<&TaskError> for ErrorDto {
    fn from(e: &TaskError) -> Self {
        Self { kind: e.kind, message: e.message.clone() }
    }
}

impl From<&Task> for TaskDto {
    fn from(t: &Task) -> Self {
        Self {
            id: t.id.to_string(),
            priority: t.priority,
            status: t.status,
            prompt: t.payload.prompt.clone(),
            command: t.payload.command.clone(),
            metadata: t.payload.extra.clone(),
            capabilities: t.capabilities.clone(),
            affinity_key: t.affinity_key.clone(),
            idempotency_key: t.idempotency_key.clone(),
            parent_id: t.parent.map(|p| p.to_string()),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            timeout_ms: t.timeout.map(millis),
            run_at: ts(t.run_at),
            agent_id: t.agent.as_ref().map(ToString::to_string),
            cancel_requested: t.cancel_requested,
            result: t.result.clone(),
            error: t.error.as_ref().map(ErrorDto::from),
            created_at: ts(t.created_at),
            updated_at: ts(t.updated_at),
            started_at: opt_ts(t.started_at),
            completed_at: opt_ts(t.completed_at),
            dead_lettered_at: opt_ts(t.dead_lettered_at),
        }
    }
}

/// The body of `POST /tasks` (and each entry of a batch).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTask {
    prompt: Option<String>,
    command: Option<Vec<String>>,
    priority: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    affinity_key: Option<String>,
    idempotency_key: Option<String>,
    parent_id: Option<String>,
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
    run_at: Option<String>,
    delay_ms: Option<u64>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

impl CreateTask {
    /// Validates and converts; `now` resolves `delay_ms`.
    pub(crate) fn into_new_task(self, now: Timestamp) -> ApiResult<NewTask> {
        let payload = TaskPayload { prompt: self.prompt, command: self.command, extra: self.metadata };
        let mut task = NewTask::with_payload(payload);
        if let Some(p) = self.priority {
            task.priority = p.parse()?;
        }
        task.capabilities = self.capabilities;
        task.affinity_key = self.affinity_key;
        task.idempotency_key = self.idempotency_key;
        if let Some(parent) = self.parent_id {
            task.parent = Some(
                parent.parse::<TaskId>().map_err(|e| ApiError::invalid(format!("invalid parent_id: {}", e.reason)))?,
            );
        }
        if let Some(n) = self.max_attempts {
            task.max_attempts = n;
        }
        if let Some(ms) = self.timeout_ms {
            if ms == 0 {
                return Err(ApiError::invalid("invalid timeout_ms: expected a positive number of milliseconds"));
            }
            task.timeout = Some(Duration::from_millis(ms));
        }
        task.run_at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => return Err(ApiError::invalid("give run_at or delay_ms, not both")),
            (Some(at), None) => Some(Timestamp::parse_rfc3339("run_at", &at)?),
            (None, Some(ms)) => Some(now + Duration::from_millis(ms)),
            (None, None) => None,
        };
        task.validate()?;
        Ok(task)
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBatch {
    pub(crate) tasks: Vec<CreateTask>,
}

#[derive(Serialize, Debug)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
}

pub(crate) fn depth_json(depth: &QueueDepth) -> Value {
    json!({
        "critical": depth.get(Priority::Critical),
        "high": depth.get(Priority::High),
        "medium": depth.get(Priority::Medium),
        "low": depth.get(Priority::Low),
        "total": depth.total(),
    })
}

/// An agent with what it runs now.
#[derive(Serialize, Debug)]
pub(crate) struct AgentDto {
    id: String,
    name: String,
    kind: godel_core::AgentKind,
    capabilities: Vec<String>,
    max_capacity: u32,
    current_load: u32,
    status: godel_core::AgentStatus,
    last_heartbeat: Option<String>,
    region: Option<String>,
    active_tasks: Vec<String>,
    node: String,
}

impl AgentDto {
    pub(crate) fn new(agent: &Agent, active: &[TaskId], node: &str) -> Self {
        Self {
            id: agent.id.to_string(),
            name: agent.name.clone(),
            kind: agent.kind,
            capabilities: agent.capabilities.clone(),
            max_capacity: agent.max_capacity,
            current_load: agent.current_load,
            status: agent.status,
            last_heartbeat: opt_ts(agent.last_heartbeat),
            region: agent.region.clone(),
            active_tasks: active.iter().map(ToString::to_string).collect(),
            node: node.to_owned(),
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

/// The body of `POST /agents`: a local process agent.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterAgent {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    #[serde(default = "process_kind")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) capabilities: Vec<String>,
    #[serde(default = "one")]
    pub(crate) capacity: u32,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) workdir: Option<String>,
    pub(crate) default_timeout_ms: Option<u64>,
    pub(crate) region: Option<String>,
}

fn process_kind() -> String {
    "process".to_owned()
}

fn one() -> u32 {
    1
}

impl RegisterAgent {
    pub(crate) fn process_config(&self) -> ApiResult<ProcessConfig> {
        if self.kind != "process" {
            return Err(ApiError::invalid(format!(
                "invalid kind: only process agents can be registered over the API, got {:?}",
                self.kind
            )));
        }
        let workdir = match &self.workdir {
            Some(dir) => godel_core::adapter::WorkDir::Shared(dir.into()),
            None => godel_core::adapter::WorkDir::Inherit,
        };
        Ok(ProcessConfig { command: self.command.clone(), workdir, env: Vec::new() })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct SessionDto {
    id: String,
    agent_id: String,
    task_id: Option<String>,
    state: godel_core::SessionState,
    error: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<&Session> for SessionDto {
    fn from(s: &Session) -> Self {
        Self {
            id: s.id.to_string(),
            agent_id: s.agent.to_string(),
            task_id: s.task.map(|t| t.to_string()),
            state: s.state,
            error: s.error.clone(),
            created_at: ts(s.created_at),
            updated_at: ts(s.updated_at),
        }
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
            value["error"] = json!(h.error.as_ref().map(ErrorDto::from));
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
            json!({"task_id": task.to_string(), "priority": priority, "attempt": attempt, "error": ErrorDto::from(error)})
        }
        EventKind::TaskRetrying { task, attempt, run_at, error } => json!({
            "task_id": task.to_string(), "attempt": attempt, "run_at": ts(*run_at), "error": ErrorDto::from(error)
        }),
        EventKind::TaskDeadLettered { task, priority, attempts, error } => json!({
            "task_id": task.to_string(), "priority": priority, "attempts": attempts, "error": error.as_ref().map(ErrorDto::from)
        }),
        EventKind::TaskCancelled { task, priority } => json!({"task_id": task.to_string(), "priority": priority}),
        EventKind::TaskReplayed { task, priority } => json!({"task_id": task.to_string(), "priority": priority}),
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
    json!({"seq": published.seq, "type": event.kind.name(), "at": ts(event.at), "data": data})
}
