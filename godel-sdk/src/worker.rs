//! A remote worker: connects to a Godel server over a WebSocket, registers as
//! an agent, and runs the tasks the server pushes to it with the process
//! adapter on this machine (what `godel worker` runs).
//!
//! The worker keeps its runs across connection drops: it reconnects with
//! backoff, tells the server which runs it still has, and reports outcomes
//! that finished while it was away. The server waits for it up to its lease;
//! after that the tasks go to other agents. See `docs/workers.md`.
//!
//! It authenticates with an API key of the `worker` role (sent as
//! `Authorization: Bearer`), connects over `wss://` to an `https://` server,
//! and keeps the session secret each `welcome` carries: the server gives a
//! reconnecting worker its runs back only when it presents that secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use godel_core::adapter::{AbortMode, Adapter, OutputSink, ProcessAdapter};
use godel_core::{NewTask, Outcome, Task, TaskError, TaskErrorKind, TaskStatus, TenantId, Timestamp};
use godel_wire::worker::{Assignment, RunOutcome, RunRef, ServerFrame, WorkerFrame};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::error::{Error, Result};
use crate::tls::{Tls, TlsOptions};

/// What [`WorkerOptions`] and [`Worker::run`] take, for programs built
/// without the `embed` feature.
pub use godel_core::CancellationToken;
pub use godel_core::adapter::{ProcessConfig, WorkDir};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long to wait for the server's `welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// How a worker presents itself and runs tasks. `Debug` does not show the key.
#[derive(Clone)]
pub struct WorkerOptions {
    /// The server, e.g. `http://10.0.0.5:7373` or `https://godel.internal:7373`.
    pub server: String,
    /// An API key with the `worker` role, sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// How to check an `https://` server's certificate.
    pub tls: TlsOptions,
    /// Its agent id on the server (1 to 128 characters from `A-Z a-z 0-9 _ - . :`).
    pub name: String,
    /// What it can do; tasks needing other capabilities go elsewhere.
    pub capabilities: Vec<String>,
    /// How many tasks it runs at once (1 to 1024).
    pub concurrency: u32,
    /// Where it runs, for region-aware routing.
    pub region: Option<String>,
    /// How tasks run here: the command template (`{prompt}`, `{task_id}`,
    /// `{attempt}`, `{workdir}`), or the task's own command without one.
    pub process: ProcessConfig,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("server", &self.server)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .field("concurrency", &self.concurrency)
            .field("region", &self.region)
            .field("process", &self.process)
            .finish()
    }
}

/// Why [`Worker::run`] returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WorkerExit {
    /// It drained (asked by the server or by the caller) and left.
    Drained,
}

/// A worker, ready to connect.
#[derive(Debug)]
pub struct Worker {
    options: WorkerOptions,
    adapter: Arc<ProcessAdapter>,
    ws_url: String,
    tls: Tls,
    /// The secret of the last connection's session, presented on reconnect.
    session: Mutex<Option<String>>,
}

/// Runs this worker has that the server has not yet heard the end of, with
/// the switch that aborts each.
type Active = Arc<Mutex<HashMap<RunRef, watch::Sender<Option<AbortMode>>>>>;

fn lock(active: &Active) -> MutexGuard<'_, HashMap<RunRef, watch::Sender<Option<AbortMode>>>> {
    active.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A frame for the server; `finished` frames end a run's life here once sent.
#[derive(Debug)]
struct Outgoing {
    frame: WorkerFrame,
    finishes: Option<RunRef>,
}

