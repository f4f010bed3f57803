//! What nodes sharing one store tell each other, and what they announce.
//!
//! Several servers on one PostgreSQL or Redis coordinate through the database
//! and nothing else: no home-made consensus. Two things travel between them:
//!
//! - [`ClusterMessage`]s, fire-and-forget notices carried by the backend's
//!   own channel (PostgreSQL `LISTEN/NOTIFY`, Redis pub/sub). A lost message
//!   costs latency, never correctness: dispatchers also poll, and events are
//!   a best-effort stream (the store is the record).
//! - [`Member`]s, rows in a shared registry with an expiry: the agents each
//!   node hosts and the gateway instances of the federation, so that every
//!   node can list them.
//!
//! Single-node backends (memory, SQLite) keep a registry too, and have no channel.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::InvalidInput;
use crate::event::Event;
use crate::ids::TenantId;
use crate::time::Timestamp;

/// A notice from one node to the others.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterMessage {
    /// Tasks became ready for `tenant` (an enqueue, a release, a replay, a
    /// reclaim): dispatchers should claim now rather than at their next poll.
    /// Backends send it themselves, in the transaction or script that made
    /// the tasks ready.
    Wake {
        /// Whose queue changed.
        tenant: TenantId,
    },
    /// Events raised on another node, in order, for this node's subscribers.
    /// Nodes send them in small batches to keep the channel's cost per event low.
    Events {
        /// The events, oldest first.
        events: Vec<Event>,
    },
    /// A node is listening. Engines send it when they start and every few
    /// seconds after, and relay events only while some other node does.
    Present {
        /// The sender just started: nodes already there answer at once, so
        /// that it learns of them without waiting for their next notice.
        new: bool,
    },
}

/// A message as it travels: with the id of the store handle that sent it, so
/// that a handle can drop its own echoes.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending handle (see [`NodeId`]).
    pub origin: NodeId,
    /// The message.
    #[serde(flatten)]
    pub message: ClusterMessage,
}

/// One open store handle, i.e. one node. Random per open; never persisted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub Uuid);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// The kinds of registry rows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberKind {
    /// An agent some node hosts (local process agents, connected workers, …).
    Agent,
    /// A node's live view of an OpenClaw gateway it is connected to (state,
    /// sessions, last check), announced with an expiry like agents.
    Instance,
    /// An OpenClaw gateway registered through the API: the durable record
    /// (no expiry) that every node connects to.
    Gateway,
}

impl MemberKind {
    /// The snake_case name, as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            MemberKind::Agent => "agent",
            MemberKind::Instance => "instance",
            MemberKind::Gateway => "gateway",
        }
    }
}

/// A registry row: something a node announced, alive until `expires_at`
/// unless the node renews it.
#[derive(Clone, PartialEq, Debug)]
pub struct Member {
    /// Whose it is.
    pub tenant: TenantId,
    /// What it is.
    pub kind: MemberKind,
    /// Its id, unique per (tenant, kind); 1 to 256 bytes.
    pub id: String,
    /// The node that announced it (free text: a host name, a node id).
    pub node: String,
    /// Its description, as the announcing code serializes it.
    pub doc: Value,
    /// When it was last announced.
    pub updated_at: Timestamp,
    /// After this it is no longer listed (and may be deleted).
    pub expires_at: Timestamp,
}

impl Member {
    /// Checks what a backend cannot store.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.id.is_empty() || self.id.len() > 256 {
            return Err(InvalidInput::new("member id", format!("expected 1 to 256 bytes, got {}", self.id.len())));
        }
        if self.expires_at < self.updated_at {
            return Err(InvalidInput::new("expires_at", "must not be before updated_at"));
        }
        Ok(())
    }
}
