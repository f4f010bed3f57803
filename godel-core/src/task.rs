//! Tasks: what users submit, and the record the store keeps of each one.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::InvalidInput;
use crate::ids::{AgentId, TaskId, TenantId};
use crate::time::Timestamp;

/// How urgent a task is. All ready `Critical` tasks are claimed before any
/// `High`, and so on (rule 2 of the store contract).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Claimed before everything else.
    Critical,
    /// Claimed before `Medium` and `Low`.
    High,
    /// The default.
    #[default]
    Medium,
    /// Claimed when nothing else is ready.
    Low,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Medium, Priority::Low];

    /// 0 for `Critical` up to 3 for `Low`; backends sort on this.
    pub const fn rank(self) -> u8 {
        self as u8
    }

    /// The inverse of [`Priority::rank`].
    pub fn from_rank(rank: u8) -> Option<Priority> {
        Self::ALL.get(usize::from(rank)).copied()
    }

    /// The lowercase name used on the wire and in the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            InvalidInput::new("priority", format!("expected one of critical, high, medium, low; got {s:?}"))
        })
    }
}

/// Where a task is in its life. See the design for the transitions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting to be claimed, possibly not before its `run_at`.
    Pending,
    /// Claimed under a lease; the holder has not started it yet.
    Assigned,
    /// The lease holder is running it.
    Running,
    /// Finished successfully. Terminal.
    Completed,
    /// Failed with an error that retrying would not fix. Terminal.
    Failed,
    /// Cancelled by a user. Terminal.
    Cancelled,
    /// Failed on every allowed attempt; waits for a replay. Terminal.
    DeadLetter,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Assigned,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::DeadLetter,
    ];

    /// The statuses a task never leaves on its own.
    pub const TERMINAL: [TaskStatus; 4] =
        [TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled, TaskStatus::DeadLetter];

    /// The snake_case name used in storage, on the wire and in the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Assigned => "assigned",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::DeadLetter => "dead_letter",
        }
    }

    /// True for completed, failed, cancelled and dead_letter.
    pub const fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::DeadLetter)
    }

    /// True while a lease holder owns the task (assigned or running).
    pub const fn is_leased(self) -> bool {
        matches!(self, TaskStatus::Assigned | TaskStatus::Running)
    }

    /// Position in [`TaskStatus::ALL`], for per-status arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            InvalidInput::new(
                "status",
                format!(
                    "expected one of pending, assigned, running, completed, failed, cancelled, dead_letter; got {s:?}"
                ),
            )
        })
    }
}

/// What a task asks an agent to do: a prompt, a command (argv, never a shell
/// line), or both, plus free-form extras that adapters may read.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct TaskPayload {
    /// Text for an agent, substituted into its command template or sent to a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A command to run as-is: `argv[0]` is the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Anything else the submitter wants an adapter to see.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TaskPayload {
    /// Checks that there is something to run, and that no text in it holds
    /// a NUL byte (a process cannot take one in its argv, and PostgreSQL
    /// cannot store one in text or JSON).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        match (&self.prompt, &self.command) {
            (None, None) => return Err(InvalidInput::new("payload", "expected a prompt, a command or both")),
            (_, Some(argv)) if argv.is_empty() || argv[0].is_empty() => {
                return Err(InvalidInput::new(
                    "command",
                    "expected a non-empty argv whose first element is the program",
                ));
            }
            _ => {}
        }
        if let Some(prompt) = &self.prompt {
            validate_text("prompt", prompt)?;
        }
        for arg in self.command.iter().flatten() {
            validate_text("command", arg)?;
        }
        for (key, value) in &self.extra {
            validate_text("metadata", key)?;
            validate_json("metadata", value)?;
        }
        Ok(())
    }
}

/// A task as submitted, before the store has given it an id.
#[derive(Clone, PartialEq, Debug)]
pub struct NewTask {
    /// How urgent it is.
    pub priority: Priority,
    /// What to run.
    pub payload: TaskPayload,
    /// Capabilities an agent must all have to claim it (sorted, deduplicated by [`NewTask::validate`]).
    pub capabilities: Vec<String>,
    /// Tasks with the same key prefer the agent that ran the previous one.
    pub affinity_key: Option<String>,
    /// Submitting twice with one key (per tenant) returns the first task.
    pub idempotency_key: Option<String>,
    /// The task that spawned this one, if any.
    pub parent: Option<TaskId>,
    /// How many times it may be claimed before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// How long one attempt may run; `None` uses the agent's default.
    pub timeout: Option<Duration>,
    /// Not claimable before this instant; `None` means at once.
    pub run_at: Option<Timestamp>,
}

/// Attempts a task gets unless the submitter says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Upper bound on `max_attempts`, to catch typos like `30000`.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1_000;

/// Longest per-attempt timeout a task (or an agent's default) may set: 30 days.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 60 * 60);

impl NewTask {
    /// A task that sends `prompt` to an agent.
    pub fn prompt(prompt: impl Into<String>) -> Self {
        Self::with_payload(TaskPayload { prompt: Some(prompt.into()), ..TaskPayload::default() })
    }

