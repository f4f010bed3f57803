//! The federation of OpenClaw gateways, and the wiring between the gateway
//! registry and the orchestrator: the registry (an adapter) never calls the
//! engine, so this module adds each gateway's engine agent when it connects
//! to a gateway and removes it when it disconnects. The routes are in
//! `routes/instances.rs`.
//!
//! Gateways come from two places. `[[gateways]]` in `godel.toml` belong to
//! the node whose file names them. Gateways registered through the API are
//! kept in the store's registry (`MemberKind::Gateway`, no expiry), so that
//! they survive restarts and every node sharing the store connects to them:
//! [`sync`] attaches new registrations and detaches removed ones every
//! couple of seconds. Each node also announces its live view of every gateway
//! it holds (`MemberKind::Instance`: state, sessions, last check; lapsing
//! after 10 s), which is how `GET /instances` on one node shows the others'.
//! The views also tell each node how many nodes use a gateway: they split
//! its capacity (90% of its session limit) so that together they stay under it.
//!
//! Whoever may register a gateway through the API must not be able to make
//! the server send its secrets anywhere: a registration's `token_env` and
//! `password_env` must name variables on `gateways_api.allowed_token_env`,
//! and its URL's host must be on `gateways_api.allowed_hosts` (loopback
//! names by default). Every node checks this before it reads the variable or
//! connects; gateways from `godel.toml` are trusted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use godel_core::adapter::openclaw::{GatewayAuth, GatewayConfig, GatewaySnapshot, session_capacity};
use godel_core::engine::MemberEntry;
use godel_core::store::MemberKind;
use godel_core::{CancellationToken, EngineError, InvalidInput};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::config::GatewaysApi;
use crate::wire::opt_ts;

/// How often a node reconciles registrations and announces its view.
const SYNC_EVERY: Duration = Duration::from_secs(2);
/// How long an announced view lives without renewal.
const VIEW_TTL: Duration = Duration::from_secs(10);

/// A gateway registered through the API, as the store keeps it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registration {
    pub(crate) name: String,
    url: String,
    /// The gateway's token, kept in the store in clear; prefer `token_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// The environment variable holding the token on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_env: Option<String>,
    /// The environment variable holding the gateway's password on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_env: Option<String>,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default = "default_max_sessions")]
    max_sessions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
}

fn default_max_sessions() -> u32 {
    10
}

impl Registration {
    /// Refuses what `[gateways_api]` does not allow, naming the variable or
    /// host and the key that would allow it. Checked before any variable is
    /// read or any connection made.
    pub(crate) fn allowed(&self, api: &GatewaysApi) -> Result<(), String> {
        let secrets = [self.token.is_some(), self.token_env.is_some(), self.password_env.is_some()];
        if secrets.iter().filter(|given| **given).count() > 1 {
            // Malformed: `config` refuses it before reading anything.
            return Ok(());
        }
        let vars = [("token_env", &self.token_env), ("password_env", &self.password_env)];
        for (field, var) in vars {
            if let Some(var) = var.as_deref().filter(|var| !api.allowed_token_env.iter().any(|a| a == var)) {
                return Err(format!(
                    "{field} {var:?} is not allowed: gateways registered through the API may only name variables \
                     listed in gateways_api.allowed_token_env in godel.toml"
                ));
            }
        }
        if !(self.url.starts_with("ws://") || self.url.starts_with("wss://")) {
            // Not a gateway URL at all: `config` refuses it, naming the field.
            return Ok(());
        }
        let host = url_host(&self.url);
        if !api.allowed_hosts.iter().any(|allowed| allowed.trim_end_matches('.').eq_ignore_ascii_case(&host)) {
            return Err(format!(
                "url host {host:?} is not allowed: gateways registered through the API may only point at hosts \
                 listed in gateways_api.allowed_hosts in godel.toml"
            ));
        }
        Ok(())
    }

    /// The gateway's configuration on this node; secrets named by `*_env`
    /// are read from this node's environment.
    pub(crate) fn config(&self) -> Result<GatewayConfig, String> {
        let secret = |var: &str, field: &str| {
            std::env::var(var).map_err(|_| format!("invalid {field}: the environment variable {var} is not set"))
        };
        let auth = match (&self.token, &self.token_env, &self.password_env) {
            (None, None, None) => GatewayAuth::None,
            (Some(token), None, None) => GatewayAuth::Token(token.clone()),
            (None, Some(var), None) => GatewayAuth::Token(secret(var, "token_env")?),
            (None, None, Some(var)) => GatewayAuth::Password(secret(var, "password_env")?),
            _ => return Err("invalid body: give at most one of token, token_env and password_env".to_owned()),
        };
        let mut config = GatewayConfig::new(&self.name, &self.url);
        config.auth = auth;
        config.agents = self.agents.clone();
        config.capabilities = self.capabilities.clone();
        config.max_sessions = self.max_sessions;
        config.region = self.region.clone();
        config.validate().map_err(|e| format!("invalid {}: {}", e.field, e.reason))?;
        Ok(config)
    }
}

