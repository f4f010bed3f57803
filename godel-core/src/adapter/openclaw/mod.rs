//! The `openclaw` adapter: tasks run as agent runs on OpenClaw gateways,
//! spoken to over the gateway's own WebSocket protocol (see
//! `docs/openclaw.md` and `shared/openclaw-protocol.md`).
//!
//! - `protocol.rs`: frames and the closed parameter objects Godel sends.
//! - `device.rs`: the Ed25519 device identity, created once and kept (0600).
//! - `connection.rs`: one task per gateway owning the socket: handshake,
//!   request/response correlation, event routing by run id, tick watchdog,
//!   reconnect with backoff, optional auto-start of a local gateway.
//! - `adapter.rs`: [`OpenclawAdapter`] and its sessions: one gateway run per
//!   task attempt, streamed output, abort, reconcile after a reconnect.
//!
//! One gateway is one engine agent (`AgentKind::Openclaw`): its capacity is
//! 90% of the gateway's session limit (backpressure), its capabilities are
//! the configured ones plus `agent:<id>` per hosted agent id and
//! `region:<region>`, so the engine's scheduler does capability, least-loaded
//! and affinity routing across gateways. [`OpenclawRegistry`] holds the
//! connections, lists them as [`GatewaySnapshot`]s and adds or removes
//! gateways at runtime; [`OpenclawRegistry::add`] hands back a [`Gateway`]
//! (the adapter and what the scheduler routes by). The adapter never calls
//! the engine: whoever owns both (the server) registers each gateway with
//! the orchestrator and deregisters it when it removes it.

mod adapter;
mod connection;
pub mod device;
mod protocol;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::adapter::openclaw::adapter::OpenclawAdapter;
pub use crate::adapter::openclaw::device::{DeviceError, DeviceIdentity};

use crate::InvalidInput;
use crate::adapter::openclaw::connection::Shared;
use crate::clock::{Clock, SystemClock};
use crate::ids::AgentId;
use crate::time::Timestamp;

/// Share of a gateway's session limit Godel fills before it stops sending
/// new sessions there.
pub const BACKPRESSURE: f64 = 0.9;

/// How Godel authenticates to a gateway.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum GatewayAuth {
    /// The gateway's shared token (`auth.token`).
    Token(String),
    /// The gateway's password (`auth.password`).
    Password(String),
    /// Neither: the device token from an earlier `hello-ok`, if any.
    #[default]
    None,
}

impl fmt::Debug for GatewayAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets stay out of logs.
        f.write_str(match self {
            GatewayAuth::Token(_) => "Token(***)",
            GatewayAuth::Password(_) => "Password(***)",
            GatewayAuth::None => "None",
        })
    }
}

/// Start a local gateway when none answers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Autostart {
    /// argv of the gateway, e.g. `["openclaw", "gateway", "run"]`; run without a shell.
    pub command: Vec<String>,
}

/// Timers of one gateway connection. The defaults follow the protocol notes;
/// tests shorten them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GatewayTiming {
    /// Limit on the TCP/WebSocket connect and on each handshake step.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles after each failure.
    pub backoff_initial: Duration,
    /// Longest reconnect delay, and the retry delay of an unusable gateway.
    pub backoff_max: Duration,
    /// A run whose connection is lost and not reconciled within this fails (retryable).
    pub reconcile_timeout: Duration,
    /// How long an abort may take to be confirmed.
    pub abort_timeout: Duration,
    /// A lifecycle `error` without a new `start` for this long is terminal.
    pub lifecycle_error_grace: Duration,
    /// After events say a run ended, how long to wait for the `agent` final response.
    pub final_grace: Duration,
    /// How long `open_session` waits for a connecting gateway.
    pub open_wait: Duration,
    /// Limit on single requests (`agent.wait`, aborts, `chat.history`).
    pub request_timeout: Duration,
}

