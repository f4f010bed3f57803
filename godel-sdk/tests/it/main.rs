//! Integration tests of the SDK against a real `godel-server` started
//! in-process for each test (see `support`): every `Client` method, the
//! error mapping, and the event stream's guarantees across dropped
//! connections and server restarts.

mod agents;
mod control;
mod dead_letters;
mod doc_server;
mod errors;
mod events;
mod health;
mod keys;
mod support;
mod tasks;
mod tls;
