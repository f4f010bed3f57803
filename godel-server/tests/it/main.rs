//! The server's integration tests, in one binary to keep link times down.
//! Each test starts its own server in-process on a free port with a fresh
//! store (see `support`).

mod auth;
mod budgets;
mod edges;
mod input;
mod instances;
mod keys;
mod openapi;
mod quarantine;
mod shutdown;
mod support;
mod tls;
mod writes;
