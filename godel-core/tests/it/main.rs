//! godel-core's integration tests, in one binary to keep link times down:
//! the store conformance suite stamped out per backend, and backend-specific
//! checks such as opening a damaged SQLite file.

mod conformance;
mod engine;
mod engine_tenants;
mod http_adapter;
mod openclaw;
mod postgres;
mod redis;
mod sqlite;
mod support;