impl Default for GatewayTiming {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            reconcile_timeout: Duration::from_secs(30),
            abort_timeout: Duration::from_secs(10),
            lifecycle_error_grace: Duration::from_secs(15),
            final_grace: Duration::from_secs(1),
            open_wait: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// One gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// A unique name; the engine agent is `gateway-<name>`.
    pub name: String,
    /// `ws://host:port` of the gateway, or `wss://host:port` (TLS with rustls,
    /// checked against the web PKI roots).
    pub url: String,
    /// Credentials.
    pub auth: GatewayAuth,
    /// Agent ids hosted there (each adds the capability `agent:<id>`); the
    /// first is the default target, else the gateway's default agent.
    pub agents: Vec<String>,
    /// Extra capabilities.
    pub capabilities: Vec<String>,
    /// The gateway's session limit; Godel uses 90% of it.
    pub max_sessions: u32,
    /// Where it runs (adds the capability `region:<region>`).
    pub region: Option<String>,
    /// Start a local gateway when none answers.
    pub autostart: Option<Autostart>,
    /// Timers.
    pub timing: GatewayTiming,
}

impl GatewayConfig {
    /// A gateway with defaults: 10 sessions, no hosted agents listed, no auth.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            auth: GatewayAuth::None,
            agents: Vec::new(),
            capabilities: Vec::new(),
            max_sessions: 10,
            region: None,
            autostart: None,
            timing: GatewayTiming::default(),
        }
    }

    /// The engine agent's id.
    pub fn agent_id(&self) -> Result<AgentId, InvalidInput> {
        AgentId::new(format!("gateway-{}", self.name))
    }

    /// Sessions Godel opens at most: 90% of the limit, rounded down, at least 1.
    pub fn capacity(&self) -> u32 {
        session_capacity(self.max_sessions)
    }

    /// The capabilities the engine routes by.
    pub fn routing_capabilities(&self) -> Vec<String> {
        let mut caps = self.capabilities.clone();
        caps.extend(self.agents.iter().map(|a| format!("agent:{a}")));
        caps.extend(self.region.iter().map(|r| format!("region:{r}")));
        caps.sort();
        caps.dedup();
        caps
    }

    /// Checks every field; errors name it.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        self.agent_id().map_err(|e| InvalidInput::new("name", e.reason))?;
        if !(self.url.starts_with("ws://") || self.url.starts_with("wss://")) || connection::host(&self.url).is_empty()
        {
            return Err(InvalidInput::new(
                "url",
                format!("expected ws://host:port or wss://host:port, got {:?}", self.url),
            ));
        }
        if !(1..=crate::agent::MAX_CAPACITY).contains(&self.max_sessions) {
            return Err(InvalidInput::new(
                "max_sessions",
                format!("expected 1 to {}, got {}", crate::agent::MAX_CAPACITY, self.max_sessions),
            ));
        }
        for a in &self.agents {
            if a.is_empty() || a.contains(':') || a.chars().any(char::is_whitespace) {
                return Err(InvalidInput::new(
                    "agents",
                    format!("expected agent ids without ':' or spaces, got {a:?}"),
                ));
            }
        }
        for c in self.routing_capabilities() {
            crate::task::validate_capability(&c).map_err(|e| InvalidInput::new("capabilities", e.reason))?;
        }
        if let Some(auto) = &self.autostart {
            if auto.command.first().is_none_or(String::is_empty) {
                return Err(InvalidInput::new("autostart.command", "expected a non-empty argv"));
            }
            let host = connection::host(&self.url);
            let local =
                ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| host == *h || host.starts_with(&format!("{h}:")));
            if !local {
                return Err(InvalidInput::new(
                    "autostart",
                    format!("only a loopback gateway can be started, not {host}"),
                ));
            }
        }
        let t = &self.timing;
        for (field, d) in [
            ("connect_timeout", t.connect_timeout),
            ("backoff_initial", t.backoff_initial),
            ("backoff_max", t.backoff_max),
            ("reconcile_timeout", t.reconcile_timeout),
            ("abort_timeout", t.abort_timeout),
            ("request_timeout", t.request_timeout),
        ] {
            if d.is_zero() {
                return Err(InvalidInput::new(field, "expected a positive duration"));
            }
        }
        Ok(())
    }
}

/// A gateway's connection state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum GatewayState {
    /// Not connected yet.
    Connecting,
    /// Connected and handshaken; takes work.
    Ready,
    /// Connection lost or the gateway not answering; reconnecting. Takes no work.
    Degraded,
    /// Needs an operator (pairing, credentials, scopes, version); see the message.
    Unusable,
}

