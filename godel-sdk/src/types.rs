//! The API's request and response shapes, as the SDK's own types. Responses
//! accept fields they do not know, so a newer server does not break an older
//! client.

use std::time::Duration;

use godel_core::{AgentKind, AgentStatus, Priority, SessionId, SessionState, TaskError, TaskId, TaskStatus, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A task as the server reports it.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Task {
    /// Its id.
    #[serde(with = "text")]
    pub id: TaskId,
    /// How urgent it is.
    pub priority: Priority,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// The prompt, if any.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The command, if any.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Free-form data given at submission.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Capabilities an agent needs to run it.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Affinity key.
    #[serde(default)]
    pub affinity_key: Option<String>,
    /// Idempotency key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Parent task.
    #[serde(default, with = "opt_text")]
    pub parent_id: Option<TaskId>,
    /// How many times it has been claimed.
    pub attempt: u32,
    /// How many claims it may have.
    pub max_attempts: u32,
    /// Per-attempt timeout in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Not claimable before this time.
    #[serde(with = "text")]
    pub run_at: Timestamp,
    /// The agent holding or last holding it.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// A cancel was requested while it ran.
    #[serde(default)]
    pub cancel_requested: bool,
    /// What it produced, once completed.
    #[serde(default)]
    pub result: Option<Value>,
    /// Its latest error.
    #[serde(default)]
    pub error: Option<TaskError>,
    /// When it was submitted.
    #[serde(with = "text")]
    pub created_at: Timestamp,
    /// When it last changed.
    #[serde(with = "text")]
    pub updated_at: Timestamp,
    /// When its latest attempt started.
    #[serde(default, with = "opt_text")]
    pub started_at: Option<Timestamp>,
    /// When it finished.
    #[serde(default, with = "opt_text")]
    pub completed_at: Option<Timestamp>,
    /// When it was dead-lettered.
    #[serde(default, with = "opt_text")]
    pub dead_lettered_at: Option<Timestamp>,
}

/// A task to submit. Build it with [`SubmitTask::prompt`] or [`SubmitTask::command`].
#[derive(Clone, PartialEq, Debug, Default, Serialize)]
pub struct SubmitTask {
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<Priority>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    capabilities: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    affinity_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    metadata: Map<String, Value>,
}

impl SubmitTask {
    /// A task sending `prompt` to an agent.
    pub fn prompt(prompt: impl Into<String>) -> Self {
        Self { prompt: Some(prompt.into()), ..Self::default() }
    }

    /// A task running `argv` (no shell).
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Self {
        Self { command: Some(argv.into_iter().map(Into::into).collect()), ..Self::default() }
    }

    /// Sets the priority.
    #[must_use]
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Requires a capability.
    #[must_use]
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }

    /// Sets the affinity key.
    #[must_use]
    pub fn affinity_key(mut self, key: impl Into<String>) -> Self {
        self.affinity_key = Some(key.into());
        self
    }

    /// Sets the idempotency key: submitting again with it returns the first task.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the parent task.
    #[must_use]
    pub fn parent(mut self, parent: TaskId) -> Self {
        self.parent_id = Some(parent.to_string());
        self
    }

    /// Sets the number of attempts.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Schedules it for `at`.
    #[must_use]
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at.to_string());
        self.delay_ms = None;
        self
    }

    /// Schedules it `delay` from when the server receives it.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        self.run_at = None;
        self
    }

    /// Attaches free-form data.
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }
}

/// Which tasks [`crate::Client::tasks`] lists.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ListTasks {
    /// Page size, 1 to 100 (server default 20).
    pub limit: Option<usize>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Any of these statuses.
    pub status: Vec<TaskStatus>,
    /// Any of these priorities.
    pub priority: Vec<Priority>,
    /// Held or last held by this agent.
    pub agent_id: Option<String>,
    /// Children of this task.
    pub parent_id: Option<TaskId>,
    /// Created at or after.
    pub created_after: Option<Timestamp>,
    /// Created before.
    pub created_before: Option<Timestamp>,
}

