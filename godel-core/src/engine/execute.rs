//! One claimed task attempt, from session open to settled result.
//!
//! The execution owns its lease. While the adapter runs it renews the lease,
//! forwards output (bounded), watches the deadline and the control channel,
//! and aborts the session when any of them says so. It then settles the task
//! in the store exactly once, with the outcome or with the reason it stopped.
//! Its session, events and spend belong to the lease's tenant.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::adapter::{AbortMode, AgentSession, Outcome, OutputSink};
use crate::engine::config::AgentConfig;
use crate::engine::{Control, Inner};
use crate::event::EventKind;
use crate::ids::TaskId;
use crate::output::{OutputChunk, OutputStream};
use crate::session::{Session, SessionState};
use crate::store::{Claim, FailOutcome, Failure, LeaseStatus, Retry, StoreError};
use crate::task::{TaskError, TaskErrorKind, TaskStatus};

/// Output chunks buffered before they are written to the store.
const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;
/// How often buffered output is written while a task runs.
const OUTPUT_FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Why the engine stopped a run before it ended on its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Cancel,
    Timeout(Duration),
    LeaseLost,
    Shutdown,
}

pub(crate) struct Execution {
    inner: Arc<Inner>,
    agent: AgentConfig,
    claim: Claim,
    control: watch::Receiver<Control>,
    _slot: Slot,
}

/// Gives the agent slot back and forgets the control channel, however the
/// execution ends (including a panic or the runtime dropping it).
struct Slot {
    inner: Arc<Inner>,
    agent: crate::ids::AgentId,
    task: TaskId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.lock_scheduler().release(&self.agent);
        self.inner.lock_running().remove(&self.task);
        self.inner.wake.notify_one();
    }
}

impl Execution {
    pub(crate) fn new(inner: Arc<Inner>, agent: AgentConfig, claim: Claim, control: watch::Receiver<Control>) -> Self {
        let slot = Slot { inner: inner.clone(), agent: agent.id.clone(), task: claim.task.id };
        Self { inner, agent, claim, control, _slot: slot }
    }

    pub(crate) async fn run(self) {
        let inner = self.inner.clone();
        let task = &self.claim.task;
        let lease = &self.claim.lease;
        self.publish(EventKind::TaskAssigned {
            task: task.id,
            priority: task.priority,
            agent: self.agent.id.clone(),
            attempt: lease.attempt,
        });

        let mut session = Session::new(lease.tenant.clone(), self.agent.id.clone(), inner.clock.now());
        session.task = Some(task.id);
        inner.record_session(&session);
        self.publish(EventKind::SessionOpened { session: session.id, agent: self.agent.id.clone() });
        self.transition(&mut session, SessionState::Initializing, None);

        let adapter_session = match self.agent.adapter.open_session(task).await {
            Ok(s) => s,
            Err(e) => {
                let message = format!("cannot open a session on agent {}: {}", self.agent.id, e.message);
                self.publish(EventKind::SessionError { session: session.id, message: message.clone() });
                self.transition(&mut session, SessionState::Error, Some(message.clone()));
                let error = TaskError::new(TaskErrorKind::Error, message);
                self.settle_failure(error, e.retryable).await;
                return;
            }
        };
        self.transition(&mut session, SessionState::Ready, None);

        let not_started = match inner.start(lease, &self.agent.id).await {
            Ok(true) => Some((SessionState::Cancelled, "cancelled before it started".to_owned())),
            Ok(false) => None,
            Err(e) => {
                // LeaseLost: someone else owns the attempt now. Anything else:
                // the store is unreachable, so the lease will lapse and the
                // task run again; running it now could run it twice.
                tracing::warn!(task = %task.id, error = %e, "cannot start the task; leaving it to its lease");
                Some((SessionState::Error, format!("cannot start: {e}")))
            }
        };
        if let Some((state, why)) = not_started {
            // Nothing ran, but opening the session may have prepared a
            // directory or a worktree: closing it releases them.
            let error = TaskError::new(TaskErrorKind::Aborted, why.clone());
            adapter_session.close(&Outcome::Failed { error, retryable: false }).await;
            self.transition(&mut session, state, Some(why));
            if state == SessionState::Cancelled {
                self.settle_cancel().await;
            }
            return;
        }
        self.transition(&mut session, SessionState::Running, None);
        self.publish(EventKind::TaskStarted { task: task.id, session: session.id, attempt: lease.attempt });
        tracing::debug!(task = %task.id, agent = %self.agent.id, attempt = lease.attempt, "task started");

        let mut control = self.control.clone();
        let (stop, outcome) = self.supervise(adapter_session.as_ref(), &mut control).await;
        adapter_session.close(&outcome).await;
        // Spent is spent, whatever happens to the lease next; recorded before
        // settling so that whoever sees the task complete sees its cost.
        inner.record_spend(&lease.tenant, &outcome).await;

        match (stop, outcome) {
            (Some(Stop::LeaseLost), _) => {
                self.transition(&mut session, SessionState::Error, Some("lease lost to another engine".into()));
            }
            // A run that finished before the abort took effect keeps its
            // result; released instead, it would run again.
            (_, Outcome::Completed { result }) => {
                self.transition(&mut session, SessionState::Completing, None);
                self.settle_success(result).await;
                self.transition(&mut session, SessionState::Completed, None);
            }
            (Some(Stop::Shutdown), Outcome::Failed { .. }) => {
                self.transition(&mut session, SessionState::Cancelled, Some("engine shutting down".into()));
                match self.store_call(|| inner.store.release(lease, inner.clock.now())).await {
                    Ok(TaskStatus::Cancelled) => {
                        self.publish(EventKind::TaskCancelled { task: task.id, priority: task.priority });
                    }
                    Ok(_) => tracing::info!(task = %task.id, "released for the next start"),
                    Err(e) => tracing::warn!(task = %task.id, error = %e, "cannot release; the lease will lapse"),
                }
            }
            (Some(Stop::Cancel), Outcome::Failed { .. }) => {
                self.transition(&mut session, SessionState::Cancelled, None);
                self.settle_cancel().await;
            }
            (Some(Stop::Timeout(after)), Outcome::Failed { .. }) => {
                self.transition(&mut session, SessionState::Timeout, Some(format!("timed out after {after:?}")));
                let error = TaskError::new(TaskErrorKind::Timeout, format!("timed out after {after:?}"));
                self.settle_failure(error, true).await;
            }
            (None, Outcome::Failed { error, retryable }) => {
                self.transition(&mut session, SessionState::Failed, Some(error.message.clone()));
                self.settle_failure(error, retryable).await;
            }
        }
    }