impl GatewayState {
    /// Lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            GatewayState::Connecting => "connecting",
            GatewayState::Ready => "ready",
            GatewayState::Degraded => "degraded",
            GatewayState::Unusable => "unusable",
        }
    }
}

impl fmt::Display for GatewayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the server lists about a gateway.
#[derive(Clone, PartialEq, Debug)]
pub struct GatewaySnapshot {
    /// Its name.
    pub name: String,
    /// The engine agent that stands for it.
    pub agent: AgentId,
    /// Its URL.
    pub url: String,
    /// Its region.
    pub region: Option<String>,
    /// Agent ids hosted there.
    pub agents: Vec<String>,
    /// Routing capabilities.
    pub capabilities: Vec<String>,
    /// The gateway's session limit.
    pub max_sessions: u32,
    /// Sessions Godel has open there.
    pub current_sessions: u32,
    /// Connection state.
    pub state: GatewayState,
    /// Why it is not ready (for unusable gateways, what the operator must do).
    pub message: Option<String>,
    /// When the engine last checked it.
    pub last_check: Option<Timestamp>,
    /// The protocol version chosen at the handshake.
    pub protocol: Option<u32>,
    /// The gateway's version.
    pub server_version: Option<String>,
    /// The gateway's default agent id.
    pub default_agent: Option<String>,
}

/// Sessions Godel opens at most on a gateway with `max_sessions`: 90% of
/// it, rounded down, at least 1. Servers sharing a gateway split this.
pub fn session_capacity(max_sessions: u32) -> u32 {
    ((f64::from(max_sessions) * BACKPRESSURE).floor() as u32).max(1)
}

fn snapshot(shared: &Shared) -> GatewaySnapshot {
    let cfg = &shared.config;
    let status = shared.status();
    GatewaySnapshot {
        name: cfg.name.clone(),
        agent: cfg.agent_id().unwrap_or_else(|_| AgentId::new("gateway").expect("valid id")),
        url: cfg.url.clone(),
        region: cfg.region.clone(),
        agents: cfg.agents.clone(),
        capabilities: cfg.routing_capabilities(),
        max_sessions: cfg.max_sessions,
        current_sessions: shared.active.load(std::sync::atomic::Ordering::Relaxed),
        state: status.state,
        message: status.message,
        last_check: status.last_check,
        protocol: status.hello.as_ref().map(|h| h.protocol),
        server_version: status.hello.as_ref().and_then(|h| h.server_version.clone()),
        default_agent: status.hello.and_then(|h| h.default_agent),
    }
}

/// A gateway just added to an [`OpenclawRegistry`]: the adapter that runs
/// tasks there and what the engine's agent standing for it routes by.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// The engine agent's id, `gateway-<name>`.
    pub agent: AgentId,
    /// The gateway's name (the agent's display name).
    pub name: String,
    /// Sessions Godel opens there at most (see [`GatewayConfig::capacity`]).
    pub capacity: u32,
    /// The capabilities the engine routes by.
    pub capabilities: Vec<String>,
    /// Where it runs.
    pub region: Option<String>,
    /// Runs tasks on the gateway.
    pub adapter: Arc<OpenclawAdapter>,
}

