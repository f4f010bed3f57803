//! The contract between the durability test and `godel-store-child`, the
//! process it kills with SIGKILL: the tenant, agent and lease the child uses,
//! how many tasks it claims, and the lines it prints on stdout.
//!
//! The child prints a line only after the store has acknowledged the
//! operation it reports, so every line the test reads is a promise the store
//! must keep after the crash.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use godel_core::{AgentId, TaskId, TenantId};

/// How long the child's leases last from the `now` it was given.
pub const LEASE: Duration = Duration::from_secs(30);

/// How many tasks the child claims and starts before it enqueues the rest.
pub const CLAIMS: usize = 5;

/// The tenant the child writes as.
pub fn tenant() -> TenantId {
    TenantId::new("durability").expect("a valid tenant name")
}

/// The agent the child claims as.
pub fn agent() -> AgentId {
    AgentId::new("store-child").expect("a valid agent id")
}

/// One line of the child's stdout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Report {
    /// The task was claimed and `start` returned: it is running under a
    /// lease that lapses at `now + LEASE`.
    Claimed(TaskId),
    /// `enqueue` returned: the task is pending.
    Acked(TaskId),
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Claimed(id) => write!(f, "claimed {id}"),
            Report::Acked(id) => write!(f, "ack {id}"),
        }
    }
}

impl FromStr for Report {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> anyhow::Result<Self> {
        let (word, id) = line.split_once(' ').with_context(|| format!("expected `<word> <task id>`, got {line:?}"))?;
        let id: TaskId = id.parse().with_context(|| format!("bad task id in {line:?}"))?;
        match word {
            "claimed" => Ok(Report::Claimed(id)),
            "ack" => Ok(Report::Acked(id)),
            _ => bail!("expected `claimed` or `ack`, got {word:?} in {line:?}"),
        }
    }
}
