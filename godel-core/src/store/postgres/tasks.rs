//! The queue on PostgreSQL: every [`TaskStore`] call is one transaction
//! under the caller's tenant, most of them one fenced statement.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder, Row};

use crate::ids::{AgentId, TaskId, TenantId};
use crate::output::OutputChunk;
use crate::store::postgres::batch::{NewRow, insert_tasks, write_entries};
use crate::store::postgres::decode::{COLUMNS, decode_task, decoded};
use crate::store::postgres::quarantine::quarantine;
use crate::store::postgres::{
    FENCE, PostgresStore, ROWS, backend_err, db_err, fenced, lease_status, seq_of, status_of, unsigned,
};
use crate::store::sql::{self, Writes};
use crate::store::{
    CancelOutcome, ClaimRequest, Claimed, Enqueued, FailOutcome, Failure, HistoryEntry, Lease, LeaseStatus, LeaseWrite,
    OutputRecord, Page, QuarantineQuery, Quarantined, QueueCounts, QueueDepth, Reclaimed, Result, StoreError,
    TaskFilter, TaskQuery, TaskStore, WriteOutcome,
};
use crate::task::{NewTask, Task, TaskError, TaskErrorKind, TaskStatus};
use crate::time::Timestamp;

#[async_trait]
impl TaskStore for PostgresStore {
    async fn enqueue_batch(&self, tenant: &TenantId, mut tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        crate::store::validate_batch(&mut tasks)?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let rows = tasks.iter().map(|t| NewRow::of(t, TaskId::new(), now)).collect::<Result<Vec<_>>>()?;
        scoped!(@insert self, tenant, |conn| insert_tasks(conn, tenant, tasks, rows, now))
    }

    async fn claim_or_quarantine(&self, request: &ClaimRequest, now: Timestamp) -> Result<Claimed> {
        if request.limit == 0 {
            return Ok(Claimed::default());
        }
        let sql = format!(
            "WITH picked AS ( \
                 SELECT ctid FROM tasks \
                 WHERE tenant = $1 AND status = 'pending' AND run_at <= $2 \
                     AND (capabilities = '{{}}' OR capabilities <@ $3::text[]) \
                 ORDER BY priority, run_at, seq LIMIT $4 FOR UPDATE SKIP LOCKED) \
             UPDATE tasks t SET status = 'assigned', attempt = t.attempt + 1, agent_id = $5, \
                 lease_token = gen_random_uuid(), lease_expires_at = $6, cancel_requested = false, \
                 started_at = NULL, updated_at = $2 \
             WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM picked)) \
             RETURNING {COLUMNS}"
        );
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let (tasks, quarantined) = scoped!(self, &request.tenant, |conn| async move {
            let rows = sqlx::query(&sql)
                .bind(request.tenant.as_str())
                .bind(now.as_millis())
                .bind(&request.capabilities)
                .bind(limit)
                .bind(request.agent.as_str())
                .bind((now + request.lease_for).as_millis())
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?;
            // Each row decodes on its own: one that does not is quarantined
            // in the claim's transaction, and never holds back the others.
            let (tasks, corrupt) = sql::split(rows.iter().map(decoded).collect::<Result<_>>()?);
            Ok((tasks, quarantine(conn, &request.tenant, corrupt).await?))
        })?;
        Ok(Claimed { claims: sql::claims_in_order(ROWS, tasks)?, quarantined })
    }

