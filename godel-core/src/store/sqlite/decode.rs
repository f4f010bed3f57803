//! Reading tasks back from SQLite rows, by column position.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::ids::{AgentId, TenantId};
use crate::store::sql::{Corrupt, Decoded, TaskRow, timeout_from_ms};
use crate::store::sqlite::{ROWS, db_err};
use crate::store::{ClaimRequest, HistoryEntry, OutputRecord, Result};
use crate::task::{Task, TaskStatus};
use crate::time::Timestamp;

/// Every column of `tasks`, in the order [`decode_task`] reads them.
pub(super) const COLUMNS: &str = "seq, id, tenant, priority, status, payload, capabilities, affinity_key, idempotency_key, \
     parent_id, attempt, max_attempts, timeout_ms, run_at, agent_id, lease_token, lease_expires_at, cancel_requested, \
     result, error, created_at, updated_at, started_at, completed_at, dead_lettered_at";

/// Decodes a row selected with [`COLUMNS`] into (seq, task, lease token).
pub(super) fn decode_task(row: &SqliteRow) -> Result<TaskRow> {
    let text = |i: usize| -> Result<Option<&str>> { row.try_get::<Option<&str>, _>(i).map_err(db_err) };
    let required = |i: usize, name: &'static str| -> Result<&str> {
        text(i)?.ok_or_else(|| ROWS.corrupt(format!("{name} is NULL")))
    };
    let known = Known {
        tenant: ROWS.parse(required(2, "tenant")?, "tenant")?,
        status: ROWS.parse(required(4, "status")?, "status")?,
        agent: text(14)?.map(|s| ROWS.parse::<AgentId>(s, "agent_id")).transpose()?,
        lease_expires_at: timestamp(row, 16)?,
        cancel_requested: row.try_get(17).map_err(db_err)?,
        updated_at: Timestamp::from_millis(row.try_get(21).map_err(db_err)?),
        started_at: timestamp(row, 22)?,
    };
    decode_with(row, known, &ALL)
}

/// Decodes a row with `decode`, or says why it does not decode. Both column
/// lists start with `seq` (an integer primary key, always readable) and `id`.
pub(super) fn decoded(row: &SqliteRow, decode: impl FnOnce(&SqliteRow) -> Result<TaskRow>) -> Result<Decoded> {
    match decode(row) {
        Ok(task) => Ok(Ok(task)),
        Err(e) => {
            let seq = row.try_get(0).map_err(db_err)?;
            let id = row.try_get::<Option<String>, _>(1).ok().flatten().unwrap_or_default();
            Ok(Err(Corrupt::new(seq, id, e)))
        }
    }
}

/// The columns a claim returns: all but the seven it has just set itself
/// (tenant, status, agent, lease expiry, cancel flag, update and start times).
pub(super) const CLAIMED_COLUMNS: &str = "seq, id, priority, payload, capabilities, affinity_key, idempotency_key, parent_id, \
     attempt, max_attempts, timeout_ms, run_at, lease_token, result, error, created_at, completed_at, dead_lettered_at";

/// Decodes a row that a claim returned with [`CLAIMED_COLUMNS`]. Every
/// returned column is copied out of SQLite and handed across sqlx's worker
/// thread, so a claim does not return the seven columns it has just set.
pub(super) fn decode_claimed(row: &SqliteRow, request: &ClaimRequest, now: Timestamp) -> Result<TaskRow> {
    let known = Known {
        tenant: request.tenant.clone(),
        status: TaskStatus::Assigned,
        agent: Some(request.agent.clone()),
        lease_expires_at: Some(now + request.lease_for),
        cancel_requested: false,
        updated_at: now,
        started_at: None,
    };
    decode_with(row, known, &CLAIMED)
}

/// The columns of a task that [`decode_with`] does not read.
struct Known {
    tenant: TenantId,
    status: TaskStatus,
    agent: Option<AgentId>,
    lease_expires_at: Option<Timestamp>,
    cancel_requested: bool,
    updated_at: Timestamp,
    started_at: Option<Timestamp>,
}

/// Where [`decode_with`] finds each column it reads.
struct Layout {
    seq: usize,
    id: usize,
    priority: usize,
    payload: usize,
    capabilities: usize,
    affinity_key: usize,
    idempotency_key: usize,
    parent_id: usize,
    attempt: usize,
    max_attempts: usize,
    timeout_ms: usize,
    run_at: usize,
    lease_token: usize,
    result: usize,
    error: usize,
    created_at: usize,
    completed_at: usize,
    dead_lettered_at: usize,
}

/// The columns of [`COLUMNS`].
const ALL: Layout = Layout {
    seq: 0,
    id: 1,
    priority: 3,
    payload: 5,
    capabilities: 6,
    affinity_key: 7,
    idempotency_key: 8,
    parent_id: 9,
    attempt: 10,
    max_attempts: 11,
    timeout_ms: 12,
    run_at: 13,
    lease_token: 15,
    result: 18,
    error: 19,
    created_at: 20,
    completed_at: 23,
    dead_lettered_at: 24,
};

/// The columns of [`CLAIMED_COLUMNS`].
const CLAIMED: Layout = Layout {
    seq: 0,
    id: 1,
    priority: 2,
    payload: 3,
    capabilities: 4,
    affinity_key: 5,
    idempotency_key: 6,
    parent_id: 7,
    attempt: 8,
    max_attempts: 9,
    timeout_ms: 10,
    run_at: 11,
    lease_token: 12,
    result: 13,
    error: 14,
    created_at: 15,
    completed_at: 16,
    dead_lettered_at: 17,
};

