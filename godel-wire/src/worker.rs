//! The remote worker protocol on `/api/v1/workers/connect`: JSON text
//! frames told apart by `type` (docs/workers.md).
//!
//! - worker → server ([`WorkerFrame`]): `hello` (first: name, capabilities,
//!   concurrency, and the runs it still has after a reconnect), `output`,
//!   `finished`, `drain` (it wants to stop), `bye` (it is leaving for good);
//! - server → worker ([`ServerFrame`]): `welcome`, `assign`, `abort`,
//!   `drain` (finish what you have, take nothing new, then leave), `error`.

use godel_core::adapter::Outcome;
use godel_core::event::OutputStream;
use godel_core::{Priority, TaskError, TaskId, TaskPayload};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A run as both sides name it: a task's attempt.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[serde(deny_unknown_fields)]
pub struct RunRef {
    /// The task.
    pub task: TaskId,
    /// Its attempt.
    pub attempt: u32,
}

/// What a worker sends. The server refuses fields it does not know.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerFrame {
    /// The first frame, within 10 s of connecting.
    Hello {
        /// Its agent id.
        name: String,
        /// What it can do.
        #[serde(default)]
        capabilities: Vec<String>,
        /// How many tasks it runs at once.
        concurrency: u32,
        /// Where it runs.
        #[serde(default)]
        region: Option<String>,
        /// Its version.
        version: String,
        /// Runs it still has, after a reconnect.
        #[serde(default)]
        running: Vec<RunRef>,
        /// The session secret of its previous connection, from that
        /// connection's `welcome`: reattaching to waiting runs needs it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// A piece of a run's output.
    Output {
        /// The task.
        task: TaskId,
        /// Its attempt.
        attempt: u32,
        /// Which stream.
        stream: OutputStream,
        /// The text.
        data: String,
    },
    /// A run ended.
    Finished {
        /// The task.
        task: TaskId,
        /// Its attempt.
        attempt: u32,
        /// How it ended.
        outcome: RunOutcome,
    },
    /// The worker is draining: it takes nothing new.
    Drain,
    /// The worker is leaving for good.
    Bye,
}

/// How a run ended, on the wire.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunOutcome {
    /// It succeeded with this result.
    Completed {
        /// What the run produced.
        result: Value,
    },
    /// It failed.
    Failed {
        /// What went wrong.
        error: TaskError,
        /// Whether another attempt might succeed.
        retryable: bool,
    },
}

impl From<RunOutcome> for Outcome {
    fn from(outcome: RunOutcome) -> Self {
        match outcome {
            RunOutcome::Completed { result } => Outcome::Completed { result },
            RunOutcome::Failed { error, retryable } => Outcome::Failed { error, retryable },
        }
    }
}

impl From<&Outcome> for RunOutcome {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Completed { result } => RunOutcome::Completed { result: result.clone() },
            Outcome::Failed { error, retryable } => RunOutcome::Failed { error: error.clone(), retryable: *retryable },
        }
    }
}

/// What the server sends a worker.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to `hello`: the worker is registered.
    Welcome {
        /// Its agent id.
        agent: String,
        /// How often the server pings; the worker pings as often.
        heartbeat_ms: u64,
        /// How long the server keeps the worker's runs after losing it.
        #[serde(default)]
        grace_ms: u64,
        /// This connection's session secret: a worker that loses the
        /// connection presents it in its next `hello` to take its runs back.
        /// Keep it like a password.
        #[serde(default)]
        session: String,
    },
    /// Run this task now.
    Assign {
        /// What to run.
        task: Assignment,
    },
    /// Stop a run.
    Abort {
        /// The task.
        task: TaskId,
        /// Its attempt.
        attempt: u32,
        /// How hard.
        mode: AbortMode,
    },
    /// Finish what you have, take nothing new, then leave.
    Drain,
    /// A refusal (of `hello`) or a complaint about a frame.
    Error {
        /// `invalid_request`, `forbidden` or `conflict`.
        code: String,
        /// What was wrong.
        message: String,
    },
}

/// A task as a worker receives it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Assignment {
    /// The task.
    pub id: TaskId,
    /// Its attempt.
    pub attempt: u32,
    /// How urgent it is.
    pub priority: Priority,
    /// What to run.
    pub payload: TaskPayload,
    /// The capabilities it asked for.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The attempt's timeout in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// How hard an abort is.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum AbortMode {
    /// Ask the run to stop, then force it after a grace period.
    Graceful,
    /// Stop it now.
    Force,
}

impl From<godel_core::adapter::AbortMode> for AbortMode {
    fn from(mode: godel_core::adapter::AbortMode) -> Self {
        match mode {
            godel_core::adapter::AbortMode::Graceful => AbortMode::Graceful,
            godel_core::adapter::AbortMode::Force => AbortMode::Force,
        }
    }
}

impl From<AbortMode> for godel_core::adapter::AbortMode {
    fn from(mode: AbortMode) -> Self {
        match mode {
            AbortMode::Graceful => godel_core::adapter::AbortMode::Graceful,
            AbortMode::Force => godel_core::adapter::AbortMode::Force,
        }
    }
}
