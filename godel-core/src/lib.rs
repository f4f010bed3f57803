//! Godel's core library: the domain (tasks, agents, sessions, events), the
//! durable task store with its backends, the engine that dispatches tasks to
//! agents, and the agent adapters.
//!
//! Everything here is usable without a server: a program opens a store with
//! [`store::open`], builds an [`Orchestrator`] over it with some agents, and
//! runs it. The crate knows nothing of
//! HTTP, command-line parsing or JSON wire shapes; those live in the server,
//! the CLI and the SDK.
//!
//! # Layers
//!
//! Imports point downward only, which `.ci/layers` checks:
//!
//! 1. plain values at the bottom: [`ids`], [`time`], [`money`], [`output`],
//!    [`task`], [`agent`], [`session`], [`event`], [`retry`], [`clock`],
//!    [`credential`];
//! 2. above them, side by side and never importing one another: the
//!    [`store`], the [`adapter`]s and the event [`bus`];
//! 3. the [`engine`] on top, which wires the other three together.
//!
//! Cargo features pick the store backends (`sqlite`, `postgres`, `redis`)
//! and the network adapters (`openclaw`, `http`); all are on by default.

pub mod adapter;
pub mod agent;
pub mod bus;
pub mod clock;
pub mod credential;
pub mod engine;
pub mod event;
pub mod ids;
pub mod money;
pub mod output;
pub mod retry;
pub mod session;
pub mod store;
pub mod task;
pub mod time;

pub use crate::adapter::{Adapter, AgentSession, NoopAdapter, Outcome, ProcessAdapter, ProcessConfig};
pub use crate::agent::{Agent, AgentKind, AgentStatus};
pub use crate::bus::{EventBus, Published, ReplayGone, Subscription};
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::credential::{ApiKey, AuditEntry, AuditOutcome, AuditQuery, KeyHash, Role};
pub use crate::engine::{
    AgentConfig, CancellationToken, ClusterAgent, EngineConfig, EngineError, Orchestrator, SchedulingPolicy,
    TenantScope,
};
pub use crate::event::{Event, EventKind, EventPattern};
pub use crate::ids::{AgentId, KeyId, LeaseToken, SessionId, TaskId, TenantId};
pub use crate::money::Micros;
pub use crate::output::{OutputChunk, OutputStream};
pub use crate::retry::Backoff;
pub use crate::session::{Session, SessionState};
pub use crate::store::{Store, StoreError};
pub use crate::task::{NewTask, Priority, Task, TaskError, TaskErrorKind, TaskPayload, TaskStatus};
pub use crate::time::Timestamp;

/// A value from outside (an API body, a CLI flag, a config key) that failed
/// validation: names the field and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// The field or argument that was wrong, e.g. `max_attempts`.
    pub field: &'static str,
    /// What was expected, in words.
    pub reason: String,
}

impl InvalidInput {
    /// Builds an error for `field` with the given explanation.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}