/// The host of a `ws://` or `wss://` URL, without user, port or IPv6
/// brackets, lowercased.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn view_json(g: &GatewaySnapshot, source: &str, node: &str, capacity: Option<u32>) -> Value {
    json!({
        "name": g.name,
        "agent_id": g.agent.to_string(),
        "url": g.url,
        "region": g.region,
        "agents": g.agents,
        "capabilities": g.capabilities,
        "max_sessions": g.max_sessions,
        "current_sessions": g.current_sessions,
        "capacity": capacity,
        "state": g.state.as_str(),
        "message": g.message,
        "last_check": opt_ts(g.last_check),
        "protocol": g.protocol,
        "server_version": g.server_version,
        "default_agent": g.default_agent,
        "source": source,
        "node": node,
    })
}

pub(crate) fn source_of(state: &AppState, name: &str) -> &'static str {
    if state.configured_gateways.contains(name) { "config" } else { "api" }
}

/// This node's view of its gateway `g`, with its share of the capacity.
pub(crate) fn local_view(state: &AppState, g: &GatewaySnapshot) -> Value {
    let capacity = state.orchestrator.agents().into_iter().find(|a| a.id == g.agent).map(|a| a.max_capacity);
    view_json(g, source_of(state, &g.name), &state.orchestrator.config().node, capacity)
}

/// One node's share of a gateway's `total` capacity among `nodes` (sorted,
/// this one included): equal parts, the remainder going to the first nodes,
/// so that the shares add up to `total`.
fn node_share(total: u32, nodes: &[&str], me: &str) -> u32 {
    let n = u32::try_from(nodes.len().max(1)).unwrap_or(u32::MAX);
    let index = u32::try_from(nodes.iter().position(|n| *n == me).unwrap_or(0)).unwrap_or(u32::MAX);
    total / n + u32::from(index < total % n)
}

/// This node's gateways, live, then the views other nodes announced.
pub(crate) async fn all_views(state: &AppState) -> Result<Vec<Value>, EngineError> {
    let node = &state.orchestrator.config().node;
    let mut items: Vec<Value> = state.gateways.list().iter().map(|g| local_view(state, g)).collect();
    let others = state.orchestrator.members(MemberKind::Instance).await?;
    items.extend(others.into_iter().filter(|m| m.node != *node).map(|m| m.doc));
    Ok(items)
}

/// Whether a gateway of this name is connected here or registered through
/// the API by any node.
pub(crate) async fn is_registered(state: &AppState, name: &str) -> Result<bool, EngineError> {
    if state.gateways.get(name).is_some() {
        return Ok(true);
    }
    Ok(state.orchestrator.members(MemberKind::Gateway).await?.iter().any(|m| m.id == name))
}

/// Keeps a registration in the store's registry, where every node finds it.
pub(crate) async fn put_registration(state: &AppState, registration: &Registration) -> Result<(), EngineError> {
    let doc = serde_json::to_value(registration).expect("registrations serialize");
    let entry = MemberEntry { kind: MemberKind::Gateway, id: registration.name.clone(), doc, ttl: None };
    state.orchestrator.put_member(entry).await?;
    Ok(())
}

/// Removes a registration from the store's registry; false if there was none.
pub(crate) async fn remove_registration(state: &AppState, name: &str) -> Result<bool, EngineError> {
    state.orchestrator.remove_member(MemberKind::Gateway, name).await
}

/// Connects to a gateway and registers the engine agent standing for it;
/// the connection is dropped again if the engine refuses the agent.
pub(crate) fn attach(state: &AppState, config: GatewayConfig) -> Result<GatewaySnapshot, EngineError> {
    let name = config.name.clone();
    let gateway = state.gateways.add(config)?;
    if let Err(e) = state.orchestrator.add_agent(gateway.into()) {
        state.gateways.remove(&name);
        return Err(e);
    }
    let vanished = || InvalidInput::new("name", "the gateway vanished while it was added");
    Ok(state.gateways.get(&name).ok_or_else(vanished)?)
}

/// Deregisters a gateway's engine agent (it takes no new work; runs still
/// open there fail retryable and run again elsewhere) and stops its
/// connection. False if this node has no such gateway.
pub(crate) fn detach(state: &AppState, name: &str) -> bool {
    let Some(gateway) = state.gateways.get(name) else { return false };
    // The agent is gone already if the engine never took it; the connection still goes.
    let _ = state.orchestrator.remove_agent(&gateway.agent);
    state.gateways.remove(name)
}

