//! The SQLite backend (sqlx): the embedded default.
//!
//! The database runs in WAL mode with `synchronous = NORMAL`: a committed
//! write survives the process being killed at any instant (it is in the WAL
//! file), though not necessarily a power cut. Writes go through one
//! connection, taken in turn behind an async mutex, so they queue rather than
//! spin on `SQLITE_BUSY`; reads use a separate read-only pool that WAL lets
//! run beside the writer. The writer is not a pool of one: sqlx pings a pooled
//! connection when it is taken and again when it is given back, which tripled
//! the round trips of every write.
//!
//! Every state change is a single fenced `UPDATE`, so rule 1 (atomic claim)
//! and rule 3 (fencing) hold even if another process opens the same file.
//! Batches (enqueue, lease holders' writes, sessions) are one statement per
//! batch, not per task: the batch travels as one JSON parameter that the
//! statement reads with `json_each`. Each statement is a round trip to sqlx's
//! worker thread and each returned row another hand-off, so batched writes
//! return no rows unless something in the batch went wrong.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::ids::{AgentId, LeaseToken, SessionId, TaskId, TenantId};
use crate::session::Session;
use crate::store::rows::Rows;
use crate::store::{
    BatchCompletion, BoxError, CancelOutcome, Claim, ClaimRequest, Completion, Cursor, Enqueued, FailOutcome, Failure,
    HistoryEntry, Lease, LeaseStatus, LeaseWrite, Member, MemberKind, Micros, OutputChunk, OutputRecord, Page,
    QueueCounts, QueueDepth, Reclaimed, Result, Retry, SessionQuery, SortOrder, Store, StoreError, TaskFilter,
    TaskQuery, WriteOutcome,
};
use crate::task::{NewTask, Task, TaskErrorKind, TaskStatus};
use crate::time::Timestamp;
use crate::{InvalidInput, TaskError};

const BACKEND: &str = "sqlite";
/// Decoding with this backend's name in errors.
const ROWS: Rows = Rows(BACKEND);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Every column of `tasks`, in the order [`decode_task`] reads them.
const COLUMNS: &str = "seq, id, tenant, priority, status, payload, capabilities, affinity_key, idempotency_key, \
     parent_id, attempt, max_attempts, timeout_ms, run_at, agent_id, lease_token, lease_expires_at, cancel_requested, \
     result, error, created_at, updated_at, started_at, completed_at, dead_lettered_at";

/// The fence every write for an attempt must pass (rule 3). It takes
/// parameters `?1` to `?4` (bound by [`fenced`]); fenced statements number
/// their own parameters from `?5`. (sqlx numbers bare `?` apart from `?N`, so
/// the two styles must not be mixed in one statement.)
const FENCE: &str =
    "tenant = ?1 AND id = ?2 AND attempt = ?3 AND lease_token = ?4 AND status IN ('assigned', 'running')";

/// Most entries one batched statement carries. The batch travels as one JSON
/// parameter, so this bounds the statement's size, not its parameter count;
/// bigger batches take several statements in one transaction.
const BATCH_CHUNK: usize = 1_000;