/// Decodes the rest of a task from `row`, laid out as `at` says.
fn decode_with(row: &SqliteRow, known: Known, at: &Layout) -> Result<TaskRow> {
    let text = |i: usize| -> Result<Option<&str>> { row.try_get::<Option<&str>, _>(i).map_err(db_err) };
    let required = |i: usize, name: &'static str| -> Result<&str> {
        text(i)?.ok_or_else(|| ROWS.corrupt(format!("{name} is NULL")))
    };
    let int = |i: usize| -> Result<i64> { row.try_get(i).map_err(db_err) };
    let capabilities = match required(at.capabilities, "capabilities")? {
        // Most tasks need no capability; skip the parser for them.
        "[]" => Vec::new(),
        caps => ROWS.json(caps, "capabilities")?,
    };
    let task = Task {
        id: ROWS.parse(required(at.id, "id")?, "id")?,
        tenant: known.tenant,
        priority: ROWS.priority(int(at.priority)?)?,
        status: known.status,
        payload: ROWS.json(required(at.payload, "payload")?, "payload")?,
        capabilities,
        affinity_key: text(at.affinity_key)?.map(str::to_owned),
        idempotency_key: text(at.idempotency_key)?.map(str::to_owned),
        parent: text(at.parent_id)?.map(|s| ROWS.parse(s, "parent_id")).transpose()?,
        attempt: row.try_get(at.attempt).map_err(db_err)?,
        max_attempts: row.try_get(at.max_attempts).map_err(db_err)?,
        timeout: row.try_get::<Option<i64>, _>(at.timeout_ms).map_err(db_err)?.map(timeout_from_ms),
        run_at: Timestamp::from_millis(int(at.run_at)?),
        agent: known.agent,
        lease_expires_at: known.lease_expires_at,
        cancel_requested: known.cancel_requested,
        result: text(at.result)?.map(|s| ROWS.json(s, "result")).transpose()?,
        error: text(at.error)?.map(|s| ROWS.json(s, "error")).transpose()?,
        created_at: Timestamp::from_millis(int(at.created_at)?),
        updated_at: known.updated_at,
        started_at: known.started_at,
        completed_at: timestamp(row, at.completed_at)?,
        dead_lettered_at: timestamp(row, at.dead_lettered_at)?,
    };
    let token = text(at.lease_token)?.map(|s| ROWS.parse(s, "lease_token")).transpose()?;
    Ok((int(at.seq)?, task, token))
}

/// Decodes a `task_output` row: attempt, stream, data, at.
pub(super) fn decode_output(row: &SqliteRow) -> Result<OutputRecord> {
    Ok(OutputRecord {
        attempt: row.try_get(0).map_err(db_err)?,
        stream: ROWS.parse(row.try_get(1).map_err(db_err)?, "stream")?,
        data: row.try_get(2).map_err(db_err)?,
        at: Timestamp::from_millis(row.try_get(3).map_err(db_err)?),
    })
}

/// Decodes a `task_history` row: at, attempt, status, agent, error, cancel flag.
pub(super) fn decode_history(row: &SqliteRow) -> Result<HistoryEntry> {
    let text = |i: usize| -> Result<Option<&str>> { row.try_get::<Option<&str>, _>(i).map_err(db_err) };
    Ok(HistoryEntry {
        at: Timestamp::from_millis(row.try_get(0).map_err(db_err)?),
        attempt: row.try_get(1).map_err(db_err)?,
        status: ROWS.parse(row.try_get(2).map_err(db_err)?, "status")?,
        agent: text(3)?.map(|a| ROWS.parse(a, "agent_id")).transpose()?,
        error: text(4)?.map(|e| ROWS.json(e, "error")).transpose()?,
        cancel_requested: row.try_get(5).map_err(db_err)?,
    })
}

/// A nullable time column.
fn timestamp(row: &SqliteRow, i: usize) -> Result<Option<Timestamp>> {
    Ok(row.try_get::<Option<i64>, _>(i).map_err(db_err)?.map(Timestamp::from_millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plans SQLite picks for the batched statements: each walks the batch
    /// and looks tasks up by id. A plan that scans `tasks` instead (every
    /// leased task, searching the batch for each) is correct but slow.
    /// Each layout names the positions of its column list.
    #[test]
    fn layouts_match_their_column_lists() {
        for (columns, layout) in [(COLUMNS, &ALL), (CLAIMED_COLUMNS, &CLAIMED)] {
            let at = |name: &str| columns.split(", ").position(|c| c == name).unwrap();
            let expected = [
                (layout.seq, "seq"),
                (layout.id, "id"),
                (layout.priority, "priority"),
                (layout.payload, "payload"),
                (layout.capabilities, "capabilities"),
                (layout.affinity_key, "affinity_key"),
                (layout.idempotency_key, "idempotency_key"),
                (layout.parent_id, "parent_id"),
                (layout.attempt, "attempt"),
                (layout.max_attempts, "max_attempts"),
                (layout.timeout_ms, "timeout_ms"),
                (layout.run_at, "run_at"),
                (layout.lease_token, "lease_token"),
                (layout.result, "result"),
                (layout.error, "error"),
                (layout.created_at, "created_at"),
                (layout.completed_at, "completed_at"),
                (layout.dead_lettered_at, "dead_lettered_at"),
            ];
            for (i, name) in expected {
                assert_eq!(i, at(name), "{name} in {columns}");
            }
        }
        // The columns `decode_task` reads itself.
        let known =
            [(2, "tenant"), (4, "status"), (14, "agent_id"), (16, "lease_expires_at"), (17, "cancel_requested")];
        for (i, name) in known.into_iter().chain([(21, "updated_at"), (22, "started_at")]) {
            assert_eq!(COLUMNS.split(", ").nth(i), Some(name));
        }
    }
}
