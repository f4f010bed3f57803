//! Reaping at start: before it opens any session, the engine asks each of
//! its agents' adapters to clean up what the previous process left running
//! when it died (for local processes: their process groups, directories and
//! worktrees; see `adapter/reaper.rs`), logs each thing reaped and publishes
//! one `system.reaped` event that lists them.

use std::sync::Arc;

use crate::adapter::Adapter;
use crate::engine::Orchestrator;
use crate::event::EventKind;

impl Orchestrator {
    /// Reaps what the previous process's sessions left behind; returns how many runs.
    pub(crate) async fn reap_orphans(&self) -> usize {
        let inner = &self.inner;
        let mut adapters: Vec<Arc<dyn Adapter>> = Vec::new();
        for agent in &inner.lock_scheduler().agents {
            // Agents often share one adapter: ask it once.
            if !adapters.iter().any(|a| Arc::ptr_eq(a, &agent.config.adapter)) {
                adapters.push(agent.config.adapter.clone());
            }
        }
        let mut lines = Vec::new();
        for adapter in adapters {
            for reaped in adapter.reap().await {
                tracing::warn!(%reaped, "reaped a run left by a previous process");
                lines.push(reaped.to_string());
            }
        }
        if !lines.is_empty() {
            inner.publish(EventKind::System {
                name: "reaped".into(),
                message: format!("reaped {} runs left by a previous process: {}", lines.len(), lines.join("; ")),
            });
        }
        lines.len()
    }
}
