//! `godel-server`: the daemon most people run. It will own an orchestrator and
//! expose it over HTTP (warp, `/api/v1` on 127.0.0.1:7373 by default) and
//! WebSocket (`/events`), with health probes, Prometheus metrics and an
//! OpenAPI document; the `godel-server` binary will be a thin `main` over
//! [`run`]-style entry points in this library.
//!
//! For now it only fixes the defaults the rest of the workspace relies on.

use std::net::{Ipv4Addr, SocketAddr};

/// Where the server listens unless configured otherwise: loopback, port 7373.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7373);

/// The store the server opens unless configured otherwise: SQLite under `./.godel/`.
pub const DEFAULT_STORE_URL: &str = "sqlite://.godel/godel.db";
