//! Fakes of the services Godel talks to, as strict as the real ones, for the
//! test suites and the benchmarks. Each listens on loopback and can be told
//! to misbehave (drop connections, refuse, rate-limit) mid-run.

pub mod openai;
pub mod openclaw;
