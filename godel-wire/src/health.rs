//! Health: the queue's depth and health (`/api/v1/queue/*`) and the
//! server's deep health report (`/health`).

use serde::{Deserialize, Serialize};

/// Ready tasks per priority.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize, Serialize)]
pub struct QueueDepth {
    /// Critical.
    pub critical: u64,
    /// High.
    pub high: u64,
    /// Medium.
    pub medium: u64,
    /// Low.
    pub low: u64,
    /// All.
    pub total: u64,
}

/// Agents in a queue health report.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize, Serialize)]
pub struct AgentSummary {
    /// Registered.
    pub total: u64,
    /// Idle or busy.
    pub online: u64,
    /// Free slots on online agents.
    pub free_slots: u64,
}

/// The queue's health.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct QueueHealth {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// Why it is not healthy.
    pub reasons: Vec<String>,
    /// Pending tasks (ready and scheduled).
    pub pending: u64,
    /// Pending and ready now.
    pub ready: u64,
    /// Pending with a future run time.
    pub scheduled: u64,
    /// Claimed, not started.
    pub assigned: u64,
    /// Running.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Dead-lettered.
    pub dead_letters: u64,
    /// Leases that lapsed and await the reclaim sweep.
    pub stale_leases: u64,
    /// Task rows that did not decode, held in the quarantine.
    #[serde(default)]
    pub quarantined: u64,
    /// How long the head of the queue has waited.
    pub oldest_pending_age_ms: Option<u64>,
    /// Completions on this server in the last minute.
    pub completed_last_minute: u64,
    /// Ready tasks per priority.
    pub depth: QueueDepth,
    /// Agents.
    pub agents: AgentSummary,
}

/// The store part of a health report.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct StoreHealth {
    /// `sqlite`, `memory`, …
    pub backend: String,
    /// Whether the probe succeeded.
    pub ok: bool,
    /// How long the probe took.
    pub latency_ms: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The server's deep health report.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Health {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// Server version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Whether it accepts work.
    pub ready: bool,
    /// The store probe.
    pub store: StoreHealth,
    /// The queue, when the store answered.
    pub queue: Option<QueueHealth>,
}
