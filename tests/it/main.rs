//! Godel's end-to-end tests, in one binary to keep link times down. Each
//! module drives real processes (the helper binaries in `src/bin/`, and the
//! Godel binaries as they land) and checks what survives them: a SQLite
//! store under a killed writer (`durability`), and an orchestrator killed
//! mid-run and restarted on the same file (`engine_crash`).

mod durability;
mod engine_crash;