impl ListTasks {
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let join = |items: Vec<&str>| items.join(",");
        if let Some(limit) = self.limit {
            q.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.cursor {
            q.push(("cursor", cursor.clone()));
        }
        if self.newest_first {
            q.push(("sort", "-created_at".to_owned()));
        }
        if !self.status.is_empty() {
            q.push(("status", join(self.status.iter().map(|s| s.as_str()).collect())));
        }
        if !self.priority.is_empty() {
            q.push(("priority", join(self.priority.iter().map(|p| p.as_str()).collect())));
        }
        if let Some(agent) = &self.agent_id {
            q.push(("agent_id", agent.clone()));
        }
        if let Some(parent) = self.parent_id {
            q.push(("parent_id", parent.to_string()));
        }
        if let Some(t) = self.created_after {
            q.push(("created_after", t.to_string()));
        }
        if let Some(t) = self.created_before {
            q.push(("created_before", t.to_string()));
        }
        q
    }
}

/// One page of a listing.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass it as `cursor` to get the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// What a cancel or kill did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It was pending and is cancelled.
    Cancelled,
    /// It is running; the engine holding it stops it.
    CancelRequested,
}

/// The answer to a cancel or kill.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Cancelled {
    /// What happened.
    pub outcome: CancelOutcome,
    /// The task afterwards.
    pub task: Task,
}

/// One entry of a task's history: a lifecycle change or a piece of output.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct TaskEvent {
    /// `task.created`, `task.started`, `task.output`, `task.retrying`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// When.
    #[serde(with = "text")]
    pub at: Timestamp,
    /// The attempt.
    pub attempt: u32,
    /// The status after a lifecycle change.
    #[serde(default)]
    pub status: Option<TaskStatus>,
    /// The agent involved.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// For output: `stdout`, `stderr` or `system`.
    #[serde(default)]
    pub stream: Option<String>,
    /// For output: the text.
    #[serde(default)]
    pub data: Option<String>,
    /// For failures: the error.
    #[serde(default)]
    pub error: Option<TaskError>,
}

/// Ready tasks per priority.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize, Serialize)]
pub struct QueueDepth {
    /// Critical.
    pub critical: u64,
    /// High.
    pub high: u64,
    /// Medium.
    pub medium: u64,
    /// Low.
    pub low: u64,
    /// All.
    pub total: u64,
}

/// Agents in a queue health report.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize, Serialize)]
pub struct AgentSummary {
    /// Registered.
    pub total: u64,
    /// Idle or busy.
    pub online: u64,
    /// Free slots on online agents.
    pub free_slots: u64,
}

/// The queue's health.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct QueueHealth {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// Why it is not healthy.
    pub reasons: Vec<String>,
    /// Pending tasks (ready and scheduled).
    pub pending: u64,
    /// Pending and ready now.
    pub ready: u64,
    /// Pending with a future run time.
    pub scheduled: u64,
    /// Claimed, not started.
    pub assigned: u64,
    /// Running.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Dead-lettered.
    pub dead_letters: u64,
    /// Leases that lapsed and await the reclaim sweep.
    pub stale_leases: u64,
    /// How long the head of the queue has waited.
    pub oldest_pending_age_ms: Option<u64>,
    /// Completions on this server in the last minute.
    pub completed_last_minute: u64,
    /// Ready tasks per priority.
    pub depth: QueueDepth,
    /// Agents.
    pub agents: AgentSummary,
}

/// The store part of a health report.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct StoreHealth {
    /// `sqlite`, `memory`, …
    pub backend: String,
    /// Whether the probe succeeded.
    pub ok: bool,
    /// How long the probe took.
    pub latency_ms: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The server's deep health report.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Health {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// Server version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Whether it accepts work.
    pub ready: bool,
    /// The store probe.
    pub store: StoreHealth,
    /// The queue, when the store answered.
    pub queue: Option<QueueHealth>,
}

/// An agent with its load.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Agent {
    /// Its id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Runtime kind.
    pub kind: AgentKind,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Slots.
    pub max_capacity: u32,
    /// Slots in use.
    pub current_load: u32,
    /// Health and occupancy.
    pub status: AgentStatus,
    /// Last sign of life.
    #[serde(default, with = "opt_text")]
    pub last_heartbeat: Option<Timestamp>,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Tasks it runs now (on this node; agents of other nodes list none).
    #[serde(default)]
    pub active_tasks: Vec<String>,
    /// The server node that runs it (several servers may share a store).
    #[serde(default)]
    pub node: Option<String>,
}

