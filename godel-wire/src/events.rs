//! The `/events` WebSocket: the frames a client sends ([`ClientFrame`]),
//! the control frames the server answers with ([`Control`]), and the event
//! envelope ([`Event`]). Every server frame has a `type`; an event's is its
//! kind (`task.completed`, …), which is how [`ServerMessage`] tells them
//! apart from control frames.

use godel_core::{TaskId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a client sends on `/events`.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Adds patterns (`*`, `task.*`, `task.completed`); the server answers `subscribed`.
    Subscribe {
        /// The patterns.
        patterns: Vec<String>,
    },
    /// Removes patterns.
    Unsubscribe {
        /// The patterns.
        patterns: Vec<String>,
    },
    /// Asks for a `pong`.
    Ping,
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
    #[serde(with = "crate::text")]
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

/// A frame from the server that is not an event.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// First on every connection.
    Welcome {
        /// The last sequence number published when the connection opened.
        seq: u64,
        /// This server run; sequence numbers start over with a new one.
        epoch: String,
        /// How many recent events the server keeps for `since`.
        #[serde(default)]
        replay_window: u64,
    },
    /// The patterns now subscribed to.
    Subscribed {
        /// All of them, after the change.
        patterns: Vec<String>,
    },
    /// The answer to `ping`.
    Pong {
        /// The last sequence number published.
        seq: u64,
    },
    /// This connection fell behind and skipped events; reconnecting with
    /// `since` recovers them from the replay window.
    Lagged {
        /// How many.
        missed: u64,
        /// What to do.
        message: String,
    },
    /// The events after `since` are no longer kept (or the server restarted).
    ReplayUnavailable {
        /// Where the client asked to resume.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The oldest sequence number still kept, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oldest: Option<u64>,
        /// What happened and what to do.
        message: String,
    },
    /// A frame the server could not accept.
    Error {
        /// `invalid_request`, …
        code: String,
        /// What was wrong.
        message: String,
    },
}

/// Anything the server sends on `/events`.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ServerMessage {
    /// A control frame.
    Control(Control),
    /// An event.
    Event(Event),
}
