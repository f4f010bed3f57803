//! `godel-server`: the daemon. It owns an orchestrator and exposes it over
//! HTTP (`/api/v1`, loopback port 7373 by default) and WebSocket (`/events`),
//! with health probes, Prometheus metrics and an OpenAPI document.
//!
//! The binary is a thin `main` over [`run`], which takes its shutdown trigger
//! as a parameter so that tests (and `godel serve`) can stop it.

mod auth;
mod bootstrap;
pub mod config;
pub mod daemon;
mod error;
mod events;
mod instances;
mod listener;
mod metrics;
mod routes;
mod tls;
mod wire;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use godel_core::{Orchestrator, Store, TenantId, store};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

pub use crate::auth::keys::{NewKey, generate as generate_key};
pub use crate::bootstrap::ADMIN_KEY_FILE;
pub use crate::config::{AuthConfig, JwtConfig, JwtKey, LogFormat, ServerConfig};

/// The OpenAPI document describing every route.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Shared by every request.
#[derive(Debug)]
pub(crate) struct AppState {
    orchestrator: Orchestrator,
    metrics: metrics::Metrics,
    started: Instant,
    phase: AtomicU8,
    replay_window: usize,
    /// Names this server run; event sequence numbers are only meaningful within one.
    epoch: String,
    /// Cancelled when the server drains: WebSocket connections close on it.
    shutdown: CancellationToken,
    /// Open WebSocket connections, awaited at shutdown.
    connections: TaskTracker,
    /// Remote workers connected to this node.
    workers: workers::Workers,
    /// The OpenClaw gateways (`[[gateways]]`): list them with
    /// `OpenclawRegistry::list`, add or remove them at runtime with
    /// `instances::attach` / `instances::detach`, which also register their
    /// engine agents (the device key is loaded from `state_dir` on first use).
    gateways: Arc<godel_core::adapter::OpenclawRegistry>,
    /// Names of the gateways `godel.toml` defines (the rest came through the API).
    configured_gateways: std::collections::BTreeSet<String>,
    /// Authentication, authorization, rate limits and the audit writer.
    auth: auth::Auth,
    /// What a remote worker may ask for (`[workers]`).
    worker_limits: config::WorkersConfig,
    /// What a gateway registered through the API may use (`[gateways_api]`).
    gateways_api: config::GatewaysApi,
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl AppState {
    fn store(&self) -> &Arc<dyn Store> {
        self.orchestrator.store()
    }

    /// The tenant of requests without a credential (public routes) and of
    /// `godel.toml`'s own agents and gateways.
    fn default_tenant(&self) -> TenantId {
        self.orchestrator.config().tenant.clone()
    }

    /// Why the server is not ready, if it is not.
    fn not_ready(&self) -> Option<&'static str> {
        match self.phase.load(Ordering::SeqCst) {
            STARTING => Some("starting"),
            DRAINING => Some("draining: the server is shutting down"),
            _ => None,
        }
    }
}

/// How long shutdown waits for open HTTP connections to finish.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Called once the server listens, with the address it bound (useful with port 0).
pub type OnListening = Box<dyn FnOnce(SocketAddr) + Send>;

