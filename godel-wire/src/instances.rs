//! The federation of OpenClaw gateways: a gateway as `/api/v1/instances`
//! shows it, its health, and the body that registers one.

use godel_core::Timestamp;
use serde::{Deserialize, Serialize};

/// An OpenClaw gateway of the federation, as one node sees it.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct Instance {
    /// Its name.
    pub name: String,
    /// The engine agent standing for it (`gateway-<name>`).
    pub agent_id: String,
    /// `ws://host:port`.
    pub url: String,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Agent ids it hosts.
    #[serde(default)]
    pub agents: Vec<String>,
    /// What tasks are routed to it by.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Its session limit (Godel fills 90% of it).
    pub max_sessions: u32,
    /// Sessions Godel has open there.
    pub current_sessions: u32,
    /// This node's share of its capacity, when this node holds it.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// `connecting`, `ready`, `degraded` or `unusable`.
    pub state: String,
    /// Why it is not ready, and what to do about it.
    #[serde(default)]
    pub message: Option<String>,
    /// When the engine last checked it.
    #[serde(default, with = "crate::text::opt")]
    pub last_check: Option<Timestamp>,
    /// The protocol version agreed on.
    #[serde(default)]
    pub protocol: Option<u32>,
    /// The gateway's version.
    #[serde(default)]
    pub server_version: Option<String>,
    /// The gateway's default agent, once known.
    #[serde(default)]
    pub default_agent: Option<String>,
    /// `config` (from godel.toml) or `api` (registered through the API).
    pub source: String,
    /// The node whose view this is.
    pub node: String,
}

/// A gateway to register: the body of `POST /api/v1/instances`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterInstance {
    /// Unique name.
    pub name: String,
    /// `ws://host:port` of the gateway.
    pub url: String,
    /// An environment variable holding the gateway's token on every server node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The token itself (kept in the server's store in clear; prefer `token_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// An environment variable holding the gateway's password on every server node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Agent ids it hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Extra capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Its session limit (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// A gateway's health as the answering node sees it.
#[derive(Clone, PartialEq, Debug, Deserialize, Serialize)]
pub struct InstanceHealth {
    /// Its name.
    pub name: String,
    /// True when it takes work.
    pub ok: bool,
    /// `connecting`, `ready`, `degraded` or `unusable`.
    pub state: String,
    /// Why it is not ready, and what to do about it.
    #[serde(default)]
    pub message: Option<String>,
    /// When the engine last checked it.
    #[serde(default, with = "crate::text::opt")]
    pub last_check: Option<Timestamp>,
    /// Sessions open there.
    pub current_sessions: u32,
    /// Its session limit.
    pub max_sessions: u32,
    /// The answering node.
    pub node: String,
}