    /// Runs the session while renewing the lease, recording output and
    /// obeying the deadline and the control channel.
    ///
    /// The store is written beside the loop, never inside it: heartbeats
    /// and output writes run as their own futures, so a slow store holds up
    /// neither the output pumps nor the deadline nor an abort.
    async fn supervise(
        &self,
        session: &dyn AgentSession,
        control: &mut watch::Receiver<Control>,
    ) -> (Option<Stop>, Outcome) {
        let inner = self.inner.clone();
        let task = &self.claim.task;
        let cfg = &inner.config;
        let timeout = task.timeout.or(self.agent.default_timeout).or(cfg.default_timeout);
        let deadline = timeout.map(|t| Instant::now() + t);
        let (sink, mut chunks) = OutputSink::channel(64);
        let mut output = OutputBuffer::new(cfg.max_output_bytes);
        let mut flush = tokio::time::interval_at(Instant::now() + OUTPUT_FLUSH_EVERY, OUTPUT_FLUSH_EVERY);
        let (to_writer, batches) = mpsc::unbounded_channel();
        let writer = self.write_output(batches);
        tokio::pin!(writer);
        let (beat, mut beats) = mpsc::channel(1);
        let keeper = self.keep_lease(beat);
        tokio::pin!(keeper);
        let mut stop = None;
        let mut escalate_at: Option<Instant> = None;
        let mut control_open = true;

        let run = session.run(task, sink);
        tokio::pin!(run);
        // Biased: the run first, so that a run that has ended is never taken
        // for one that a stop arriving in the same instant interrupted; then
        // the store's futures, which only end once their channels close
        // (after this loop) and must progress however busy the rest is.
        let outcome = loop {
            tokio::select! {
                biased;
                outcome = &mut run => break outcome,
                () = &mut keeper => {}
                () = &mut writer => {}
                changed = control.changed(), if control_open => {
                    if changed.is_err() {
                        control_open = false;
                        continue;
                    }
                    let now = *control.borrow_and_update();
                    match now {
                        Control::Run => {}
                        Control::Cancel if stop.is_none() => {
                            stop = Some(Stop::Cancel);
                            session.abort(AbortMode::Graceful).await;
                            escalate_at = Some(Instant::now() + cfg.kill_grace);
                        }
                        Control::Cancel => {}
                        Control::Kill => {
                            stop = Some(stop.unwrap_or(Stop::Cancel));
                            escalate_at = None;
                            session.abort(AbortMode::Force).await;
                        }
                        Control::Shutdown => {
                            // Unless the task is already being cancelled, give it back.
                            if stop != Some(Stop::Cancel) {
                                stop = Some(Stop::Shutdown);
                            }
                            escalate_at = None;
                            session.abort(AbortMode::Force).await;
                        }
                    }
                }
                () = sleep_until(deadline), if stop.is_none() && deadline.is_some() => {
                    tracing::info!(task = %task.id, ?timeout, "deadline passed; killing the run");
                    stop = Some(Stop::Timeout(timeout.unwrap_or_default()));
                    session.abort(AbortMode::Force).await;
                }
                () = sleep_until(escalate_at), if escalate_at.is_some() => {
                    escalate_at = None;
                    session.abort(AbortMode::Force).await;
                }
                Some(beat) = beats.recv() => match beat {
                    Ok(status) if status.cancel_requested && stop.is_none() => {
                        stop = Some(Stop::Cancel);
                        session.abort(AbortMode::Graceful).await;
                        escalate_at = Some(Instant::now() + cfg.kill_grace);
                    }
                    Ok(_) => {}
                    Err(StoreError::LeaseLost(_)) => {
                        tracing::warn!(task = %task.id, "lease lost; aborting the run");
                        stop = Some(Stop::LeaseLost);
                        session.abort(AbortMode::Force).await;
                    }
                    Err(e) => tracing::warn!(task = %task.id, error = %e, "heartbeat failed; will retry"),
                },
                _ = flush.tick() => output.hand_over(&to_writer),
                Some(chunk) = chunks.recv() => {
                    output.accept(self, chunk);
                    if output.pending_bytes >= OUTPUT_FLUSH_BYTES {
                        output.hand_over(&to_writer);
                    }
                }
            }
        };
        // The run is over and has dropped its sink: drain what it sent last,
        // then let the writer finish what it was given (a lost lease would
        // refuse it anyway). The lease keeper is still polled meanwhile: a
        // heartbeat it left half done may hold the store's writer, which the
        // output writer then waits for.
        let finish = async {
            while let Some(chunk) = chunks.recv().await {
                output.accept(self, chunk);
            }
            if stop != Some(Stop::LeaseLost) {
                output.hand_over(&to_writer);
            }
            drop(to_writer);
            writer.await;
        };
        tokio::select! {
            biased;
            () = finish => {}
            () = &mut keeper => {}
        }
        (stop, outcome)
    }

