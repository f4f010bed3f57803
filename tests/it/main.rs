//! Godel's end-to-end tests, in one binary to keep link times down. Each
//! module drives real processes (the helper binaries in `src/bin/`, and the
//! Godel binaries) and checks what survives them: a SQLite store under a
//! killed writer (`durability`), an orchestrator killed mid-run and
//! restarted on the same file (`engine_crash`), and the `godel-server`
//! daemon over HTTP, WebSocket and signals (`server`), and what a batch of
//! tasks survives when servers, workers, databases and networks fail under
//! it (`chaos`).

mod chaos;
mod durability;
mod engine_crash;
mod server;
