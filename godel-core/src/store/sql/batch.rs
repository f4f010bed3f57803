//! Batched lease-holder writes (starts and completions): the entries a
//! backend writes, the rounds that keep repeated entries in order, and the
//! outcomes read back from what each statement changed.

use std::collections::HashMap;

use serde::Serialize;

use crate::ids::TaskId;
use crate::store::sql::Rows;
use crate::store::{Completion, Lease, LeaseWrite, Result, WriteOutcome};
use crate::time::Timestamp;

/// What a batched lease-holder write does to its task.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    Start,
    Complete,
}

/// One entry of a batched lease-holder write: the lease, what to do, and the
/// value it writes (the agent of a start, the result of a completion as JSON
/// text, so that it is stored exactly as `complete` stores it).
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub(crate) lease: &'a Lease,
    pub(crate) op: Op,
    pub(crate) extra: String,
}

impl<'a> Entry<'a> {
    /// A completion.
    pub(crate) fn complete(rows: Rows, c: &'a Completion) -> Result<Self> {
        let extra = serde_json::to_string(&c.result).map_err(|e| rows.error(e))?;
        Ok(Self { lease: &c.lease, op: Op::Complete, extra })
    }

    /// What the entry did, once its row changed.
    fn outcome(&self, cancel_requested: bool) -> WriteOutcome {
        match self.op {
            Op::Start => WriteOutcome::Started { cancel_requested },
            Op::Complete => WriteOutcome::Completed,
        }
    }
}

/// The entries of a [`write_batch`](crate::store::TaskStore::write_batch), in order.
pub(crate) fn entries<'a>(rows: Rows, writes: &'a [LeaseWrite]) -> Result<Vec<Entry<'a>>> {
    writes
        .iter()
        .map(|w| match w {
            LeaseWrite::Start { lease, agent } => Ok(Entry { lease, op: Op::Start, extra: agent.as_str().to_owned() }),
            LeaseWrite::Complete(c) => Entry::complete(rows, c),
        })
        .collect()
}

/// Splits the entries at `indices` into rounds: the n-th entry of a task goes
/// into round n, so repeated entries act one after the other, and no round
/// names a task twice (one statement may not update a row twice).
pub(crate) fn rounds(indices: impl Iterator<Item = usize>, entries: &[Entry<'_>]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<TaskId, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for i in indices {
        let n = seen.entry(entries[i].lease.task).or_insert(0);
        if rounds.len() == *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds
}

/// A batch of lease-holder writes being applied: its entries, the time they
/// are written at, and the outcome of each so far (`LeaseLost` until the
/// statement of its round changes its row).
#[derive(Debug)]
pub(crate) struct Writes<'e, 'a> {
    pub(crate) entries: &'e [Entry<'a>],
    pub(crate) now: Timestamp,
    pub(crate) out: Vec<WriteOutcome>,
}

impl<'e, 'a> Writes<'e, 'a> {
    /// Nothing written yet.
    pub(crate) fn new(entries: &'e [Entry<'a>], now: Timestamp) -> Self {
        Self { entries, now, out: vec![WriteOutcome::LeaseLost; entries.len()] }
    }

    /// Fills in the outcomes of the entries at `round` from the rows its
    /// statement changed, each read as (task id, cancel flag). Within a round
    /// each task appears at most once, so its id names its entry.
    pub(crate) fn settle(
        &mut self,
        round: &[usize],
        changed: impl IntoIterator<Item = Result<(TaskId, bool)>>,
    ) -> Result<()> {
        let changed = changed.into_iter().collect::<Result<HashMap<TaskId, bool>>>()?;
        for &i in round {
            let e = &self.entries[i];
            if let Some(&cancel_requested) = changed.get(&e.lease.task) {
                self.out[i] = e.outcome(cancel_requested);
            }
        }
        Ok(())
    }

    /// Fills in every entry at `round` as written, when its statement changed them all.
    #[cfg(feature = "sqlite")]
    pub(crate) fn settle_all(&mut self, round: &[usize]) {
        for &i in round {
            self.out[i] = self.entries[i].outcome(false);
        }
    }
}
