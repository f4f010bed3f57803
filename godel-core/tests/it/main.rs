//! godel-core's integration tests, in one binary to keep link times down:
//! the store conformance suite stamped out per backend, and backend-specific
//! checks such as opening a damaged SQLite file.

mod conformance;
#[cfg(feature = "sqlite")]
mod engine;
#[cfg(feature = "sqlite")]
mod engine_faults;
#[cfg(all(feature = "sqlite", feature = "postgres", feature = "redis"))]
mod engine_tenants;
#[cfg(all(feature = "http", feature = "sqlite"))]
mod http_adapter;
#[cfg(feature = "openclaw")]
mod openclaw;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "sqlite", feature = "openclaw"))]
mod support;
