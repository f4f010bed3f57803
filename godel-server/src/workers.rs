//! Remote workers: `godel worker` processes on other machines, connected over
//! a WebSocket at `/api/v1/workers/connect`, each one an engine agent of kind
//! `worker` whose sessions run on the worker's machine.
//!
//! The protocol's frames are godel-wire's (`godel_wire::worker`,
//! docs/workers.md); `assign` is pushed the moment the engine picks the
//! worker: no polling.
//!
//! A run belongs to the engine, not to the connection: when a worker's
//! connection drops, its runs wait up to the engine's lease for it to come
//! back and report; if it does not, they fail as retryable ("worker
//! vanished") and the engine retries them elsewhere. If the server itself
//! dies, the leases lapse and another node reclaims the tasks.
//!
//! A worker is a principal, not a name: each connection gets a random
//! session secret in its `welcome`, and a worker that reconnects takes its
//! waiting runs back only by presenting the secret of the connection it
//! lost. Another connection using the same name is refused until the grace
//! period ends and the old worker is deregistered. What a worker may declare
//! is capped by `workers.max_capacity`, and its peer address is logged when
//! it comes and goes.
//!
//! A worker serves one tenant: its credential's. The engine gives it that
//! tenant's tasks only, and a name taken by a worker of one tenant cannot be
//! reattached by another tenant's worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{SinkExt, StreamExt};
use godel_core::adapter::{AbortMode, AdapterError, AgentSession, OutputSink};
use godel_core::{Adapter, AgentConfig, AgentId, AgentKind, Outcome, Task, TaskError, TaskErrorKind, TenantId};
use godel_wire::worker::{Assignment, RunRef, ServerFrame, WorkerFrame};
use rand::RngCore;
use tokio::sync::{Notify, mpsc, oneshot};
use warp::ws::{Message, WebSocket};

use crate::AppState;

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server pings a worker; a worker silent for three of these is gone.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The connected workers, by agent id.
#[derive(Debug, Default)]
pub(crate) struct Workers {
    links: Mutex<HashMap<AgentId, Arc<Link>>>,
}

impl Workers {
    fn lock(&self) -> MutexGuard<'_, HashMap<AgentId, Arc<Link>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells a connected worker to drain (finish its runs, then leave); false
    /// if no worker by that id is connected. The caller stops the engine
    /// giving it work.
    pub(crate) fn drain(&self, agent: &AgentId) -> bool {
        match self.lock().get(agent) {
            Some(link) => link.send(ServerFrame::Drain),
            None => false,
        }
    }
}

/// A worker's connection as the engine's sessions see it; it outlives one
/// WebSocket so that a worker can reconnect and report its runs.
#[derive(Debug)]
struct Link {
    agent: AgentId,
    /// The tenant whose tasks the worker runs, from its credential.
    tenant: TenantId,
    state: Mutex<LinkState>,
    /// Fired when the connection comes or goes.
    changed: Notify,
    /// How long runs wait for a vanished worker to come back.
    grace: Duration,
}

#[derive(Debug, Default)]
struct LinkState {
    /// Frames for the current connection; `None` while disconnected.
    outbox: Option<mpsc::UnboundedSender<ServerFrame>>,
    /// Counts connections, so an old connection's cleanup cannot undo a new one.
    generation: u64,
    disconnected_at: Option<Instant>,
    runs: HashMap<RunRef, Run>,
    /// The current (or last) connection's session secret.
    session: String,
}

#[derive(Debug)]
struct Run {
    output: OutputSink,
    done: oneshot::Sender<Outcome>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a frame if connected; frames to a disconnected worker are dropped
    /// (the reconnect's `hello` reconciles runs).
    fn send(&self, frame: ServerFrame) -> bool {
        self.lock().outbox.as_ref().is_some_and(|outbox| outbox.send(frame).is_ok())
    }

    fn connected(&self) -> bool {
        self.lock().outbox.is_some()
    }

    /// Ends a run with `outcome`, if it is still waiting.
    fn finish(&self, run: RunRef, outcome: Outcome) {
        if let Some(run) = self.lock().runs.remove(&run) {
            let _ = run.done.send(outcome);
        }
    }
}

/// The engine's adapter for one worker.
#[derive(Debug)]
struct WorkerAdapter {
    link: Arc<Link>,
}

