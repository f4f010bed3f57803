//! The `godel-server` binary, end to end: each test starts the real binary
//! (see `harness`) on a free port over its own SQLite file and drives it
//! through its HTTP API, its `/events` WebSocket and Unix signals, the way
//! an operator and a client would. Tasks are small `sh` commands; where a
//! test needs work to wait, it waits on a gate file the test creates, never
//! on a fixed sleep.

mod cancel;
pub(crate) mod cluster;
mod errors;
mod events;
pub(crate) mod harness;
mod lifecycle;
mod ordering;
mod outage;
mod secrets;
pub(crate) mod services;
mod workers;
