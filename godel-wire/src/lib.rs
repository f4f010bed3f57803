//! `godel-wire`: every shape that crosses the network between a Godel server
//! and its clients, defined once and shared by the server, the SDK and the
//! OpenAPI test.
//!
//! - [`tasks`], [`dead_letters`], [`agents`], [`sessions`], [`instances`],
//!   [`keys`], [`audit`], [`quarantine`], [`health`] and [`error`]: the REST API's request
//!   and response bodies;
//! - [`events`]: what goes over `/events` (the event envelope, the
//!   subscribe frames a client sends and the control frames it receives);
//! - [`worker`]: the frames of the remote worker protocol on
//!   `/api/v1/workers/connect`.
//!
//! Value types (ids, priorities, statuses, timestamps) are godel-core's,
//! which this crate uses without any backend or adapter feature. Ids and
//! timestamps go over the wire as text (`Display` and `FromStr`).
//!
//! Responses accept fields they do not know, so that a newer server does not
//! break an older client. Requests refuse unknown fields, so that the server
//! can name the field it did not expect.

pub mod agents;
pub mod audit;
pub mod dead_letters;
pub mod error;
pub mod events;
pub mod health;
pub mod instances;
pub mod keys;
pub mod quarantine;
pub mod sessions;
pub mod tasks;
pub mod worker;

mod text;

pub use crate::agents::{Agent, RegisterAgent};
pub use crate::audit::AuditEntry;
pub use crate::dead_letters::{ReplayDeadLetters, Replayed};
pub use crate::error::{ErrorBody, ErrorEnvelope};
pub use crate::events::{ClientFrame, Control, Event, ServerMessage};
pub use crate::health::{AgentSummary, Health, QueueDepth, QueueHealth, StoreHealth};
pub use crate::instances::{Instance, InstanceHealth, RegisterInstance};
pub use crate::keys::{CreateKey, CreatedKey, KeyView, RotateKey, RotatedKey};
pub use crate::quarantine::{QuarantinePurged, Quarantined, QuarantinedTask};
pub use crate::sessions::Session;
pub use crate::tasks::{CancelOutcome, Cancelled, Page, SubmitBatch, SubmitTask, Task, TaskEvent};
pub use godel_core::{
    AgentKind, AgentStatus, AuditOutcome, KeyId, Priority, Role, SessionId, SessionState, TaskError, TaskErrorKind,
    TaskId, TaskStatus, Timestamp,
};