#[async_trait]
impl Adapter for WorkerAdapter {
    async fn open_session(&self, task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        if !self.link.connected() {
            return Err(AdapterError::transient(format!("worker {} is not connected", self.link.agent)));
        }
        Ok(Box::new(WorkerSession { link: self.link.clone(), run: RunRef { task: task.id, attempt: task.attempt } }))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        if self.link.connected() {
            Ok(())
        } else {
            Err(AdapterError::transient(format!("worker {} is disconnected", self.link.agent)))
        }
    }
}

struct WorkerSession {
    link: Arc<Link>,
    run: RunRef,
}

#[async_trait]
impl AgentSession for WorkerSession {
    async fn run(&self, task: &Task, output: OutputSink) -> Outcome {
        let (done, mut outcome) = oneshot::channel();
        self.link.lock().runs.insert(self.run, Run { output, done });
        let assign = ServerFrame::Assign {
            task: Assignment {
                id: task.id,
                attempt: task.attempt,
                priority: task.priority,
                payload: task.payload.clone(),
                capabilities: task.capabilities.clone(),
                timeout_ms: task.timeout.map(millis),
            },
        };
        self.link.send(assign);
        loop {
            let changed = self.link.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let gone_at = self.link.lock().disconnected_at.map(|at| at + self.link.grace);
            let vanished = async {
                match gone_at {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut outcome => {
                    return result.unwrap_or_else(|_| vanished_outcome(&self.link.agent, "its connection closed"));
                }
                () = changed => {}
                () = vanished => {
                    self.link.lock().runs.remove(&self.run);
                    return vanished_outcome(&self.link.agent, "it did not reconnect within the lease");
                }
            }
        }
    }

    async fn abort(&self, mode: AbortMode) {
        let frame = ServerFrame::Abort { task: self.run.task, attempt: self.run.attempt, mode: mode.into() };
        if !self.link.send(frame) {
            // Nobody to tell: end the run now rather than after the reconnect grace.
            let error =
                TaskError::new(TaskErrorKind::Aborted, format!("aborted while worker {} was away", self.link.agent));
            self.link.finish(self.run, Outcome::Failed { error, retryable: true });
        }
    }

    async fn close(&self, _outcome: &Outcome) {
        self.link.lock().runs.remove(&self.run);
    }
}

fn vanished_outcome(agent: &AgentId, why: &str) -> Outcome {
    Outcome::Failed {
        error: TaskError::new(TaskErrorKind::Error, format!("worker {agent} vanished: {why}")),
        retryable: true,
    }
}

fn error_frame(code: &str, message: &str) -> String {
    frame_text(&ServerFrame::Error { code: code.to_owned(), message: message.to_owned() })
}

fn frame_text(frame: &ServerFrame) -> String {
    serde_json::to_string(frame).expect("server frames serialize")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serves one worker connection until it leaves or the server shuts down.
pub(crate) async fn serve(socket: WebSocket, state: Arc<AppState>, tenant: TenantId, peer: Option<SocketAddr>) {
    let (mut tx, mut rx) = socket.split();
    let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut rx)).await {
        Ok(Some(Ok(WorkerFrame::Hello { name, capabilities, concurrency, region, version, running, session }))) => {
            Hello { name, capabilities, concurrency, region, version, running, session }
        }
        Ok(Some(Ok(_))) => return refuse(&mut tx, "invalid_request", "the first frame must be hello").await,
        Ok(Some(Err(e))) => return refuse(&mut tx, "invalid_request", &e).await,
        Ok(None) => return,
        Err(_) => return refuse(&mut tx, "invalid_request", "no hello within 10 s").await,
    };
    let (link, generation, outbox_rx) = match attach(&state, &tenant, &hello) {
        Ok(attached) => attached,
        Err((code, message)) => {
            tracing::warn!(worker = %hello.name, %tenant, %peer, code, reason = %message, "worker refused");
            return refuse(&mut tx, code, &message).await;
        }
    };
    tracing::info!(worker = %link.agent, %tenant, %peer, version = hello.version, generation, "worker connected");
    let welcome = ServerFrame::Welcome {
        agent: link.agent.to_string(),
        heartbeat_ms: millis(PING_EVERY),
        grace_ms: millis(link.grace),
        session: link.lock().session.clone(),
    };
    if tx.send(Message::text(frame_text(&welcome))).await.is_err() {
        detach(&state, &link, generation).await;
        return;
    }
    reconcile(&link, &hello.running);
    let left = pump(&state, &link, tx, rx, outbox_rx).await;
    if left {
        tracing::info!(worker = %link.agent, %peer, "worker left");
        state.workers.lock().remove(&link.agent);
        let _ = state.orchestrator.remove_agent(&link.agent);
        for (run, _) in std::mem::take(&mut link.lock().runs) {
            link.finish(run, vanished_outcome(&link.agent, "it left"));
        }
        link.lock().outbox = None;
        link.changed.notify_waiters();
    } else {
        tracing::warn!(worker = %link.agent, %peer, "worker connection lost");
        detach(&state, &link, generation).await;
    }
}

