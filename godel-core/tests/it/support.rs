//! What several suites share.

use std::time::Duration;

use godel_core::{Backoff, EngineConfig};

/// Engine settings that keep every wait in the suites well under a second.
pub(crate) fn fast_engine() -> EngineConfig {
    EngineConfig {
        lease: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(200),
        poll_interval: Duration::from_millis(50),
        reclaim_interval: Duration::from_millis(100),
        backoff: Backoff {
            initial: Duration::from_millis(20),
            multiplier: 2.0,
            max: Duration::from_millis(100),
            jitter: 0.0,
        },
        kill_grace: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(5),
        agent_health_interval: Duration::from_millis(50),
        ..EngineConfig::default()
    }
}