/// The fence of a batched write (rule 3), for statements of the form
/// `WITH batch (tenant, id, attempt, token, …) AS MATERIALIZED (…) UPDATE tasks
/// … FROM batch WHERE {BATCH_FENCE}`. `MATERIALIZED` makes SQLite walk the
/// batch and look each task up by its `id` index; left to itself, it may
/// instead scan every leased task and search the batch for each.
const BATCH_FENCE: &str = "tasks.id = batch.id AND tasks.tenant = batch.tenant AND tasks.attempt = batch.attempt \
     AND tasks.lease_token = batch.token AND tasks.status IN ('assigned', 'running')";

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Option<SqliteConnection>>>,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    /// A missing directory is created; an unreadable or corrupt file gives
    /// [`StoreError::Open`] naming it.
    pub async fn open(path: &Path) -> Result<Self> {
        let location = path.display().to_string();
        let open_err = |source: BoxError| StoreError::Open { backend: BACKEND, location: location.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| open_err(e.into()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // sqlx's migrator runs on a pool (through a bare connection its future
        // would not be `Send`), so it gets a pool of one, closed once done.
        let migrations = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().create_if_missing(true))
            .await
            .map_err(|e| open_err(e.into()))?;
        MIGRATOR.run(&migrations).await.map_err(|e| open_err(e.into()))?;
        migrations.close().await;
        let writer = options.clone().connect().await.map_err(|e| open_err(e.into()))?;
        let reader = SqlitePoolOptions::new()
            // Not a round trip to ping the connection before every read: a
            // broken one fails its query, and the pool replaces it.
            .test_before_acquire(false)
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| open_err(e.into()))?;
        let writer = Arc::new(Mutex::new(Some(writer)));
        Ok(Self { writer, reader })
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        if let Some(writer) = self.writer.lock().await.take() {
            if let Err(e) = writer.close().await {
                tracing::warn!(error = %e, "closing the SQLite writer connection failed");
            }
        }
    }

    /// Waits for the writer connection, whose holders take turns in order.
    async fn writer(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>> {
        MutexGuard::try_map(self.writer.lock().await, Option::as_mut)
            .map_err(|_| StoreError::Unavailable { backend: BACKEND, source: "the store is closed".into() })
    }

    async fn status_of(&self, tenant: &TenantId, id: TaskId) -> Result<TaskStatus> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE tenant = ? AND id = ?")
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?;
        ROWS.parse(&status.ok_or(StoreError::NotFound(id))?, "status")
    }

    /// Applies lease holders' writes in as few statements as it can (see
    /// [`write_group`]); returns their outcomes in input order.
    ///
    /// Entries for one task must act one after the other, as if written one by
    /// one, or a repeated lease would apply twice in one statement: the n-th
    /// entry of a task goes into the n-th group. All groups of a batch are
    /// written in one transaction.
    async fn write_entries(&self, entries: &[Entry<'_>], now: Timestamp) -> Result<Vec<WriteOutcome>> {
        let mut out = vec![WriteOutcome::LeaseLost; entries.len()];
        if entries.is_empty() {
            return Ok(out);
        }
        let groups = statement_groups(entries.iter().map(|e| e.lease.task));
        let mut conn = self.writer().await?;
        if let [group] = groups.as_slice() {
            write_group(&mut conn, entries, group, now, &mut out).await?;
        } else {
            let mut tx = conn.begin().await.map_err(db_err)?;
            for group in &groups {
                write_group(&mut tx, entries, group, now, &mut out).await?;
            }
            tx.commit().await.map_err(db_err)?;
        }
        Ok(out)
    }

    async fn seq_of(&self, tenant: &TenantId, id: TaskId) -> Result<i64> {
        sqlx::query_scalar("SELECT seq FROM tasks WHERE tenant = ? AND id = ?")
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?
            .ok_or(StoreError::NotFound(id))
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await.map_err(db_err)?;
        Ok(())
    }

    async fn enqueue(&self, tenant: &TenantId, task: NewTask, now: Timestamp) -> Result<Enqueued> {
        let mut task = task;
        task.validate()?;
        let mut conn = self.writer().await?;
        insert_task(&mut conn, tenant, &task, now).await
    }

    async fn enqueue_batch(&self, tenant: &TenantId, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        let mut tasks = tasks;
        for task in &mut tasks {
            task.validate()?;
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<TaskId> = tasks.iter().map(|_| TaskId::new()).collect();
        let mut conn = self.writer().await?;
        // One statement and no transaction in the common case. An idempotency
        // key may need more (to learn which tasks were skipped, and read back
        // the first tasks holding their keys), and those must see one state.
        let single = tasks.len() <= BATCH_CHUNK && tasks.iter().all(|t| t.idempotency_key.is_none());
        if single {
            let created = insert_tasks(&mut conn, tenant, &tasks, &ids, now).await?;
            return enqueued_in_order(&mut conn, tenant, &tasks, &ids, created).await;
        }
        let mut tx = conn.begin().await.map_err(db_err)?;
        let mut created = HashMap::with_capacity(tasks.len());
        for (chunk, chunk_ids) in tasks.chunks(BATCH_CHUNK).zip(ids.chunks(BATCH_CHUNK)) {
            created.extend(insert_tasks(&mut tx, tenant, chunk, chunk_ids, now).await?);
        }
        let out = enqueued_in_order(&mut tx, tenant, &tasks, &ids, created).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Claim>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        claim_on(&mut *self.writer().await?, request, now).await
    }

    async fn start(&self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus> {
        let sql = format!(
            "UPDATE tasks SET status = 'running', agent_id = ?6, \
                 started_at = CASE WHEN status = 'assigned' THEN ?5 ELSE started_at END, updated_at = ?5 \
             WHERE {FENCE} RETURNING lease_expires_at, cancel_requested"
        );
        let query = fenced(&sql, lease).bind(now.as_millis()).bind(agent.as_str());
        let row = query.fetch_optional(&mut *self.writer().await?).await.map_err(db_err)?;
        lease_status(row, lease)
    }

    async fn write_batch(&self, writes: &[LeaseWrite], now: Timestamp) -> Result<Vec<WriteOutcome>> {
        let entries = writes
            .iter()
            .map(|w| match w {
                LeaseWrite::Start { lease, agent } => {
                    Ok(Entry { lease, op: Op::Start, extra: agent.as_str().to_owned() })
                }
                LeaseWrite::Complete(c) => Entry::complete(c),
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_entries(&entries, now).await
    }

    async fn heartbeat(&self, lease: &Lease, extend_by: Duration, now: Timestamp) -> Result<LeaseStatus> {
        let sql = format!(
            "UPDATE tasks SET lease_expires_at = ?5, updated_at = ?6 WHERE {FENCE} \
             RETURNING lease_expires_at, cancel_requested"
        );
        let query = fenced(&sql, lease).bind((now + extend_by).as_millis()).bind(now.as_millis());
        let row = query.fetch_optional(&mut *self.writer().await?).await.map_err(db_err)?;
        lease_status(row, lease)
    }

    async fn append_output(&self, lease: &Lease, chunks: &[OutputChunk], now: Timestamp) -> Result<()> {
        let sql = format!(
            "INSERT INTO task_output (task_seq, attempt, stream, data, at) \
             SELECT seq, attempt, ?5, ?6, ?7 FROM tasks WHERE {FENCE}"
        );
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await.map_err(db_err)?;
        if chunks.is_empty() {
            // Still check the fence, so an empty append by a zombie is an error too.
            let check = format!("SELECT 1 FROM tasks WHERE {FENCE}");
            fenced(&check, lease)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .ok_or(StoreError::LeaseLost(lease.task))?;
        }
        for chunk in chunks {
            let query = fenced(&sql, lease).bind(chunk.stream.as_str()).bind(&chunk.data).bind(now.as_millis());
            let done = query.execute(&mut *tx).await.map_err(db_err)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::LeaseLost(lease.task));
            }
        }
        tx.commit().await.map_err(db_err)
    }

    async fn complete(&self, lease: &Lease, result: Value, now: Timestamp) -> Result<()> {
        let mut conn = self.writer().await?;
        if complete_one(&mut conn, lease, &result, now).await? {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(lease.task))
        }
    }

    async fn complete_batch(&self, completions: &[Completion], now: Timestamp) -> Result<BatchCompletion> {
        let entries = completions.iter().map(Entry::complete).collect::<Result<Vec<_>>>()?;
        let outcomes = self.write_entries(&entries, now).await?;
        let mut out = BatchCompletion::default();
        for (c, outcome) in completions.iter().zip(outcomes) {
            if outcome == WriteOutcome::Completed {
                out.completed.push(c.lease.task);
            } else {
                out.lease_lost.push(c.lease.task);
            }
        }
        Ok(out)
    }

    async fn fail(&self, lease: &Lease, failure: &Failure, now: Timestamp) -> Result<FailOutcome> {
        // SET expressions all see the old row, so each column repeats the decision:
        // cancelled if a cancel was requested, failed if not retryable,
        // dead-lettered when attempts are spent, pending after the backoff otherwise.
        let sql = format!(
            "UPDATE tasks SET \
                 status = CASE WHEN cancel_requested = 1 THEN 'cancelled' WHEN ?5 = 0 THEN 'failed' \
                               WHEN attempt >= max_attempts THEN 'dead_letter' ELSE 'pending' END, \
                 run_at = CASE WHEN cancel_requested = 0 AND ?5 = 1 AND attempt < max_attempts THEN ?6 ELSE run_at END, \
                 completed_at = CASE WHEN cancel_requested = 0 AND ?5 = 1 AND attempt < max_attempts THEN NULL ELSE ?7 END, \
                 dead_lettered_at = CASE WHEN cancel_requested = 0 AND ?5 = 1 AND attempt >= max_attempts THEN ?7 ELSE NULL END, \
                 error = ?8, lease_token = NULL, lease_expires_at = NULL, updated_at = ?7 \
             WHERE {FENCE} RETURNING status, run_at"
        );
        let (retryable, run_at) = match failure.retry {
            Retry::After(delay) => (true, now + delay),
            Retry::Never => (false, now),
        };
        let error = serde_json::to_string(&failure.error).map_err(backend_err)?;
        let query = fenced(&sql, lease).bind(retryable).bind(run_at.as_millis()).bind(now.as_millis()).bind(error);
        let row = query.fetch_optional(&mut *self.writer().await?).await.map_err(db_err)?;
        let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
        Ok(match ROWS.parse::<TaskStatus>(&row.try_get::<String, _>(0).map_err(db_err)?, "status")? {
            TaskStatus::Pending => {
                FailOutcome::Retrying { run_at: Timestamp::from_millis(row.try_get(1).map_err(db_err)?) }
            }
            TaskStatus::DeadLetter => FailOutcome::DeadLettered,
            TaskStatus::Cancelled => FailOutcome::Cancelled,
            _ => FailOutcome::Failed,
        })
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<TaskStatus> {
        // The attempt never ran to an outcome, so it does not count, and the
        // task keeps its run_at and therefore its place in line.
        let sql = format!(
            "UPDATE tasks SET \
                 status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'pending' END, \
                 attempt = CASE WHEN cancel_requested = 1 THEN attempt ELSE attempt - 1 END, \
                 completed_at = CASE WHEN cancel_requested = 1 THEN ?5 ELSE NULL END, \
                 lease_token = NULL, lease_expires_at = NULL, updated_at = ?5 \
             WHERE {FENCE} RETURNING status"
        );
        let row = fenced(&sql, lease)
            .bind(now.as_millis())
            .fetch_optional(&mut *self.writer().await?)
            .await
            .map_err(db_err)?;
        let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
        ROWS.parse(&row.try_get::<String, _>(0).map_err(db_err)?, "status")
    }

    async fn confirm_cancel(&self, lease: &Lease, now: Timestamp) -> Result<()> {
        let sql = format!(
            "UPDATE tasks SET status = 'cancelled', completed_at = ?5, lease_token = NULL, lease_expires_at = NULL, \
                 updated_at = ?5 WHERE {FENCE}"
        );
        let done =
            fenced(&sql, lease).bind(now.as_millis()).execute(&mut *self.writer().await?).await.map_err(db_err)?;
        if done.rows_affected() == 0 { Err(StoreError::LeaseLost(lease.task)) } else { Ok(()) }
    }

    async fn cancel(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        let row = sqlx::query(
            "UPDATE tasks SET \
                 status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END, \
                 cancel_requested = CASE WHEN status = 'pending' THEN cancel_requested ELSE 1 END, \
                 completed_at = CASE WHEN status = 'pending' THEN ?1 ELSE completed_at END, updated_at = ?1 \
             WHERE tenant = ?2 AND id = ?3 AND status IN ('pending', 'assigned', 'running') RETURNING status",
        )
        .bind(now.as_millis())
        .bind(tenant.as_str())
        .bind(id.to_string())
        .fetch_optional(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        match row {
            Some(row) if row.try_get::<String, _>(0).map_err(db_err)? == "cancelled" => Ok(CancelOutcome::Cancelled),
            Some(_) => Ok(CancelOutcome::Requested),
            None => Err(StoreError::InvalidTransition {
                task: id,
                from: self.status_of(tenant, id).await?,
                action: "cancel",
            }),
        }
    }

    async fn reclaim_expired(&self, now: Timestamp, limit: usize) -> Result<Vec<Reclaimed>> {
        let error = serde_json::to_string(&TaskError::new(TaskErrorKind::LeaseExpired, "lease expired"))
            .map_err(backend_err)?;
        let rows = sqlx::query(
            "UPDATE tasks SET \
                 status = CASE WHEN cancel_requested = 1 THEN 'cancelled' \
                               WHEN attempt >= max_attempts THEN 'dead_letter' ELSE 'pending' END, \
                 completed_at = CASE WHEN cancel_requested = 1 OR attempt >= max_attempts THEN ?1 ELSE NULL END, \
                 dead_lettered_at = CASE WHEN cancel_requested = 0 AND attempt >= max_attempts THEN ?1 ELSE NULL END, \
                 error = json_set(?2, '$.message', 'lease of attempt ' || attempt || ' expired'), \
                 lease_token = NULL, lease_expires_at = NULL, updated_at = ?1 \
             WHERE seq IN ( \
                 SELECT seq FROM tasks WHERE status IN ('assigned', 'running') AND lease_expires_at <= ?1 \
                 ORDER BY lease_expires_at LIMIT ?3) \
             RETURNING tenant, id, attempt, status, priority",
        )
        .bind(now.as_millis())
        .bind(error)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(Reclaimed {
                    tenant: ROWS.parse(&row.try_get::<String, _>(0).map_err(db_err)?, "tenant")?,
                    task: ROWS.parse(&row.try_get::<String, _>(1).map_err(db_err)?, "id")?,
                    attempt: row.try_get(2).map_err(db_err)?,
                    status: ROWS.parse(&row.try_get::<String, _>(3).map_err(db_err)?, "status")?,
                    priority: ROWS.priority(row.try_get(4).map_err(db_err)?)?,
                })
            })
            .collect()
    }

    async fn replay(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<Task> {
        let sql = format!(
            "UPDATE tasks SET {REPLAY_SET} \
             WHERE tenant = ?2 AND id = ?3 AND status IN ('dead_letter', 'failed', 'cancelled') RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(now.as_millis())
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&mut *self.writer().await?)
            .await
            .map_err(db_err)?;
        match row {
            Some(row) => Ok(decode_task(&row)?.1),
            None => Err(StoreError::InvalidTransition {
                task: id,
                from: self.status_of(tenant, id).await?,
                action: "replay",
            }),
        }
    }

    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64> {
        let filter = filter.for_dead_letters()?;
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE tasks SET ");
        qb.push(REPLAY_SET.replace("?1", &now.as_millis().to_string()));
        qb.push(" WHERE tenant = ").push_bind(tenant.as_str());
        push_filter(&mut qb, &filter);
        let done = qb.build().execute(&mut *self.writer().await?).await.map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn purge(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        let done = sqlx::query(
            "DELETE FROM tasks WHERE tenant = ? AND id = ? \
             AND status IN ('completed', 'failed', 'cancelled', 'dead_letter')",
        )
        .bind(tenant.as_str())
        .bind(id.to_string())
        .execute(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        Err(StoreError::InvalidTransition { task: id, from: self.status_of(tenant, id).await?, action: "purge" })
    }

    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64> {
        let filter = filter.for_purge()?;
        let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM tasks WHERE tenant = ");
        qb.push_bind(tenant.as_str());
        push_filter(&mut qb, &filter);
        qb.push(" AND completed_at < ").push_bind(finished_before.as_millis());
        let done = qb.build().execute(&mut *self.writer().await?).await.map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn get(&self, tenant: &TenantId, id: TaskId) -> Result<Task> {
        let sql = format!("SELECT {COLUMNS} FROM tasks WHERE tenant = ? AND id = ?");
        let row = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?
            .ok_or(StoreError::NotFound(id))?;
        Ok(decode_task(&row)?.1)
    }

    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>> {
        let after = query.validate()?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM tasks WHERE tenant = "));
        qb.push_bind(tenant.as_str());
        push_filter(&mut qb, &query.filter);
        let (op, dir) = match query.order {
            SortOrder::Ascending => (" > ", " ASC"),
            SortOrder::Descending => (" < ", " DESC"),
        };
        if let Some(after) = after {
            qb.push(" AND seq").push(op).push_bind(after);
        }
        qb.push(" ORDER BY seq")
            .push(dir)
            .push(" LIMIT ")
            .push_bind(i64::try_from(query.limit + 1).unwrap_or(i64::MAX));
        let rows = qb.build().fetch_all(&self.reader).await.map_err(db_err)?;
        let mut rows = rows.iter().map(decode_task).collect::<Result<Vec<_>>>()?;
        let next_cursor = (rows.len() > query.limit).then(|| {
            rows.truncate(query.limit);
            Cursor::after(query.order, rows.last().expect("non-empty").0)
        });
        Ok(Page { items: rows.into_iter().map(|(_, t, _)| t).collect(), next_cursor })
    }

    async fn output(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<OutputRecord>> {
        let seq = self.seq_of(tenant, id).await?;
        let rows = sqlx::query("SELECT attempt, stream, data, at FROM task_output WHERE task_seq = ? ORDER BY seq")
            .bind(seq)
            .fetch_all(&self.reader)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(OutputRecord {
                    attempt: row.try_get(0).map_err(db_err)?,
                    stream: ROWS.parse(&row.try_get::<String, _>(1).map_err(db_err)?, "stream")?,
                    data: row.try_get(2).map_err(db_err)?,
                    at: Timestamp::from_millis(row.try_get(3).map_err(db_err)?),
                })
            })
            .collect()
    }

    async fn history(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<HistoryEntry>> {
        let seq = self.seq_of(tenant, id).await?;
        let rows = sqlx::query(
            "SELECT at, attempt, status, agent_id, error, cancel_requested FROM task_history \
             WHERE task_seq = ? ORDER BY seq",
        )
        .bind(seq)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let agent: Option<String> = row.try_get(3).map_err(db_err)?;
                let error: Option<String> = row.try_get(4).map_err(db_err)?;
                Ok(HistoryEntry {
                    at: Timestamp::from_millis(row.try_get(0).map_err(db_err)?),
                    attempt: row.try_get(1).map_err(db_err)?,
                    status: ROWS.parse(&row.try_get::<String, _>(2).map_err(db_err)?, "status")?,
                    agent: agent.map(|a| ROWS.parse(&a, "agent_id")).transpose()?,
                    error: error.map(|e| ROWS.json(&e, "error")).transpose()?,
                    cancel_requested: row.try_get(5).map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn depth(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueDepth> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT priority, count(*) FROM tasks WHERE tenant = ? AND status = 'pending' AND run_at <= ? GROUP BY priority",
        )
        .bind(tenant.as_str())
        .bind(now.as_millis())
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        let mut depth = QueueDepth::default();
        for (rank, n) in rows {
            depth.add(ROWS.priority(rank)?, u64::try_from(n).unwrap_or(0));
        }
        Ok(depth)
    }

    async fn counts(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueCounts> {
        let mut counts = QueueCounts::default();
        // One read transaction, so the three queries see the same snapshot.
        let mut tx = self.reader.begin().await.map_err(db_err)?;
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM tasks WHERE tenant = ? GROUP BY status")
                .bind(tenant.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        for (status, n) in by_status {
            counts.add_status(ROWS.parse(&status, "status")?, u64::try_from(n).unwrap_or(0));
        }
        let (ready, scheduled, oldest): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT sum(run_at <= ?1), sum(run_at > ?1), min(CASE WHEN run_at <= ?1 THEN run_at END) \
             FROM tasks WHERE tenant = ?2 AND status = 'pending'",
        )
        .bind(now.as_millis())
        .bind(tenant.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        counts.ready = ready.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        counts.scheduled = scheduled.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        counts.oldest_ready = oldest.map(Timestamp::from_millis);
        let expired: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE tenant = ? AND status IN ('assigned', 'running') AND lease_expires_at <= ?",
        )
        .bind(tenant.as_str())
        .bind(now.as_millis())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        counts.expired_leases = u64::try_from(expired).unwrap_or(0);
        tx.commit().await.map_err(db_err)?;
        Ok(counts)
    }

    async fn save_sessions(&self, sessions: &[Session]) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        // One upsert per chunk, rows taken in input order, so a session listed
        // twice ends in its later state. The tenant check in the conflict
        // clause keeps a session id from ever moving between tenants.
        let sql = "INSERT INTO sessions (id, tenant, agent_id, task_id, state, error, created_at, updated_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, \
                 value ->> 7 \
             FROM json_each(?1) WHERE true ORDER BY key \
             ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id, state = excluded.state, \
                 error = excluded.error, updated_at = excluded.updated_at \
             WHERE sessions.tenant = excluded.tenant";
        let batches = sessions
            .chunks(BATCH_CHUNK)
            .map(|chunk| {
                let rows: Vec<_> = chunk
                    .iter()
                    .map(|s| {
                        (
                            s.id.to_string(),
                            s.tenant.as_str(),
                            s.agent.as_str(),
                            s.task.map(|t| t.to_string()),
                            s.state.as_str(),
                            s.error.as_deref(),
                            s.created_at.as_millis(),
                            s.updated_at.as_millis(),
                        )
                    })
                    .collect();
                serde_json::to_string(&rows).map_err(backend_err)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut conn = self.writer().await?;
        if let [batch] = batches.as_slice() {
            sqlx::query(sql).bind(batch).execute(&mut *conn).await.map_err(db_err)?;
            return Ok(());
        }
        let mut tx = conn.begin().await.map_err(db_err)?;
        for batch in &batches {
            sqlx::query(sql).bind(batch).execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = ? AND id = ?");
        let row = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?
            .ok_or(StoreError::SessionNotFound(id))?;
        decode_session(&row)
    }

    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>> {
        query.validate()?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = "));
        qb.push_bind(tenant.as_str());
        if !query.states.is_empty() {
            qb.push(" AND state IN (");
            let mut list = qb.separated(", ");
            for state in &query.states {
                list.push_bind(state.as_str());
            }
            qb.push(")");
        }
        if let Some(agent) = &query.agent {
            qb.push(" AND agent_id = ").push_bind(agent.as_str().to_owned());
        }
        if let Some(task) = query.task {
            qb.push(" AND task_id = ").push_bind(task.to_string());
        }
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = qb.build().fetch_all(&self.reader).await.map_err(db_err)?;
        rows.iter().map(decode_session).collect()
    }

    async fn abandon_sessions(
        &self,
        tenant: &TenantId,
        agents: &[AgentId],
        reason: &str,
        now: Timestamp,
    ) -> Result<u64> {
        if agents.is_empty() {
            return Ok(0);
        }
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE sessions SET state = 'error', error = ");
        qb.push_bind(reason.to_owned()).push(", updated_at = ").push_bind(now.as_millis());
        qb.push(" WHERE tenant = ").push_bind(tenant.as_str());
        qb.push(" AND state NOT IN ('completed', 'failed', 'cancelled', 'timeout', 'error') AND agent_id IN (");
        let mut list = qb.separated(", ");
        for agent in agents {
            list.push_bind(agent.as_str().to_owned());
        }
        qb.push(")");
        let done = qb.build().execute(&mut *self.writer().await?).await.map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn put_member(&self, member: &Member) -> Result<()> {
        member.validate()?;
        sqlx::query(
            "INSERT OR REPLACE INTO members (tenant, kind, id, node, doc, updated_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(member.tenant.as_str())
        .bind(member.kind.as_str())
        .bind(&member.id)
        .bind(&member.node)
        .bind(member.doc.to_string())
        .bind(member.updated_at.as_millis())
        .bind(member.expires_at.as_millis())
        .execute(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM members WHERE tenant = ? AND kind = ? AND id = ?")
            .bind(tenant.as_str())
            .bind(kind.as_str())
            .bind(id)
            .execute(&mut *self.writer().await?)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT id, node, doc, updated_at, expires_at FROM members \
             WHERE tenant = ? AND kind = ? AND expires_at > ? ORDER BY id",
        )
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .bind(now.as_millis())
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let doc: String = row.try_get(2).map_err(db_err)?;
                Ok(Member {
                    tenant: tenant.clone(),
                    kind,
                    id: row.try_get(0).map_err(db_err)?,
                    node: row.try_get(1).map_err(db_err)?,
                    doc: serde_json::from_str(&doc).map_err(backend_err)?,
                    updated_at: Timestamp::from_millis(row.try_get(3).map_err(db_err)?),
                    expires_at: Timestamp::from_millis(row.try_get(4).map_err(db_err)?),
                })
            })
            .collect()
    }

    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros> {
        let amount = i64::try_from(amount).map_err(|_| InvalidInput::new("amount", "too large"))?;
        let total: i64 = sqlx::query_scalar(
            "INSERT INTO spend (tenant, period, micros) VALUES (?1, ?2, ?3) \
             ON CONFLICT (tenant, period) DO UPDATE SET micros = min(micros + ?3, 9223372036854775807) \
             RETURNING micros",
        )
        .bind(tenant.as_str())
        .bind(period)
        .bind(amount)
        .fetch_one(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        Ok(total.unsigned_abs())
    }

    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros> {
        let total: Option<i64> = sqlx::query_scalar("SELECT micros FROM spend WHERE tenant = ? AND period = ?")
            .bind(tenant.as_str())
            .bind(period)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?;
        Ok(total.unwrap_or(0).unsigned_abs())
    }
}

/// The SET clause of a replay. Binds `?1` = now.
const REPLAY_SET: &str = "status = 'pending', attempt = 0, run_at = ?1, cancel_requested = 0, result = NULL, \
     completed_at = NULL, dead_lettered_at = NULL, updated_at = ?1";

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// A fenced statement with the four [`FENCE`] parameters bound.
fn fenced<'q>(sql: &'q str, lease: &'q Lease) -> SqliteQuery<'q> {
    sqlx::query(sql)
        .bind(lease.tenant.as_str())
        .bind(lease.task.to_string())
        .bind(lease.attempt)
        .bind(token_text(&lease.token))
}

fn lease_status(row: Option<SqliteRow>, lease: &Lease) -> Result<LeaseStatus> {
    let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
    Ok(LeaseStatus {
        expires_at: Timestamp::from_millis(row.try_get(0).map_err(db_err)?),
        cancel_requested: row.try_get(1).map_err(db_err)?,
    })
}

async fn insert_task(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    task: &NewTask,
    now: Timestamp,
) -> Result<Enqueued> {
    let sql = format!(
        "INSERT INTO tasks (id, tenant, priority, status, payload, capabilities, affinity_key, idempotency_key, \
             parent_id, max_attempts, timeout_ms, run_at, created_at, updated_at) \
         VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
         RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(TaskId::new().to_string())
        .bind(tenant.as_str())
        .bind(i64::from(task.priority.rank()))
        .bind(serde_json::to_string(&task.payload).map_err(backend_err)?)
        .bind(serde_json::to_string(&task.capabilities).map_err(backend_err)?)
        .bind(task.affinity_key.as_deref())
        .bind(task.idempotency_key.as_deref())
        .bind(task.parent.map(|p| p.to_string()))
        .bind(task.max_attempts)
        .bind(task.timeout.map(timeout_ms))
        .bind(task.run_at.unwrap_or(now).as_millis())
        .bind(now.as_millis())
        .bind(now.as_millis())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    if let Some(row) = row {
        return Ok(Enqueued { task: decode_task(&row)?.1, created: true });
    }
    // The idempotency key is taken: return the first task (rule 7).
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE tenant = ? AND idempotency_key = ?");
    let row = sqlx::query(&sql)
        .bind(tenant.as_str())
        .bind(task.idempotency_key.as_deref())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(Enqueued { task: decode_task(&row)?.1, created: false })
}

/// Inserts `tasks` under `ids` in one statement, skipping those whose
/// idempotency key is taken (also by an earlier task of the same batch).
/// Returns the inserted tasks by id.
///
/// The statement returns no rows (each would cost a hand-off from sqlx's
/// worker thread); the tasks are built here, exactly as [`decode_task`] would
/// read them back. Only when some were skipped does a second statement ask
/// which of the new ids made it.
async fn insert_tasks(
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
            task.timeout.map(timeout_ms),
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
        task.timeout = row.8.map(timeout_from_ms);
        task.run_at = Timestamp::from_millis(row.9);
        created.insert(*id, task);
    }
    Ok(created)
}

/// A timeout as the `timeout_ms` column holds it.
fn timeout_ms(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// A timeout as read back from the `timeout_ms` column.
fn timeout_from_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Lines up an [`enqueue_batch`](Store::enqueue_batch) with its input: the
/// task inserted for each entry, or the first task holding its idempotency key.
async fn enqueued_in_order(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    tasks: &[NewTask],
    ids: &[TaskId],
    mut created: HashMap<TaskId, Task>,
) -> Result<Vec<Enqueued>> {
    let mut existing: HashMap<String, Task> = HashMap::new();
    let taken: Vec<&str> = tasks
        .iter()
        .zip(ids)
        .filter(|(_, id)| !created.contains_key(id))
        .filter_map(|(task, _)| task.idempotency_key.as_deref())
        .collect();
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
        for row in &rows {
            let (_, task, _) = decode_task(row)?;
            let key = task.idempotency_key.clone().ok_or_else(|| ROWS.corrupt("keyed task has no idempotency key"))?;
            existing.insert(key, task);
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (task, id) in tasks.iter().zip(ids) {
        if let Some(task) = created.remove(id) {
            out.push(Enqueued { task, created: true });
            continue;
        }
        // Not inserted: its key was taken, before or earlier in this batch (rule 7).
        let first = task.idempotency_key.as_ref().and_then(|k| existing.get(k));
        let first =
            first.ok_or_else(|| ROWS.corrupt("a task was neither inserted nor found by its idempotency key"))?;
        out.push(Enqueued { task: first.clone(), created: false });
    }
    Ok(out)
}

/// Splits a batch of writes into statements: the n-th entry of a task goes
/// into round n, so repeated entries act one after the other, and each round
/// is cut into chunks of at most [`BATCH_CHUNK`]. Returns input indices.
fn statement_groups(tasks: impl Iterator<Item = TaskId>) -> Vec<Vec<usize>> {
    let mut seen: HashMap<TaskId, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, task) in tasks.enumerate() {
        let n = seen.entry(task).or_insert(0);
        if rounds.len() == *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds.iter().flat_map(|round| round.chunks(BATCH_CHUNK).map(<[usize]>::to_vec)).collect()
}

/// What a batched lease-holder write does to its task.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Start,
    Complete,
}

/// One entry of a batched lease-holder write: the lease, what to do, and the
/// value it writes (the agent of a start, the result of a completion as JSON).
#[derive(Debug)]
struct Entry<'a> {
    lease: &'a Lease,
    op: Op,
    extra: String,
}

impl<'a> Entry<'a> {
    /// A completion; the result travels as its JSON text, so that it is stored
    /// exactly as `complete` stores it rather than as SQLite would re-render it.
    fn complete(c: &'a Completion) -> Result<Self> {
        Ok(Self { lease: &c.lease, op: Op::Complete, extra: serde_json::to_string(&c.result).map_err(backend_err)? })
    }
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
fn write_sql(quiet: bool) -> String {
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
async fn write_group(
    conn: &mut SqliteConnection,
    entries: &[Entry<'_>],
    group: &[usize],
    now: Timestamp,
    out: &mut [WriteOutcome],
) -> Result<()> {
    let batch = group_json(entries, group)?;
    let n = i64::try_from(group.len()).unwrap_or(i64::MAX);
    let done = sqlx::query(&write_sql(true))
        .bind(&batch)
        .bind(now.as_millis())
        .bind(n)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    let outcome = |op: Op, cancel_requested: bool| match op {
        Op::Start => WriteOutcome::Started { cancel_requested },
        Op::Complete => WriteOutcome::Completed,
    };
    match done.rows_affected() {
        0 => {}
        changed if changed == group.len() as u64 => {
            for &i in group {
                out[i] = outcome(entries[i].op, false);
            }
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
    // Within a group each task appears at most once, so its id names its entry.
    let mut changed: HashMap<TaskId, bool> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id = ROWS.parse::<TaskId>(&row.try_get::<String, _>(0).map_err(db_err)?, "id")?;
        changed.insert(id, row.try_get(1).map_err(db_err)?);
    }
    for &i in group {
        let e = &entries[i];
        if let Some(cancel_requested) = changed.get(&e.lease.task) {
            out[i] = outcome(e.op, *cancel_requested);
        }
    }
    Ok(())
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

/// Claimed rows as claims, in contract order: RETURNING does not promise one.
fn claims_in_order(mut claimed: Vec<(i64, Task, Option<LeaseToken>)>) -> Result<Vec<Claim>> {
    claimed.sort_by_key(|(seq, task, _)| (task.priority, task.run_at, *seq));
    claimed
        .into_iter()
        .map(|(_, task, token)| {
            let token = token.ok_or_else(|| ROWS.corrupt("claimed task has no lease token"))?;
            let lease = Lease { tenant: task.tenant.clone(), task: task.id, attempt: task.attempt, token };
            Ok(Claim { lease, task })
        })
        .collect()
}

/// A lease token as the `lease_token` column holds it: 32 lowercase hex digits.
fn token_text(token: &LeaseToken) -> String {
    token.as_uuid().simple().to_string()
}

/// Claims on `conn` (see [`Store::claim`]).
async fn claim_on(conn: &mut SqliteConnection, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Claim>> {
    if request.limit == 0 {
        return Ok(Vec::new());
    }
    let sql = format!(
        "UPDATE tasks SET status = 'assigned', attempt = attempt + 1, agent_id = ?1, \
             lease_token = lower(hex(randomblob(16))), lease_expires_at = ?2, cancel_requested = 0, \
             started_at = NULL, updated_at = ?3 \
         WHERE seq IN ( \
             SELECT seq FROM tasks \
             WHERE tenant = ?4 AND status = 'pending' AND run_at <= ?3 \
               AND (capabilities = '[]' OR NOT EXISTS ( \
                   SELECT 1 FROM json_each(tasks.capabilities) AS need \
                   WHERE need.value NOT IN (SELECT value FROM json_each(?5)))) \
             ORDER BY priority, run_at, seq LIMIT ?6) \
         RETURNING {CLAIMED_COLUMNS}"
    );
    let capabilities = serde_json::to_string(&request.capabilities).map_err(backend_err)?;
    let rows = sqlx::query(&sql)
        .bind(request.agent.as_str())
        .bind((now + request.lease_for).as_millis())
        .bind(now.as_millis())
        .bind(request.tenant.as_str())
        .bind(capabilities)
        .bind(i64::try_from(request.limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    claims_in_order(rows.iter().map(|row| decode_claimed(row, request, now)).collect::<Result<Vec<_>>>()?)
}

/// Completes one task; false if the lease was stale.
async fn complete_one(conn: &mut SqliteConnection, lease: &Lease, result: &Value, now: Timestamp) -> Result<bool> {
    let sql = format!(
        "UPDATE tasks SET status = 'completed', result = ?5, completed_at = ?6, updated_at = ?6, \
             lease_token = NULL, lease_expires_at = NULL WHERE {FENCE}"
    );
    let result = serde_json::to_string(result).map_err(backend_err)?;
    let done = fenced(&sql, lease).bind(result).bind(now.as_millis()).execute(&mut *conn).await.map_err(db_err)?;
    Ok(done.rows_affected() == 1)
}

/// Appends ` AND …` for each constraint of `filter`.
fn push_filter(qb: &mut QueryBuilder<'_, Sqlite>, filter: &TaskFilter) {
    if !filter.statuses.is_empty() {
        qb.push(" AND status IN (");
        let mut list = qb.separated(", ");
        for s in &filter.statuses {
            list.push_bind(s.as_str());
        }
        qb.push(")");
    }
    if !filter.priorities.is_empty() {
        qb.push(" AND priority IN (");
        let mut list = qb.separated(", ");
        for p in &filter.priorities {
            list.push_bind(i64::from(p.rank()));
        }
        qb.push(")");
    }
    if let Some(agent) = &filter.agent {
        qb.push(" AND agent_id = ").push_bind(agent.as_str().to_owned());
    }
    if let Some(parent) = filter.parent {
        qb.push(" AND parent_id = ").push_bind(parent.to_string());
    }
    if let Some(t) = filter.created_after {
        qb.push(" AND created_at >= ").push_bind(t.as_millis());
    }
    if let Some(t) = filter.created_before {
        qb.push(" AND created_at < ").push_bind(t.as_millis());
    }
}

const SESSION_COLUMNS: &str = "id, tenant, agent_id, task_id, state, error, created_at, updated_at";

fn decode_session(row: &SqliteRow) -> Result<Session> {
    let text = |i: usize| -> Result<Option<String>> { row.try_get::<Option<String>, _>(i).map_err(db_err) };
    let required = |i: usize, name: &'static str| -> Result<String> {
        text(i)?.ok_or_else(|| ROWS.corrupt(format!("{name} is NULL")))
    };
    Ok(Session {
        id: ROWS.parse(&required(0, "id")?, "id")?,
        tenant: ROWS.parse(&required(1, "tenant")?, "tenant")?,
        agent: ROWS.parse(&required(2, "agent_id")?, "agent_id")?,
        task: text(3)?.map(|s| ROWS.parse(&s, "task_id")).transpose()?,
        state: ROWS.parse(&required(4, "state")?, "state")?,
        error: text(5)?,
        created_at: Timestamp::from_millis(row.try_get(6).map_err(db_err)?),
        updated_at: Timestamp::from_millis(row.try_get(7).map_err(db_err)?),
    })
}

/// Decodes a row selected with [`COLUMNS`] into (seq, task, lease token).
fn decode_task(row: &SqliteRow) -> Result<(i64, Task, Option<LeaseToken>)> {
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

/// The columns a claim returns: all but the seven it has just set itself
/// (tenant, status, agent, lease expiry, cancel flag, update and start times).
const CLAIMED_COLUMNS: &str = "seq, id, priority, payload, capabilities, affinity_key, idempotency_key, parent_id, \
     attempt, max_attempts, timeout_ms, run_at, lease_token, result, error, created_at, completed_at, dead_lettered_at";

/// Decodes a row that a claim returned with [`CLAIMED_COLUMNS`]. Every
/// returned column is copied out of SQLite and handed across sqlx's worker
/// thread, so a claim does not return the seven columns it has just set.
fn decode_claimed(row: &SqliteRow, request: &ClaimRequest, now: Timestamp) -> Result<(i64, Task, Option<LeaseToken>)> {
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
fn decode_with(row: &SqliteRow, known: Known, at: &Layout) -> Result<(i64, Task, Option<LeaseToken>)> {
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

/// A nullable time column.
fn timestamp(row: &SqliteRow, i: usize) -> Result<Option<Timestamp>> {
    Ok(row.try_get::<Option<i64>, _>(i).map_err(db_err)?.map(Timestamp::from_millis))
}

fn backend_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend { backend: BACKEND, source: Box::new(e) }
}

/// Maps a driver error to a meaning: busy, locked, I/O and pool exhaustion may
/// pass if retried; everything else is a backend error.
fn db_err(e: sqlx::Error) -> StoreError {
    let transient = match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff), Some(5 | 6))
        }
        _ => false,
    };
    if transient {
        StoreError::Unavailable { backend: BACKEND, source: Box::new(e) }
    } else {
        StoreError::Backend { backend: BACKEND, source: Box::new(e) }
    }
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

    /// The server opens stores inside spawned tasks.
    #[test]
    fn opening_is_send() {
        fn send<T: Send + 'static>(_: T) {}
        send(async { SqliteStore::open(Path::new("never-opened.db")).await });
    }

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