struct Hello {
    name: String,
    capabilities: Vec<String>,
    concurrency: u32,
    region: Option<String>,
    version: String,
    running: Vec<RunRef>,
    session: Option<String>,
}

/// A new session secret: 256 random bits.
fn session_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn refuse(tx: &mut futures::stream::SplitSink<WebSocket, Message>, code: &str, message: &str) {
    let _ = tx.send(Message::text(error_frame(code, message))).await;
    let _ = tx.send(Message::close_with(1008u16, "refused")).await;
}

/// Registers a new worker as an agent, or reattaches a reconnecting one.
#[allow(clippy::type_complexity, reason = "a private helper's tuple of three named results")]
fn attach(
    state: &Arc<AppState>,
    tenant: &TenantId,
    hello: &Hello,
) -> Result<(Arc<Link>, u64, mpsc::UnboundedReceiver<ServerFrame>), (&'static str, String)> {
    let agent = AgentId::new(&hello.name).map_err(|e| ("invalid_request", format!("invalid name: {}", e.reason)))?;
    let max = state.worker_limits.max_capacity;
    if !(1..=max).contains(&hello.concurrency) {
        return Err((
            "invalid_request",
            format!("concurrency must be 1 to {max} (workers.max_capacity on this server), got {}", hello.concurrency),
        ));
    }
    let (outbox, outbox_rx) = mpsc::unbounded_channel();
    let mut links = state.workers.lock();
    if let Some(link) = links.get(&agent).cloned() {
        if link.tenant != *tenant {
            return Err(("conflict", format!("the name {agent} is taken by a worker of another tenant")));
        }
        let mut link_state = link.lock();
        if link_state.outbox.is_some() {
            return Err(("conflict", format!("a worker named {agent} is already connected")));
        }
        // Runs wait for the worker that held them, not for whoever uses its name.
        if !hello.session.as_deref().is_some_and(|given| same_secret(given, &link_state.session)) {
            return Err((
                "conflict",
                format!(
                    "worker {agent} has runs waiting for its session; reconnect with that session's secret, \
                     or wait {} s for them to be given up",
                    link.grace.as_secs()
                ),
            ));
        }
        link_state.session = session_secret();
        link_state.outbox = Some(outbox);
        link_state.generation += 1;
        link_state.disconnected_at = None;
        let generation = link_state.generation;
        drop(link_state);
        link.changed.notify_waiters();
        let _ = state.orchestrator.agent_heartbeat(&agent);
        return Ok((link, generation, outbox_rx));
    }
    let link = Arc::new(Link {
        agent: agent.clone(),
        tenant: tenant.clone(),
        state: Mutex::new(LinkState {
            outbox: Some(outbox),
            generation: 1,
            session: session_secret(),
            ..LinkState::default()
        }),
        changed: Notify::new(),
        grace: state.orchestrator.config().lease,
    });
    let mut config = AgentConfig::new(agent.clone(), AgentKind::Worker, Arc::new(WorkerAdapter { link: link.clone() }))
        .capacity(hello.concurrency)
        .only_tenant(tenant.clone());
    config.capabilities = hello.capabilities.clone();
    config.region = hello.region.clone();
    state.orchestrator.add_agent(config).map_err(|e| ("conflict", e.to_string()))?;
    links.insert(agent, link.clone());
    Ok((link, 1, outbox_rx))
}

/// After a reconnect: runs the server waits for but the worker no longer has
/// are lost (it restarted); runs the worker has but the server forgot (the
/// server restarted, or gave up on them) are aborted.
fn reconcile(link: &Link, running: &[RunRef]) {
    let lost: Vec<RunRef> = link.lock().runs.keys().filter(|r| !running.contains(r)).copied().collect();
    for run in lost {
        link.finish(run, vanished_outcome(&link.agent, "it restarted and lost the run"));
    }
    let unknown: Vec<RunRef> = {
        let state = link.lock();
        running.iter().filter(|r| !state.runs.contains_key(r)).copied().collect()
    };
    for run in unknown {
        link.send(ServerFrame::Abort { task: run.task, attempt: run.attempt, mode: AbortMode::Force.into() });
    }
}