/// Until `stop`: connects to gateways registered through the API (by any
/// node), disconnects from deregistered ones, and announces this node's view.
pub(crate) async fn sync(state: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = reconcile(&state).await {
            tracing::warn!(error = %e, "could not read gateway registrations; retrying");
        }
        if let Err(e) = share(&state).await {
            tracing::warn!(error = %e, "could not read other nodes' gateway views; keeping the current shares");
        }
        announced = announce(&state, &announced).await;
    }
    for id in announced {
        let _ = state.orchestrator.remove_member(MemberKind::Instance, &id).await;
    }
}

async fn reconcile(state: &AppState) -> Result<(), EngineError> {
    let rows = state.orchestrator.members(MemberKind::Gateway).await?;
    let registered: BTreeMap<String, Value> = rows.into_iter().map(|m| (m.id, m.doc)).collect();
    for (name, doc) in &registered {
        if state.gateways.get(name).is_some() || state.configured_gateways.contains(name) {
            continue;
        }
        let config = serde_json::from_value::<Registration>(doc.clone())
            .map_err(|e| e.to_string())
            .and_then(|r| r.allowed(&state.gateways_api).and_then(|()| r.config()));
        match config {
            Ok(config) => match attach(state, config) {
                Ok(_) => tracing::info!(gateway = name, "connected to a gateway registered through the API"),
                Err(e) => tracing::warn!(gateway = name, error = %e, "cannot connect to a registered gateway"),
            },
            Err(e) => tracing::warn!(gateway = name, error = e, "skipping a gateway registration this node cannot use"),
        }
    }
    for g in state.gateways.list() {
        if !state.configured_gateways.contains(&g.name) && !registered.contains_key(&g.name) {
            tracing::info!(gateway = g.name, "gateway deregistered; disconnecting");
            detach(state, &g.name);
        }
    }
    Ok(())
}

/// Sets this node's share of each gateway's capacity from the nodes whose
/// views of it are current. A node that dies stops announcing, and the others
/// take its share back once its views lapse.
async fn share(state: &AppState) -> Result<(), EngineError> {
    let node = &state.orchestrator.config().node;
    let views = state.orchestrator.members(MemberKind::Instance).await?;
    for g in state.gateways.list() {
        let mut nodes: Vec<&str> = views
            .iter()
            .filter(|m| m.node != *node && m.doc["name"].as_str() == Some(g.name.as_str()))
            .map(|m| m.node.as_str())
            .chain([node.as_str()])
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let share = node_share(session_capacity(g.max_sessions), &nodes, node);
        if let Err(e) = state.orchestrator.set_capacity(&g.agent, share) {
            tracing::warn!(gateway = g.name, error = %e, "could not set this node's share of a gateway");
        }
    }
    Ok(())
}

async fn announce(state: &AppState, before: &[String]) -> Vec<String> {
    let node = state.orchestrator.config().node.clone();
    let mut ids = Vec::new();
    for g in state.gateways.list() {
        let id = format!("{node}/{}", g.name);
        let entry =
            MemberEntry { kind: MemberKind::Instance, id: id.clone(), doc: local_view(state, &g), ttl: Some(VIEW_TTL) };
        if let Err(e) = state.orchestrator.put_member(entry).await {
            tracing::warn!(error = %e, gateway = g.name, "could not announce gateway state");
        }
        ids.push(id);
    }
    for gone in before.iter().filter(|id| !ids.contains(id)) {
        let _ = state.orchestrator.remove_member(MemberKind::Instance, gone).await;
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::{node_share, url_host};

    #[test]
    fn shares_add_up_to_the_capacity() {
        assert_eq!(node_share(9, &["a"], "a"), 9);
        assert_eq!([node_share(9, &["a", "b"], "a"), node_share(9, &["a", "b"], "b")], [5, 4]);
        let nodes = ["a", "b", "c", "d"];
        let shares: Vec<u32> = nodes.iter().map(|n| node_share(2, &nodes, n)).collect();
        assert_eq!(shares, [1, 1, 0, 0], "more nodes than sessions: the first ones get one each");
        assert_eq!(nodes.iter().map(|n| node_share(10, &nodes, n)).sum::<u32>(), 10);
    }

    #[test]
    fn url_hosts_are_compared_without_port_user_or_brackets() {
        assert_eq!(url_host("ws://127.0.0.1:18789/"), "127.0.0.1");
        assert_eq!(url_host("wss://User@GW.Example.:443/x"), "gw.example");
        assert_eq!(url_host("ws://[::1]:18789"), "::1");
        assert_eq!(url_host("ws://localhost"), "localhost");
        assert_eq!(url_host("ws://127.0.0.1@evil.example:1"), "evil.example");
    }
}
