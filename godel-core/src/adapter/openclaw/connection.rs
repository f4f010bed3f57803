//! One connection per gateway: a task that owns the WebSocket, performs the
//! handshake, correlates requests with responses, routes run events to the
//! sessions waiting for them, watches liveness and reconnects with backoff.
//!
//! Sessions never touch the socket. They send requests through [`Shared`],
//! which registers a pending entry before the frame leaves; the connection
//! task answers it from the socket. The entry of an `agent` request stays
//! after its first (`accepted`) response, because the final result arrives
//! later under the same id. Every connection has a generation number: a
//! request made for an older generation is never sent on a newer socket, and
//! a session that sees the generation change knows to reconcile its run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::adapter::openclaw::device::DeviceIdentity;
use crate::adapter::openclaw::protocol::{
    Auth, CLIENT_ID, CLIENT_MODE, ClientInfo, ConnectParams, Device, GatewayError, Incoming, PROTOCOL_MAX,
    PROTOCOL_MIN, ROLE, Request, Response, SCOPES, SignatureInput, signature_payload, str_at,
};
use crate::adapter::openclaw::{GatewayAuth, GatewayConfig, GatewayState};
use crate::clock::Clock;
use crate::time::Timestamp;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a gateway said in `hello-ok`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Hello {
    pub(crate) protocol: u32,
    pub(crate) server_version: Option<String>,
    pub(crate) methods: Vec<String>,
    pub(crate) default_agent: Option<String>,
    pub(crate) tick_interval: Duration,
}

/// Whether the socket is up, and which connection it is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct ConnState {
    pub(crate) generation: u64,
    pub(crate) ready: bool,
}

/// The gateway's state as operators and the scheduler see it.
#[derive(Clone, Debug)]
pub(crate) struct Status {
    pub(crate) state: GatewayState,
    pub(crate) message: Option<String>,
    pub(crate) hello: Option<Hello>,
    pub(crate) last_check: Option<Timestamp>,
    pub(crate) device_token: Option<String>,
}

/// A request that could not be answered.
#[derive(Clone, PartialEq, Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("the gateway answered {0}")]
    Gateway(Box<GatewayError>),
    #[error("the connection to the gateway is not ready")]
    NotReady,
    #[error("the connection to the gateway was lost before the answer")]
    Lost,
    #[error("the gateway did not answer within {0:?}")]
    Timeout(Duration),
}

/// A frame waiting for the connection task.
#[derive(Debug)]
struct Outgoing {
    generation: u64,
    id: String,
    text: String,
}

#[derive(Debug)]
struct Pending {
    method: String,
    reply: mpsc::UnboundedSender<Response>,
}

/// A run event (`agent` or `chat`) for a session.
#[derive(Clone, Debug)]
pub(crate) struct RunEvent {
    pub(crate) event: String,
    pub(crate) payload: Value,
}

