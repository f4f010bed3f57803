//! The audit log as `GET /api/v1/audit` shows it: one entry per mutating
//! or refused request, newest first.

use godel_core::{AuditOutcome, Role, Timestamp};
use serde::{Deserialize, Serialize};

/// One audit entry.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct AuditEntry {
    /// Order of appending in the store.
    pub seq: u64,
    /// When the request arrived.
    #[serde(with = "crate::text")]
    pub at: Timestamp,
    /// The key id or JWT subject that made it; `null` without a valid credential.
    #[serde(default)]
    pub credential: Option<String>,
    /// The tenant it acted as.
    pub tenant: String,
    /// The credential's role.
    #[serde(default)]
    pub role: Option<Role>,
    /// What was asked: `tasks.create`, `keys.revoke`, `auth.failed`, …
    pub action: String,
    /// What it was asked of: a task id, a key id, a gateway name.
    #[serde(default)]
    pub target: Option<String>,
    /// `allowed`, `denied` or `failed`.
    pub outcome: AuditOutcome,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The request's id (the `x-request-id` response header).
    pub request_id: String,
    /// The peer's IP address.
    pub source: String,
}