/// Moves frames both ways until the connection ends. True if the worker
/// said `bye` (it left for good), false if the connection was lost.
async fn pump(
    state: &Arc<AppState>,
    link: &Arc<Link>,
    mut tx: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: futures::stream::SplitStream<WebSocket>,
    mut outbox: mpsc::UnboundedReceiver<ServerFrame>,
) -> bool {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = tx.send(Message::close_with(1001u16, "server shutting down")).await;
                return false;
            }
            frame = outbox.recv() => match frame {
                Some(frame) => {
                    if tx.send(Message::text(frame_text(&frame))).await.is_err() {
                        return false;
                    }
                }
                None => return false,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > 3 * PING_EVERY {
                    tracing::warn!(worker = %link.agent, "worker stopped answering pings");
                    let _ = tx.send(Message::close_with(1001u16, "no pong")).await;
                    return false;
                }
                if tx.send(Message::ping(Vec::new())).await.is_err() {
                    return false;
                }
            }
            incoming = next_incoming(&mut rx) => {
                last_heard = Instant::now();
                let _ = state.orchestrator.agent_heartbeat(&link.agent);
                let frame = match incoming {
                    None => return false,
                    Some(Incoming::Life) => continue,
                    Some(Incoming::Frame(frame)) => frame,
                };
                match frame {
                    Err(e) => {
                        let _ = tx.send(Message::text(error_frame("invalid_request", &e))).await;
                    }
                    Ok(WorkerFrame::Hello { .. }) => {
                        let _ = tx.send(Message::text(error_frame("invalid_request", "hello was already sent"))).await;
                    }
                    Ok(WorkerFrame::Output { task, attempt, stream, data }) => {
                        let sink = link.lock().runs.get(&RunRef { task, attempt }).map(|r| r.output.clone());
                        if let Some(sink) = sink {
                            sink.send(stream, data).await;
                        }
                    }
                    Ok(WorkerFrame::Finished { task, attempt, outcome }) => {
                        link.finish(RunRef { task, attempt }, outcome.into());
                    }
                    Ok(WorkerFrame::Drain) => {
                        tracing::info!(worker = %link.agent, "worker is draining");
                        let _ = state.orchestrator.remove_agent(&link.agent);
                    }
                    Ok(WorkerFrame::Bye) => return true,
                }
            }
        }
    }
}

/// What arrived from the worker.
enum Incoming {
    /// A frame, or why it is not a valid worker frame.
    Frame(Result<WorkerFrame, String>),
    /// A ping or a pong: a sign of life and nothing else (warp answers pings itself).
    Life,
}

/// The next thing from the worker; `None` when the connection ended.
async fn next_incoming(rx: &mut futures::stream::SplitStream<WebSocket>) -> Option<Incoming> {
    let message = rx.next().await?.ok()?;
    if message.is_close() {
        return None;
    }
    if message.is_ping() || message.is_pong() {
        return Some(Incoming::Life);
    }
    let Ok(text) = message.to_str() else {
        return Some(Incoming::Frame(Err("send JSON text frames, not binary".to_owned())));
    };
    Some(Incoming::Frame(serde_json::from_str(text).map_err(|e| format!("invalid frame: {e}"))))
}

/// The next frame, skipping signs of life.
async fn next_frame(rx: &mut futures::stream::SplitStream<WebSocket>) -> Option<Result<WorkerFrame, String>> {
    loop {
        if let Incoming::Frame(frame) = next_incoming(rx).await? {
            return Some(frame);
        }
    }
}

/// The connection was lost: mark the worker disconnected so its runs start
/// their grace period, then wait out that period for a reconnect; if none
/// comes, the worker is deregistered.
async fn detach(state: &Arc<AppState>, link: &Arc<Link>, generation: u64) {
    {
        let mut link_state = link.lock();
        if link_state.generation != generation {
            return; // a newer connection took over
        }
        link_state.outbox = None;
        link_state.disconnected_at = Some(Instant::now());
    }
    link.changed.notify_waiters();
    tracing::warn!(worker = %link.agent, grace = ?link.grace, "worker disconnected; waiting for it to come back");
    let back = async {
        loop {
            let changed = link.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if link.lock().generation != generation {
                return;
            }
            changed.await;
        }
    };
    tokio::select! {
        () = back => {}
        () = tokio::time::sleep(link.grace) => {
            if link.lock().generation == generation {
                tracing::warn!(worker = %link.agent, "worker did not come back; deregistering it");
                state.workers.lock().remove(&link.agent);
                let _ = state.orchestrator.remove_agent(&link.agent);
            }
        }
        () = state.shutdown.cancelled() => {}
    }
}