    async fn start(&self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus> {
        let sql = format!(
            "UPDATE tasks t SET status = 'running', agent_id = $6, \
                 started_at = CASE WHEN t.status = 'assigned' THEN $5 ELSE t.started_at END, updated_at = $5 \
             WHERE {FENCE} RETURNING t.lease_expires_at, t.cancel_requested"
        );
        let row = scoped!(self, &lease.tenant, |conn| async move {
            let query = fenced(&sql, lease).bind(now.as_millis()).bind(agent.as_str());
            query.fetch_optional(conn).await.map_err(db_err)
        })?;
        lease_status(row, lease)
    }

    async fn write_batch(&self, writes: &[LeaseWrite], now: Timestamp) -> Result<Vec<WriteOutcome>> {
        write_entries(self, Writes::new(&sql::entries(ROWS, writes)?, now)).await
    }

    async fn heartbeat(&self, lease: &Lease, extend_by: Duration, now: Timestamp) -> Result<LeaseStatus> {
        let sql = format!(
            "UPDATE tasks t SET lease_expires_at = $5, updated_at = $6 WHERE {FENCE} \
             RETURNING t.lease_expires_at, t.cancel_requested"
        );
        let row = scoped!(self, &lease.tenant, |conn| async move {
            let query = fenced(&sql, lease).bind((now + extend_by).as_millis()).bind(now.as_millis());
            query.fetch_optional(conn).await.map_err(db_err)
        })?;
        lease_status(row, lease)
    }

    async fn append_output(&self, lease: &Lease, chunks: &[OutputChunk], now: Timestamp) -> Result<()> {
        let streams: Vec<&str> = chunks.iter().map(|c| c.stream.as_str()).collect();
        let data: Vec<&str> = chunks.iter().map(|c| c.data.as_str()).collect();
        let appended = scoped!(self, &lease.tenant, |conn| async move {
            if chunks.is_empty() {
                // Still check the fence, so an empty append by a zombie is an error too.
                let check = format!("SELECT 1 FROM tasks t WHERE {FENCE}");
                let row = fenced(&check, lease).fetch_optional(conn).await.map_err(db_err)?;
                return Ok(row.is_some());
            }
            let sql = format!(
                "INSERT INTO task_output (task_seq, tenant, attempt, stream, data, at) \
                         SELECT t.seq, t.tenant, t.attempt, c.stream, c.data, $7 \
                         FROM tasks t, unnest($5::text[], $6::text[]) WITH ORDINALITY AS c (stream, data, n) \
                         WHERE {FENCE} ORDER BY c.n"
            );
            let query = fenced(&sql, lease).bind(&streams).bind(&data).bind(now.as_millis());
            let done = query.execute(conn).await.map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })?;
        if appended { Ok(()) } else { Err(StoreError::LeaseLost(lease.task)) }
    }

    async fn complete(&self, lease: &Lease, result: Value, now: Timestamp) -> Result<()> {
        let sql = format!(
            "UPDATE tasks t SET status = 'completed', result = $5, completed_at = $6, updated_at = $6, \
                 lease_token = NULL, lease_expires_at = NULL WHERE {FENCE}"
        );
        let result = serde_json::to_string(&result).map_err(backend_err)?;
        let done = scoped!(self, &lease.tenant, |conn| async move {
            let query = fenced(&sql, lease).bind(result).bind(now.as_millis());
            query.execute(conn).await.map_err(db_err)
        })?;
        if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::LeaseLost(lease.task)) }
    }

    async fn fail(&self, lease: &Lease, failure: &Failure, now: Timestamp) -> Result<FailOutcome> {
        // SET expressions all see the old row, so each column repeats the
        // decision that `sql::fail_outcome` reads back.
        let sql = format!(
            "UPDATE tasks t SET \
                 status = CASE WHEN t.cancel_requested THEN 'cancelled' WHEN NOT $5 THEN 'failed' \
                               WHEN t.attempt >= t.max_attempts THEN 'dead_letter' ELSE 'pending' END, \
                 run_at = CASE WHEN NOT t.cancel_requested AND $5 AND t.attempt < t.max_attempts THEN $6 \
                               ELSE t.run_at END, \
                 completed_at = CASE WHEN NOT t.cancel_requested AND $5 AND t.attempt < t.max_attempts THEN NULL \
                                     ELSE $7 END, \
                 dead_lettered_at = CASE WHEN NOT t.cancel_requested AND $5 AND t.attempt >= t.max_attempts \
                                         THEN $7 ELSE NULL END, \
                 error = $8, lease_token = NULL, lease_expires_at = NULL, updated_at = $7 \
             WHERE {FENCE} RETURNING t.status, t.run_at"
        );
        let (retryable, run_at) = sql::retry_of(failure, now);
        let error = serde_json::to_string(&failure.error).map_err(backend_err)?;
        let row = scoped!(self, &lease.tenant, |conn| async move {
            let query = fenced(&sql, lease).bind(retryable).bind(run_at.as_millis()).bind(now.as_millis()).bind(error);
            query.fetch_optional(conn).await.map_err(db_err)
        })?;
        let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
        let status = ROWS.parse(row.try_get(0).map_err(db_err)?, "status")?;
        Ok(sql::fail_outcome(status, row.try_get(1).map_err(db_err)?))
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<TaskStatus> {
        // The attempt never ran to an outcome, so it does not count, and the
        // task keeps its run_at and therefore its place in line.
        let sql = format!(
            "UPDATE tasks t SET \
                 status = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'pending' END, \
                 attempt = CASE WHEN t.cancel_requested THEN t.attempt ELSE t.attempt - 1 END, \
                 completed_at = CASE WHEN t.cancel_requested THEN $5 ELSE NULL END, \
                 lease_token = NULL, lease_expires_at = NULL, updated_at = $5 \
             WHERE {FENCE} RETURNING t.status"
        );
        let row = scoped!(self, &lease.tenant, |conn| async move {
            fenced(&sql, lease).bind(now.as_millis()).fetch_optional(conn).await.map_err(db_err)
        })?;
        let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
        ROWS.parse(row.try_get(0).map_err(db_err)?, "status")
    }

    async fn confirm_cancel(&self, lease: &Lease, now: Timestamp) -> Result<()> {
        let sql = format!(
            "UPDATE tasks t SET status = 'cancelled', completed_at = $5, lease_token = NULL, lease_expires_at = NULL, \
                 updated_at = $5 WHERE {FENCE}"
        );
        let done = scoped!(self, &lease.tenant, |conn| async move {
            fenced(&sql, lease).bind(now.as_millis()).execute(conn).await.map_err(db_err)
        })?;
        if done.rows_affected() == 0 { Err(StoreError::LeaseLost(lease.task)) } else { Ok(()) }
    }

    async fn cancel(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        scoped!(self, tenant, |conn| async move {
            let row = sqlx::query(
                "UPDATE tasks t SET \
                         status = CASE WHEN t.status = 'pending' THEN 'cancelled' ELSE t.status END, \
                         cancel_requested = t.status <> 'pending' OR t.cancel_requested, \
                         completed_at = CASE WHEN t.status = 'pending' THEN $1 ELSE t.completed_at END, \
                         updated_at = $1 \
                     WHERE t.tenant = $2 AND t.id = $3::uuid AND t.status IN ('pending', 'assigned', 'running') \
                     RETURNING t.status",
            )
            .bind(now.as_millis())
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
            match row {
                Some(row) if row.try_get::<&str, _>(0).map_err(db_err)? == "cancelled" => Ok(CancelOutcome::Cancelled),
                Some(_) => Ok(CancelOutcome::Requested),
                None => Err(sql::refused(id, status_of(conn, tenant, id).await?, "cancel")),
            }
        })
    }

    async fn reclaim_expired(&self, now: Timestamp, limit: usize) -> Result<Vec<Reclaimed>> {
        let error = serde_json::to_string(&TaskError::new(TaskErrorKind::LeaseExpired, "lease expired"))
            .map_err(backend_err)?;
        // The one cross-tenant call (rule 9's exception): the row-level
        // security policies let a transaction marked as the sweep read tasks
        // and move leased ones, and nothing else.
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN; SELECT set_config('godel.sweep', 'reclaim', true)")
            .await
            .map_err(db_err)?;
        let rows = sqlx::query(
            "WITH lapsed AS ( \
                 SELECT ctid FROM tasks WHERE status IN ('assigned', 'running') AND lease_expires_at <= $1 \
                 ORDER BY lease_expires_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE tasks t SET \
                 status = CASE WHEN t.cancel_requested THEN 'cancelled' \
                               WHEN t.attempt >= t.max_attempts THEN 'dead_letter' ELSE 'pending' END, \
                 completed_at = CASE WHEN t.cancel_requested OR t.attempt >= t.max_attempts THEN $1 ELSE NULL END, \
                 dead_lettered_at = CASE WHEN NOT t.cancel_requested AND t.attempt >= t.max_attempts THEN $1 \
                                         ELSE NULL END, \
                 error = jsonb_set($2::jsonb, '{message}', to_jsonb('lease of attempt ' || t.attempt || ' expired'))::text, \
                 lease_token = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM lapsed)) \
             RETURNING t.tenant, t.id::text, t.attempt, t.status, t.priority",
        )
        .bind(now.as_millis())
        .bind(error)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(Reclaimed {
                    tenant: ROWS.parse(row.try_get(0).map_err(db_err)?, "tenant")?,
                    task: ROWS.parse(row.try_get(1).map_err(db_err)?, "id")?,
                    attempt: unsigned(row.try_get(2).map_err(db_err)?, "attempt")?,
                    status: ROWS.parse(row.try_get(3).map_err(db_err)?, "status")?,
                    priority: ROWS.priority(i64::from(row.try_get::<i16, _>(4).map_err(db_err)?))?,
                })
            })
            .collect()
    }

    async fn replay_if(&self, tenant: &TenantId, id: TaskId, only_from: &[TaskStatus], now: Timestamp) -> Result<Task> {
        let from = sql::status_list(&crate::store::replay_from(only_from)?);
        let sql = format!(
            "UPDATE tasks t SET {REPLAY_SET} \
             WHERE t.tenant = $2 AND t.id = $3::uuid AND t.status IN ({from}) RETURNING {COLUMNS}"
        );
        scoped!(self, tenant, |conn| async move {
            let row = sqlx::query(&sql)
                .bind(now.as_millis())
                .bind(tenant.as_str())
                .bind(id.to_string())
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
            match row {
                Some(row) => Ok(decode_task(&row)?.1),
                None => Err(sql::refused(id, status_of(conn, tenant, id).await?, "replay")),
            }
        })
    }

    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64> {
        let filter = filter.for_dead_letters()?;
        scoped!(self, tenant, |conn| async move {
            let mut qb = QueryBuilder::<Postgres>::new("UPDATE tasks t SET ");
            qb.push(REPLAY_SET.replace("$1", &now.as_millis().to_string()));
            qb.push(" WHERE tenant = ").push_bind(tenant.as_str());
            sql::push_filter(&mut qb, &filter);
            let done = qb.build().execute(conn).await.map_err(db_err)?;
            Ok(done.rows_affected())
        })
    }

    async fn purge(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        scoped!(self, tenant, |conn| async move {
            let purged: i64 = sqlx::query_scalar(&format!(
                "WITH gone AS (DELETE FROM tasks WHERE tenant = $1 AND id = $2::uuid \
                     AND status IN ('completed', 'failed', 'cancelled', 'dead_letter') RETURNING seq) {PURGE_HISTORY}"
            ))
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
            if purged == 1 {
                return Ok(());
            }
            Err(sql::refused(id, status_of(conn, tenant, id).await?, "purge"))
        })
    }

    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64> {
        let filter = filter.for_purge()?;
        scoped!(self, tenant, |conn| async move {
            let mut qb = QueryBuilder::<Postgres>::new("WITH gone AS (DELETE FROM tasks WHERE tenant = ");
            qb.push_bind(tenant.as_str());
            sql::push_filter(&mut qb, &filter);
            qb.push(" AND completed_at < ").push_bind(finished_before.as_millis());
            qb.push(" RETURNING seq) ").push(PURGE_HISTORY);
            let purged: i64 = qb.build_query_scalar().fetch_one(conn).await.map_err(db_err)?;
            Ok(u64::try_from(purged).unwrap_or(0))
        })
    }

    async fn get(&self, tenant: &TenantId, id: TaskId) -> Result<Task> {
        let sql = format!("SELECT {COLUMNS} FROM tasks t WHERE t.tenant = $1 AND t.id = $2::uuid");
        let row = scoped!(self, tenant, |conn| async move {
            sqlx::query(&sql).bind(tenant.as_str()).bind(id.to_string()).fetch_optional(conn).await.map_err(db_err)
        })?
        .ok_or(StoreError::NotFound(id))?;
        match decoded(&row)? {
            Ok((_, task, _)) => Ok(task),
            Err(corrupt) => {
                scoped!(self, tenant, |conn| quarantine(conn, tenant, vec![corrupt]))?;
                Err(StoreError::NotFound(id))
            }
        }
    }

    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>> {
        let after = query.validate()?;
        scoped!(self, tenant, |conn| async move {
            let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM tasks t WHERE tenant = "));
            qb.push_bind(tenant.as_str());
            sql::push_filter(&mut qb, &query.filter);
            sql::push_page(&mut qb, query, after);
            let rows = qb.build().fetch_all(&mut *conn).await.map_err(db_err)?;
            let (mut page, corrupt) = sql::page(rows.iter().map(decoded).collect::<Result<_>>()?, query);
            page.quarantined = quarantine(conn, tenant, corrupt).await?;
            Ok(page)
        })
    }

    async fn output(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<OutputRecord>> {
        let rows = scoped!(self, tenant, |conn| async move {
            let seq = seq_of(conn, tenant, id).await?;
            sqlx::query("SELECT attempt, stream, data, at FROM task_output WHERE task_seq = $1 ORDER BY seq")
                .bind(seq)
                .fetch_all(conn)
                .await
                .map_err(db_err)
        })?;
        rows.iter()
            .map(|row| {
                Ok(OutputRecord {
                    attempt: unsigned(row.try_get(0).map_err(db_err)?, "attempt")?,
                    stream: ROWS.parse(row.try_get(1).map_err(db_err)?, "stream")?,
                    data: row.try_get(2).map_err(db_err)?,
                    at: Timestamp::from_millis(row.try_get(3).map_err(db_err)?),
                })
            })
            .collect()
    }

    async fn history(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<HistoryEntry>> {
        let rows = scoped!(self, tenant, |conn| async move {
            let seq = seq_of(conn, tenant, id).await?;
            sqlx::query(
                "SELECT at, attempt, status, agent_id, error, cancel_requested FROM task_history \
                         WHERE task_seq = $1 ORDER BY seq",
            )
            .bind(seq)
            .fetch_all(conn)
            .await
            .map_err(db_err)
        })?;
        rows.iter()
            .map(|row| {
                let agent: Option<&str> = row.try_get(3).map_err(db_err)?;
                let error: Option<&str> = row.try_get(4).map_err(db_err)?;
                Ok(HistoryEntry {
                    at: Timestamp::from_millis(row.try_get(0).map_err(db_err)?),
                    attempt: unsigned(row.try_get(1).map_err(db_err)?, "attempt")?,
                    status: ROWS.parse(row.try_get(2).map_err(db_err)?, "status")?,
                    agent: agent.map(|a| ROWS.parse(a, "agent_id")).transpose()?,
                    error: error.map(|e| ROWS.json(e, "error")).transpose()?,
                    cancel_requested: row.try_get(5).map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn depth(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueDepth> {
        let rows: Vec<(i16, i64)> = scoped!(self, tenant, |conn| async move {
            sqlx::query_as(
                "SELECT priority, count(*) FROM tasks \
                         WHERE tenant = $1 AND status = 'pending' AND run_at <= $2 GROUP BY priority",
            )
            .bind(tenant.as_str())
            .bind(now.as_millis())
            .fetch_all(conn)
            .await
            .map_err(db_err)
        })?;
        let mut depth = QueueDepth::default();
        for (rank, n) in rows {
            depth.add(ROWS.priority(i64::from(rank))?, u64::try_from(n).unwrap_or(0));
        }
        Ok(depth)
    }

    async fn counts(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueCounts> {
        // Both queries in one snapshot, so the figures agree with each other.
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT set_config('godel.tenant', '{}', true)",
            tenant.as_str()
        );
        let mut tx = self.inner.pool.begin_with(sql).await.map_err(db_err)?;
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM tasks WHERE tenant = $1 GROUP BY status")
                .bind(tenant.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let (ready, scheduled, oldest, expired): (i64, i64, Option<i64>, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'pending' AND run_at <= $2), \
                    count(*) FILTER (WHERE status = 'pending' AND run_at > $2), \
                    min(run_at) FILTER (WHERE status = 'pending' AND run_at <= $2), \
                    count(*) FILTER (WHERE status IN ('assigned', 'running') AND lease_expires_at <= $2) \
             FROM tasks WHERE tenant = $1 AND status IN ('pending', 'assigned', 'running')",
        )
        .bind(tenant.as_str())
        .bind(now.as_millis())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine WHERE tenant = $1")
            .bind(tenant.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let mut counts = QueueCounts { quarantined: u64::try_from(quarantined).unwrap_or(0), ..QueueCounts::default() };
        for (status, n) in by_status {
            counts.add_status(ROWS.parse(&status, "status")?, u64::try_from(n).unwrap_or(0));
        }
        counts.ready = u64::try_from(ready).unwrap_or(0);
        counts.scheduled = u64::try_from(scheduled).unwrap_or(0);
        counts.oldest_ready = oldest.map(Timestamp::from_millis);
        counts.expired_leases = u64::try_from(expired).unwrap_or(0);
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

/// The tail of a purge: `gone` holds the `seq` of the deleted tasks, whose
/// history goes with them (`task_history` has no foreign key to cascade, see
/// the migrations; output does). Returns how many tasks were deleted.
const PURGE_HISTORY: &str = "\
    , history AS (DELETE FROM task_history WHERE task_seq IN (SELECT seq FROM gone)) SELECT count(*) FROM gone";

/// The SET clause of a replay. Binds `$1` = now.
const REPLAY_SET: &str = "status = 'pending', attempt = 0, run_at = $1, cancel_requested = false, result = NULL, \
     completed_at = NULL, dead_lettered_at = NULL, updated_at = $1";
