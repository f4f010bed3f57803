//! Batches on SQLite: inserting many tasks, and lease holders' starts and
//! completions, each as one statement that reads its batch as one JSON
//! parameter with `json_each`.

use std::collections::HashMap;

use sqlx::{Connection, Row, SqliteConnection};

use crate::ids::{TaskId, TenantId};
use crate::store::sql::{self, Entry, Writes};
use crate::store::sqlite::decode::{COLUMNS, decode_task};
use crate::store::sqlite::{BATCH_CHUNK, ROWS, SqliteStore, backend_err, db_err, token_text};
use crate::store::{Enqueued, Result, WriteOutcome};
use crate::task::{NewTask, Task};
use crate::time::Timestamp;

/// The fence of a batched write (rule 3), for statements of the form
/// `WITH batch (tenant, id, attempt, token, …) AS MATERIALIZED (…) UPDATE tasks
/// … FROM batch WHERE {BATCH_FENCE}`. `MATERIALIZED` makes SQLite walk the
/// batch and look each task up by its `id` index; left to itself, it may
/// instead scan every leased task and search the batch for each.
pub(super) const BATCH_FENCE: &str = "tasks.id = batch.id AND tasks.tenant = batch.tenant AND tasks.attempt = batch.attempt \
     AND tasks.lease_token = batch.token AND tasks.status IN ('assigned', 'running')";

/// Applies lease holders' writes in as few statements as it can (see
/// [`write_group`]); returns their outcomes in input order.
///
/// Entries for one task must act one after the other, as if written one by
/// one, or a repeated lease would apply twice in one statement: the n-th
/// entry of a task goes into the n-th group. All groups of a batch are
/// written in one transaction.
pub(super) async fn write_entries(store: &SqliteStore, mut writes: Writes<'_, '_>) -> Result<Vec<WriteOutcome>> {
    let entries = writes.entries;
    if entries.is_empty() {
        return Ok(writes.out);
    }
    let groups = statement_groups(entries);
    let mut conn = store.writer().await?;
    if let [group] = groups.as_slice() {
        write_group(&mut conn, &mut writes, group).await?;
    } else {
        let mut tx = conn.begin().await.map_err(db_err)?;
        for group in &groups {
            write_group(&mut tx, &mut writes, group).await?;
        }
        tx.commit().await.map_err(db_err)?;
    }
    Ok(writes.out)
}