/// The gateways Godel is connected to. Owns their connection tasks: they
/// stop when [`OpenclawRegistry::shutdown`] is called or the registry drops.
#[derive(Debug)]
pub struct OpenclawRegistry {
    device: OnceLock<DeviceIdentity>,
    /// Where the device key is loaded from on first use, for a lazy registry.
    state_dir: Option<PathBuf>,
    gateways: Mutex<BTreeMap<String, (Arc<Shared>, CancellationToken)>>,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl OpenclawRegistry {
    /// An empty registry presenting `device` to every gateway. Call it inside a Tokio runtime.
    pub fn new(device: DeviceIdentity) -> Self {
        let registry = Self::build(None);
        let _ = registry.device.set(device);
        registry
    }

    /// An empty registry that loads (or creates) the device key in
    /// `state_dir` only when the first gateway is added, so that a server
    /// without gateways never touches it.
    pub fn lazy(state_dir: impl Into<PathBuf>) -> Self {
        Self::build(Some(state_dir.into()))
    }

    /// Stamps gateway checks with `clock` instead of the system clock (give
    /// it the orchestrator's clock). Call it before adding gateways.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn build(state_dir: Option<PathBuf>) -> Self {
        Self {
            device: OnceLock::new(),
            state_dir,
            gateways: Mutex::new(BTreeMap::new()),
            clock: Arc::new(SystemClock),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    fn device(&self) -> Result<&DeviceIdentity, InvalidInput> {
        if let Some(d) = self.device.get() {
            return Ok(d);
        }
        let dir = self.state_dir.as_deref().unwrap_or(std::path::Path::new(".godel"));
        let device = DeviceIdentity::load_or_create(dir).map_err(|e| InvalidInput::new("state_dir", e.to_string()))?;
        Ok(self.device.get_or_init(|| device))
    }

    /// Starts connecting to a gateway and returns it, for its owner to
    /// register with the engine (one agent per gateway). Names are unique.
    pub fn add(&self, config: GatewayConfig) -> Result<Gateway, InvalidInput> {
        config.validate()?;
        let agent = config.agent_id()?;
        let mut gateways = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        if gateways.contains_key(&config.name) {
            return Err(InvalidInput::new("name", format!("a gateway {} is already registered", config.name)));
        }
        let (shared, connection) = Shared::new(config.clone(), self.device()?.clone(), self.clock.clone());
        let cancel = self.cancel.child_token();
        self.tracker.spawn(connection.run(cancel.clone()));
        gateways.insert(config.name.clone(), (shared.clone(), cancel));
        Ok(Gateway {
            agent,
            capacity: config.capacity(),
            capabilities: config.routing_capabilities(),
            name: config.name,
            region: config.region,
            adapter: Arc::new(OpenclawAdapter::new(shared)),
        })
    }

    /// Stops a gateway's connection and forgets it; false if unknown.
    pub fn remove(&self, name: &str) -> bool {
        let removed = self.gateways.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        removed.map(|(_, cancel)| cancel.cancel()).is_some()
    }

    fn shared(&self, name: &str) -> Option<Arc<Shared>> {
        self.gateways.lock().unwrap_or_else(PoisonError::into_inner).get(name).map(|(s, _)| s.clone())
    }

    /// One gateway's snapshot.
    pub fn get(&self, name: &str) -> Option<GatewaySnapshot> {
        self.shared(name).map(|s| snapshot(&s))
    }

    /// Every gateway, by name.
    pub fn list(&self) -> Vec<GatewaySnapshot> {
        let all: Vec<Arc<Shared>> =
            self.gateways.lock().unwrap_or_else(PoisonError::into_inner).values().map(|(s, _)| s.clone()).collect();
        all.iter().map(|s| snapshot(s)).collect()
    }

    /// The device id Godel presents (what an operator approves); `None`
    /// until a lazy registry has loaded its key.
    pub fn device_id(&self) -> Option<&str> {
        self.device.get().map(DeviceIdentity::id)
    }

    /// Why queued tasks may be waiting on gateways, in words (for queue
    /// health): every gateway at capacity while `ready_tasks` wait, or
    /// gateways down or unusable, with what the operator must do.
    pub fn queue_reasons(&self, ready_tasks: u64) -> Vec<String> {
        let all = self.list();
        let mut reasons = Vec::new();
        let ready: Vec<&GatewaySnapshot> = all.iter().filter(|g| g.state == GatewayState::Ready).collect();
        let full = ready.iter().filter(|g| g.current_sessions >= session_capacity(g.max_sessions)).count();
        if ready_tasks > 0 && !ready.is_empty() && full == ready.len() {
            reasons.push(if ready.len() == all.len() {
                format!(
                    "all {} openclaw gateways are at capacity (90% of their session limit); {ready_tasks} ready tasks wait",
                    all.len()
                )
            } else {
                format!(
                    "every ready openclaw gateway ({} of {}) is at capacity; {ready_tasks} ready tasks wait",
                    ready.len(),
                    all.len()
                )
            });
        }
        for g in all.iter().filter(|g| g.state != GatewayState::Ready) {
            let why = g.message.clone().unwrap_or_else(|| "connecting".into());
            reasons.push(format!("openclaw gateway {} is {}: {why}", g.name, g.state));
        }
        reasons
    }

    /// Stops every connection and waits for them.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for OpenclawRegistry {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
