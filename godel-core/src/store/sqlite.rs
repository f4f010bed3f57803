//! The SQLite backend (sqlx): the embedded default.
//!
//! The database runs in WAL mode with `synchronous = NORMAL`: a committed
//! write survives the process being killed at any instant (it is in the WAL
//! file), though not necessarily a power cut. Writes go through a pool of one
//! connection, so they queue in the async pool rather than spinning on
//! `SQLITE_BUSY`; reads use a separate read-only pool that WAL lets run beside
//! the writer. Every state change is a single fenced `UPDATE … RETURNING`, so
//! rule 1 (atomic claim) and rule 3 (fencing) hold even if another process
//! opens the same file.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};

use crate::ids::{AgentId, LeaseToken, SessionId, TaskId, TenantId};
use crate::session::Session;
use crate::store::{
    BatchCompletion, BoxError, CancelOutcome, Claim, ClaimRequest, Completion, Cursor, Enqueued, FailOutcome, Failure,
    HistoryEntry, Lease, LeaseStatus, OutputChunk, OutputRecord, Page, QueueCounts, QueueDepth, Reclaimed, Result,
    Retry, SessionQuery, SortOrder, Store, StoreError, TaskFilter, TaskQuery,
};
use crate::task::{NewTask, Priority, Task, TaskErrorKind, TaskStatus};
use crate::time::Timestamp;
use crate::{InvalidInput, TaskError};