    /// A task that runs `argv` (no shell).
    pub fn command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_payload(TaskPayload {
            command: Some(argv.into_iter().map(Into::into).collect()),
            ..TaskPayload::default()
        })
    }

    /// A task with the given payload and default settings.
    pub fn with_payload(payload: TaskPayload) -> Self {
        Self {
            priority: Priority::default(),
            payload,
            capabilities: Vec::new(),
            affinity_key: None,
            idempotency_key: None,
            parent: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: None,
            run_at: None,
        }
    }

    /// Sets the priority.
    #[must_use]
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Adds a required capability.
    #[must_use]
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the affinity key.
    #[must_use]
    pub fn affinity_key(mut self, key: impl Into<String>) -> Self {
        self.affinity_key = Some(key.into());
        self
    }

    /// Sets the number of attempts.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Schedules the task for `at`.
    #[must_use]
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Sets the parent task.
    #[must_use]
    pub fn parent(mut self, parent: TaskId) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Checks every field and normalises capabilities (sorted, deduplicated).
    /// Stores call this on every enqueue.
    pub fn validate(&mut self) -> Result<(), InvalidInput> {
        self.payload.validate()?;
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(InvalidInput::new(
                "max_attempts",
                format!("expected 1 to {MAX_ATTEMPTS_LIMIT}, got {}", self.max_attempts),
            ));
        }
        if let Some(timeout) = self.timeout {
            validate_timeout("timeout", timeout)?;
        }
        if let Some(at) = self.run_at
            && !(Timestamp::EPOCH..=Timestamp::MAX).contains(&at)
        {
            return Err(InvalidInput::new(
                "run_at",
                format!("expected a time from {} to {}, got {at}", Timestamp::EPOCH, Timestamp::MAX),
            ));
        }
        for cap in &self.capabilities {
            validate_capability(cap)?;
        }
        self.capabilities.sort();
        self.capabilities.dedup();
        for (field, key) in [("idempotency_key", &self.idempotency_key), ("affinity_key", &self.affinity_key)] {
            if let Some(key) = key {
                if key.is_empty() || key.len() > 256 {
                    return Err(InvalidInput::new(field, format!("expected 1 to 256 bytes, got {}", key.len())));
                }
                validate_text(field, key)?;
            }
        }
        Ok(())
    }
}

/// Refuses text holding a NUL byte: no backend may store what another
/// refuses (PostgreSQL cannot keep one in `text` or `jsonb`), and no process
/// can take one in its argv.
pub fn validate_text(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    if value.contains('\0') {
        return Err(InvalidInput::new(field, "expected text without NUL bytes (\\u0000)"));
    }
    Ok(())
}

/// [`validate_text`] for every string and object key inside a JSON value.
pub fn validate_json(field: &'static str, value: &Value) -> Result<(), InvalidInput> {
    match value {
        Value::String(s) => validate_text(field, s),
        Value::Array(items) => items.iter().try_for_each(|v| validate_json(field, v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            validate_text(field, k)?;
            validate_json(field, v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Checks a timeout: more than zero and at most [`MAX_TIMEOUT`].
pub fn validate_timeout(field: &'static str, timeout: Duration) -> Result<(), InvalidInput> {
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(InvalidInput::new(
            field,
            format!("expected 1 ms to {} ms, got {} ms", MAX_TIMEOUT.as_millis(), timeout.as_millis()),
        ));
    }
    Ok(())
}

/// Checks one capability name: 1 to 64 characters, no whitespace or control characters.
pub fn validate_capability(cap: &str) -> Result<(), InvalidInput> {
    if cap.is_empty() || cap.len() > 64 || cap.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidInput::new(
            "capability",
            format!("expected 1 to 64 characters without whitespace, got {cap:?}"),
        ));
    }
    Ok(())
}

/// Why an attempt failed, as recorded on the task.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskErrorKind {
    /// The agent reported a failure (non-zero exit, an API error, ...).
    Error,
    /// The attempt ran past its deadline and was aborted.
    Timeout,
    /// The lease lapsed: the engine holding it crashed or lost its store.
    LeaseExpired,
    /// The attempt was aborted (cancel, shutdown).
    Aborted,
}

/// The error of a task's latest failed attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TaskError {
    /// What kind of failure it was.
    pub kind: TaskErrorKind,
    /// Human-readable detail, e.g. the exit code and the tail of stderr.
    pub message: String,
}