/// State shared by the connection task, the sessions and the registry.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    device: DeviceIdentity,
    /// Where "now" comes from (the owner's clock: time is an input here).
    clock: Arc<dyn Clock>,
    status: Mutex<Status>,
    pending: Mutex<HashMap<String, Pending>>,
    runs: Mutex<HashMap<String, mpsc::UnboundedSender<RunEvent>>>,
    conn: watch::Sender<ConnState>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    next_id: AtomicU64,
    /// Sessions open on this gateway now.
    pub(crate) active: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned one is safe to reuse.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: GatewayConfig, device: DeviceIdentity, clock: Arc<dyn Clock>) -> (Arc<Self>, Connection) {
        let (tx, rx) = mpsc::unbounded_channel();
        let device_token = crate::adapter::openclaw::device::load_token(&device, &config.name);
        let shared = Arc::new(Self {
            config,
            device,
            clock,
            status: Mutex::new(Status {
                state: GatewayState::Connecting,
                message: None,
                hello: None,
                last_check: None,
                device_token,
            }),
            pending: Mutex::new(HashMap::new()),
            runs: Mutex::new(HashMap::new()),
            conn: watch::Sender::new(ConnState::default()),
            outgoing: tx,
            next_id: AtomicU64::new(1),
            active: AtomicU32::new(0),
        });
        (shared.clone(), Connection { shared, outgoing: rx, child: None, last_start: None })
    }

    pub(crate) fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    pub(crate) fn touch_check(&self) {
        lock(&self.status).last_check = Some(self.clock.now());
    }

    fn set_state(&self, state: GatewayState, message: Option<String>) {
        let mut s = lock(&self.status);
        if s.state != state || s.message != message {
            match &message {
                Some(m) if state == GatewayState::Unusable => {
                    tracing::error!(gateway = %self.config.name, message = %m, "openclaw gateway unusable");
                }
                Some(m) => {
                    tracing::warn!(gateway = %self.config.name, state = %state, message = %m, "openclaw gateway")
                }
                None => tracing::info!(gateway = %self.config.name, state = %state, "openclaw gateway"),
            }
        }
        s.state = state;
        s.message = message;
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<ConnState> {
        self.conn.subscribe()
    }

    pub(crate) fn conn_state(&self) -> ConnState {
        *self.conn.borrow()
    }

    /// Routes events of `run_id` to the returned receiver until the guard drops.
    pub(crate) fn route(self: &Arc<Self>, run_id: &str) -> (mpsc::UnboundedReceiver<RunEvent>, RouteGuard) {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.runs).insert(run_id.to_owned(), tx);
        (rx, RouteGuard { shared: self.clone(), run_id: run_id.to_owned() })
    }

    /// Sends a request; the receiver gets every response with its id (two for `agent`).
    pub(crate) fn send(&self, method: &str, params: &Value) -> Result<mpsc::UnboundedReceiver<Response>, RequestError> {
        let conn = self.conn_state();
        if !conn.ready {
            return Err(RequestError::NotReady);
        }
        let id = format!("godel-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let text = serde_json::to_string(&Request { kind: "req", id: &id, method, params })
            .map_err(|_| RequestError::NotReady)?;
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(id.clone(), Pending { method: method.to_owned(), reply: tx });
        if self.outgoing.send(Outgoing { generation: conn.generation, id: id.clone(), text }).is_err() {
            lock(&self.pending).remove(&id);
            return Err(RequestError::NotReady);
        }
        Ok(rx)
    }

    /// Sends a request and waits for its (first) response.
    pub(crate) async fn request(&self, method: &str, params: &Value, timeout: Duration) -> Result<Value, RequestError> {
        let mut rx = self.send(method, params)?;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(Response { result: Ok(v), .. })) => Ok(v),
            Ok(Some(Response { result: Err(e), .. })) => Err(RequestError::Gateway(Box::new(e))),
            Ok(None) => Err(RequestError::Lost),
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }

    /// Handles a frame; returns whether it was a tick, and the reconnect delay a `shutdown` asked for.
    fn on_frame(&self, text: &str) -> (bool, Option<Duration>) {
        let frame = match Incoming::parse(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(gateway = %self.config.name, error = %e, "ignoring a bad frame from the gateway");
                return (false, None);
            }
        };
        match frame {
            Incoming::Response(r) => {
                let mut pending = lock(&self.pending);
                let keep = match (pending.get(&r.id), &r.result) {
                    (Some(p), Ok(v)) => p.method == "agent" && str_at(v, "status") == Some("accepted"),
                    _ => false,
                };
                let entry = if keep {
                    pending.get(&r.id).map(|p| p.reply.clone())
                } else {
                    pending.remove(&r.id).map(|p| p.reply)
                };
                drop(pending);
                if let Some(reply) = entry {
                    let _ = reply.send(r);
                }
            }
            Incoming::Event { event, payload } => match event.as_str() {
                "agent" | "chat" => {
                    let route = str_at(&payload, "runId").and_then(|id| lock(&self.runs).get(id).cloned());
                    if let Some(tx) = route {
                        let _ = tx.send(RunEvent { event, payload });
                    }
                }
                "shutdown" => {
                    let reason = str_at(&payload, "reason").unwrap_or("no reason given").to_owned();
                    let after = payload.get("restartExpectedMs").and_then(Value::as_u64).map(Duration::from_millis);
                    self.conn.send_modify(|c| c.ready = false);
                    self.set_state(GatewayState::Degraded, Some(format!("the gateway is shutting down: {reason}")));
                    return (false, Some(after.unwrap_or(self.config.timing.backoff_initial)));
                }
                "tick" => return (true, None),
                _ => {}
            },
        }
        (false, None)
    }

    fn lost(&self, message: String, state: GatewayState) {
        self.conn.send_modify(|c| c.ready = false);
        // Dropping the reply senders tells every waiting request the answer will not come.
        lock(&self.pending).clear();
        self.set_state(state, Some(message));
    }
}

