//! Batches on PostgreSQL: inserting tasks, and lease holders' starts and
//! completions, each as one statement that unnests its batch from arrays.

use sqlx::{PgConnection, Row};

use crate::InvalidInput;
use crate::ids::{TaskId, TenantId};
use crate::store::postgres::decode::{COLUMNS, decode_task};
use crate::store::postgres::{PostgresStore, ROWS, backend_err, db_err, set_tenant};
use crate::store::sql::{self, Op, Writes};
use crate::store::{Enqueued, Result, WriteOutcome};
use crate::task::{NewTask, Task};
use crate::time::Timestamp;

/// Applies lease holders' writes; returns their outcomes in input order.
///
/// Entries for one task must act one after the other, as if written one by
/// one, or a repeated lease would apply twice in one statement: the n-th
/// entry of a task goes into the n-th round. Entries of different tenants
/// go into different statements, each under its own tenant setting. All
/// statements of a batch run in one transaction.
pub(super) async fn write_entries(store: &PostgresStore, mut writes: Writes<'_, '_>) -> Result<Vec<WriteOutcome>> {
    let entries = writes.entries;
    let Some(first) = entries.first() else { return Ok(writes.out) };
    let mut tenants: Vec<&TenantId> = Vec::new();
    for e in entries {
        if !tenants.contains(&&e.lease.tenant) {
            tenants.push(&e.lease.tenant);
        }
    }
    let mut tx = store.begin(&first.lease.tenant).await?;
    for (i, tenant) in tenants.iter().enumerate() {
        if i > 0 {
            set_tenant(&mut tx, tenant).await?;
        }
        let mine = entries.iter().enumerate().filter(|(_, e)| &e.lease.tenant == *tenant).map(|(i, _)| i);
        for round in sql::rounds(mine, entries) {
            write_round(&mut tx, &mut writes, &round).await?;
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(writes.out)
}

/// A new task's columns as the store writes them.
#[derive(Debug)]
pub(super) struct NewRow {
    id: TaskId,
    priority: i16,
    payload: String,
    capabilities: String,
    max_attempts: i32,
    timeout_ms: Option<i64>,
    run_at: i64,
}

impl NewRow {
    pub(super) fn of(task: &NewTask, id: TaskId, now: Timestamp) -> Result<Self> {
        Ok(Self {
            id,
            priority: i16::from(task.priority.rank()),
            payload: serde_json::to_string(&task.payload).map_err(backend_err)?,
            capabilities: serde_json::to_string(&task.capabilities).map_err(backend_err)?,
            max_attempts: i32::try_from(task.max_attempts)
                .map_err(|_| InvalidInput::new("max_attempts", "too large"))?,
            timeout_ms: task.timeout.map(sql::timeout_ms),
            run_at: task.run_at.unwrap_or(now).as_millis(),
        })
    }

    /// The task exactly as it will read back.
    fn task(&self, tenant: &TenantId, new: NewTask, now: Timestamp) -> Result<Task> {
        let mut task = Task::pending(self.id, tenant.clone(), new, now);
        // Read back from the very text stored, as `get` will.
        task.payload = ROWS.json(&self.payload, "payload")?;
        task.timeout = self.timeout_ms.map(sql::timeout_from_ms);
        task.run_at = Timestamp::from_millis(self.run_at);
        Ok(task)
    }
}

/// Inserts a batch in one statement, skipping tasks whose idempotency key is
/// taken (also by an earlier task of the same batch), and lines the results
/// up with the input: the task inserted for each entry, or the first task
/// holding its key.
pub(super) async fn insert_tasks(
    conn: &mut PgConnection,
    tenant: &TenantId,
    tasks: Vec<NewTask>,
    rows: Vec<NewRow>,
    now: Timestamp,
) -> Result<Vec<Enqueued>> {
    // `ORDER BY b.n` inserts in input order, so sequence numbers follow it and
    // the first of two tasks sharing a key is the one kept.
    const SQL: &str = "INSERT INTO tasks (id, tenant, priority, status, payload, capabilities, affinity_key, \
             idempotency_key, parent_id, max_attempts, timeout_ms, run_at, created_at, updated_at) \
         SELECT b.id::uuid, $1, b.priority, 'pending', b.payload, \
             CASE WHEN b.capabilities = '[]' THEN '{}'::text[] \
                  ELSE ARRAY(SELECT json_array_elements_text(b.capabilities::json)) END, \
             b.affinity_key, b.idempotency_key, b.parent_id::uuid, b.max_attempts, b.timeout_ms, b.run_at, $2, $2 \
         FROM unnest($3::text[], $4::int2[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                     $10::int4[], $11::int8[], $12::int8[]) WITH ORDINALITY \
             AS b (id, priority, payload, capabilities, affinity_key, idempotency_key, parent_id, max_attempts, \
                   timeout_ms, run_at, n) \
         ORDER BY b.n \
         ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";
    let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let done = sqlx::query(SQL)
        .bind(tenant.as_str())
        .bind(now.as_millis())
        .bind(&ids)
        .bind(rows.iter().map(|r| r.priority).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.capabilities.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.affinity_key.as_deref()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.idempotency_key.as_deref()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.parent.map(|p| p.to_string())).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.max_attempts).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.timeout_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.run_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    if done.rows_affected() == tasks.len() as u64 {
        return tasks
            .into_iter()
            .zip(&rows)
            .map(|(new, row)| Ok(Enqueued { task: row.task(tenant, new, now)?, created: true }))
            .collect();
    }
    // Some keys were taken: learn which of the new ids made it, and read the
    // first tasks holding the others' keys.
    let found: Vec<String> = sqlx::query_scalar("SELECT id::text FROM tasks WHERE id = ANY($1::uuid[])")
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    let inserted: std::collections::HashSet<TaskId> =
        found.iter().map(|id| ROWS.parse(id, "id")).collect::<Result<_>>()?;
    let created = tasks
        .iter()
        .zip(&rows)
        .map(|(new, row)| inserted.contains(&row.id).then(|| row.task(tenant, new.clone(), now)).transpose())
        .collect::<Result<Vec<_>>>()?;
    let taken = sql::taken_keys(&tasks, &created);
    let sql = format!("SELECT {COLUMNS} FROM tasks t WHERE t.tenant = $1 AND t.idempotency_key = ANY($2)");
    let existing = sqlx::query(&sql).bind(tenant.as_str()).bind(&taken).fetch_all(&mut *conn).await.map_err(db_err)?;
    let existing = existing.iter().map(|row| Ok(decode_task(row)?.1)).collect::<Result<Vec<_>>>()?;
    sql::line_up(ROWS, &tasks, created, existing)
}

/// Writes the entries at `round` (one tenant, no task twice) in one fenced
/// `UPDATE … FROM unnest(…)` and fills in their outcomes.
async fn write_round(conn: &mut PgConnection, writes: &mut Writes<'_, '_>, round: &[usize]) -> Result<()> {
    const SQL: &str = "UPDATE tasks t SET \
             status = CASE WHEN b.start THEN 'running' ELSE 'completed' END, \
             agent_id = CASE WHEN b.start THEN b.extra ELSE t.agent_id END, \
             started_at = CASE WHEN b.start AND t.status = 'assigned' THEN $6 ELSE t.started_at END, \
             result = CASE WHEN b.start THEN t.result ELSE b.extra END, \
             completed_at = CASE WHEN b.start THEN t.completed_at ELSE $6 END, \
             lease_token = CASE WHEN b.start THEN t.lease_token END, \
             lease_expires_at = CASE WHEN b.start THEN t.lease_expires_at END, \
             updated_at = $6 \
         FROM unnest($1::text[], $2::int4[], $3::text[], $4::bool[], $5::text[]) AS b (id, attempt, token, start, extra) \
         WHERE t.id = b.id::uuid AND t.tenant = $7 AND t.attempt = b.attempt AND t.lease_token = b.token::uuid \
             AND t.status IN ('assigned', 'running') \
         RETURNING t.id::text, t.cancel_requested";
    let (entries, now) = (writes.entries, writes.now);
    let tenant = &entries[round[0]].lease.tenant;
    let ids: Vec<String> = round.iter().map(|&i| entries[i].lease.task.to_string()).collect();
    let attempts: Vec<i32> =
        round.iter().map(|&i| i32::try_from(entries[i].lease.attempt).unwrap_or(i32::MAX)).collect();
    let tokens: Vec<String> = round.iter().map(|&i| entries[i].lease.token.to_string()).collect();
    let starts: Vec<bool> = round.iter().map(|&i| entries[i].op == Op::Start).collect();
    let extras: Vec<&str> = round.iter().map(|&i| entries[i].extra.as_str()).collect();
    let rows = sqlx::query(SQL)
        .bind(&ids)
        .bind(&attempts)
        .bind(&tokens)
        .bind(&starts)
        .bind(&extras)
        .bind(now.as_millis())
        .bind(tenant.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    let changed = rows
        .iter()
        .map(|row| Ok((ROWS.parse(row.try_get(0).map_err(db_err)?, "id")?, row.try_get(1).map_err(db_err)?)));
    writes.settle(round, changed)
}
