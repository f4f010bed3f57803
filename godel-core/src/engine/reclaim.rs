//! The reclaim sweep: makes tasks whose lease lapsed (on any engine sharing
//! the store) ready again, dead-letters or cancels them, and publishes what
//! moved, each event for its task's tenant: whichever engine's sweep moved a
//! task is the only one that knows.

use crate::engine::Orchestrator;
use crate::event::EventKind;
use crate::task::{TaskError, TaskErrorKind, TaskStatus};

/// Most leases reclaimed per sweep.
const RECLAIM_BATCH: usize = 1_000;

impl Orchestrator {
    /// Sweeps lapsed leases (of any engine) and reports what moved.
    pub(crate) async fn reclaim(&self) {
        let inner = &self.inner;
        let now = inner.clock.now();
        let reclaimed = match inner.store.reclaim_expired(now, RECLAIM_BATCH).await {
            Ok(reclaimed) => reclaimed,
            Err(e) => {
                tracing::warn!(error = %e, "lease sweep failed");
                return;
            }
        };
        for r in &reclaimed {
            tracing::info!(task = %r.task, tenant = %r.tenant, attempt = r.attempt, status = %r.status, "lease expired");
            let error = TaskError::new(TaskErrorKind::LeaseExpired, format!("lease of attempt {} expired", r.attempt));
            let kind = match r.status {
                TaskStatus::Pending => EventKind::TaskRetrying { task: r.task, attempt: r.attempt, run_at: now, error },
                TaskStatus::DeadLetter => EventKind::TaskDeadLettered {
                    task: r.task,
                    priority: r.priority,
                    attempts: r.attempt,
                    error: Some(error),
                },
                _ => EventKind::TaskCancelled { task: r.task, priority: r.priority },
            };
            inner.publish_for(&r.tenant, kind);
        }
        if !reclaimed.is_empty() {
            inner.wake.notify_one();
        }
    }
}