/// Removes a run's event route when its session ends.
#[derive(Debug)]
pub(crate) struct RouteGuard {
    shared: Arc<Shared>,
    run_id: String,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        lock(&self.shared.runs).remove(&self.run_id);
    }
}

/// Why a connection attempt failed.
enum Failure {
    /// Retry with backoff (network, restart, rate limit).
    Transient(String),
    /// The gateway answered and asked to be retried no sooner than this (`retryAfterMs`).
    Later(String, Duration),
    /// Needs an operator (pairing, credentials, scopes, version); retried slowly.
    Unusable(String),
}

/// Why a live connection ended, and when to try again.
struct Lost {
    message: String,
    retry_after: Option<Duration>,
}

/// The task that owns one gateway's socket.
#[derive(Debug)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedReceiver<Outgoing>,
    child: Option<tokio::process::Child>,
    last_start: Option<Instant>,
}

impl Connection {
    /// Connects, serves and reconnects until `cancel`.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let timing = self.shared.config.timing.clone();
        let mut backoff = timing.backoff_initial;
        while !cancel.is_cancelled() {
            let attempt = tokio::select! {
                r = self.handshake() => r,
                () = cancel.cancelled() => break,
            };
            let delay = match attempt {
                Ok((socket, hello)) => {
                    backoff = timing.backoff_initial;
                    let lost = self.serve(socket, hello, &cancel).await;
                    self.shared.lost(lost.message, GatewayState::Degraded);
                    lost.retry_after.unwrap_or(backoff)
                }
                Err(Failure::Unusable(message)) => {
                    self.shared.lost(message, GatewayState::Unusable);
                    timing.backoff_max
                }
                Err(Failure::Later(message, after)) => {
                    self.shared.lost(message, GatewayState::Degraded);
                    let d = backoff.max(after);
                    backoff = (backoff * 2).min(timing.backoff_max);
                    d
                }
                Err(Failure::Transient(message)) => {
                    let message = self.autostart(message);
                    self.shared.lost(message, GatewayState::Degraded);
                    let d = backoff;
                    backoff = (backoff * 2).min(timing.backoff_max);
                    d
                }
            };
            self.drop_stale();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => break,
            }
        }
        // Stopping is not a fault: no warning.
        self.shared.conn.send_modify(|c| c.ready = false);
        lock(&self.shared.pending).clear();
        {
            let mut status = lock(&self.shared.status);
            status.state = GatewayState::Degraded;
            status.message = Some("the gateway connection was stopped".into());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Requests queued for a connection that is gone are never sent.
    fn drop_stale(&mut self) {
        while let Ok(o) = self.outgoing.try_recv() {
            lock(&self.shared.pending).remove(&o.id);
        }
    }

    /// Starts the configured local gateway when none answers (and the last
    /// start is not too recent); returns the state message to show.
    fn autostart(&mut self, message: String) -> String {
        let Some(auto) = self.shared.config.autostart.clone() else { return message };
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => return format!("{message}; waiting for the gateway started by Godel to answer"),
                Ok(Some(status)) => {
                    tracing::warn!(gateway = %self.shared.config.name, %status, "the gateway Godel started exited");
                    self.child = None;
                }
                Err(_) => self.child = None,
            }
        }
        if self.last_start.is_some_and(|t| t.elapsed() < self.shared.config.timing.backoff_max) {
            return format!("{message}; the gateway Godel started exited, will start it again");
        }
        self.last_start = Some(Instant::now());
        let mut cmd = tokio::process::Command::new(&auto.command[0]);
        cmd.args(&auto.command[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => {
                tracing::info!(gateway = %self.shared.config.name, command = ?auto.command, pid = ?child.id(), "started a local gateway");
                self.child = Some(child);
                format!("{message}; started the local gateway ({}), probing it", auto.command.join(" "))
            }
            Err(e) => format!("{message}; cannot start the local gateway ({}): {e}", auto.command.join(" ")),
        }
    }

    async fn handshake(&self) -> Result<(Socket, Hello), Failure> {
        let cfg = &self.shared.config;
        let limit = cfg.timing.connect_timeout;
        // Nagle off: requests are small frames that must leave at once (with
        // it, delayed ACKs add about 40 ms to every request).
        let connect = tokio_tungstenite::connect_async_with_config(cfg.url.as_str(), None, true);
        let (mut socket, _) = match tokio::time::timeout(limit, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::Transient(format!("cannot connect to {}: {e}", cfg.url))),
            Err(_) => {
                return Err(Failure::Transient(format!("cannot connect to {}: no answer within {limit:?}", cfg.url)));
            }
        };
        let challenge = tokio::time::timeout(limit, async {
            loop {
                match next_text(&mut socket).await? {
                    Incoming::Event { event, payload } if event == "connect.challenge" => return Ok(payload),
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| Failure::Transient(format!("{} sent no connect.challenge within {limit:?}", cfg.url)))??;
        let nonce = str_at(&challenge, "nonce")
            .ok_or_else(|| Failure::Transient("connect.challenge has no string nonce".into()))?
            .to_owned();
        let signed_at = challenge
            .get("ts")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| u64::try_from(self.shared.clock.now().as_millis()).unwrap_or(0));

        let device_token = lock(&self.shared.status).device_token.clone();
        let auth = match &cfg.auth {
            GatewayAuth::Token(t) => Auth { token: Some(t.clone()), password: None },
            GatewayAuth::Password(p) => Auth { token: None, password: Some(p.clone()) },
            GatewayAuth::None => Auth { token: device_token, password: None },
        };
        let scopes: Vec<String> = SCOPES.iter().map(|s| (*s).to_owned()).collect();
        let platform = std::env::consts::OS.to_owned();
        let signature = self.shared.device.sign(&signature_payload(&SignatureInput {
            device_id: self.shared.device.id(),
            client_id: CLIENT_ID,
            client_mode: CLIENT_MODE,
            role: ROLE,
            scopes: &scopes,
            signed_at,
            token: auth.token.as_deref(),
            nonce: &nonce,
            platform: &platform,
            device_family: None,
        }));
        let params = ConnectParams {
            min_protocol: PROTOCOL_MIN,
            max_protocol: PROTOCOL_MAX,
            client: ClientInfo {
                id: CLIENT_ID,
                version: env!("CARGO_PKG_VERSION"),
                platform,
                mode: CLIENT_MODE,
                display_name: Some("Godel".into()),
            },
            role: ROLE,
            scopes: scopes.clone(),
            caps: vec!["tool-events".into()],
            auth,
            device: Device {
                id: self.shared.device.id().to_owned(),
                public_key: self.shared.device.public_key().to_owned(),
                signature,
                signed_at,
                nonce,
            },
        };
        let params = serde_json::to_value(&params).map_err(|e| Failure::Transient(e.to_string()))?;
        let text = serde_json::to_string(&Request { kind: "req", id: "connect", method: "connect", params: &params })
            .map_err(|e| Failure::Transient(e.to_string()))?;
        socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| Failure::Transient(format!("cannot send connect: {e}")))?;
        let answer = tokio::time::timeout(limit, async {
            loop {
                if let Incoming::Response(r) = next_text(&mut socket).await?
                    && r.id == "connect"
                {
                    return Ok(r.result);
                }
            }
        })
        .await
        .map_err(|_| Failure::Transient(format!("{} did not answer connect within {limit:?}", cfg.url)))??;
        let payload = match answer {
            Ok(p) => p,
            Err(e) => {
                let _ = socket.close(None).await;
                return Err(classify(cfg, &e));
            }
        };
        match self.hello(&payload, &scopes) {
            Ok(hello) => Ok((socket, hello)),
            Err(f) => {
                let _ = socket.close(None).await;
                Err(f)
            }
        }
    }

    fn hello(&self, payload: &Value, requested: &[String]) -> Result<Hello, Failure> {
        let cfg = &self.shared.config;
        if str_at(payload, "type") != Some("hello-ok") {
            return Err(Failure::Transient("connect answered without hello-ok".into()));
        }
        let protocol = payload.get("protocol").and_then(Value::as_u64).unwrap_or(0) as u32;
        if !(PROTOCOL_MIN..=PROTOCOL_MAX).contains(&protocol) {
            return Err(Failure::Unusable(format!(
                "protocol version mismatch: the gateway chose version {protocol}, Godel speaks {PROTOCOL_MIN} to {PROTOCOL_MAX}; \
                 upgrade Godel or the gateway"
            )));
        }
        let granted: Vec<&str> = payload
            .pointer("/auth/scopes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let missing: Vec<&str> = requested.iter().map(String::as_str).filter(|s| !granted.contains(s)).collect();
        if !missing.is_empty() {
            return Err(Failure::Unusable(format!(
                "missing scope: the gateway granted [{}] but Godel needs {}; grant them to device {} on {} \
                 (or connect with a token that carries them)",
                granted.join(", "),
                missing.join(" and "),
                self.shared.device.id(),
                host(&cfg.url),
            )));
        }
        let strings = |ptr: &str| -> Vec<String> {
            payload
                .pointer(ptr)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let tick = payload.pointer("/policy/tickIntervalMs").and_then(Value::as_u64).unwrap_or(30_000);
        let hello = Hello {
            protocol,
            server_version: payload.pointer("/server/version").and_then(Value::as_str).map(str::to_owned),
            methods: strings("/features/methods"),
            default_agent: payload
                .pointer("/snapshot/sessionDefaults/defaultAgentId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            tick_interval: Duration::from_millis(tick.max(1)),
        };
        let mut status = lock(&self.shared.status);
        let token = payload.pointer("/auth/deviceToken").and_then(Value::as_str);
        let new_token = token.filter(|t| status.device_token.as_deref() != Some(*t)).map(str::to_owned);
        if let Some(t) = &new_token {
            status.device_token = Some(t.clone());
        }
        status.hello = Some(hello.clone());
        drop(status);
        if let Some(t) = new_token {
            crate::adapter::openclaw::device::store_token(&self.shared.device, &cfg.name, &t);
        }
        Ok(hello)
    }

    async fn serve(&mut self, socket: Socket, hello: Hello, cancel: &CancellationToken) -> Lost {
        let shared = self.shared.clone();
        let generation = shared.conn_state().generation + 1;
        shared.set_state(GatewayState::Ready, None);
        shared.conn.send_replace(ConnState { generation, ready: true });
        let (mut sink, mut stream) = socket.split();
        let tick = hello.tick_interval;
        let (mut last_tick, mut last_pong) = (Instant::now(), Instant::now());
        let mut watchdog = tokio::time::interval_at(Instant::now() + tick / 2, tick / 2);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_after = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return Lost { message: "stopped".into(), retry_after: None };
                }
                out = self.outgoing.recv() => match out {
                    Some(o) if o.generation == generation => {
                        if let Err(e) = sink.send(Message::Text(o.text.into())).await {
                            return Lost { message: format!("cannot write to the gateway: {e}"), retry_after };
                        }
                    }
                    Some(o) => { lock(&shared.pending).remove(&o.id); }
                    None => return Lost { message: "stopped".into(), retry_after: None },
                },
                msg = stream.next() => {
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            let (tick, after) = shared.on_frame(t.as_str());
                            if tick {
                                last_tick = Instant::now();
                            }
                            if after.is_some() {
                                retry_after = after;
                            }
                        }
                        Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map_or_else(|| "no close code".to_owned(), |f| format!("code {}", u16::from(f.code)));
                            return Lost { message: format!("the gateway closed the connection ({why})"), retry_after };
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Lost { message: format!("the connection to the gateway failed: {e}"), retry_after },
                        None => return Lost { message: "the gateway closed the connection".into(), retry_after },
                    }
                }
                _ = watchdog.tick() => {
                    // Ticks prove the gateway's event loop is alive; pongs prove the socket is.
                    let silent = last_tick.elapsed().max(last_pong.elapsed());
                    if silent > tick * 2 {
                        return Lost {
                            message: format!("no tick or pong from the gateway for {silent:?} (tick interval {tick:?}); reconnecting"),
                            retry_after: Some(Duration::ZERO),
                        };
                    }
                    if let Err(e) = sink.send(Message::Ping(Vec::new().into())).await {
                        return Lost { message: format!("cannot ping the gateway: {e}"), retry_after };
                    }
                }
            }
        }
    }
}

