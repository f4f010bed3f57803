//! Reading tasks back from PostgreSQL rows, by column position.

use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::ids::AgentId;
use crate::store::Result;
use crate::store::postgres::{ROWS, db_err, unsigned};
use crate::store::sql::{Corrupt, Decoded, TaskRow, timeout_from_ms};
use crate::task::Task;
use crate::time::Timestamp;

/// Every column of `tasks` (as `t`), in the order [`decode_task`] reads them.
pub(super) const COLUMNS: &str = "t.seq, t.id::text, t.tenant, t.priority, t.status, t.payload, t.capabilities, \
     t.affinity_key, t.idempotency_key, t.parent_id::text, t.attempt, t.max_attempts, t.timeout_ms, t.run_at, \
     t.agent_id, t.lease_token::text, t.lease_expires_at, t.cancel_requested, t.result, t.error, t.created_at, \
     t.updated_at, t.started_at, t.completed_at, t.dead_lettered_at";

/// Decodes a row selected with [`COLUMNS`], or says why it does not decode.
pub(super) fn decoded(row: &PgRow) -> Result<Decoded> {
    match decode_task(row) {
        Ok(task) => Ok(Ok(task)),
        Err(e) => {
            let seq = row.try_get(0).map_err(db_err)?;
            let id = row.try_get::<Option<String>, _>(1).ok().flatten().unwrap_or_default();
            Ok(Err(Corrupt::new(seq, id, e)))
        }
    }
}

/// Decodes a row selected with [`COLUMNS`] into (seq, task, lease token).
pub(super) fn decode_task(row: &PgRow) -> Result<TaskRow> {
    let text = |i: usize| -> Result<Option<&str>> { row.try_get::<Option<&str>, _>(i).map_err(db_err) };
    let required = |i: usize, name: &'static str| -> Result<&str> {
        text(i)?.ok_or_else(|| ROWS.corrupt(format!("{name} is NULL")))
    };
    let int = |i: usize| -> Result<i64> { row.try_get(i).map_err(db_err) };
    let time = |i: usize| -> Result<Option<Timestamp>> {
        Ok(row.try_get::<Option<i64>, _>(i).map_err(db_err)?.map(Timestamp::from_millis))
    };
    let task = Task {
        id: ROWS.parse(required(1, "id")?, "id")?,
        tenant: ROWS.parse(required(2, "tenant")?, "tenant")?,
        priority: ROWS.priority(i64::from(row.try_get::<i16, _>(3).map_err(db_err)?))?,
        status: ROWS.parse(required(4, "status")?, "status")?,
        payload: ROWS.json(required(5, "payload")?, "payload")?,
        capabilities: row.try_get(6).map_err(db_err)?,
        affinity_key: text(7)?.map(str::to_owned),
        idempotency_key: text(8)?.map(str::to_owned),
        parent: text(9)?.map(|s| ROWS.parse(s, "parent_id")).transpose()?,
        attempt: unsigned(row.try_get(10).map_err(db_err)?, "attempt")?,
        max_attempts: unsigned(row.try_get(11).map_err(db_err)?, "max_attempts")?,
        timeout: row.try_get::<Option<i64>, _>(12).map_err(db_err)?.map(timeout_from_ms),
        run_at: Timestamp::from_millis(int(13)?),
        agent: text(14)?.map(|s| ROWS.parse::<AgentId>(s, "agent_id")).transpose()?,
        lease_expires_at: time(16)?,
        cancel_requested: row.try_get(17).map_err(db_err)?,
        result: text(18)?.map(|s| ROWS.json(s, "result")).transpose()?,
        error: text(19)?.map(|s| ROWS.json(s, "error")).transpose()?,
        created_at: Timestamp::from_millis(int(20)?),
        updated_at: Timestamp::from_millis(int(21)?),
        started_at: time(22)?,
        completed_at: time(23)?,
        dead_lettered_at: time(24)?,
    };
    let token = text(15)?.map(|s| ROWS.parse(s, "lease_token")).transpose()?;
    Ok((int(0)?, task, token))
}