const BACKEND: &str = "sqlite";

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

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone().create_if_missing(true))
            .await
            .map_err(|e| open_err(e.into()))?;
        MIGRATOR.run(&writer).await.map_err(|e| open_err(e.into()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| open_err(e.into()))?;
        Ok(Self { writer, reader })
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn status_of(&self, tenant: &TenantId, id: TaskId) -> Result<TaskStatus> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE tenant = ? AND id = ?")
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?;
        parse_column(&status.ok_or(StoreError::NotFound(id))?, "status")
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
        let mut conn = self.writer.acquire().await.map_err(db_err)?;
        insert_task(&mut conn, tenant, &task, now).await
    }

    async fn enqueue_batch(&self, tenant: &TenantId, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        let mut tasks = tasks;
        for task in &mut tasks {
            task.validate()?;
        }
        let mut tx = self.writer.begin().await.map_err(db_err)?;
        let mut out = Vec::with_capacity(tasks.len());
        for task in &tasks {
            out.push(insert_task(&mut tx, tenant, task, now).await?);
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Claim>> {
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
             RETURNING {COLUMNS}"
        );
        let capabilities = serde_json::to_string(&request.capabilities).map_err(backend_err)?;
        let rows = sqlx::query(&sql)
            .bind(request.agent.as_str())
            .bind((now + request.lease_for).as_millis())
            .bind(now.as_millis())
            .bind(request.tenant.as_str())
            .bind(capabilities)
            .bind(i64::try_from(request.limit).unwrap_or(i64::MAX))
            .fetch_all(&self.writer)
            .await
            .map_err(db_err)?;
        let mut claimed = rows.iter().map(decode_task).collect::<Result<Vec<_>>>()?;
        // RETURNING does not promise the subquery's order; restore it.
        claimed.sort_by_key(|(seq, task, _)| (task.priority, task.run_at, *seq));
        claimed
            .into_iter()
            .map(|(_, task, token)| {
                let token = token.ok_or_else(|| corrupt("claimed task has no lease token"))?;
                let lease = Lease { tenant: task.tenant.clone(), task: task.id, attempt: task.attempt, token };
                Ok(Claim { lease, task })
            })
            .collect()
    }

    async fn start(&self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus> {
        let sql = format!(
            "UPDATE tasks SET status = 'running', agent_id = ?6, \
                 started_at = CASE WHEN status = 'assigned' THEN ?5 ELSE started_at END, updated_at = ?5 \
             WHERE {FENCE} RETURNING lease_expires_at, cancel_requested"
        );
        let query = fenced(&sql, lease).bind(now.as_millis()).bind(agent.as_str());
        let row = query.fetch_optional(&self.writer).await.map_err(db_err)?;
        lease_status(row, lease)
    }

    async fn heartbeat(&self, lease: &Lease, extend_by: Duration, now: Timestamp) -> Result<LeaseStatus> {
        let sql = format!(
            "UPDATE tasks SET lease_expires_at = ?5, updated_at = ?6 WHERE {FENCE} \
             RETURNING lease_expires_at, cancel_requested"
        );
        let query = fenced(&sql, lease).bind((now + extend_by).as_millis()).bind(now.as_millis());
        let row = query.fetch_optional(&self.writer).await.map_err(db_err)?;
        lease_status(row, lease)
    }

    async fn append_output(&self, lease: &Lease, chunks: &[OutputChunk], now: Timestamp) -> Result<()> {
        let sql = format!(
            "INSERT INTO task_output (task_seq, attempt, stream, data, at) \
             SELECT seq, attempt, ?5, ?6, ?7 FROM tasks WHERE {FENCE}"
        );
        let mut tx = self.writer.begin().await.map_err(db_err)?;
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
        let mut conn = self.writer.acquire().await.map_err(db_err)?;
        if complete_one(&mut conn, lease, &result, now).await? {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(lease.task))
        }
    }

    async fn complete_batch(&self, completions: &[Completion], now: Timestamp) -> Result<BatchCompletion> {
        let mut tx = self.writer.begin().await.map_err(db_err)?;
        let mut out = BatchCompletion::default();
        for c in completions {
            if complete_one(&mut tx, &c.lease, &c.result, now).await? {
                out.completed.push(c.lease.task);
            } else {
                out.lease_lost.push(c.lease.task);
            }
        }
        tx.commit().await.map_err(db_err)?;
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
        let row = query.fetch_optional(&self.writer).await.map_err(db_err)?;
        let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
        Ok(match parse_column::<TaskStatus>(&row.try_get::<String, _>(0).map_err(db_err)?, "status")? {
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
        let row = fenced(&sql, lease).bind(now.as_millis()).fetch_optional(&self.writer).await.map_err(db_err)?;
        let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
        parse_column(&row.try_get::<String, _>(0).map_err(db_err)?, "status")
    }

    async fn confirm_cancel(&self, lease: &Lease, now: Timestamp) -> Result<()> {
        let sql = format!(
            "UPDATE tasks SET status = 'cancelled', completed_at = ?5, lease_token = NULL, lease_expires_at = NULL, \
                 updated_at = ?5 WHERE {FENCE}"
        );
        let done = fenced(&sql, lease).bind(now.as_millis()).execute(&self.writer).await.map_err(db_err)?;
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
        .fetch_optional(&self.writer)
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
        .fetch_all(&self.writer)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(Reclaimed {
                    tenant: parse_column(&row.try_get::<String, _>(0).map_err(db_err)?, "tenant")?,
                    task: parse_column(&row.try_get::<String, _>(1).map_err(db_err)?, "id")?,
                    attempt: row.try_get(2).map_err(db_err)?,
                    status: parse_column(&row.try_get::<String, _>(3).map_err(db_err)?, "status")?,
                    priority: priority_from_rank(row.try_get(4).map_err(db_err)?)?,
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
            .fetch_optional(&self.writer)
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
        let done = qb.build().execute(&self.writer).await.map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn purge(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        let done = sqlx::query(
            "DELETE FROM tasks WHERE tenant = ? AND id = ? \
             AND status IN ('completed', 'failed', 'cancelled', 'dead_letter')",
        )
        .bind(tenant.as_str())
        .bind(id.to_string())
        .execute(&self.writer)
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
        let done = qb.build().execute(&self.writer).await.map_err(db_err)?;
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
                    stream: parse_column(&row.try_get::<String, _>(1).map_err(db_err)?, "stream")?,
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
                    status: parse_column(&row.try_get::<String, _>(2).map_err(db_err)?, "status")?,
                    agent: agent.map(|a| parse_column(&a, "agent_id")).transpose()?,
                    error: error.map(|e| json(&e, "error")).transpose()?,
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
            depth.add(priority_from_rank(rank)?, u64::try_from(n).unwrap_or(0));
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
            counts.add_status(parse_column(&status, "status")?, u64::try_from(n).unwrap_or(0));
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
        let mut tx = self.writer.begin().await.map_err(db_err)?;
        for session in sessions {
            // The tenant check in the conflict clause keeps a session id from
            // ever moving between tenants.
            sqlx::query(
                "INSERT INTO sessions (id, tenant, agent_id, task_id, state, error, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id, state = excluded.state, \
                     error = excluded.error, updated_at = excluded.updated_at \
                 WHERE sessions.tenant = excluded.tenant",
            )
            .bind(session.id.to_string())
            .bind(session.tenant.as_str())
            .bind(session.agent.as_str())
            .bind(session.task.map(|t| t.to_string()))
            .bind(session.state.as_str())
            .bind(session.error.as_deref())
            .bind(session.created_at.as_millis())
            .bind(session.updated_at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
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
        let done = qb.build().execute(&self.writer).await.map_err(db_err)?;
        Ok(done.rows_affected())
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
        .bind(lease.token.as_uuid().simple().to_string())
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
        .bind(task.timeout.map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)))
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
    let required =
        |i: usize, name: &'static str| -> Result<String> { text(i)?.ok_or_else(|| corrupt(format!("{name} is NULL"))) };
    Ok(Session {
        id: parse_column(&required(0, "id")?, "id")?,
        tenant: parse_column(&required(1, "tenant")?, "tenant")?,
        agent: parse_column(&required(2, "agent_id")?, "agent_id")?,
        task: text(3)?.map(|s| parse_column(&s, "task_id")).transpose()?,
        state: parse_column(&required(4, "state")?, "state")?,
        error: text(5)?,
        created_at: Timestamp::from_millis(row.try_get(6).map_err(db_err)?),
        updated_at: Timestamp::from_millis(row.try_get(7).map_err(db_err)?),
    })
}

/// Decodes a row selected with [`COLUMNS`] into (seq, task, lease token).
fn decode_task(row: &SqliteRow) -> Result<(i64, Task, Option<LeaseToken>)> {
    let get_ts = |i: usize| -> Result<Option<Timestamp>> {
        Ok(row.try_get::<Option<i64>, _>(i).map_err(db_err)?.map(Timestamp::from_millis))
    };
    let text = |i: usize| -> Result<Option<String>> { row.try_get::<Option<String>, _>(i).map_err(db_err) };
    let required =
        |i: usize, name: &'static str| -> Result<String> { text(i)?.ok_or_else(|| corrupt(format!("{name} is NULL"))) };
    let seq: i64 = row.try_get(0).map_err(db_err)?;
    let task = Task {
        id: parse_column(&required(1, "id")?, "id")?,
        tenant: parse_column(&required(2, "tenant")?, "tenant")?,
        priority: priority_from_rank(row.try_get(3).map_err(db_err)?)?,
        status: parse_column(&required(4, "status")?, "status")?,
        payload: json(&required(5, "payload")?, "payload")?,
        capabilities: json(&required(6, "capabilities")?, "capabilities")?,
        affinity_key: text(7)?,
        idempotency_key: text(8)?,
        parent: text(9)?.map(|s| parse_column(&s, "parent_id")).transpose()?,
        attempt: row.try_get(10).map_err(db_err)?,
        max_attempts: row.try_get(11).map_err(db_err)?,
        timeout: row
            .try_get::<Option<i64>, _>(12)
            .map_err(db_err)?
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        run_at: Timestamp::from_millis(row.try_get(13).map_err(db_err)?),
        agent: text(14)?.map(|s| parse_column::<AgentId>(&s, "agent_id")).transpose()?,
        lease_expires_at: get_ts(16)?,
        cancel_requested: row.try_get(17).map_err(db_err)?,
        result: text(18)?.map(|s| json(&s, "result")).transpose()?,
        error: text(19)?.map(|s| json(&s, "error")).transpose()?,
        created_at: Timestamp::from_millis(row.try_get(20).map_err(db_err)?),
        updated_at: Timestamp::from_millis(row.try_get(21).map_err(db_err)?),
        started_at: get_ts(22)?,
        completed_at: get_ts(23)?,
        dead_lettered_at: get_ts(24)?,
    };
    let token = text(15)?.map(|s| parse_column(&s, "lease_token")).transpose()?;
    Ok((seq, task, token))
}

fn json<T: serde::de::DeserializeOwned>(value: &str, column: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| corrupt(format!("column {column} holds invalid JSON: {e}")))
}

fn priority_from_rank(rank: i64) -> Result<Priority> {
    u8::try_from(rank)
        .ok()
        .and_then(Priority::from_rank)
        .ok_or_else(|| corrupt(format!("priority rank {rank} is out of range")))
}

fn parse_column<T: FromStr<Err = InvalidInput>>(value: &str, column: &str) -> Result<T> {
    value.parse().map_err(|e: InvalidInput| corrupt(format!("column {column}: {e}")))
}

/// A row that does not decode: the file was edited by something else or is damaged.
fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Backend { backend: BACKEND, source: format!("corrupt row: {}", message.into()).into() }
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
