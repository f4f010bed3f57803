//! `/api/v1/quarantine`: task rows that did not decode (something other
//! than Godel wrote them), moved out of the queue with the reason.

use serde::{Deserialize, Serialize};

/// A quarantined row as listings of tasks name it.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct QuarantinedTask {
    /// The task's id as stored.
    pub id: String,
    /// Why the row did not decode.
    pub error: String,
}

/// A quarantined row in full.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct Quarantined {
    /// The task's id as stored.
    pub id: String,
    /// Why the row did not decode.
    pub error: String,
    /// The row as stored: a JSON object of its columns (SQL) or hash fields
    /// (Redis), each as the backend held it, as text.
    pub raw: String,
}

/// What a purge of the quarantine did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct QuarantinePurged {
    /// How many rows went.
    pub purged: u64,
}