impl TaskError {
    /// Builds an error.
    pub fn new(kind: TaskErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// A task as the store keeps it.
#[derive(Clone, PartialEq, Debug)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// Its owner.
    pub tenant: TenantId,
    /// How urgent it is.
    pub priority: Priority,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// What to run.
    pub payload: TaskPayload,
    /// Required capabilities, sorted.
    pub capabilities: Vec<String>,
    /// Affinity key, if any.
    pub affinity_key: Option<String>,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Parent task, if any.
    pub parent: Option<TaskId>,
    /// How many times it has been claimed (the current attempt while leased).
    pub attempt: u32,
    /// How many claims it may have in all.
    pub max_attempts: u32,
    /// Per-attempt timeout, if set.
    pub timeout: Option<Duration>,
    /// Not claimable before this instant.
    pub run_at: Timestamp,
    /// The agent that holds or last held it.
    pub agent: Option<AgentId>,
    /// When the current lease lapses (while assigned or running).
    pub lease_expires_at: Option<Timestamp>,
    /// Set when a user cancelled it while it was leased; the holder sees it on its next heartbeat.
    pub cancel_requested: bool,
    /// What the agent returned, once completed.
    pub result: Option<Value>,
    /// The latest attempt's error, if it failed.
    pub error: Option<TaskError>,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When the store last changed it.
    pub updated_at: Timestamp,
    /// When the current or last attempt started running.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal status.
    pub completed_at: Option<Timestamp>,
    /// When it was dead-lettered.
    pub dead_lettered_at: Option<Timestamp>,
}

impl Task {
    /// A task as first stored: pending, never claimed, ready at its `run_at` (or `now`).
    pub fn pending(id: TaskId, tenant: TenantId, new: NewTask, now: Timestamp) -> Self {
        Self {
            id,
            tenant,
            priority: new.priority,
            status: TaskStatus::Pending,
            payload: new.payload,
            capabilities: new.capabilities,
            affinity_key: new.affinity_key,
            idempotency_key: new.idempotency_key,
            parent: new.parent,
            attempt: 0,
            max_attempts: new.max_attempts,
            timeout: new.timeout,
            run_at: new.run_at.unwrap_or(now),
            agent: None,
            lease_expires_at: None,
            cancel_requested: false,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            dead_lettered_at: None,
        }
    }

    /// True if it is pending and its `run_at` has come.
    pub fn is_ready(&self, now: Timestamp) -> bool {
        self.status == TaskStatus::Pending && self.run_at <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_and_order() {
        assert_eq!("high".parse::<Priority>().unwrap(), Priority::High);
        assert_eq!("urgent".parse::<Priority>().unwrap_err().field, "priority");
        assert!(Priority::Critical < Priority::Low);
        for p in Priority::ALL {
            assert_eq!(Priority::from_rank(p.rank()), Some(p));
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
            assert_eq!(TaskStatus::ALL[s.index()], s);
        }
        assert!(TaskStatus::DeadLetter.is_terminal());
        assert!(!TaskStatus::Running.is_terminal());
    }

    #[test]
    fn validation_names_the_field() {
        let mut t = NewTask::prompt("hi").max_attempts(0);
        assert_eq!(t.validate().unwrap_err().field, "max_attempts");
        let mut t = NewTask::command(Vec::<String>::new());
        assert_eq!(t.validate().unwrap_err().field, "command");
        let mut t = NewTask::with_payload(TaskPayload::default());
        assert_eq!(t.validate().unwrap_err().field, "payload");
        let mut t = NewTask::prompt("hi").capability("has space");
        assert_eq!(t.validate().unwrap_err().field, "capability");
        let mut t = NewTask::prompt("hi").capability("rust").capability("git").capability("rust");
        t.validate().unwrap();
        assert_eq!(t.capabilities, ["git", "rust"]);
    }

    #[test]
    fn text_with_nul_is_refused_wherever_it_is() {
        let field = |mut t: NewTask| t.validate().unwrap_err().field;
        assert_eq!(field(NewTask::prompt("a\0b")), "prompt");
        assert_eq!(field(NewTask::command(["echo", "a\0b"])), "command");
        assert_eq!(field(NewTask::prompt("hi").idempotency_key("k\0")), "idempotency_key");
        assert_eq!(field(NewTask::prompt("hi").affinity_key("k\0")), "affinity_key");
        assert_eq!(field(NewTask::prompt("hi").capability("a\0")), "capability");
        let mut payload = TaskPayload { prompt: Some("hi".into()), ..TaskPayload::default() };
        payload.extra.insert("deep".into(), serde_json::json!({"list": [1, {"x": "a\0"}]}));
        assert_eq!(field(NewTask::with_payload(payload.clone())), "metadata");
        payload.extra.clear();
        payload.extra.insert("k\0".into(), Value::Null);
        assert_eq!(field(NewTask::with_payload(payload)), "metadata");
    }

    #[test]
    fn times_and_durations_stay_in_range() {
        let field = |mut t: NewTask| t.validate().unwrap_err().field;
        assert_eq!(field(NewTask::prompt("hi").timeout(MAX_TIMEOUT + Duration::from_millis(1))), "timeout");
        assert_eq!(field(NewTask::prompt("hi").timeout(Duration::ZERO)), "timeout");
        let past_9999 = Timestamp::from_millis(Timestamp::MAX.as_millis() + 1);
        assert_eq!(field(NewTask::prompt("hi").run_at(past_9999)), "run_at");
        assert_eq!(field(NewTask::prompt("hi").run_at(Timestamp::from_millis(-1))), "run_at");
        NewTask::prompt("hi").timeout(MAX_TIMEOUT).run_at(Timestamp::MAX).validate().unwrap();
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
    }
}
