//! The server's integration tests, in one binary to keep link times down.
//! Each test starts its own server in-process on a free port with a fresh
//! store (see `support`).

mod auth;
mod budgets;
mod edges;
mod instances;
mod keys;
mod openapi;
mod shutdown;
mod support;
mod tls;
mod writes;
