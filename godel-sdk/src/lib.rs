//! `godel-sdk`: drive a [Godel](https://github.com/godel-rs/godel) server
//! from Rust, or embed Godel's orchestration in your own program.
//!
//! The guide, with an example for each part of the API, is
//! [`docs/sdk.md`](https://github.com/godel-rs/godel/blob/main/docs/sdk.md)
//! in the repository.
//!
//! # Features
//!
//! The default build is the client alone: HTTP (reqwest with rustls), the
//! `/events` WebSocket and the API's types from `godel-wire`. It compiles
//! no database driver.
//!
//! - `embed`: the `embed` module, to run the orchestrator in-process, with
//!   the memory and SQLite stores; `postgres`, `redis`, `openclaw` and `http`
//!   add those store backends and adapters (each implies `embed`);
//! - `worker`: the `worker` module, the remote worker runtime that
//!   `godel worker` runs.
//!
//! # Talking to a server
//!
//! [`Client`] has one method per API route, typed requests and responses,
//! and an [`Error`] that keeps the API's error code. [`Client::events`] is a
//! stream of live events that reconnects and resumes on its own.
//!
//! ```
//! use futures::StreamExt;
//! use godel_sdk::{Client, Priority, SubmitTask, TaskStatus};
//!
//! # async fn example(url: String, key: String) -> Result<(), godel_sdk::Error> {
//! let client = Client::new("http://127.0.0.1:7373")?.with_api_key("gdl_…")?;
//! # let client = Client::new(&url)?.with_api_key(&key)?;
//! let mut events = client.events(&["task.*"]);
//! events.subscribed().await?; // listen before submitting
//! let task = client.submit(&SubmitTask::command(["echo", "hello"]).priority(Priority::High)).await?;
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     if event.task_id() == Some(task.id) && event.kind == "task.completed" {
//!         break;
//!     }
//! }
//! let task = client.task(task.id).await?;
//! assert_eq!(task.status, TaskStatus::Completed);
//! # Ok(()) }
//! # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/doc_server.rs"));
//! # fn main() { serve(example) }
//! ```
//!
//! # Embedding
//!
//! With the `embed` feature, `embed` re-exports what a program needs to run
//! the orchestrator in-process: the store, the engine, adapters and events.
//!
//! ```
//! # #[cfg(feature = "embed")] {
//! use std::sync::Arc;
//! use godel_sdk::embed::{store, AgentConfig, AgentId, AgentKind, CancellationToken, NewTask, NoopAdapter, Orchestrator};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = store::open("memory://").await?;
//! let agent = AgentConfig::new(AgentId::new("worker-1")?, AgentKind::Process, Arc::new(NoopAdapter));
//! let orchestrator = Orchestrator::builder(store).agent(agent).build()?;
//! let shutdown = CancellationToken::new();
//! let engine = tokio::spawn({
//!     let (o, s) = (orchestrator.clone(), shutdown.clone());
//!     async move { o.run(s).await }
//! });
//! let task = orchestrator.submit(NewTask::prompt("hello")).await?;
//! while !orchestrator.get(task.id).await?.status.is_terminal() {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! shutdown.cancel();
//! engine.await??;
//! # Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! # }).unwrap();
//! # }
//! ```

mod client;
mod error;
mod events;
mod tls;
#[cfg(feature = "worker")]
pub mod worker;

pub use crate::client::{Client, ClientOptions, DEFAULT_SERVER, ListAudit, ListSessions, ListTasks};
pub use crate::error::{Error, ErrorCode, Result};
pub use crate::events::EventStream;
pub use crate::tls::TlsOptions;
/// The API's shapes, shared with the server through `godel-wire`.
pub use godel_wire::{
    Agent, AgentKind, AgentStatus, AgentSummary, AuditEntry, AuditOutcome, CancelOutcome, Cancelled, CreateKey,
    CreatedKey, Event, Health, Instance, InstanceHealth, KeyId, KeyView, Page, Priority, QuarantinePurged, Quarantined,
    QuarantinedTask, QueueDepth, QueueHealth, RegisterAgent, RegisterInstance, Role, RotatedKey, Session, SessionId,
    SessionState, StoreHealth, SubmitTask, Task, TaskError, TaskErrorKind, TaskEvent, TaskId, TaskStatus, Timestamp,
};

/// Everything a program needs to run Godel in-process (feature `embed`).
#[cfg(feature = "embed")]
pub mod embed {
    pub use godel_core::adapter::{
        self, AbortMode, Adapter, AdapterError, AgentSession, NoopAdapter, Outcome, OutputSink, ProcessAdapter,
        ProcessConfig, WorkDir,
    };
    pub use godel_core::event::{self, EventKind, OutputStream};
    pub use godel_core::store::{self, Store, StoreError};
    pub use godel_core::{
        AgentConfig, AgentId, AgentKind, AgentStatus, Backoff, CancellationToken, Clock, EngineConfig, EngineError,
        EventBus, EventPattern, InvalidInput, ManualClock, NewTask, Orchestrator, Priority, Published,
        SchedulingPolicy, SessionId, SessionState, Subscription, SystemClock, Task, TaskError, TaskErrorKind, TaskId,
        TaskPayload, TaskStatus, TenantId, Timestamp,
    };
}

// The guide and the README are documentation outside this file; including
// them here, only when rustdoc collects doctests, runs their examples with
// `cargo test --doc` (and keeps the package building without `docs/`).
#[cfg(doctest)]
#[doc = include_str!("../../docs/sdk.md")]
pub struct SdkGuide;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct Readme;