impl Worker {
    /// Checks the options. Bad input (server URL, name, concurrency, command
    /// template) is refused here, before any connection.
    pub fn new(options: WorkerOptions) -> Result<Self> {
        let invalid = |message: String| Error::InvalidUrl { url: options.server.clone(), message };
        let base = options.server.trim_end_matches('/');
        let ws_url = if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/api/v1/workers/connect")
        } else if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/api/v1/workers/connect")
        } else {
            return Err(invalid("expected http://host:port or https://host:port".into()));
        };
        let tls = Tls::load(&options.tls)?;
        godel_core::AgentId::new(&options.name).map_err(|e| Error::Protocol {
            url: options.server.clone(),
            message: format!("invalid worker name {:?}: {}", options.name, e.reason),
        })?;
        if !(1..=1024).contains(&options.concurrency) {
            return Err(Error::Protocol {
                url: options.server.clone(),
                message: format!("concurrency must be 1 to 1024, got {}", options.concurrency),
            });
        }
        let adapter = ProcessAdapter::new(options.process.clone()).map_err(|e| Error::Protocol {
            url: options.server.clone(),
            message: format!("invalid command template: {}", e.reason),
        })?;
        Ok(Self { options, adapter: Arc::new(adapter), ws_url, tls, session: Mutex::new(None) })
    }

    /// Connects and works until drained: by the server (`drain`) or by
    /// cancelling `drain` (e.g. on SIGTERM). Draining finishes the runs in
    /// hand, takes nothing new, says `bye` and returns. Connection losses are
    /// retried with backoff forever; a refusal by the server (bad name, name
    /// taken) is returned as an error.
    pub async fn run(&self, drain: CancellationToken) -> Result<WorkerExit> {
        let active: Active = Arc::default();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let mut runs = JoinSet::new();
        let mut pending: Vec<Outgoing> = Vec::new();
        let mut draining = false;
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                let delay = (BACKOFF_MIN * (1 << (failures - 1).min(8))).min(BACKOFF_MAX);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = drain.cancelled(), if !draining => draining = true,
                }
            }
            let mut session = match self.connect(&active).await {
                Ok(session) => session,
                Err(Refused::Fatal(e)) => return Err(e),
                Err(Refused::Retry(why)) => {
                    tracing::warn!(server = %self.options.server, error = %why, "cannot connect; retrying");
                    failures += 1;
                    continue;
                }
            };
            failures = 0;
            if draining {
                let _ = send(&mut session.socket, &WorkerFrame::Drain).await;
            }
            // Outcomes that ended while disconnected go first.
            let mut lost = false;
            let mut unsent = std::mem::take(&mut pending).into_iter();
            while let Some(outgoing) = unsent.next() {
                if send(&mut session.socket, &outgoing.frame).await.is_err() {
                    pending.push(outgoing);
                    pending.extend(unsent.by_ref());
                    lost = true;
                    break;
                }
                if let Some(run) = outgoing.finishes {
                    lock(&active).remove(&run);
                }
            }
            if lost {
                failures += 1;
                continue;
            }
            let mut ping = tokio::time::interval(session.heartbeat);
            ping.reset();
            let mut silent_ticks = 0;
            let ended = loop {
                if draining && runs.is_empty() && lock(&active).is_empty() {
                    let _ = send(&mut session.socket, &WorkerFrame::Bye).await;
                    let _ = session.socket.close(None).await;
                    return Ok(WorkerExit::Drained);
                }
                tokio::select! {
                    () = drain.cancelled(), if !draining => {
                        tracing::info!("draining: finishing the runs in hand, taking nothing new");
                        draining = true;
                        if send(&mut session.socket, &WorkerFrame::Drain).await.is_err() {
                            break "send failed";
                        }
                    }
                    Some(joined) = runs.join_next() => {
                        if let Err(e) = joined {
                            tracing::error!(error = %e, "a run panicked");
                        }
                    }
                    Some(outgoing) = out_rx.recv() => {
                        if send(&mut session.socket, &outgoing.frame).await.is_err() {
                            pending.push(outgoing);
                            break "send failed";
                        }
                        if let Some(run) = outgoing.finishes {
                            lock(&active).remove(&run);
                        }
                    }
                    _ = ping.tick() => {
                        silent_ticks += 1;
                        if silent_ticks > 3 {
                            break "the server stopped answering";
                        }
                        if session.socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                            break "ping failed";
                        }
                    }
                    incoming = session.socket.next() => {
                        silent_ticks = 0;
                        let text = match incoming {
                            None | Some(Err(_)) => break "connection closed",
                            Some(Ok(Message::Text(text))) => text,
                            Some(Ok(Message::Close(_))) => break "closed by the server",
                            Some(Ok(_)) => continue,
                        };
                        match serde_json::from_str::<ServerFrame>(&text) {
                            Ok(ServerFrame::Assign { task }) => {
                                let run = RunRef { task: task.id, attempt: task.attempt };
                                if draining {
                                    // Assigned before the server saw our drain: give it back as retryable.
                                    let _ = out_tx.send(finished(run, &Outcome::Failed {
                                        error: TaskError::new(TaskErrorKind::Aborted, "the worker is draining"),
                                        retryable: true,
                                    }));
                                    lock(&active).insert(run, watch::channel(None).0);
                                    continue;
                                }
                                let (control, watch) = watch::channel(None);
                                lock(&active).insert(run, control);
                                runs.spawn(execute(self.adapter.clone(), into_task(task), watch, out_tx.clone()));
                            }
                            Ok(ServerFrame::Abort { task, attempt, mode }) => {
                                if let Some(control) = lock(&active).get(&RunRef { task, attempt }) {
                                    control.send_replace(Some(AbortMode::from(mode)));
                                }
                            }
                            Ok(ServerFrame::Drain) => {
                                if !draining {
                                    tracing::info!("the server asked this worker to drain");
                                }
                                draining = true;
                            }
                            Ok(ServerFrame::Error { code, message }) => {
                                tracing::warn!(code, message, "the server reported an error");
                            }
                            Ok(ServerFrame::Welcome { .. }) => {}
                            Err(e) => tracing::warn!(error = %e, frame = %text, "unexpected frame from the server"),
                        }
                    }
                }
            };
            tracing::warn!(reason = ended, runs = lock(&active).len(), "lost the server; reconnecting");
            failures += 1;
        }
    }

    async fn connect(&self, active: &Active) -> std::result::Result<Session, Refused> {
        let mut request = self.ws_url.as_str().into_client_request().map_err(|e| Refused::Retry(e.to_string()))?;
        if let Some(key) = &self.options.api_key {
            let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                Refused::Fatal(Error::Protocol {
                    url: self.options.server.clone(),
                    message: "the API key holds characters a header cannot carry".to_owned(),
                })
            })?;
            request.headers_mut().insert("authorization", value);
        }
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(self.tls.connector()));
        let (mut socket, _) = connect.await.map_err(|e| refusal(&self.options.server, e))?;
        let running: Vec<RunRef> = lock(active).keys().copied().collect();
        let hello = WorkerFrame::Hello {
            name: self.options.name.clone(),
            capabilities: self.options.capabilities.clone(),
            concurrency: self.options.concurrency,
            region: self.options.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            running,
            session: self.session.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        };
        send(&mut socket, &hello).await.map_err(|e| Refused::Retry(e.to_string()))?;
        let welcome = tokio::time::timeout(WELCOME_TIMEOUT, async {
            while let Some(message) = socket.next().await {
                match message {
                    Ok(Message::Text(text)) => return serde_json::from_str::<ServerFrame>(&text).ok(),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
            None
        })
        .await;
        match welcome {
            Ok(Some(ServerFrame::Welcome { agent, heartbeat_ms, session, .. })) => {
                tracing::info!(server = %self.options.server, agent, "connected");
                *self.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(session);
                Ok(Session { socket, heartbeat: Duration::from_millis(heartbeat_ms.max(100)) })
            }
            // Another connection by this name may still be closing on the server: retry.
            Ok(Some(ServerFrame::Error { code, message })) if code == "conflict" => Err(Refused::Retry(message)),
            Ok(Some(ServerFrame::Error { message, .. })) => Err(Refused::Fatal(Error::Protocol {
                url: self.options.server.clone(),
                message: format!("the server refused this worker: {message}"),
            })),
            Ok(_) => Err(Refused::Retry("no welcome from the server".into())),
            Err(_) => Err(Refused::Retry("no welcome within 10 s".into())),
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Session {
    socket: Socket,
    heartbeat: Duration,
}

enum Refused {
    Retry(String),
    Fatal(Error),
}

/// A failed WebSocket handshake: refusals of the credential are final
/// (retrying cannot fix a key), anything else is retried.
fn refusal(server: &str, e: tokio_tungstenite::tungstenite::Error) -> Refused {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match &e {
        WsError::Http(response) if matches!(response.status().as_u16(), 401 | 403) => Refused::Fatal(Error::Protocol {
            url: server.to_owned(),
            message: format!("the server refused this worker's credential (HTTP {})", response.status()),
        }),
        _ => Refused::Retry(e.to_string()),
    }
}

async fn send(
    socket: &mut Socket,
    frame: &WorkerFrame,
) -> std::result::Result<(), tokio_tungstenite::tungstenite::Error> {
    socket.send(Message::text(serde_json::to_string(frame).expect("worker frames serialize"))).await
}

fn finished(run: RunRef, outcome: &Outcome) -> Outgoing {
    Outgoing {
        frame: WorkerFrame::Finished { task: run.task, attempt: run.attempt, outcome: RunOutcome::from(outcome) },
        finishes: Some(run),
    }
}

/// Runs one task with the process adapter, streaming its output, obeying
/// aborts, and queueing its outcome for the server.
async fn execute(
    adapter: Arc<ProcessAdapter>,
    task: Task,
    mut control: watch::Receiver<Option<AbortMode>>,
    out: mpsc::UnboundedSender<Outgoing>,
) {
    let run = RunRef { task: task.id, attempt: task.attempt };
    let session = match adapter.open_session(&task).await {
        Ok(session) => session,
        Err(e) => {
            let error = TaskError::new(TaskErrorKind::Error, e.message);
            let _ = out.send(finished(run, &Outcome::Failed { error, retryable: e.retryable }));
            return;
        }
    };
    let (sink, mut chunks) = OutputSink::channel(64);
    let forward = async {
        while let Some(chunk) = chunks.recv().await {
            let frame =
                WorkerFrame::Output { task: run.task, attempt: run.attempt, stream: chunk.stream, data: chunk.data };
            let _ = out.send(Outgoing { frame, finishes: None });
        }
    };
    let drive = async {
        let mut running = std::pin::pin!(session.run(&task, sink));
        loop {
            tokio::select! {
                outcome = &mut running => return outcome,
                changed = control.changed() => match changed {
                    Ok(()) => {
                        let mode = *control.borrow_and_update();
                        if let Some(mode) = mode {
                            session.abort(mode).await;
                        }
                    }
                    // The worker is going away without asking: let the run end on its own.
                    Err(_) => return running.await,
                },
            }
        }
    };
    let ((), outcome) = tokio::join!(forward, drive);
    session.close(&outcome).await;
    let _ = out.send(finished(run, &outcome));
}

/// A task as this machine runs it: the assignment with the rest of a
/// record filled in.
fn into_task(assignment: Assignment) -> Task {
    let now = Timestamp::now();
    let mut task = Task::pending(assignment.id, TenantId::default_tenant(), NewTask::prompt(""), now);
    task.payload = assignment.payload;
    task.priority = assignment.priority;
    task.capabilities = assignment.capabilities;
    task.attempt = assignment.attempt;
    task.timeout = assignment.timeout_ms.map(Duration::from_millis);
    task.status = TaskStatus::Running;
    task.started_at = Some(now);
    task
}