async fn next_text(socket: &mut Socket) -> Result<Incoming, Failure> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) => {
                return Incoming::parse(t.as_str())
                    .map_err(|e| Failure::Transient(format!("bad frame during the handshake: {e}")));
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(Failure::Transient("the gateway closed the connection during the handshake".into()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Failure::Transient(format!("the handshake failed: {e}"))),
        }
    }
}

/// What a refused `connect` means for the operator.
fn classify(cfg: &GatewayConfig, e: &GatewayError) -> Failure {
    let detail = e.detail_code.as_deref().unwrap_or("");
    let host = host(&cfg.url);
    match detail {
        "PAIRING_REQUIRED" => {
            let id = e.details.get("requestId").and_then(Value::as_str).unwrap_or("<request id>");
            Failure::Unusable(format!(
                "pairing required: run `openclaw devices approve {id}` on {host}; Godel retries until it is approved"
            ))
        }
        _ if e.is_retryable() && e.retry_after_ms.is_some() => Failure::Later(
            format!("connect refused for now: {e}"),
            Duration::from_millis(e.retry_after_ms.unwrap_or_default()),
        ),
        "AUTH_RATE_LIMITED" => Failure::Transient(format!("authentication rate-limited by the gateway: {e}")),
        d if d.starts_with("AUTH_") => Failure::Unusable(format!(
            "authentication refused ({d}): check the token or password configured for gateway {} ({})",
            cfg.name, e.message
        )),
        d if d.starts_with("DEVICE_") => {
            Failure::Unusable(format!("the gateway refused Godel's device identity ({d}): {}", e.message))
        }
        d if d.contains("PROTOCOL") => Failure::Unusable(format!(
            "protocol version mismatch: Godel speaks {PROTOCOL_MIN} to {PROTOCOL_MAX} and the gateway refused ({}); \
             upgrade Godel or the gateway",
            e.message
        )),
        _ if e.is_retryable() => Failure::Transient(format!("connect refused: {e}")),
        _ => Failure::Unusable(format!("connect refused: {e}")),
    }
}