/// Runs the server until `shutdown` is cancelled, then drains: readiness goes
/// 503, the listener stops accepting, WebSockets close, the engine stops
/// claiming, running tasks get their grace period and the rest are released.
pub async fn run(
    config: ServerConfig,
    shutdown: CancellationToken,
    on_listening: Option<OnListening>,
) -> anyhow::Result<()> {
    // The URL's password goes nowhere: not in this error, not in the start line.
    let store_shown = config::redact_url(&config.store_url);
    let store = store::open(&config.store_url).await.with_context(|| format!("cannot open the store {store_shown}"))?;
    bootstrap::admin_key(&store, &config.state_dir, &config.engine.tenant).await?;
    let bus = godel_core::EventBus::new(4_096, config.replay_window);
    // One clock for the engine and the gateway connections: only the server picks it.
    let clock: Arc<dyn godel_core::Clock> = Arc::new(godel_core::SystemClock);
    let mut builder = Orchestrator::builder(store).config(config.engine.clone()).bus(bus).clock(clock.clone());
    for agent in config.agents.clone() {
        builder = builder.agent(agent);
    }
    // One engine agent per OpenClaw gateway; the registry owns their
    // connections. It exists without gateways too (for gateways added at
    // runtime) and loads the device key only when the first one is added.
    let gateways = Arc::new(godel_core::adapter::OpenclawRegistry::lazy(&config.state_dir).clock(clock));
    for gateway in config.gateways.clone() {
        let name = gateway.name.clone();
        let gateway = gateways.add(gateway).with_context(|| format!("cannot set up gateway {name}"))?;
        builder = builder.agent(gateway.into());
    }
    if !config.gateways.is_empty() {
        tracing::info!(gateways = config.gateways.len(), device = gateways.device_id(), "openclaw gateways configured");
    }
    let orchestrator = builder.build().context("invalid engine configuration")?;
    let metrics = metrics::Metrics::new();
    let audit_stop = CancellationToken::new();
    let (audit, audit_writer) =
        auth::audit::Audit::start(orchestrator.store().clone(), metrics.audit_dropped.clone(), audit_stop.clone());
    let auth = auth::Auth::new(&config.auth, orchestrator.config().tenant.clone(), audit)?;
    let state = Arc::new(AppState {
        orchestrator: orchestrator.clone(),
        metrics,
        started: Instant::now(),
        phase: AtomicU8::new(STARTING),
        replay_window: config.replay_window,
        epoch: godel_core::SessionId::new().to_string(),
        shutdown: CancellationToken::new(),
        connections: TaskTracker::new(),
        workers: workers::Workers::default(),
        gateways,
        configured_gateways: config.gateways.iter().map(|g| g.name.clone()).collect(),
        auth,
        worker_limits: config.workers,
        gateways_api: config.gateways_api.clone(),
    });

    let log_state = state.clone();
    let routes = routes::routes(state.clone()).recover(error::recover).unify().with(warp::log::custom(move |info| {
        log_state.metrics.request(info.method().as_str(), info.path(), info.status().as_u16(), info.elapsed());
    }));
    // Loaded before anything listens, so that a bad certificate fails the start.
    let certificate = config.tls.as_ref().map(tls::Certificate::load).transpose()?;
    let listener = listener::Listener::bind(config.bind, certificate.as_ref(), config.limits).await?;
    let addr = listener.local_addr().context("cannot read the address the server listens on")?;
    let scheme = listener.scheme();
    let stop_http = CancellationToken::new();
    state.auth.listening(addr);
    // Every request passes the guard before the routes see it.
    let guarded = auth::make_service(state.clone(), warp::service(routes));
    let server = listener.serve(guarded, stop_http.clone());

    tracing::info!(version = env!("CARGO_PKG_VERSION"), %addr, scheme, store = %store_shown, agents = config.agents.len(), "godel-server started");
    let engine_stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let http = tokio::spawn(server);
    tasks.spawn({
        let (orchestrator, stop) = (orchestrator.clone(), engine_stop.clone());
        async move { orchestrator.run(stop).await.context("engine failed") }
    });
    tasks.spawn({
        let (state, stop) = (state.clone(), engine_stop.clone());
        async move {
            state.metrics.follow(state.orchestrator.bus(), stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let (state, stop) = (state.clone(), engine_stop.clone());
        async move {
            instances::sync(state, stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let (state, stop) = (state.clone(), engine_stop.clone());
        async move {
            auth::Auth::maintain(state, stop).await;
            Ok(())
        }
    });
    if let Some(certificate) = certificate {
        let watch = certificate.watch(engine_stop.clone());
        tasks.spawn(async move {
            watch.await;
            Ok(())
        });
    }
    if let Some(retention) = config.audit.retention {
        let (store, stop) = (state.store().clone(), engine_stop.clone());
        tasks.spawn(async move {
            auth::audit::retain(store, retention, stop).await;
            Ok(())
        });
    }
    state.phase.store(READY, Ordering::SeqCst);
    if let Some(callback) = on_listening {
        callback(addr);
    }

    // Run until asked to stop, or until the engine dies.
    let failure = tokio::select! {
        () = shutdown.cancelled() => None,
        Some(joined) = tasks.join_next() => Some(match joined {
            Ok(Ok(())) => anyhow::anyhow!("the engine stopped unexpectedly"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("the engine panicked: {e}"),
        }),
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "godel-server shutting down");
    state.phase.store(DRAINING, Ordering::SeqCst);
    state.shutdown.cancel();
    stop_http.cancel();
    state.connections.close();
    state.connections.wait().await;
    // Graceful HTTP shutdown waits for every open connection, and hyper keeps
    // waiting on one a client opened but never sent a request on: bound it.
    let mut http = http;
    if tokio::time::timeout(HTTP_DRAIN, &mut http).await.is_err() {
        tracing::warn!(after = ?HTTP_DRAIN, "closing HTTP connections that did not finish");
        http.abort();
    }
    engine_stop.cancel();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "shutdown"),
            Err(e) => tracing::error!(error = %e, "a server task panicked"),
        }
    }
    state.gateways.shutdown().await;
    // Last: every request has finished, so every entry is queued.
    audit_stop.cancel();
    if let Err(e) = audit_writer.await {
        tracing::error!(error = %e, "the audit writer panicked");
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "godel-server stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
