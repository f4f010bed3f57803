//! The orchestrator's task commands: submit, cancel, kill, retry, replay
//! dead letters, purge and terminate a session. They are the only way the
//! server and the CLI change a task, so that each publishes its event, wakes
//! the dispatcher when work became ready, and checks the budget before work
//! is added, in one place. Each acts for the tenant of its [`TenantScope`];
//! the orchestrator's own commands are those of the configured tenant.

use crate::InvalidInput;
use crate::engine::{Control, EngineError, Orchestrator, TenantScope};
use crate::event::EventKind;
use crate::ids::{SessionId, TaskId};
use crate::session::Session;
use crate::store::{CancelOutcome, Enqueued, Page, StoreError, TaskFilter, TaskQuery};
use crate::task::{NewTask, Task, TaskStatus};
use crate::time::Timestamp;

impl TenantScope {
    /// Queues a task and wakes the dispatcher. With an idempotency key already
    /// used, returns the first task unchanged.
    pub async fn submit(&self, task: NewTask) -> Result<Task, EngineError> {
        Ok(self.enqueue(task).await?.task)
    }

    /// Like [`TenantScope::submit`], saying whether the task is new or an
    /// earlier one returned for its idempotency key.
    pub async fn enqueue(&self, task: NewTask) -> Result<Enqueued, EngineError> {
        let inner = &self.inner;
        inner.check_budget(&self.tenant).await?;
        self.check_parent(task.parent).await?;
        let enqueued = inner.store.enqueue(&self.tenant, task, inner.clock.now()).await?;
        if enqueued.created {
            self.publish(EventKind::TaskCreated { task: enqueued.task.id, priority: enqueued.task.priority });
            self.ready();
        }
        Ok(enqueued)
    }

    /// Queues many tasks in one transaction.
    pub async fn submit_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, EngineError> {
        let inner = &self.inner;
        inner.check_budget(&self.tenant).await?;
        let mut parents: Vec<TaskId> = tasks.iter().filter_map(|t| t.parent).collect();
        parents.sort();
        parents.dedup();
        for parent in parents {
            self.check_parent(Some(parent)).await?;
        }
        let enqueued = inner.store.enqueue_batch(&self.tenant, tasks, inner.clock.now()).await?;
        for e in enqueued.iter().filter(|e| e.created) {
            self.publish(EventKind::TaskCreated { task: e.task.id, priority: e.task.priority });
        }
        self.ready();
        Ok(enqueued.into_iter().map(|e| e.task).collect())
    }

    /// One task.
    pub async fn get(&self, id: TaskId) -> Result<Task, EngineError> {
        Ok(self.inner.store.get(&self.tenant, id).await?)
    }