/// `host:port` of a `ws://` URL, for messages.
pub(crate) fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str, details: Value, retry_after: Option<u64>) -> GatewayError {
        let mut v = serde_json::json!({"code": code, "message": "m", "details": details});
        if let Some(ms) = retry_after {
            v["retryable"] = true.into();
            v["retryAfterMs"] = ms.into();
        }
        GatewayError::from_value(&v)
    }

    #[test]
    fn refused_connects_say_what_to_do() {
        let cfg = GatewayConfig::new("home", "ws://10.0.0.5:18789/");
        let pairing = error("NOT_PAIRED", serde_json::json!({"code": "PAIRING_REQUIRED", "requestId": "r-1"}), None);
        let Failure::Unusable(m) = classify(&cfg, &pairing) else { panic!("pairing needs an operator") };
        assert!(m.contains("run `openclaw devices approve r-1` on 10.0.0.5:18789"), "{m}");
        let busy = error("UNAVAILABLE", Value::Null, Some(5_000));
        assert!(matches!(classify(&cfg, &busy), Failure::Later(_, d) if d == Duration::from_secs(5)));
        let token = error("UNAUTHORIZED", serde_json::json!({"code": "AUTH_TOKEN_MISMATCH"}), None);
        assert!(matches!(classify(&cfg, &token), Failure::Unusable(m) if m.contains("AUTH_TOKEN_MISMATCH")));
        let limited = error("UNAUTHORIZED", serde_json::json!({"code": "AUTH_RATE_LIMITED"}), None);
        assert!(matches!(classify(&cfg, &limited), Failure::Transient(_)));
        assert_eq!(host("ws://h:1/path"), "h:1");
    }
}
