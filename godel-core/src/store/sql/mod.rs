//! What the SQLite and PostgreSQL backends share: decoding rows, the
//! decisions taken from what a statement returned, the grouping of batched
//! lease-holder writes, and the filter and paging clauses of listings.
//!
//! The two backends differ in their SQL text (parameters `?N` and `$N`,
//! `json_each` and `unnest`, `IN (…)` and `= ANY(…)`), which stays in each
//! backend; what they decide from the rows is written once here.

mod batch;
mod credentials;
mod query;
mod rows;

use std::collections::HashMap;
use std::time::Duration;

use crate::ids::{LeaseToken, TaskId};
use crate::store::{Claim, Enqueued, FailOutcome, Failure, Lease, Result, Retry, StoreError};
use crate::task::{NewTask, Task, TaskStatus};
use crate::time::Timestamp;

#[cfg(feature = "sqlite")]
pub(crate) use crate::store::sql::batch::Entry;
#[cfg(feature = "postgres")]
pub(crate) use crate::store::sql::batch::Op;
pub(crate) use crate::store::sql::batch::{Writes, entries, rounds};
pub(crate) use crate::store::sql::credentials::{
    AUDIT_CHUNK, AUDIT_INSERT, AuditRow, KeyRow, latest_uses, push_audit_query, push_audit_values,
};
pub(crate) use crate::store::sql::query::{page, push_filter, push_page, push_session_query};
pub(crate) use crate::store::sql::rows::Rows;

/// A task row as the backends decode it: its sequence number, the task, and
/// its lease token if it holds one.
pub(crate) type TaskRow = (i64, Task, Option<LeaseToken>);

/// A row that did not decode: its sequence number, its id as stored, and why.
#[derive(Debug)]
pub(crate) struct Corrupt {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) error: String,
}

/// A task row as claims and listings decode it, one row at a time: the task,
/// or why it did not decode.
pub(crate) type Decoded = std::result::Result<TaskRow, Corrupt>;

impl Corrupt {
    /// The row `seq` (whose id reads as `id`) failed to decode with `error`.
    pub(crate) fn new(seq: i64, id: String, error: StoreError) -> Self {
        let error = match error {
            StoreError::Backend { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        Self { seq, id, error }
    }
}

/// Splits decoded rows into the tasks and the rows that did not decode.
pub(crate) fn split(rows: Vec<Decoded>) -> (Vec<TaskRow>, Vec<Corrupt>) {
    let mut tasks = Vec::with_capacity(rows.len());
    let mut corrupt = Vec::new();
    for row in rows {
        match row {
            Ok(task) => tasks.push(task),
            Err(c) => corrupt.push(c),
        }
    }
    (tasks, corrupt)
}

/// A timeout as the `timeout_ms` column holds it.
pub(crate) fn timeout_ms(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// A timeout as read back from the `timeout_ms` column.
pub(crate) fn timeout_from_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Claimed rows as claims, in contract order: RETURNING does not promise one.
pub(crate) fn claims_in_order(rows: Rows, mut claimed: Vec<TaskRow>) -> Result<Vec<Claim>> {
    claimed.sort_by_key(|(seq, task, _)| (task.priority, task.run_at, *seq));
    claimed
        .into_iter()
        .map(|(_, task, token)| {
            let token = token.ok_or_else(|| rows.corrupt("claimed task has no lease token"))?;
            let lease = Lease { tenant: task.tenant.clone(), task: task.id, attempt: task.attempt, token };
            Ok(Claim { lease, task })
        })
        .collect()
}

/// The error for `action` on a task whose status `from` does not allow it
/// (the statement changed nothing, and a second read found the status).
pub(crate) fn refused(task: TaskId, from: TaskStatus, action: &'static str) -> StoreError {
    StoreError::InvalidTransition { task, from, action }
}

/// Status names as a SQL list (`'dead_letter', 'failed'`), for an `IN (…)`.
/// The names are the store's own, never input, so they are safe as literals.
pub(crate) fn status_list(statuses: &[&'static str]) -> String {
    statuses.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
}

/// Whether a failed attempt may be retried, and from when: the parameters
/// of a fenced fail.
pub(crate) fn retry_of(failure: &Failure, now: Timestamp) -> (bool, Timestamp) {
    match failure.retry {
        Retry::After(delay) => (true, now + delay),
        Retry::Never => (false, now),
    }
}

/// What a fenced fail did, from the status and `run_at` it returned: it
/// cancels if a cancel was requested, fails for good if not retryable,
/// dead-letters when attempts are spent, and otherwise makes the task pending
/// after the backoff.
pub(crate) fn fail_outcome(status: TaskStatus, run_at: i64) -> FailOutcome {
    match status {
        TaskStatus::Pending => FailOutcome::Retrying { run_at: Timestamp::from_millis(run_at) },
        TaskStatus::DeadLetter => FailOutcome::DeadLettered,
        TaskStatus::Cancelled => FailOutcome::Cancelled,
        _ => FailOutcome::Failed,
    }
}

/// The idempotency keys of the entries of a batch that were not inserted:
/// taken by an earlier task, or earlier in the batch.
pub(crate) fn taken_keys<'a>(tasks: &'a [NewTask], created: &[Option<Task>]) -> Vec<&'a str> {
    tasks.iter().zip(created).filter(|(_, c)| c.is_none()).filter_map(|(t, _)| t.idempotency_key.as_deref()).collect()
}

/// Lines up an [`enqueue_batch`](crate::store::TaskStore::enqueue_batch)
/// with its input: `created` holds the task inserted for each entry (none
/// where its key was taken), `existing` the first tasks holding the taken
/// keys, as read back.
pub(crate) fn line_up(
    rows: Rows,
    tasks: &[NewTask],
    created: Vec<Option<Task>>,
    existing: Vec<Task>,
) -> Result<Vec<Enqueued>> {
    let mut by_key: HashMap<String, Task> = HashMap::with_capacity(existing.len());
    for task in existing {
        let key = task.idempotency_key.clone().ok_or_else(|| rows.corrupt("keyed task has no idempotency key"))?;
        by_key.insert(key, task);
    }
    tasks
        .iter()
        .zip(created)
        .map(|(new, created)| {
            if let Some(task) = created {
                return Ok(Enqueued { task, created: true });
            }
            // Not inserted: its key was taken, before or earlier in this batch (rule 7).
            let first = new.idempotency_key.as_ref().and_then(|k| by_key.get(k));
            let first =
                first.ok_or_else(|| rows.corrupt("a task was neither inserted nor found by its idempotency key"))?;
            Ok(Enqueued { task: first.clone(), created: false })
        })
        .collect()
}