/// A local process agent to register on the server.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize)]
pub struct RegisterAgent {
    /// Its id.
    pub id: String,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it can do.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Slots (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// argv template for prompt tasks, e.g. `["claude", "-p", "{prompt}"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Timeout for tasks that set none, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_timeout_ms: Option<u64>,
    /// Region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// An OpenClaw gateway of the federation, as one node sees it.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Instance {
    /// Its name.
    pub name: String,
    /// The engine agent standing for it (`gateway-<name>`).
    pub agent_id: String,
    /// `ws://host:port`.
    pub url: String,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Agent ids it hosts.
    #[serde(default)]
    pub agents: Vec<String>,
    /// What tasks are routed to it by.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Its session limit (Godel fills 90% of it).
    pub max_sessions: u32,
    /// Sessions Godel has open there.
    pub current_sessions: u32,
    /// `connecting`, `ready`, `degraded` or `unusable`.
    pub state: String,
    /// Why it is not ready, and what to do about it.
    #[serde(default)]
    pub message: Option<String>,
    /// When the engine last checked it.
    #[serde(default, with = "opt_text")]
    pub last_check: Option<Timestamp>,
    /// The protocol version agreed on.
    #[serde(default)]
    pub protocol: Option<u32>,
    /// The gateway's version.
    #[serde(default)]
    pub server_version: Option<String>,
    /// `config` (from godel.toml) or `api` (registered through the API).
    pub source: String,
    /// The node whose view this is.
    pub node: String,
}

/// A gateway to register (see [`crate::Client::register_instance`]).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize)]
pub struct RegisterInstance {
    /// Unique name.
    pub name: String,
    /// `ws://host:port` of the gateway.
    pub url: String,
    /// An environment variable holding the gateway's token on every server node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The token itself (kept in the server's store in clear; prefer `token_env`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// An environment variable holding the gateway's password on every server node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Agent ids it hosts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Extra capabilities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Its session limit (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// A gateway's health as the answering node sees it.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct InstanceHealth {
    /// Its name.
    pub name: String,
    /// True when it takes work.
    pub ok: bool,
    /// `connecting`, `ready`, `degraded` or `unusable`.
    pub state: String,
    /// Why it is not ready, and what to do about it.
    #[serde(default)]
    pub message: Option<String>,
    /// When the engine last checked it.
    #[serde(default, with = "opt_text")]
    pub last_check: Option<Timestamp>,
    /// Sessions open there.
    pub current_sessions: u32,
    /// Its session limit.
    pub max_sessions: u32,
    /// The answering node.
    pub node: String,
}

/// An agent session.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Session {
    /// Its id.
    #[serde(with = "text")]
    pub id: SessionId,
    /// Its agent.
    pub agent_id: String,
    /// The task it runs.
    #[serde(default, with = "opt_text")]
    pub task_id: Option<TaskId>,
    /// Where it is in its life.
    pub state: SessionState,
    /// Why it ended, for the side exits.
    #[serde(default)]
    pub error: Option<String>,
    /// When it opened.
    #[serde(with = "text")]
    pub created_at: Timestamp,
    /// When it last changed.
    #[serde(with = "text")]
    pub updated_at: Timestamp,
}

/// An event from the server's `/events` stream.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Event {
    /// Its sequence number on the server.
    pub seq: u64,
    /// `task.completed`, `agent.status`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened.
    #[serde(with = "text")]
    pub at: Timestamp,
    /// Its details (`task_id`, `attempt`, `data`, …).
    pub data: Value,
}

impl Event {
    /// The task it is about, if any.
    pub fn task_id(&self) -> Option<TaskId> {
        self.data.get("task_id").and_then(Value::as_str).and_then(|s| s.parse().ok())
    }
}

/// Serde through `Display` and `FromStr`, for ids and timestamps.
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

mod opt_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<T: Display, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Option::<String>::deserialize(d)?.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
    }
}
