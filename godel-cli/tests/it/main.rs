//! End-to-end tests of the real `godel` binary: `godel serve` runs the
//! server in a child process, and every other command talks to it exactly as
//! a user's shell would.

mod cli;
mod docs;
mod keys;
mod server;
