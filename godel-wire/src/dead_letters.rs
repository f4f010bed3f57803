//! Dead letters: the body of `POST /api/v1/dead-letters/replay` and its
//! answer. A dead-lettered task is a [`crate::Task`]; a listing of them is a
//! [`crate::Page`].

use godel_core::Priority;
use serde::{Deserialize, Serialize};

/// Which dead-lettered tasks to replay; the default replays them all.
#[derive(Clone, PartialEq, Eq, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayDeadLetters {
    /// Only these priorities; all if empty.
    #[serde(default)]
    pub priority: Vec<Priority>,
    /// Only tasks last held by this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Only tasks created at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<String>,
    /// Only tasks created before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<String>,
}

/// How many tasks a bulk replay sent back to pending.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct Replayed {
    /// The count.
    pub replayed: u64,
}
