//! The queue on SQLite: every [`TaskStore`] call is one fenced statement on
//! the writer connection, or a read on the reader pool.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};

use crate::ids::{AgentId, TaskId, TenantId};
use crate::output::OutputChunk;
use crate::store::sql::{self, Writes};
use crate::store::sqlite::batch::{enqueued_in_order, insert_tasks, write_entries};
use crate::store::sqlite::decode::{
    CLAIMED_COLUMNS, COLUMNS, decode_claimed, decode_history, decode_output, decode_task, decoded,
};
use crate::store::sqlite::quarantine::quarantine;
use crate::store::sqlite::{BATCH_CHUNK, FENCE, ROWS, SqliteStore, backend_err, db_err, fenced, lease_status};
use crate::store::{
    CancelOutcome, ClaimRequest, Claimed, Enqueued, FailOutcome, Failure, Lease, LeaseStatus, LeaseWrite, Page,
    QuarantineQuery, Quarantined, QueueCounts, QueueDepth, Reclaimed, Result, StoreError, TaskFilter, TaskQuery,
    TaskStore, WriteOutcome,
};
use crate::task::{NewTask, Task, TaskError, TaskErrorKind, TaskStatus};
use crate::time::Timestamp;

#[async_trait]
impl TaskStore for SqliteStore {
    async fn enqueue_batch(&self, tenant: &TenantId, mut tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        crate::store::validate_batch(&mut tasks)?;
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

    async fn claim_or_quarantine(&self, request: &ClaimRequest, now: Timestamp) -> Result<Claimed> {
        if request.limit == 0 {
            return Ok(Claimed::default());
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
        write_entries(self, Writes::new(&sql::entries(ROWS, writes)?, now)).await
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

    async fn fail(&self, lease: &Lease, failure: &Failure, now: Timestamp) -> Result<FailOutcome> {
        // SET expressions all see the old row, so each column repeats the
        // decision that `sql::fail_outcome` reads back.
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
        let (retryable, run_at) = sql::retry_of(failure, now);
        let error = serde_json::to_string(&failure.error).map_err(backend_err)?;
        let query = fenced(&sql, lease).bind(retryable).bind(run_at.as_millis()).bind(now.as_millis()).bind(error);
        let row = query.fetch_optional(&mut *self.writer().await?).await.map_err(db_err)?;
        let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
        let status = ROWS.parse(&row.try_get::<String, _>(0).map_err(db_err)?, "status")?;
        Ok(sql::fail_outcome(status, row.try_get(1).map_err(db_err)?))
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
            None => Err(sql::refused(id, self.status_of(tenant, id).await?, "cancel")),
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

    async fn replay_if(&self, tenant: &TenantId, id: TaskId, only_from: &[TaskStatus], now: Timestamp) -> Result<Task> {
        let from = sql::status_list(&crate::store::replay_from(only_from)?);
        let sql = format!(
            "UPDATE tasks SET {REPLAY_SET} WHERE tenant = ?2 AND id = ?3 AND status IN ({from}) RETURNING {COLUMNS}"
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
            None => Err(sql::refused(id, self.status_of(tenant, id).await?, "replay")),
        }
    }

    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64> {
        let filter = filter.for_dead_letters()?;
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE tasks SET ");
        qb.push(REPLAY_SET.replace("?1", &now.as_millis().to_string()));
        qb.push(" WHERE tenant = ").push_bind(tenant.as_str());
        sql::push_filter(&mut qb, &filter);
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
        Err(sql::refused(id, self.status_of(tenant, id).await?, "purge"))
    }

    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64> {
        let filter = filter.for_purge()?;
        let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM tasks WHERE tenant = ");
        qb.push_bind(tenant.as_str());
        sql::push_filter(&mut qb, &filter);
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
        match decoded(&row, decode_task)? {
            Ok((_, task, _)) => Ok(task),
            Err(corrupt) => {
                quarantine(&mut *self.writer().await?, tenant, vec![corrupt]).await?;
                Err(StoreError::NotFound(id))
            }
        }
    }

    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>> {
        let after = query.validate()?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM tasks WHERE tenant = "));
        qb.push_bind(tenant.as_str());
        sql::push_filter(&mut qb, &query.filter);
        sql::push_page(&mut qb, query, after);
        let rows = qb.build().fetch_all(&self.reader).await.map_err(db_err)?;
        let (mut page, corrupt) =
            sql::page(rows.iter().map(|r| decoded(r, decode_task)).collect::<Result<_>>()?, query);
        if !corrupt.is_empty() {
            page.quarantined = quarantine(&mut *self.writer().await?, tenant, corrupt).await?;
        }
        Ok(page)
    }

    async fn output(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<crate::store::OutputRecord>> {
        let seq = self.seq_of(tenant, id).await?;
        let rows = sqlx::query("SELECT attempt, stream, data, at FROM task_output WHERE task_seq = ? ORDER BY seq")
            .bind(seq)
            .fetch_all(&self.reader)
            .await
            .map_err(db_err)?;
        rows.iter().map(decode_output).collect()
    }

    async fn history(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<crate::store::HistoryEntry>> {
        let seq = self.seq_of(tenant, id).await?;
        let rows = sqlx::query(
            "SELECT at, attempt, status, agent_id, error, cancel_requested FROM task_history \
             WHERE task_seq = ? ORDER BY seq",
        )
        .bind(seq)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.iter().map(decode_history).collect()
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
        let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine WHERE tenant = ?")
            .bind(tenant.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        counts.quarantined = u64::try_from(quarantined).unwrap_or(0);
        tx.commit().await.map_err(db_err)?;
        Ok(counts)
    }

    async fn quarantined(&self, tenant: &TenantId, query: &QuarantineQuery) -> Result<Page<Quarantined>> {
        self.quarantine_list(tenant, query).await
    }

    async fn get_quarantined(&self, tenant: &TenantId, id: TaskId) -> Result<Quarantined> {
        self.quarantine_get(tenant, id).await
    }

    async fn drop_quarantined(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        self.quarantine_drop(tenant, id).await
    }

    async fn purge_quarantined(&self, tenant: &TenantId) -> Result<u64> {
        self.quarantine_purge(tenant).await
    }
}

/// The SET clause of a replay. Binds `?1` = now.
const REPLAY_SET: &str = "status = 'pending', attempt = 0, run_at = ?1, cancel_requested = 0, result = NULL, \
     completed_at = NULL, dead_lettered_at = NULL, updated_at = ?1";

/// Claims on `conn` (see [`TaskStore::claim`]).
async fn claim_on(conn: &mut SqliteConnection, request: &ClaimRequest, now: Timestamp) -> Result<Claimed> {
    if request.limit == 0 {
        return Ok(Claimed::default());
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
    // Each row decodes on its own: one that does not is quarantined on the
    // same connection right away, and never holds back the others.
    let decoded = rows.iter().map(|row| decoded(row, |r| decode_claimed(r, request, now))).collect::<Result<_>>()?;
    let (tasks, corrupt) = sql::split(decoded);
    let quarantined = quarantine(conn, &request.tenant, corrupt).await?;
    Ok(Claimed { claims: sql::claims_in_order(ROWS, tasks)?, quarantined })
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
