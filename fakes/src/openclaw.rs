//! A fake OpenClaw gateway (protocol 3/4), as strict as the real one, for the
//! adapter's tests and benchmarks.
//!
//! What it enforces, like release 2026.9.6: the gateway speaks first
//! (`connect.challenge`); the first request must be `connect`; params objects
//! are closed (an unknown field or a `null` is `INVALID_REQUEST`); client ids
//! and modes come from closed lists; the device id, nonce and the Ed25519
//! signature over the exact `v3|…` string are verified; token or password auth;
//! pairing with a request id and an [`FakeGateway::approve`] control; scopes
//! per method (`FORBIDDEN` / `MISSING_SCOPE`); `agent` answers twice under
//! one id; `agent` and `chat` events carry per-run sequence numbers; the
//! idempotency key is the run id, and a repeated key returns the existing run.
//!
//! What a test can do to it: script runs (text deltas, tool calls, usage,
//! errors, runs that hang until aborted), drop every connection while runs go
//! on, stop and restart it on the same port, silence its ticks, announce a
//! shutdown; and count what it saw (runs per idempotency key, aborts).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const CLIENT_IDS: [&str; 8] =
    ["cli", "gateway-client", "test", "webchat", "webchat-ui", "node-host", "openclaw-macos", "openclaw-ios"];
const CLIENT_MODES: [&str; 8] = ["cli", "backend", "ui", "test", "worker", "probe", "webchat", "node"];
const SCOPES: [&str; 3] = ["operator.read", "operator.write", "operator.admin"];
const PRE_HANDSHAKE_LIMIT: usize = 64 * 1024;

/// How the gateway authenticates connections.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub enum FakeAuth {
    /// Anyone (with a device).
    #[default]
    None,
    /// `auth.token` must match (or be a device token this gateway issued).
    Token(String),
    /// `auth.password` must match.
    Password(String),
}

/// One step of a scripted run.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Step {
    /// Assistant text, streamed as a delta.
    Text(String),
    /// A tool call: `start`, then `result`.
    Tool {
        /// The tool's name.
        name: String,
        /// Whether the result is an error.
        error: bool,
    },
}

/// How a scripted run ends.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RunEnd {
    /// Success with the streamed text as the reply.
    Ok,
    /// A lifecycle error and a failed final response (`UNAVAILABLE`, retryable).
    Error(String),
    /// Keeps running until aborted.
    Hang,
}

/// What a run does.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RunScript {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Pause before each step.
    pub step_delay: Duration,
    /// Input and output tokens reported.
    pub usage: (u64, u64),
    /// How it ends.
    pub end: RunEnd,
}

impl RunScript {
    /// Replies `echo: <message>` in two deltas, with one tool call.
    pub fn echo(message: &str) -> Self {
        Self {
            steps: vec![
                Step::Text("echo: ".into()),
                Step::Tool { name: "read".into(), error: false },
                Step::Text(message.to_owned()),
            ],
            step_delay: Duration::ZERO,
            usage: (12, 5),
            end: RunEnd::Ok,
        }
    }
}

/// Turns a run's message into its script.
pub type Script = Arc<dyn Fn(&str) -> RunScript + Send + Sync>;

/// How the fake behaves.
#[derive(Clone)]
pub struct FakeConfig {
    /// Authentication mode.
    pub auth: FakeAuth,
    /// Devices must be approved (loopback auto-approval is off, as for a remote gateway).
    pub require_pairing: bool,
    /// Protocol versions spoken (3..4 for current gateways).
    pub protocols: (u32, u32),
    /// Scopes it grants at most (None: whatever is requested).
    pub grantable_scopes: Option<Vec<String>>,
    /// `policy.tickIntervalMs`.
    pub tick_interval: Duration,
    /// Offer `sessions.abort` (version 4); without it only `chat.abort` exists.
    pub sessions_abort: bool,
    /// `snapshot.sessionDefaults.defaultAgentId`.
    pub default_agent: String,
    /// Agent ids it hosts (runs for others fail with `INVALID_REQUEST`).
    pub agents: Vec<String>,
    /// What runs do.
    pub script: Script,
    /// Never deliver the `agent` event with this per-run sequence number (a gap).
    pub lose_seq: Option<u64>,
}

impl std::fmt::Debug for FakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeConfig")
            .field("auth", &self.auth)
            .field("require_pairing", &self.require_pairing)
            .field("protocols", &self.protocols)
            .field("tick_interval", &self.tick_interval)
            .finish_non_exhaustive()
    }
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            auth: FakeAuth::None,
            require_pairing: false,
            protocols: (3, 4),
            grantable_scopes: None,
            tick_interval: Duration::from_secs(15),
            sessions_abort: true,
            default_agent: "main".into(),
            agents: vec!["main".into()],
            script: Arc::new(RunScript::echo),
            lose_seq: None,
        }
    }
}