    /// Renews the lease every heartbeat interval and reports each answer,
    /// until nobody listens.
    async fn keep_lease(&self, beats: mpsc::Sender<Result<LeaseStatus, StoreError>>) {
        let inner = &self.inner;
        let every = inner.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.tick().await;
            let status = inner.store.heartbeat(&self.claim.lease, inner.config.lease, inner.clock.now()).await;
            if beats.send(status).await.is_err() {
                // Kept pending: the loop that polls this future must not see it end.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Writes output batches to the store in order, merging those that
    /// queued meanwhile, until the channel closes.
    async fn write_output(&self, mut batches: mpsc::UnboundedReceiver<Vec<OutputChunk>>) {
        while let Some(mut chunks) = batches.recv().await {
            while let Ok(more) = batches.try_recv() {
                chunks.extend(more);
            }
            if let Err(e) = self.inner.store.append_output(&self.claim.lease, &chunks, self.inner.clock.now()).await {
                tracing::warn!(task = %self.claim.task.id, error = %e, chunks = chunks.len(), "cannot record output");
            }
        }
    }

    async fn settle_success(&self, result: Value) {
        let inner = &self.inner;
        let (lease, task, priority) = (&self.claim.lease, self.claim.task.id, self.claim.task.priority);
        match self.store_call(|| inner.complete(lease, result.clone())).await {
            Ok(()) => self.publish(EventKind::TaskCompleted { task, priority, attempt: lease.attempt }),
            Err(e) => tracing::warn!(task = %task, error = %e, "cannot record completion; the lease will lapse"),
        }
    }

    async fn settle_failure(&self, error: TaskError, retryable: bool) {
        let inner = &self.inner;
        let (lease, task, priority) = (&self.claim.lease, self.claim.task.id, self.claim.task.priority);
        let retry = if retryable {
            Retry::After(inner.config.backoff.delay(lease.attempt, &mut rand::rng()))
        } else {
            Retry::Never
        };
        let failure = Failure { error: error.clone(), retry };
        let attempt = lease.attempt;
        match self.store_call(|| inner.store.fail(lease, &failure, inner.clock.now())).await {
            Ok(FailOutcome::Retrying { run_at }) => {
                tracing::info!(task = %task, attempt, %run_at, error = %error.message, "attempt failed; will retry");
                self.publish(EventKind::TaskRetrying { task, attempt, run_at, error });
            }
            Ok(FailOutcome::DeadLettered) => {
                tracing::warn!(task = %task, attempts = attempt, error = %error.message, "task dead-lettered");
                self.publish(EventKind::TaskDeadLettered { task, priority, attempts: attempt, error: Some(error) });
            }
            Ok(FailOutcome::Failed) => {
                tracing::warn!(task = %task, error = %error.message, "task failed");
                self.publish(EventKind::TaskFailed { task, priority, attempt, error });
            }
            Ok(FailOutcome::Cancelled) => self.publish(EventKind::TaskCancelled { task, priority }),
            Err(e) => tracing::warn!(task = %task, error = %e, "cannot record failure; the lease will lapse"),
        }
    }

    async fn settle_cancel(&self) {
        let inner = &self.inner;
        let (lease, task, priority) = (&self.claim.lease, self.claim.task.id, self.claim.task.priority);
        match self.store_call(|| inner.store.confirm_cancel(lease, inner.clock.now())).await {
            Ok(()) => self.publish(EventKind::TaskCancelled { task, priority }),
            Err(e) => tracing::warn!(task = %task, error = %e, "cannot record cancel; the lease will lapse"),
        }
    }

    /// Retries a settling write a few times while the store is unavailable:
    /// giving up means the lease lapses and the task runs again.
    async fn store_call<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        for _ in 0..4 {
            match call().await {
                Err(e) if e.is_retryable() => {
                    tracing::warn!(task = %self.claim.task.id, error = %e, "store unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
                done => return done,
            }
        }
        call().await
    }

    /// Publishes an event of the task's tenant.
    fn publish(&self, kind: EventKind) {
        self.inner.publish_for(&self.claim.lease.tenant, kind);
    }

    fn transition(&self, session: &mut Session, to: SessionState, error: Option<String>) {
        match session.transition(to, self.inner.clock.now()) {
            Ok(from) => {
                if error.is_some() {
                    session.error = error;
                }
                self.inner.record_session(session);
                self.publish(EventKind::SessionStateChanged { session: session.id, from, to });
                if to.is_terminal() {
                    self.publish(EventKind::SessionClosed { session: session.id, state: to });
                }
            }
            // The table is the authority; an engine bug must not corrupt state.
            Err(e) => tracing::error!(session = %session.id, error = %e, "illegal session transition refused"),
        }
    }
}

/// Output of one attempt: published as it comes, written in batches, and
/// bounded at `limit` bytes with the truncation marked once.
struct OutputBuffer {
    limit: usize,
    seen: usize,
    truncated: bool,
    pending: Vec<OutputChunk>,
    pending_bytes: usize,
}

impl OutputBuffer {
    fn new(limit: usize) -> Self {
        Self { limit, seen: 0, truncated: false, pending: Vec::new(), pending_bytes: 0 }
    }

    fn accept(&mut self, execution: &Execution, mut chunk: OutputChunk) {
        if self.truncated {
            return;
        }
        let room = self.limit.saturating_sub(self.seen);
        if chunk.data.len() > room {
            let mut cut = room;
            while !chunk.data.is_char_boundary(cut) {
                cut -= 1;
            }
            chunk.data.truncate(cut);
            self.truncated = true;
        }
        self.seen += chunk.data.len();
        if !chunk.data.is_empty() {
            self.push(execution, chunk);
        }
        if self.truncated {
            let note = format!("output truncated: this attempt passed the {} byte limit", self.limit);
            self.push(execution, OutputChunk { stream: OutputStream::System, data: note });
        }
    }

    /// Gives what is pending to the output writer.
    fn hand_over(&mut self, writer: &mpsc::UnboundedSender<Vec<OutputChunk>>) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        // The writer lives as long as the execution's supervisor, which holds this sender.
        let _ = writer.send(std::mem::take(&mut self.pending));
    }

    fn push(&mut self, execution: &Execution, chunk: OutputChunk) {
        let (task, attempt) = (execution.claim.task.id, execution.claim.lease.attempt);
        execution.publish(EventKind::TaskOutput { task, attempt, stream: chunk.stream, data: chunk.data.clone() });
        self.pending_bytes += chunk.data.len();
        self.pending.push(chunk);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