/// Inserts `tasks` under `ids` in one statement, skipping those whose
/// idempotency key is taken (also by an earlier task of the same batch).
/// Returns the inserted tasks by id.
///
/// The statement returns no rows (each would cost a hand-off from sqlx's
/// worker thread); the tasks are built here, exactly as [`decode_task`] would
/// read them back. Only when some were skipped does a second statement ask
/// which of the new ids made it.
pub(super) async fn insert_tasks(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    tasks: &[NewTask],
    ids: &[TaskId],
    now: Timestamp,
) -> Result<HashMap<TaskId, Task>> {
    // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint;
    // `ORDER BY key` inserts in input order, so sequence numbers follow it and
    // the first of two tasks sharing a key is the one kept.
    const SQL: &str = "INSERT INTO tasks (id, tenant, priority, status, payload, capabilities, affinity_key, \
             idempotency_key, parent_id, max_attempts, timeout_ms, run_at, created_at, updated_at) \
         SELECT value ->> 0, ?2, value ->> 1, 'pending', value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
             value ->> 6, value ->> 7, value ->> 8, value ->> 9, ?3, ?3 \
         FROM json_each(?1) WHERE true ORDER BY key \
         ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";
    let mut rows = Vec::with_capacity(tasks.len());
    for (task, id) in tasks.iter().zip(ids) {
        rows.push((
            id.to_string(),
            i64::from(task.priority.rank()),
            serde_json::to_string(&task.payload).map_err(backend_err)?,
            serde_json::to_string(&task.capabilities).map_err(backend_err)?,
            task.affinity_key.as_deref(),
            task.idempotency_key.as_deref(),
            task.parent.map(|p| p.to_string()),
            task.max_attempts,
            task.timeout.map(sql::timeout_ms),
            task.run_at.unwrap_or(now).as_millis(),
        ));
    }
    let batch = serde_json::to_string(&rows).map_err(backend_err)?;
    let done = sqlx::query(SQL)
        .bind(batch)
        .bind(tenant.as_str())
        .bind(now.as_millis())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    let inserted: Option<std::collections::HashSet<TaskId>> = if done.rows_affected() == tasks.len() as u64 {
        None
    } else {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let found: Vec<String> =
            sqlx::query_scalar("SELECT id FROM tasks WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(serde_json::to_string(&ids).map_err(backend_err)?)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?;
        Some(found.iter().map(|id| ROWS.parse(id, "id")).collect::<Result<_>>()?)
    };
    let mut created = HashMap::with_capacity(tasks.len());
    for ((new, id), row) in tasks.iter().zip(ids).zip(&rows) {
        if inserted.as_ref().is_some_and(|set| !set.contains(id)) {
            continue;
        }
        let mut task = Task::pending(*id, tenant.clone(), new.clone(), now);
        // Read back from the very text stored, as `get` will.
        task.payload = ROWS.json(&row.2, "payload")?;
        task.timeout = row.8.map(sql::timeout_from_ms);
        task.run_at = Timestamp::from_millis(row.9);
        created.insert(*id, task);
    }
    Ok(created)
}

/// Lines up an [`enqueue_batch`](crate::store::TaskStore::enqueue_batch)
/// with its input: the task inserted for each entry, or the first task
/// holding its idempotency key.
pub(super) async fn enqueued_in_order(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    tasks: &[NewTask],
    ids: &[TaskId],
    mut created: HashMap<TaskId, Task>,
) -> Result<Vec<Enqueued>> {
    let created: Vec<Option<Task>> = ids.iter().map(|id| created.remove(id)).collect();
    let taken = sql::taken_keys(tasks, &created);
    let mut existing = Vec::new();
    if !taken.is_empty() {
        let sql = format!(
            "SELECT {COLUMNS} FROM tasks WHERE tenant = ?1 \
             AND idempotency_key IN (SELECT value FROM json_each(?2))"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(serde_json::to_string(&taken).map_err(backend_err)?)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
        existing = rows.iter().map(|row| Ok(decode_task(row)?.1)).collect::<Result<_>>()?;
    }
    sql::line_up(ROWS, tasks, created, existing)
}

/// Splits a batch of writes into statements: the n-th entry of a task goes
/// into round n, so repeated entries act one after the other, and each round
/// is cut into chunks of at most [`BATCH_CHUNK`]. Returns input indices.
fn statement_groups(entries: &[Entry<'_>]) -> Vec<Vec<usize>> {
    let rounds = sql::rounds(0..entries.len(), entries);
    rounds.iter().flat_map(|round| round.chunks(BATCH_CHUNK).map(<[usize]>::to_vec)).collect()
}

/// The batched lease-holder write: one `UPDATE … FROM batch`, fenced per
/// entry (rule 3), doing for each entry what `start` or `complete` does. It
/// takes the batch as JSON in `?1` and now in `?2`.
///
/// Every row a statement returns costs a hand-off between sqlx's worker
/// thread and the caller, so the quiet form returns none: it changes every
/// row or, when some entry's lease is stale or a started task has a cancel
/// request, nothing at all (its count of passing entries, compared with `?3`,
/// is taken once, before any change). The loud form, used only after a quiet
/// one changed nothing, returns the id and the cancel flag of each row it changed.
pub(super) fn write_sql(quiet: bool) -> String {
    let tail = if quiet {
        format!(
            "AND (SELECT count(*) FROM batch JOIN tasks ON {BATCH_FENCE} \
                 AND (batch.op = 'complete' OR tasks.cancel_requested = 0)) = ?3"
        )
    } else {
        "RETURNING id, cancel_requested".to_owned()
    };
    format!(
        "WITH batch (tenant, id, attempt, token, op, extra) AS MATERIALIZED ( \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 FROM json_each(?1)) \
         UPDATE tasks SET \
             status = CASE batch.op WHEN 'start' THEN 'running' ELSE 'completed' END, \
             agent_id = CASE batch.op WHEN 'start' THEN batch.extra ELSE tasks.agent_id END, \
             started_at = CASE WHEN batch.op = 'start' AND tasks.status = 'assigned' THEN ?2 ELSE tasks.started_at END, \
             result = CASE batch.op WHEN 'start' THEN tasks.result ELSE batch.extra END, \
             completed_at = CASE batch.op WHEN 'start' THEN tasks.completed_at ELSE ?2 END, \
             lease_token = CASE batch.op WHEN 'start' THEN tasks.lease_token END, \
             lease_expires_at = CASE batch.op WHEN 'start' THEN tasks.lease_expires_at END, \
             updated_at = ?2 \
         FROM batch WHERE {BATCH_FENCE} {tail}"
    )
}

/// Writes the entries at `group` (no task twice) and fills in their outcomes.
async fn write_group(conn: &mut SqliteConnection, writes: &mut Writes<'_, '_>, group: &[usize]) -> Result<()> {
    let now = writes.now;
    let batch = group_json(writes.entries, group)?;
    let n = i64::try_from(group.len()).unwrap_or(i64::MAX);
    let done = sqlx::query(&write_sql(true))
        .bind(&batch)
        .bind(now.as_millis())
        .bind(n)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    match done.rows_affected() {
        0 => {}
        changed if changed == group.len() as u64 => {
            writes.settle_all(group);
            return Ok(());
        }
        // Each entry names a different task and can change only that row.
        changed => return Err(ROWS.corrupt(format!("a batched write changed {changed} of {n} tasks"))),
    }
    let rows = sqlx::query(&write_sql(false))
        .bind(&batch)
        .bind(now.as_millis())
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    writes.settle(
        group,
        rows.iter()
            .map(|row| Ok((ROWS.parse(row.try_get(0).map_err(db_err)?, "id")?, row.try_get(1).map_err(db_err)?))),
    )
}

/// The entries at `group` as the JSON array a batched write reads.
fn group_json(entries: &[Entry<'_>], group: &[usize]) -> Result<String> {
    let batch: Vec<_> = group
        .iter()
        .map(|&i| {
            let e = &entries[i];
            (
                e.lease.tenant.as_str(),
                e.lease.task.to_string(),
                e.lease.attempt,
                token_text(&e.lease.token),
                e.op,
                &e.extra,
            )
        })
        .collect();
    serde_json::to_string(&batch).map_err(backend_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batched_statements_look_tasks_up_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("plans.db")).await.unwrap();
        for quiet in [true, false] {
            let sql = format!("EXPLAIN QUERY PLAN {}", write_sql(quiet));
            let rows = sqlx::query(&sql).fetch_all(&mut *store.writer().await.unwrap()).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>(3)).collect();
            assert!(plan.iter().any(|p| p.starts_with("SCAN batch") || p.starts_with("SCAN json_each")), "{plan:#?}");
            assert!(!plan.iter().any(|p| p.starts_with("SCAN tasks")), "{plan:#?}");
            let lookups =
                plan.iter().filter(|p| p.starts_with("SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id=?)"));
            assert_eq!(lookups.count(), if quiet { 2 } else { 1 }, "{plan:#?}");
        }
        store.close().await;
    }
}