/// A running fake gateway on loopback. Stops everything when dropped.
#[derive(Debug)]
pub struct FakeGateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Mutex<FakeConfigCell>,
    addr: SocketAddr,
    state: Mutex<State>,
    tasks: Mutex<JoinSet<()>>,
    listener: Mutex<Option<tokio::task::AbortHandle>>,
    silent: AtomicBool,
    refusing: AtomicBool,
    next_conn: AtomicU64,
}

/// Wraps the config so `Inner` can derive Debug.
#[derive(Debug)]
struct FakeConfigCell(FakeConfig);

#[derive(Default, Debug)]
struct State {
    conns: HashMap<u64, Conn>,
    runs: HashMap<String, Run>,
    started: HashMap<String, u32>,
    aborts: u64,
    connects: u64,
    pairing: HashMap<String, String>,
    approved: HashSet<String>,
    device_tokens: HashSet<String>,
    history: HashMap<String, String>,
    active: usize,
    peak: usize,
    run_times: Vec<Duration>,
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Out>,
    ready: bool,
    /// Declared `caps: ["tool-events"]`: only such connections see tool events.
    tool_events: bool,
}

#[derive(Debug)]
struct Run {
    session_key: String,
    agent_id: String,
    requester: Option<(u64, String)>,
    abort: watch::Sender<bool>,
    /// `(status, stopReason)` once ended.
    ended: watch::Sender<Option<(String, String, u64)>>,
    final_frame: Option<(bool, Value)>,
    seq: u64,
    chat_seq: u64,
    /// Order of acceptance: runs on one session key go in this order.
    order: u64,
}

