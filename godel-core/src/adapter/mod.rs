//! Adapters: one trait for every agent runtime (local processes, remote
//! workers, OpenClaw gateways, HTTP endpoints).
//!
//! An adapter opens a session for a task; the session runs it, streaming
//! output through an [`OutputSink`], and returns an [`Outcome`]. The engine
//! owns everything around that: leases, timeouts, cancels, retries and
//! events. To stop a run, the engine calls [`AgentSession::abort`] while `run`
//! is still pending (both take `&self`), then waits for `run` to return.

#[cfg(feature = "http")]
pub mod http;
pub mod noop;
#[cfg(feature = "openclaw")]
pub mod openclaw;
pub mod process;
pub mod reaper;

use std::fmt::Debug;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::output::{OutputChunk, OutputStream};
use crate::task::{Task, TaskError};

#[cfg(feature = "http")]
pub use crate::adapter::http::{HttpAdapter, HttpConfig, Price};
pub use crate::adapter::noop::NoopAdapter;
#[cfg(feature = "openclaw")]
pub use crate::adapter::openclaw::{
    DeviceIdentity, GatewayAuth, GatewayConfig, GatewaySnapshot, GatewayState, OpenclawAdapter, OpenclawRegistry,
};
pub use crate::adapter::process::{Cleanup, ProcessAdapter, ProcessConfig, WorkDir};
pub use crate::adapter::reaper::Reaped;

/// A runtime that can run tasks.
#[async_trait]
pub trait Adapter: Send + Sync + Debug + 'static {
    /// Opens a session for one attempt of `task` (spawn, connect, prepare a
    /// working directory, …). The engine calls `run` on it next.
    async fn open_session(&self, task: &Task) -> Result<Box<dyn AgentSession>, AdapterError>;

    /// Whether the runtime is reachable and willing to take work.
    async fn health(&self) -> Result<(), AdapterError>;

    /// Cleans up what the sessions of a previous process left when it died
    /// without closing them (processes, directories), and says what it did.
    /// The engine calls it once at start, before it opens any session. By
    /// default there is nothing to clean.
    async fn reap(&self) -> Vec<Reaped> {
        Vec::new()
    }
}

/// One session of an agent, running one task attempt.
#[async_trait]
pub trait AgentSession: Send + Sync {
    /// Runs the task, sending output to `output` as it comes, and says how it ended.
    async fn run(&self, task: &Task, output: OutputSink) -> Outcome;

    /// Asks a pending `run` to stop: `Graceful` lets it clean up, `Force` stops it at once.
    /// `run` then returns whatever outcome the interruption produced.
    async fn abort(&self, mode: AbortMode);

    /// Releases the session's resources once `run` has returned.
    async fn close(&self, outcome: &Outcome);
}

/// How to stop a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AbortMode {
    /// Ask politely (SIGTERM for a process group); the engine escalates after its grace period.
    Graceful,
    /// Stop now (SIGKILL for a process group).
    Force,
}

/// How a run ended.
#[derive(Clone, PartialEq, Debug)]
pub enum Outcome {
    /// The task succeeded with this result.
    Completed {
        /// What the agent produced (e.g. `{"exit_code": 0}`).
        result: Value,
    },
    /// The task failed.
    Failed {
        /// What went wrong.
        error: TaskError,
        /// Whether another attempt might succeed.
        retryable: bool,
    },
}

impl Outcome {
    /// True for `Completed`.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Completed { .. })
    }
}

/// An adapter could not open a session or answer a health check.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdapterError {
    /// What went wrong.
    pub message: String,
    /// Whether trying again later might work.
    pub retryable: bool,
}

impl AdapterError {
    /// A failure that may pass.
    pub fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }

    /// A failure that will not pass by retrying (bad configuration, bad task).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }
}

/// Where a session sends output; the engine bounds, records and publishes it.
#[derive(Clone, Debug)]
pub struct OutputSink {
    sender: mpsc::Sender<OutputChunk>,
}

impl OutputSink {
    /// A sink and the receiver the engine drains.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<OutputChunk>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Self { sender }, receiver)
    }

    /// Sends a chunk; waits if the engine is behind. Returns false once nobody listens.
    pub async fn send(&self, stream: OutputStream, data: String) -> bool {
        self.sender.send(OutputChunk { stream, data }).await.is_ok()
    }
}
