//! Tasks: the body of `POST /tasks` and `POST /tasks/batch`, a task as the
//! API shows it, a page of a listing, the answer to a cancel, and a task's
//! history.

use std::time::Duration;

use godel_core::{Priority, TaskError, TaskId, TaskStatus, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A task as the server reports it.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Task {
    /// Its id.
    #[serde(with = "crate::text")]
    pub id: TaskId,
    /// How urgent it is.
    pub priority: Priority,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// The prompt, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, with = "crate::text::opt")]
    pub parent_id: Option<TaskId>,
    /// How many times it has been claimed.
    pub attempt: u32,
    /// How many claims it may have.
    pub max_attempts: u32,
    /// Per-attempt timeout in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Not claimable before this time.
    #[serde(with = "crate::text")]
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
    #[serde(with = "crate::text")]
    pub created_at: Timestamp,
    /// When it last changed.
    #[serde(with = "crate::text")]
    pub updated_at: Timestamp,
    /// When its latest attempt started.
    #[serde(default, with = "crate::text::opt")]
    pub started_at: Option<Timestamp>,
    /// When it finished.
    #[serde(default, with = "crate::text::opt")]
    pub completed_at: Option<Timestamp>,
    /// When it was dead-lettered.
    #[serde(default, with = "crate::text::opt")]
    pub dead_lettered_at: Option<Timestamp>,
}

impl Task {
    /// A pending task with nothing else set, as the server would first show
    /// it; the server fills in the rest from its record.
    pub fn new(id: TaskId, priority: Priority, status: TaskStatus, at: Timestamp) -> Self {
        Self {
            id,
            priority,
            status,
            prompt: None,
            command: None,
            metadata: Map::new(),
            capabilities: Vec::new(),
            affinity_key: None,
            idempotency_key: None,
            parent_id: None,
            attempt: 0,
            max_attempts: 1,
            timeout_ms: None,
            run_at: at,
            agent_id: None,
            cancel_requested: false,
            result: None,
            error: None,
            created_at: at,
            updated_at: at,
            started_at: None,
            completed_at: None,
            dead_lettered_at: None,
        }
    }
}

/// A task to submit: the body of `POST /api/v1/tasks`. Build it with
/// [`SubmitTask::prompt`] or [`SubmitTask::command`].
///
/// The server refuses fields it does not know, naming them.
#[derive(Clone, PartialEq, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SubmitTask {
    /// Text for an agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A command to run as-is (argv, no shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// How urgent it is (server default `medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Capabilities an agent needs to run it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Tasks with one key prefer the same agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_key: Option<String>,
    /// Submitting again with this key returns the first task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The parent task's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// How many claims it may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in milliseconds (positive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Not claimable before this time (RFC 3339); excludes `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Not claimable before this many milliseconds from receipt; excludes `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Free-form data adapters may read.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
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
        self.timeout_ms = Some(millis(timeout));
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
        self.delay_ms = Some(millis(delay));
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

/// The body of `POST /api/v1/tasks/batch`: tasks created in one transaction.
#[derive(Clone, PartialEq, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch<T = SubmitTask> {
    /// The tasks, 1 to 1000. The answer is the same shape, with [`Task`]s.
    pub tasks: Vec<T>,
}

/// One page of a listing.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass it as `cursor` to get the next page; `None` on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// Task listings only: rows in this page's range that did not decode and
    /// were moved to the quarantine instead of being listed. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<crate::quarantine::QuarantinedTask>,
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
    #[serde(with = "crate::text")]
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