#[derive(Debug)]
enum Out {
    Frame(String),
    Close(CloseCode, String),
    Drop,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl FakeGateway {
    /// Starts a gateway on a free loopback port.
    pub async fn start(config: FakeConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            config: Mutex::new(FakeConfigCell(config)),
            addr,
            state: Mutex::new(State::default()),
            tasks: Mutex::new(JoinSet::new()),
            listener: Mutex::new(None),
            silent: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
        });
        Inner::listen(&inner, listener);
        Ok(Self { inner })
    }

    /// `ws://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.inner.addr)
    }

    /// Runs started for an idempotency key (a second start would be a bug in the client).
    pub fn runs_started(&self, idempotency_key: &str) -> u32 {
        lock(&self.inner.state).started.get(idempotency_key).copied().unwrap_or(0)
    }

    /// Runs started in total.
    pub fn total_runs_started(&self) -> u32 {
        lock(&self.inner.state).started.values().sum()
    }

    /// Idempotency keys of the runs started, sorted.
    pub fn run_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.inner.state).started.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Runs not yet ended.
    pub fn active_runs(&self) -> usize {
        lock(&self.inner.state).runs.values().filter(|r| r.ended.borrow().is_none()).count()
    }

    /// The most runs that were active at once.
    pub fn peak_active_runs(&self) -> usize {
        lock(&self.inner.state).peak
    }

    /// How long each finished run took inside the gateway, from the `agent`
    /// request to the final response (the fake's own time, for benchmarks).
    pub fn run_times(&self) -> Vec<Duration> {
        lock(&self.inner.state).run_times.clone()
    }

    /// Abort requests received (`sessions.abort` and `chat.abort`).
    pub fn aborts_received(&self) -> u64 {
        lock(&self.inner.state).aborts
    }

    /// Successful handshakes.
    pub fn connects(&self) -> u64 {
        lock(&self.inner.state).connects
    }

    /// Open, handshaken connections.
    pub fn connections(&self) -> usize {
        lock(&self.inner.state).conns.values().filter(|c| c.ready).count()
    }

    /// Pending pairing request ids.
    pub fn pairing_requests(&self) -> Vec<String> {
        lock(&self.inner.state).pairing.values().cloned().collect()
    }

    /// Approves a pairing request (`openclaw devices approve <id>`); false if unknown.
    pub fn approve(&self, request_id: &str) -> bool {
        let mut state = lock(&self.inner.state);
        let device = state.pairing.iter().find(|(_, r)| *r == request_id).map(|(d, _)| d.clone());
        match device {
            Some(d) => {
                state.pairing.remove(&d);
                state.approved.insert(d);
                true
            }
            None => false,
        }
    }

    /// Stops sending ticks (the client's watchdog should notice).
    pub fn set_silent(&self, silent: bool) {
        self.inner.silent.store(silent, Ordering::SeqCst);
    }

    /// Closes new connections at once (as a gateway that is unreachable for a while); runs go on.
    pub fn set_refusing(&self, refusing: bool) {
        self.inner.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Changes the config for new connections and runs.
    pub fn reconfigure(&self, change: impl FnOnce(&mut FakeConfig)) {
        change(&mut lock(&self.inner.config).0);
    }

    /// Drops every connection abruptly (no close frame); runs go on.
    pub fn drop_connections(&self) {
        let state = lock(&self.inner.state);
        for c in state.conns.values() {
            let _ = c.tx.send(Out::Drop);
        }
    }

    /// Announces a shutdown (`shutdown` event, then close 1012); runs go on.
    pub fn announce_shutdown(&self, restart_expected: Duration) {
        let frame =
            event("shutdown", &json!({"reason": "restart", "restartExpectedMs": restart_expected.as_millis() as u64}));
        let state = lock(&self.inner.state);
        for c in state.conns.values().filter(|c| c.ready) {
            let _ = c.tx.send(Out::Frame(frame.clone()));
            let _ = c.tx.send(Out::Close(CloseCode::Restart, "restart".into()));
        }
    }

    /// Kills the gateway: listener, connections and runs (as a crashed process would lose them).
    pub fn stop(&self) {
        if let Some(h) = lock(&self.inner.listener).take() {
            h.abort();
        }
        let mut state = lock(&self.inner.state);
        for c in state.conns.values() {
            let _ = c.tx.send(Out::Drop);
        }
        state.conns.clear();
        for run in state.runs.values() {
            // Hung runs end with the process; their clients never hear of it.
            run.abort.send_replace(true);
        }
        state.runs.clear();
        state.active = 0;
        drop(state);
        lock(&self.inner.tasks).abort_all();
    }

    /// Starts listening again on the same port after [`FakeGateway::stop`].
    pub async fn restart(&self) -> anyhow::Result<()> {
        // The stopped listener closes when its aborted task is dropped, which
        // happens on the runtime's next turn: retry the bind briefly.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.inner.addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        Inner::listen(&self.inner, listener);
        Ok(())
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

fn event(name: &str, payload: &Value) -> String {
    json!({"type": "event", "event": name, "payload": payload}).to_string()
}

fn res_ok(id: &str, payload: &Value) -> String {
    json!({"type": "res", "id": id, "ok": true, "payload": payload}).to_string()
}

fn res_err(id: &str, code: &str, message: &str, details: Option<Value>, retryable: Option<bool>) -> String {
    let mut error = json!({"code": code, "message": message});
    if let Some(d) = details {
        error["details"] = d;
    }
    if let Some(r) = retryable {
        error["retryable"] = json!(r);
    }
    json!({"type": "res", "id": id, "ok": false, "error": error}).to_string()
}

/// A request frame, closed like the real schema.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReqFrame {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    method: String,
    params: Option<Value>,
    traceparent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConnectParams {
    min_protocol: u32,
    max_protocol: u32,
    client: ClientParams,
    role: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    auth: Option<AuthParams>,
    device: Option<DeviceParams>,
    locale: Option<String>,
    user_agent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClientParams {
    id: String,
    version: String,
    platform: String,
    mode: String,
    display_name: Option<String>,
    device_family: Option<String>,
    instance_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthParams {
    token: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeviceParams {
    id: String,
    public_key: String,
    signature: String,
    signed_at: u64,
    nonce: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AgentParams {
    message: String,
    session_key: String,
    idempotency_key: String,
    agent_id: Option<String>,
    label: Option<String>,
    extra_system_prompt: Option<String>,
    timeout: Option<u64>,
    deliver: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WaitParams {
    run_id: String,
    timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SessionsAbortParams {
    key: String,
    run_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChatAbortParams {
    session_key: String,
    run_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HistoryParams {
    session_key: String,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Where a `null` hides in a params object (the real schema refuses them).
fn find_null(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::Null => Some(path.to_owned()),
        Value::Object(m) => m.iter().find_map(|(k, v)| find_null(v, &format!("{path}.{k}"))),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| find_null(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn parse<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, String> {
    if let Some(path) = find_null(params, "params") {
        return Err(format!("invalid params: {path} is null"));
    }
    serde_json::from_value(params.clone()).map_err(|e| format!("invalid params: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Per-connection handshake state.
struct Session {
    id: u64,
    nonce: String,
    scopes: Vec<String>,
    tool_events: bool,
    ready: bool,
}

impl Inner {
    fn config(&self) -> FakeConfig {
        lock(&self.config).0.clone()
    }

    fn spawn(self: &Arc<Self>, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(fut);
    }

    fn listen(self: &Arc<Self>, listener: TcpListener) {
        let inner = self.clone();
        let handle = lock(&self.tasks).spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = inner.clone();
                inner.spawn(async move { conn.serve(stream).await });
            }
        });
        *lock(&self.listener) = Some(handle);
    }

    fn broadcast(&self, frame: &str) {
        self.broadcast_to(frame, false);
    }

    fn broadcast_to(&self, frame: &str, tool: bool) {
        let state = lock(&self.state);
        for c in state.conns.values().filter(|c| c.ready && (c.tool_events || !tool)) {
            let _ = c.tx.send(Out::Frame(frame.to_owned()));
        }
    }

    fn send_to(&self, conn: u64, frame: String) {
        if let Some(c) = lock(&self.state).conns.get(&conn) {
            let _ = c.tx.send(Out::Frame(frame));
        }
    }

    async fn serve(self: Arc<Self>, stream: TcpStream) {
        if self.refusing.load(Ordering::SeqCst) {
            return;
        }
        let _ = stream.set_nodelay(true);
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.state).conns.insert(id, Conn { tx: tx.clone(), ready: false, tool_events: false });
        let config = self.config();
        let nonce = uuid::Uuid::new_v4().to_string();
        let _ = tx.send(Out::Frame(event("connect.challenge", &json!({"nonce": nonce, "ts": now_ms()}))));
        let mut session = Session { id, nonce, scopes: Vec::new(), tool_events: false, ready: false };
        let mut tick = tokio::time::interval(config.tick_interval);
        tick.reset();
        let handshake_deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(handshake_deadline);
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(Out::Frame(f)) => {
                        if sink.send(Message::Text(f.into())).await.is_err() {
                            break;
                        }
                    }
                    Some(Out::Close(code, reason)) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        break;
                    }
                    Some(Out::Drop) | None => break,
                },
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if !session.ready && t.len() > PRE_HANDSHAKE_LIMIT {
                            let _ = tx.send(Out::Close(CloseCode::Size, "frame too large before the handshake".into()));
                            continue;
                        }
                        self.on_text(&mut session, t.as_str(), &tx);
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                _ = tick.tick(), if session.ready => {
                    if !self.silent.load(Ordering::SeqCst) {
                        let _ = tx.send(Out::Frame(event("tick", &json!({"ts": now_ms()}))));
                    }
                }
                () = &mut handshake_deadline, if !session.ready => {
                    let _ = tx.send(Out::Close(CloseCode::Policy, "connect timeout".into()));
                }
            }
        }
        lock(&self.state).conns.remove(&id);
    }

    fn on_text(self: &Arc<Self>, session: &mut Session, text: &str, tx: &mpsc::UnboundedSender<Out>) {
        let reply = |f: String| {
            let _ = tx.send(Out::Frame(f));
        };
        let frame: ReqFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                reply(res_err(&id, "INVALID_REQUEST", &format!("invalid frame: {e}"), None, None));
                if !session.ready {
                    let _ = tx.send(Out::Close(CloseCode::Policy, "invalid frame".into()));
                }
                return;
            }
        };
        if frame.kind != "req" {
            reply(res_err(&frame.id, "INVALID_REQUEST", "expected a req frame", None, None));
            return;
        }
        let params = frame.params.clone().unwrap_or(json!({}));
        if !session.ready {
            if frame.method != "connect" || frame.traceparent.is_some() {
                reply(res_err(&frame.id, "INVALID_REQUEST", "the first request must be connect", None, None));
                let _ = tx.send(Out::Close(CloseCode::Policy, "connect required".into()));
                return;
            }
            match self.connect(session, &params) {
                Ok(hello) => {
                    session.ready = true;
                    if let Some(c) = lock(&self.state).conns.get_mut(&session.id) {
                        c.ready = true;
                        c.tool_events = session.tool_events;
                    }
                    reply(res_ok(&frame.id, &hello));
                }
                Err((code, message, details)) => {
                    reply(res_err(&frame.id, code, &message, details, None));
                    let _ = tx.send(Out::Close(CloseCode::Policy, "connect failed".into()));
                }
            }
            return;
        }
        if frame.method == "connect" {
            reply(res_err(&frame.id, "INVALID_REQUEST", "already connected", None, None));
            return;
        }
        let needed = match frame.method.as_str() {
            "health" => None,
            "status" | "chat.history" => Some("operator.read"),
            "agent" | "agent.wait" | "chat.abort" | "sessions.abort" => Some("operator.write"),
            _ => {
                reply(res_err(&frame.id, "INVALID_REQUEST", &format!("unknown method: {}", frame.method), None, None));
                return;
            }
        };
        if frame.method == "sessions.abort" && !self.config().sessions_abort {
            reply(res_err(&frame.id, "INVALID_REQUEST", "unknown method: sessions.abort", None, None));
            return;
        }
        if let Some(scope) = needed
            && !session.scopes.iter().any(|s| s == scope || s == "operator.admin")
        {
            let details = json!({"code": "MISSING_SCOPE", "scope": scope});
            reply(res_err(&frame.id, "FORBIDDEN", &format!("missing scope: {scope}"), Some(details), None));
            return;
        }
        let result = match frame.method.as_str() {
            "health" => parse::<Empty>(&params).map(|_| Some(json!({"ok": true}))),
            "status" => {
                parse::<Empty>(&params).map(|_| Some(json!({"ok": true, "runs": lock(&self.state).runs.len()})))
            }
            "chat.history" => parse::<HistoryParams>(&params).map(|p| {
                let text = lock(&self.state).history.get(&p.session_key).cloned();
                let messages: Vec<Value> = text
                    .into_iter()
                    .take(p.limit.unwrap_or(20) as usize)
                    .map(|t| json!({"role": "assistant", "content": [{"type": "text", "text": t}]}))
                    .collect();
                Some(json!({"sessionKey": p.session_key, "messages": messages}))
            }),
            "agent" => parse::<AgentParams>(&params).and_then(|p| self.agent(session.id, &frame.id, p)),
            "agent.wait" => parse::<WaitParams>(&params).map(|p| {
                self.wait(session.id, frame.id.clone(), p);
                None
            }),
            "sessions.abort" => parse::<SessionsAbortParams>(&params).map(|p| {
                let aborted = self.abort(&p.key, p.run_id.as_deref());
                Some(match aborted.first() {
                    Some(run) => json!({"ok": true, "abortedRunId": run, "status": "aborted"}),
                    None => json!({"ok": true, "status": "no-active-run"}),
                })
            }),
            "chat.abort" => parse::<ChatAbortParams>(&params).map(|p| {
                let aborted = self.abort(&p.session_key, p.run_id.as_deref());
                Some(json!({"ok": true, "aborted": !aborted.is_empty(), "runIds": aborted}))
            }),
            _ => unreachable!("methods are checked above"),
        };
        match result {
            Ok(Some(payload)) => reply(res_ok(&frame.id, &payload)),
            Ok(None) => {}
            Err(message) => reply(res_err(&frame.id, "INVALID_REQUEST", &message, None, None)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn connect(&self, session: &mut Session, params: &Value) -> Result<Value, (&'static str, String, Option<Value>)> {
        let config = self.config();
        let invalid = |m: String| ("INVALID_REQUEST", m, None);
        let p: ConnectParams = parse(params).map_err(invalid)?;
        let (lo, hi) = config.protocols;
        if p.min_protocol > p.max_protocol || p.max_protocol < lo || p.min_protocol > hi {
            return Err((
                "INVALID_REQUEST",
                format!("protocol mismatch: client speaks {}..{}, gateway {lo}..{hi}", p.min_protocol, p.max_protocol),
                Some(json!({"code": "PROTOCOL_MISMATCH", "expectedProtocol": hi})),
            ));
        }
        let protocol = p.max_protocol.min(hi);
        if !CLIENT_IDS.contains(&p.client.id.as_str()) {
            return Err(invalid(format!("invalid params: client.id {:?} is not an allowed client id", p.client.id)));
        }
        if !CLIENT_MODES.contains(&p.client.mode.as_str()) {
            return Err(invalid(format!("invalid params: client.mode {:?} is not an allowed mode", p.client.mode)));
        }
        if p.role != "operator" && p.role != "node" {
            return Err(invalid(format!("invalid params: role {:?}", p.role)));
        }
        if let Some(s) = p.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
            return Err(invalid(format!("invalid params: unknown scope {s:?}")));
        }
        let auth = p.auth.as_ref();
        let token = auth.and_then(|a| a.token.clone());
        let detail = |code: &str| Some(json!({"code": code}));
        match &config.auth {
            FakeAuth::None => {}
            FakeAuth::Token(expected) => match &token {
                None => return Err(("UNAUTHORIZED", "token required".into(), detail("AUTH_TOKEN_MISSING"))),
                Some(t) if t != expected && !lock(&self.state).device_tokens.contains(t) => {
                    return Err(("UNAUTHORIZED", "token mismatch".into(), detail("AUTH_TOKEN_MISMATCH")));
                }
                Some(_) => {}
            },
            FakeAuth::Password(expected) => match auth.and_then(|a| a.password.as_ref()) {
                None => return Err(("UNAUTHORIZED", "password required".into(), detail("AUTH_PASSWORD_MISSING"))),
                Some(pw) if pw != expected => {
                    return Err(("UNAUTHORIZED", "password mismatch".into(), detail("AUTH_PASSWORD_MISMATCH")));
                }
                Some(_) => {}
            },
        }
        let Some(device) = &p.device else {
            return Err(("UNAUTHORIZED", "device identity required".into(), detail("DEVICE_IDENTITY_REQUIRED")));
        };
        let bad = |code: &'static str, m: &str| ("UNAUTHORIZED", m.to_owned(), Some(json!({"code": code})));
        let public = URL_SAFE_NO_PAD
            .decode(&device.public_key)
            .map_err(|_| bad("DEVICE_AUTH_PUBLIC_KEY_INVALID", "bad public key"))?;
        let public: [u8; 32] =
            public.try_into().map_err(|_| bad("DEVICE_AUTH_PUBLIC_KEY_INVALID", "bad public key"))?;
        if hex(&Sha256::digest(public)) != device.id {
            return Err(bad("DEVICE_AUTH_DEVICE_ID_MISMATCH", "device id does not match the public key"));
        }
        if device.nonce != session.nonce {
            return Err(bad("DEVICE_AUTH_NONCE_MISMATCH", "nonce does not match the challenge"));
        }
        if device.signed_at.abs_diff(now_ms()) > 10 * 60 * 1000 {
            return Err(bad("DEVICE_AUTH_SIGNATURE_EXPIRED", "signature expired"));
        }
        let key =
            VerifyingKey::from_bytes(&public).map_err(|_| bad("DEVICE_AUTH_PUBLIC_KEY_INVALID", "bad public key"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(&device.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| bad("DEVICE_AUTH_SIGNATURE_INVALID", "malformed signature"))?;
        let base = format!(
            "{}|{}|{}|{}|{}|{}|{}",
            device.id,
            p.client.id,
            p.client.mode,
            p.role,
            p.scopes.join(","),
            device.signed_at,
            token.as_deref().unwrap_or("")
        );
        let v3 = format!(
            "v3|{base}|{}|{}|{}",
            device.nonce,
            p.client.platform.to_lowercase(),
            p.client.device_family.as_deref().unwrap_or("").to_lowercase()
        );
        let v2 = format!("v2|{base}|{}", device.nonce);
        let verified = key.verify(v3.as_bytes(), &sig).is_ok() || (lo <= 3 && key.verify(v2.as_bytes(), &sig).is_ok());
        if !verified {
            return Err(bad("DEVICE_AUTH_SIGNATURE_INVALID", "signature does not verify"));
        }
        let mut state = lock(&self.state);
        if config.require_pairing && !state.approved.contains(&device.id) {
            let request =
                state.pairing.entry(device.id.clone()).or_insert_with(|| uuid::Uuid::new_v4().to_string()).clone();
            return Err((
                "NOT_PAIRED",
                "pairing required".into(),
                Some(json!({"code": "PAIRING_REQUIRED", "requestId": request})),
            ));
        }
        let granted: Vec<String> = p
            .scopes
            .iter()
            .filter(|s| config.grantable_scopes.as_ref().is_none_or(|g| g.contains(s)))
            .cloned()
            .collect();
        let device_token = format!("devtok-{}", uuid::Uuid::new_v4().simple());
        state.device_tokens.insert(device_token.clone());
        state.connects += 1;
        drop(state);
        session.scopes = granted.clone();
        session.tool_events = p.caps.iter().any(|c| c == "tool-events");
        let _ = (&p.locale, &p.user_agent, &p.client.version, &p.client.display_name, &p.client.instance_id);
        let mut methods = vec!["health", "status", "agent", "agent.wait", "chat.send", "chat.abort", "chat.history"];
        if config.sessions_abort {
            methods.push("sessions.abort");
        }
        Ok(json!({
            "type": "hello-ok",
            "protocol": protocol,
            "server": {"version": "2026.9.6-fake", "connId": format!("conn-{}", session.id)},
            "features": {"methods": methods, "events": ["agent", "chat", "tick", "shutdown", "health"]},
            "snapshot": {"sessionDefaults": {"defaultAgentId": config.default_agent, "mainSessionKey": format!("agent:{}:main", config.default_agent)}},
            "policy": {"maxPayload": 25 * 1024 * 1024, "maxBufferedBytes": 50 * 1024 * 1024, "tickIntervalMs": config.tick_interval.as_millis() as u64},
            "auth": {"role": p.role, "scopes": granted, "deviceToken": device_token},
        }))
    }

    fn agent(self: &Arc<Self>, conn: u64, req: &str, p: AgentParams) -> Result<Option<Value>, String> {
        let config = self.config();
        let agent_id = p.agent_id.clone().unwrap_or_else(|| config.default_agent.clone());
        if !config.agents.contains(&agent_id) {
            return Err(format!("unknown agent id {agent_id:?}"));
        }
        if !p.session_key.starts_with(&format!("agent:{agent_id}:")) {
            return Err(format!("sessionKey {:?} does not belong to agent {agent_id}", p.session_key));
        }
        if p.label.as_ref().is_some_and(|l| l.chars().count() > 64) {
            return Err("label is longer than 64 characters".into());
        }
        let _ = (&p.extra_system_prompt, p.timeout, p.deliver);
        let run_id = p.idempotency_key.clone();
        let mut state = lock(&self.state);
        if let Some(run) = state.runs.get(&run_id) {
            // A repeated key: the existing run, never a second one.
            return Ok(Some(match &run.final_frame {
                Some((true, payload)) => payload.clone(),
                Some((false, error)) => {
                    let frame = json!({"type": "res", "id": req, "ok": false, "error": error}).to_string();
                    drop(state);
                    self.send_to(conn, frame);
                    return Ok(None);
                }
                None => {
                    json!({"runId": run_id, "sessionKey": run.session_key, "agentId": run.agent_id, "status": "in_flight"})
                }
            }));
        }
        *state.started.entry(run_id.clone()).or_insert(0) += 1;
        state.active += 1;
        state.peak = state.peak.max(state.active);
        let (abort, abort_rx) = watch::channel(false);
        state.runs.insert(
            run_id.clone(),
            Run {
                session_key: p.session_key.clone(),
                agent_id: agent_id.clone(),
                requester: Some((conn, req.to_owned())),
                abort,
                ended: watch::Sender::new(None),
                final_frame: None,
                seq: 0,
                chat_seq: 0,
                order: self.next_conn.fetch_add(1, Ordering::Relaxed),
            },
        );
        drop(state);
        let script = (config.script)(&p.message);
        let inner = self.clone();
        let rid = run_id.clone();
        let received = std::time::Instant::now();
        self.spawn(async move { inner.execute(rid, script, abort_rx, received).await });
        Ok(Some(
            json!({"runId": run_id, "sessionKey": p.session_key, "agentId": agent_id, "status": "accepted", "acceptedAt": now_ms()}),
        ))
    }

    /// Emits an `agent` event of a run with the next sequence number.
    fn agent_event(&self, run_id: &str, stream: &str, data: Value) {
        let lose = lock(&self.config).0.lose_seq;
        let frame = {
            let mut state = lock(&self.state);
            let Some(run) = state.runs.get_mut(run_id) else { return };
            run.seq += 1;
            if lose == Some(run.seq) {
                return; // lost on the way: the client sees a gap
            }
            event(
                "agent",
                &json!({"runId": run_id, "sessionKey": run.session_key, "agentId": run.agent_id, "stream": stream, "data": data, "seq": run.seq, "ts": now_ms()}),
            )
        };
        self.broadcast_to(&frame, stream == "tool");
    }

    fn chat_event(&self, run_id: &str, state_name: &str, extra: Value) {
        let frame = {
            let mut state = lock(&self.state);
            let Some(run) = state.runs.get_mut(run_id) else { return };
            run.chat_seq += 1;
            let mut payload =
                json!({"runId": run_id, "sessionKey": run.session_key, "seq": run.chat_seq, "state": state_name});
            if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), extra) {
                p.extend(extra);
            }
            event("chat", &payload)
        };
        self.broadcast(&frame);
    }

    async fn execute(
        self: Arc<Self>,
        run_id: String,
        script: RunScript,
        mut abort: watch::Receiver<bool>,
        received: std::time::Instant,
    ) {
        // Runs on one session key are serialized, like the real gateway's:
        // this one starts when every earlier one on its key has ended.
        let mut aborted = false;
        loop {
            let blocker = {
                let state = lock(&self.state);
                let Some(me) = state.runs.get(&run_id) else { return };
                state
                    .runs
                    .values()
                    .filter(|r| r.session_key == me.session_key && r.order < me.order && r.ended.borrow().is_none())
                    .map(|r| r.ended.subscribe())
                    .next()
            };
            let Some(mut earlier) = blocker else { break };
            tokio::select! {
                _ = earlier.wait_for(Option::is_some) => {}
                _ = abort.wait_for(|a| *a) => { aborted = true; break; }
            }
        }
        let started = now_ms();
        self.agent_event(&run_id, "lifecycle", json!({"phase": "start", "startedAt": started}));
        self.agent_event(&run_id, "lifecycle", json!({"phase": "model", "provider": "fake", "model": "fake-1"}));
        let mut text = String::new();
        for (i, step) in script.steps.iter().enumerate() {
            if aborted {
                break;
            }
            if !script.step_delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(script.step_delay) => {}
                    _ = abort.wait_for(|a| *a) => { aborted = true; break; }
                }
            }
            if *abort.borrow() {
                aborted = true;
                break;
            }
            match step {
                Step::Text(t) => {
                    text.push_str(t);
                    self.agent_event(&run_id, "assistant", json!({"text": text, "delta": t}));
                    self.chat_event(&run_id, "delta", json!({"deltaText": t}));
                }
                Step::Tool { name, error } => {
                    let call = format!("call-{i}");
                    self.agent_event(&run_id, "tool", json!({"phase": "start", "name": name, "toolCallId": call}));
                    self.agent_event(
                        &run_id,
                        "tool",
                        json!({"phase": "result", "name": name, "toolCallId": call, "isError": error}),
                    );
                }
            }
        }
        if !aborted && script.end == RunEnd::Hang {
            let _ = abort.wait_for(|a| *a).await;
            aborted = true;
        }
        let (input, output) = script.usage;
        let usage = json!({"input": input, "output": output, "total": input + output});
        let (ok, payload, status, stop) = if aborted {
            self.agent_event(&run_id, "lifecycle", json!({"phase": "end", "aborted": true, "stopReason": "aborted"}));
            self.chat_event(&run_id, "aborted", json!({}));
            (true, json!({"runId": run_id, "status": "timeout", "summary": "aborted"}), "timeout", "aborted")
        } else if let RunEnd::Error(message) = &script.end {
            self.agent_event(&run_id, "lifecycle", json!({"phase": "error", "error": message}));
            self.chat_event(&run_id, "error", json!({"errorMessage": message, "errorKind": "unknown"}));
            (false, json!({"code": "UNAVAILABLE", "message": message, "retryable": true}), "error", "error")
        } else {
            self.agent_event(&run_id, "usage", usage.clone());
            self.agent_event(&run_id, "lifecycle", json!({"phase": "end", "stopReason": "stop"}));
            let message = json!({"role": "assistant", "content": [{"type": "text", "text": text}]});
            self.chat_event(&run_id, "final", json!({"message": message, "stopReason": "stop", "usage": usage}));
            let payload = json!({
                "runId": run_id, "status": "ok", "summary": "completed",
                "result": {"payloads": [{"text": text}], "meta": {"durationMs": now_ms() - started,
                    "agentMeta": {"provider": "fake", "model": "fake-1", "usage": usage}}},
            });
            (true, payload, "ok", "stop")
        };
        let requester = {
            let mut state = lock(&self.state);
            let Some(run) = state.runs.get_mut(&run_id) else { return };
            run.final_frame = Some((ok, payload.clone()));
            run.ended.send_replace(Some((status.to_owned(), stop.to_owned(), now_ms())));
            let session_key = run.session_key.clone();
            let requester = run.requester.take();
            if status == "ok" {
                state.history.insert(session_key, text);
            }
            state.active = state.active.saturating_sub(1);
            requester
        };
        if let Some((conn, req)) = requester {
            let frame = if ok {
                res_ok(&req, &payload)
            } else {
                let mut f = json!({"type": "res", "id": req, "ok": false});
                f["error"] = payload;
                f.to_string()
            };
            self.send_to(conn, frame);
        }
        lock(&self.state).run_times.push(received.elapsed());
    }

    fn wait(self: &Arc<Self>, conn: u64, req: String, p: WaitParams) {
        let ended = lock(&self.state).runs.get(&p.run_id).map(|r| r.ended.subscribe());
        let inner = self.clone();
        self.spawn(async move {
            let outcome = match ended {
                Some(mut rx) => {
                    let limit = Duration::from_millis(p.timeout_ms);
                    let _ = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
                    rx.borrow().clone()
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(p.timeout_ms)).await;
                    None
                }
            };
            let payload = match outcome {
                Some((status, stop, at)) => {
                    json!({"runId": p.run_id, "status": status, "endedAt": at, "stopReason": stop})
                }
                None => json!({"runId": p.run_id, "status": "timeout"}),
            };
            inner.send_to(conn, res_ok(&req, &payload));
        });
    }

    fn abort(&self, session_key: &str, run_id: Option<&str>) -> Vec<String> {
        let mut state = lock(&self.state);
        state.aborts += 1;
        state
            .runs
            .iter()
            .filter(|(id, r)| {
                r.session_key == session_key && run_id.is_none_or(|want| want == *id) && r.ended.borrow().is_none()
            })
            .map(|(id, r)| {
                r.abort.send_replace(true);
                id.clone()
            })
            .collect()
    }
}