    /// A parent must be a task of this tenant; one of another tenant is as
    /// unknown as one that never was.
    async fn check_parent(&self, parent: Option<TaskId>) -> Result<(), EngineError> {
        let Some(parent) = parent else { return Ok(()) };
        match self.inner.store.get(&self.tenant, parent).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => {
                Err(InvalidInput::new("parent_id", format!("no task {parent} to be the parent")).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels a task: at once if pending; a running one is asked to stop
    /// (SIGTERM, then killed after `kill_grace`), here or on whichever engine holds it.
    pub async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, EngineError> {
        self.stop(id, Control::Cancel).await
    }

    /// Like [`TenantScope::cancel`] but skips the grace period.
    pub async fn kill(&self, id: TaskId) -> Result<CancelOutcome, EngineError> {
        self.stop(id, Control::Kill).await
    }

    async fn stop(&self, id: TaskId, control: Control) -> Result<CancelOutcome, EngineError> {
        let inner = &self.inner;
        let outcome = inner.store.cancel(&self.tenant, id, inner.clock.now()).await?;
        match outcome {
            CancelOutcome::Cancelled => {
                let priority = inner.store.get(&self.tenant, id).await.map(|t| t.priority).unwrap_or_default();
                self.publish(EventKind::TaskCancelled { task: id, priority });
            }
            CancelOutcome::Requested => {
                // The store found the task in this tenant, so the id is this tenant's.
                if let Some(running) = inner.lock_running().get(&id) {
                    running.control.send_replace(control);
                }
            }
        }
        Ok(outcome)
    }

    /// Puts a dead-lettered, failed or cancelled task back in the queue with
    /// a fresh set of attempts, publishes `task.replayed` and wakes the
    /// dispatcher. Refused past the hard budget, like a submit.
    pub async fn retry(&self, id: TaskId) -> Result<Task, EngineError> {
        self.replay_from(id, &crate::store::REPLAYABLE).await
    }

    /// Like [`TenantScope::retry`], for a dead-lettered task only: any other
    /// status gives [`EngineError::NotDeadLettered`]. The store checks the
    /// status and replays in one step, so two racing replays run it once.
    pub async fn replay_dead_letter(&self, id: TaskId) -> Result<Task, EngineError> {
        match self.replay_from(id, &[TaskStatus::DeadLetter]).await {
            Err(EngineError::InvalidTransition { from, .. }) => {
                Err(EngineError::NotDeadLettered { task: id, status: from })
            }
            other => other,
        }
    }

    async fn replay_from(&self, id: TaskId, only_from: &[TaskStatus]) -> Result<Task, EngineError> {
        let inner = &self.inner;
        inner.check_budget(&self.tenant).await?;
        let task = inner.store.replay_if(&self.tenant, id, only_from, inner.clock.now()).await?;
        self.publish(EventKind::TaskReplayed { task: task.id, priority: task.priority });
        self.ready();
        Ok(task)
    }

    /// Replays every dead letter matching `filter` (its `statuses` must be
    /// empty or exactly `[dead_letter]`) in one store call, publishes
    /// `system.dead_letters_replayed` with the count when there were any, and
    /// wakes the dispatcher. Returns how many were replayed.
    pub async fn replay_dead_letters(&self, filter: &TaskFilter) -> Result<u64, EngineError> {
        let inner = &self.inner;
        inner.check_budget(&self.tenant).await?;
        let replayed = inner.store.replay_dead_letters(&self.tenant, filter, inner.clock.now()).await?;
        if replayed > 0 {
            self.publish(EventKind::System {
                name: "dead_letters_replayed".into(),
                message: format!("{replayed} dead-lettered tasks replayed"),
            });
            self.ready();
        }
        Ok(replayed)
    }

    /// Deletes a finished task and its output. A task still queued or running
    /// gives [`EngineError::InvalidTransition`].
    pub async fn purge(&self, id: TaskId) -> Result<(), EngineError> {
        Ok(self.inner.store.purge(&self.tenant, id).await?)
    }

    /// Deletes finished tasks matching `filter` (terminal statuses only; none
    /// means every terminal status) that finished before `finished_before`.
    /// Returns how many were deleted.
    pub async fn purge_finished(&self, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64, EngineError> {
        Ok(self.inner.store.purge_finished(&self.tenant, filter, finished_before).await?)
    }

    /// Lists tasks as [`TaskStore::list`](crate::store::TaskStore::list)
    /// does, publishing `task.quarantined` for each row the listing met that
    /// did not decode (and moved to the quarantine).
    pub async fn list(&self, query: &TaskQuery) -> Result<Page<Task>, EngineError> {
        let page = self.inner.store.list(&self.tenant, query).await?;
        for q in &page.quarantined {
            self.publish(EventKind::TaskQuarantined { task: q.id.clone(), error: q.error.clone() });
        }
        Ok(page)
    }

    /// Deletes one quarantined row; [`EngineError::TaskNotFound`] if there is none.
    pub async fn drop_quarantined(&self, id: TaskId) -> Result<(), EngineError> {
        Ok(self.inner.store.drop_quarantined(&self.tenant, id).await?)
    }

    /// Deletes every quarantined row of the tenant and returns how many went.
    pub async fn purge_quarantined(&self) -> Result<u64, EngineError> {
        Ok(self.inner.store.purge_quarantined(&self.tenant).await?)
    }

    /// Ends a session by killing the task it runs (see [`TenantScope::kill`]).
    /// Returns the session as it was and the task. A session that has ended
    /// gives [`EngineError::SessionEnded`].
    pub async fn terminate_session(&self, id: SessionId) -> Result<(Session, TaskId), EngineError> {
        let session = self.inner.store.get_session(&self.tenant, id).await?;
        let task = match session.task {
            Some(task) if !session.state.is_terminal() => task,
            _ => return Err(EngineError::SessionEnded { session: session.id, state: session.state }),
        };
        self.kill(task).await?;
        Ok((session, task))
    }

    fn publish(&self, kind: EventKind) {
        self.inner.publish_for(&self.tenant, kind);
    }

    /// Work became ready for this tenant: make sure it is served, and wake the dispatcher.
    fn ready(&self) {
        self.inner.serve(&self.tenant);
        self.inner.wake.notify_one();
    }
}

/// The configured tenant's commands, for embedders that serve one tenant.
impl Orchestrator {
    /// [`TenantScope::submit`] for the configured tenant.
    pub async fn submit(&self, task: NewTask) -> Result<Task, EngineError> {
        self.home().submit(task).await
    }

    /// [`TenantScope::enqueue`] for the configured tenant.
    pub async fn enqueue(&self, task: NewTask) -> Result<Enqueued, EngineError> {
        self.home().enqueue(task).await
    }

    /// [`TenantScope::submit_batch`] for the configured tenant.
    pub async fn submit_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, EngineError> {
        self.home().submit_batch(tasks).await
    }

    /// [`TenantScope::get`] for the configured tenant.
    pub async fn get(&self, id: TaskId) -> Result<Task, EngineError> {
        self.home().get(id).await
    }

    /// [`TenantScope::cancel`] for the configured tenant.
    pub async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, EngineError> {
        self.home().cancel(id).await
    }

    /// [`TenantScope::kill`] for the configured tenant.
    pub async fn kill(&self, id: TaskId) -> Result<CancelOutcome, EngineError> {
        self.home().kill(id).await
    }

    /// [`TenantScope::retry`] for the configured tenant.
    pub async fn retry(&self, id: TaskId) -> Result<Task, EngineError> {
        self.home().retry(id).await
    }

    /// [`TenantScope::replay_dead_letter`] for the configured tenant.
    pub async fn replay_dead_letter(&self, id: TaskId) -> Result<Task, EngineError> {
        self.home().replay_dead_letter(id).await
    }

    /// [`TenantScope::replay_dead_letters`] for the configured tenant.
    pub async fn replay_dead_letters(&self, filter: &TaskFilter) -> Result<u64, EngineError> {
        self.home().replay_dead_letters(filter).await
    }

    /// [`TenantScope::purge`] for the configured tenant.
    pub async fn purge(&self, id: TaskId) -> Result<(), EngineError> {
        self.home().purge(id).await
    }

    /// [`TenantScope::purge_finished`] for the configured tenant.
    pub async fn purge_finished(&self, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64, EngineError> {
        self.home().purge_finished(filter, finished_before).await
    }

    /// [`TenantScope::terminate_session`] for the configured tenant.
    pub async fn terminate_session(&self, id: SessionId) -> Result<(Session, TaskId), EngineError> {
        self.home().terminate_session(id).await
    }
}
