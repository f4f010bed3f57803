//! The PostgreSQL backend (sqlx): the store several Godel servers share.
//!
//! Each store handle is one node. Its calls go through a connection pool;
//! every call that touches a tenant's rows runs in a transaction that opens
//! with `SELECT set_config('godel.tenant', …, true)` in the same round trip as
//! its `BEGIN`, so the row-level security policies of the migrations (a second
//! wall behind the `tenant = $1` of every query) see the caller's tenant. That
//! costs a `COMMIT` round trip per call, which the batched calls share among
//! their tasks (see docs/store.md for the figures).
//!
//! Every state change is a single fenced `UPDATE` (rule 3); a claim picks its
//! rows with `FOR UPDATE SKIP LOCKED` (rule 1), so concurrent claimers on any
//! node skip each other's rows instead of waiting. Batches travel as arrays
//! that one statement unnests. History rows and wake-ups come from
//! statement-level triggers in the same statement (see the migrations), so
//! they cannot disagree with the change and cost one insert per statement.
//!
//! Cluster messages go over `LISTEN/NOTIFY` (see `notify.rs`).

mod notify;
mod options;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, QueryBuilder, Row};
use tokio::sync::{Mutex, broadcast};

use crate::ids::{AgentId, LeaseToken, SessionId, TaskId, TenantId};
use crate::session::Session;
use crate::store::postgres::notify::{KEEP_LARGE, ListenTask, MAX_INLINE};
use crate::store::postgres::options::PgOptions;
use crate::store::rows::Rows;
use crate::store::{
    BatchCompletion, BoxError, CancelOutcome, Claim, ClaimRequest, ClusterMessage, Completion, Cursor, Enqueued,
    Envelope, FailOutcome, Failure, HistoryEntry, Lease, LeaseStatus, LeaseWrite, Member, MemberKind, Micros, NodeId,
    OutputChunk, OutputRecord, Page, QueueCounts, QueueDepth, Reclaimed, Result, Retry, SessionQuery, SortOrder, Store,
    StoreError, TaskFilter, TaskQuery, WriteOutcome,
};
use crate::task::{NewTask, Task, TaskErrorKind, TaskStatus};
use crate::time::Timestamp;
use crate::{InvalidInput, TaskError};

/// Runs `$body` (a future using `$conn`) in a transaction scoped to
/// `$tenant` (see `PostgresStore::begin`) and commits it if the body succeeded.
/// A macro rather than a function taking a closure: the body borrows both the
/// connection and the caller's arguments, which a closure's signature cannot say.
macro_rules! scoped {
    (@insert $store:expr, $tenant:expr, |$conn:ident| $body:expr) => {{
        scoped!(@begin $store.begin_insert($tenant), |$conn| $body)
    }};
    (@begin $begin:expr, |$conn:ident| $body:expr) => {{
        let mut tx = $begin.await?;
        let out: Result<_> = {
            let $conn: &mut PgConnection = &mut tx;
            $body.await
        };
        match out {
            Ok(value) => tx.commit().await.map_err(db_err).map(|()| value),
            Err(e) => Err(e),
        }
    }};
    ($store:expr, $tenant:expr, |$conn:ident| $body:expr) => {{
        scoped!(@begin $store.begin($tenant), |$conn| $body)
    }};
}

const BACKEND: &str = "postgres";
/// Decoding with this backend's name in errors.
const ROWS: Rows = Rows(BACKEND);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Every column of `tasks` (as `t`), in the order [`decode_task`] reads them.
const COLUMNS: &str = "t.seq, t.id::text, t.tenant, t.priority, t.status, t.payload, t.capabilities, \
     t.affinity_key, t.idempotency_key, t.parent_id::text, t.attempt, t.max_attempts, t.timeout_ms, t.run_at, \
     t.agent_id, t.lease_token::text, t.lease_expires_at, t.cancel_requested, t.result, t.error, t.created_at, \
     t.updated_at, t.started_at, t.completed_at, t.dead_lettered_at";

/// The fence every write for an attempt must pass (rule 3), on `tasks t`. It
/// takes parameters `$1` to `$4` (bound by [`fenced`]); fenced statements
/// number their own parameters from `$5`.
const FENCE: &str = "t.tenant = $1 AND t.id = $2::uuid AND t.attempt = $3 AND t.lease_token = $4::uuid \
     AND t.status IN ('assigned', 'running')";

/// An advisory lock key (any constant) held while a schema is created, so two
/// servers starting at once do not both try.
const SCHEMA_LOCK: i64 = 0x676f_6465_6c5f_7363;

type Tx = sqlx::Transaction<'static, Postgres>;

/// The PostgreSQL store. Clones share the pool and the cluster channel.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    schema: String,
    node: NodeId,
    channel: String,
    messages: broadcast::Sender<ClusterMessage>,
    listen: Option<Mutex<ListenTask>>,
}

impl PostgresStore {
    /// Connects to the database a `postgres://` (or `postgresql://`) URL
    /// names, creates its schema if needed and applies migrations. Godel's own
    /// query parameters (`schema`, `max_connections`, `min_connections`,
    /// `acquire_timeout`, `idle_timeout`, `max_lifetime`, `listen`) are taken
    /// out first; the rest go to sqlx. See docs/store.md.
    ///
    /// A bad parameter gives [`StoreError::InvalidInput`] naming it; a server
    /// that does not answer gives [`StoreError::Open`] with the URL, without
    /// its password.
    pub async fn open(url: &str) -> Result<Self> {
        let options = PgOptions::parse(url)?;
        let open_err =
            |source: BoxError| StoreError::Open { backend: BACKEND, location: options.display.clone(), source };
        let node = NodeId::random();
        let node_text = node.to_string();
        // The node id is a setting of every connection, for the triggers that
        // sign wake-ups (see the migrations).
        let connect = options.connect.clone().options([("godel.node", node_text.as_str())]);
        create_schema(&connect, &options.schema).await.map_err(|e| open_err(e.into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(options.min_connections)
            .acquire_timeout(options.acquire_timeout)
            .idle_timeout(options.idle_timeout)
            .max_lifetime(options.max_lifetime)
            // Not a round trip to ping every connection before each call: a
            // broken one fails its call (as `Unavailable`) and is replaced.
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await
            .map_err(|e| open_err(e.into()))?;
        // sqlx's migrator takes an advisory lock, so servers starting at once
        // apply each migration exactly once.
        MIGRATOR.run(&pool).await.map_err(|e| open_err(e.into()))?;
        let channel = format!("godel_{}", options.schema);
        let (messages, _) = broadcast::channel(1_024);
        let listen = if options.listen {
            let listen_pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(options.acquire_timeout)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(connect);
            let task = ListenTask::start(listen_pool, pool.clone(), channel.clone(), node, messages.clone())
                .await
                .map_err(|e| open_err(e.into()))?;
            Some(Mutex::new(task))
        } else {
            None
        };
        Ok(Self { inner: Arc::new(Inner { pool, schema: options.schema.clone(), node, channel, messages, listen }) })
    }

    /// This handle's node id, the origin of what it broadcasts.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// Stops listening and closes the pool; later calls fail with
    /// [`StoreError::Unavailable`].
    pub async fn close(&self) {
        if let Some(listen) = &self.inner.listen {
            listen.lock().await.stop().await;
        }
        self.inner.pool.close().await;
    }

    /// A transaction whose row-level security sees `tenant`, begun in one round trip.
    async fn begin(&self, tenant: &TenantId) -> Result<Tx> {
        // A tenant id holds only `A-Z a-z 0-9 _ - .`, so it is safe as a literal.
        let sql = format!("BEGIN; SELECT set_config('godel.tenant', '{}', true)", tenant.as_str());
        self.inner.pool.begin_with(sql).await.map_err(db_err)
    }

    /// Like [`begin`](Self::begin), and takes the tenant's insert lock first.
    ///
    /// Listing pages are keyed on `seq` (see store/cursor.rs), which only works
    /// if no row ever commits with a `seq` below one already visible: a reader
    /// that has paged past it would skip it. Sequence values are handed out
    /// before commit, so concurrent inserters would break that; holding a
    /// per-(schema, tenant) advisory lock from before the insert until commit
    /// makes inserts of one tenant commit in `seq` order. Batched inserts pay
    /// it once per batch; other tenants are not held up.
    async fn begin_insert(&self, tenant: &TenantId) -> Result<Tx> {
        let sql = format!(
            "BEGIN; SELECT set_config('godel.tenant', '{tenant}', true), \
             pg_advisory_xact_lock(hashtext('{schema}'), hashtext('{tenant}'))",
            tenant = tenant.as_str(),
            schema = self.inner.schema,
        );
        self.inner.pool.begin_with(sql).await.map_err(db_err)
    }
}

/// Creates `schema` unless it exists, under an advisory lock so that servers
/// starting at once do not race on it.
async fn create_schema(connect: &sqlx::postgres::PgConnectOptions, schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect_with(connect).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SCHEMA_LOCK).execute(&mut *tx).await?;
        // The name was checked to be a plain identifier (see options.rs).
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    conn.close().await
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await.map_err(db_err)?;
        Ok(())
    }

    async fn enqueue(&self, tenant: &TenantId, task: NewTask, now: Timestamp) -> Result<Enqueued> {
        let mut task = task;
        task.validate()?;
        let row = NewRow::of(&task, TaskId::new(), now)?;
        scoped!(@insert self, tenant, |conn| insert_task(conn, tenant, task, row, now))
    }

    async fn enqueue_batch(&self, tenant: &TenantId, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        let mut tasks = tasks;
        for task in &mut tasks {
            task.validate()?;
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let rows = tasks.iter().map(|t| NewRow::of(t, TaskId::new(), now)).collect::<Result<Vec<_>>>()?;
        scoped!(@insert self, tenant, |conn| insert_tasks(conn, tenant, tasks, rows, now))
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Claim>> {
        if request.limit == 0 {
            return Ok(Vec::new());
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
        let rows = scoped!(self, &request.tenant, |conn| async move {
            sqlx::query(&sql)
                .bind(request.tenant.as_str())
                .bind(now.as_millis())
                .bind(&request.capabilities)
                .bind(limit)
                .bind(request.agent.as_str())
                .bind((now + request.lease_for).as_millis())
                .fetch_all(conn)
                .await
                .map_err(db_err)
        })?;
        claims_in_order(rows.iter().map(decode_task).collect::<Result<Vec<_>>>()?)
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
        let entries = writes
            .iter()
            .map(|w| match w {
                LeaseWrite::Start { lease, agent } => {
                    Ok(Entry { lease, start: true, extra: agent.as_str().to_owned() })
                }
                LeaseWrite::Complete(c) => Entry::complete(c),
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_entries(&entries, now).await
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
        let (retryable, run_at) = match failure.retry {
            Retry::After(delay) => (true, now + delay),
            Retry::Never => (false, now),
        };
        let error = serde_json::to_string(&failure.error).map_err(backend_err)?;
        let row = scoped!(self, &lease.tenant, |conn| async move {
            let query = fenced(&sql, lease).bind(retryable).bind(run_at.as_millis()).bind(now.as_millis()).bind(error);
            query.fetch_optional(conn).await.map_err(db_err)
        })?;
        let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
        Ok(match ROWS.parse::<TaskStatus>(row.try_get(0).map_err(db_err)?, "status")? {
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
                None => Err(StoreError::InvalidTransition {
                    task: id,
                    from: status_of(conn, tenant, id).await?,
                    action: "cancel",
                }),
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

    async fn replay(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<Task> {
        let sql = format!(
            "UPDATE tasks t SET {REPLAY_SET} \
             WHERE t.tenant = $2 AND t.id = $3::uuid AND t.status IN ('dead_letter', 'failed', 'cancelled') \
             RETURNING {COLUMNS}"
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
                None => Err(StoreError::InvalidTransition {
                    task: id,
                    from: status_of(conn, tenant, id).await?,
                    action: "replay",
                }),
            }
        })
    }

    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64> {
        let filter = filter.for_dead_letters()?;
        scoped!(self, tenant, |conn| async move {
            let mut qb = QueryBuilder::<Postgres>::new("UPDATE tasks t SET ");
            qb.push(REPLAY_SET.replace("$1", &now.as_millis().to_string()));
            qb.push(" WHERE tenant = ").push_bind(tenant.as_str());
            push_filter(&mut qb, &filter);
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
            Err(StoreError::InvalidTransition { task: id, from: status_of(conn, tenant, id).await?, action: "purge" })
        })
    }

    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64> {
        let filter = filter.for_purge()?;
        scoped!(self, tenant, |conn| async move {
            let mut qb = QueryBuilder::<Postgres>::new("WITH gone AS (DELETE FROM tasks WHERE tenant = ");
            qb.push_bind(tenant.as_str());
            push_filter(&mut qb, &filter);
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
        Ok(decode_task(&row)?.1)
    }

    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>> {
        let after = query.validate()?;
        let rows = scoped!(self, tenant, |conn| async move {
            let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM tasks t WHERE tenant = "));
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
            qb.build().fetch_all(conn).await.map_err(db_err)
        })?;
        let mut rows = rows.iter().map(decode_task).collect::<Result<Vec<_>>>()?;
        let next_cursor = (rows.len() > query.limit).then(|| {
            rows.truncate(query.limit);
            Cursor::after(query.order, rows.last().expect("non-empty").0)
        });
        Ok(Page { items: rows.into_iter().map(|(_, t, _)| t).collect(), next_cursor })
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
        tx.commit().await.map_err(db_err)?;
        let mut counts = QueueCounts::default();
        for (status, n) in by_status {
            counts.add_status(ROWS.parse(&status, "status")?, u64::try_from(n).unwrap_or(0));
        }
        counts.ready = u64::try_from(ready).unwrap_or(0);
        counts.scheduled = u64::try_from(scheduled).unwrap_or(0);
        counts.oldest_ready = oldest.map(Timestamp::from_millis);
        counts.expired_leases = u64::try_from(expired).unwrap_or(0);
        Ok(counts)
    }

    async fn save_sessions(&self, sessions: &[Session]) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        // One upsert per tenant. A session listed twice ends in its later
        // state: only its last entry is written (one statement may not
        // update a row twice). The tenant check in the conflict clause keeps a
        // session id from ever moving between tenants.
        let mut last: HashMap<SessionId, usize> = HashMap::new();
        for (i, s) in sessions.iter().enumerate() {
            last.insert(s.id, i);
        }
        let mut by_tenant: Vec<(&TenantId, Vec<&Session>)> = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            if last[&s.id] != i {
                continue;
            }
            match by_tenant.iter_mut().find(|(t, _)| *t == &s.tenant) {
                Some((_, group)) => group.push(s),
                None => by_tenant.push((&s.tenant, vec![s])),
            }
        }
        let Some((first, _)) = by_tenant.first() else { return Ok(()) };
        let mut tx = self.begin(first).await?;
        for (i, (tenant, group)) in by_tenant.iter().enumerate() {
            if i > 0 {
                set_tenant(&mut tx, tenant).await?;
            }
            let ids: Vec<String> = group.iter().map(|s| s.id.to_string()).collect();
            let agents: Vec<&str> = group.iter().map(|s| s.agent.as_str()).collect();
            let tasks: Vec<Option<String>> = group.iter().map(|s| s.task.map(|t| t.to_string())).collect();
            let states: Vec<&str> = group.iter().map(|s| s.state.as_str()).collect();
            let errors: Vec<Option<&str>> = group.iter().map(|s| s.error.as_deref()).collect();
            let created: Vec<i64> = group.iter().map(|s| s.created_at.as_millis()).collect();
            let updated: Vec<i64> = group.iter().map(|s| s.updated_at.as_millis()).collect();
            sqlx::query(
                "INSERT INTO sessions AS s (id, tenant, agent_id, task_id, state, error, created_at, updated_at) \
                 SELECT b.id::uuid, $1, b.agent_id, b.task_id::uuid, b.state, b.error, b.created_at, b.updated_at \
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[]) \
                     AS b (id, agent_id, task_id, state, error, created_at, updated_at) \
                 ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id, state = excluded.state, \
                     error = excluded.error, updated_at = excluded.updated_at \
                 WHERE s.tenant = excluded.tenant",
            )
            .bind(tenant.as_str())
            .bind(&ids)
            .bind(&agents)
            .bind(&tasks)
            .bind(&states)
            .bind(&errors)
            .bind(&created)
            .bind(&updated)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = $1 AND id = $2::uuid");
        let row = scoped!(self, tenant, |conn| async move {
            sqlx::query(&sql).bind(tenant.as_str()).bind(id.to_string()).fetch_optional(conn).await.map_err(db_err)
        })?
        .ok_or(StoreError::SessionNotFound(id))?;
        decode_session(&row)
    }

    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>> {
        query.validate()?;
        let rows = scoped!(self, tenant, |conn| async move {
            let mut qb =
                QueryBuilder::<Postgres>::new(format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = "));
            qb.push_bind(tenant.as_str());
            if !query.states.is_empty() {
                let states: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
                qb.push(" AND state = ANY(").push_bind(states).push(")");
            }
            if let Some(agent) = &query.agent {
                qb.push(" AND agent_id = ").push_bind(agent.as_str().to_owned());
            }
            if let Some(task) = query.task {
                qb.push(" AND task_id = ").push_bind(task.to_string()).push("::uuid");
            }
            qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
            qb.build().fetch_all(conn).await.map_err(db_err)
        })?;
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
        let agents: Vec<&str> = agents.iter().map(AgentId::as_str).collect();
        scoped!(self, tenant, |conn| async move {
            let done = sqlx::query(
                "UPDATE sessions SET state = 'error', error = $1, updated_at = $2 \
                     WHERE tenant = $3 AND state NOT IN ('completed', 'failed', 'cancelled', 'timeout', 'error') \
                     AND agent_id = ANY($4)",
            )
            .bind(reason)
            .bind(now.as_millis())
            .bind(tenant.as_str())
            .bind(&agents)
            .execute(conn)
            .await
            .map_err(db_err)?;
            Ok(done.rows_affected())
        })
    }

    fn cluster_messages(&self) -> Option<broadcast::Receiver<ClusterMessage>> {
        self.inner.listen.as_ref().map(|_| self.inner.messages.subscribe())
    }

    async fn broadcast(&self, message: &ClusterMessage) -> Result<()> {
        let envelope = Envelope { origin: self.inner.node, message: message.clone() };
        let body = serde_json::to_string(&envelope).map_err(backend_err)?;
        if body.len() <= MAX_INLINE {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.inner.channel)
                .bind(body)
                .execute(&self.inner.pool)
                .await
                .map_err(db_err)?;
            return Ok(());
        }
        // Too big for a payload: park the body, notify its id, and drop what
        // every receiver has long had, all in one statement.
        sqlx::query(
            "WITH parked AS (INSERT INTO cluster_messages (body) VALUES ($2) RETURNING id), \
                  pruned AS (DELETE FROM cluster_messages WHERE id < (SELECT id FROM parked) - $4) \
             SELECT pg_notify($1, json_build_object('origin', $3::text, 'ref', parked.id)::text) FROM parked",
        )
        .bind(&self.inner.channel)
        .bind(body)
        .bind(self.inner.node.to_string())
        .bind(KEEP_LARGE)
        .execute(&self.inner.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn put_member(&self, member: &Member) -> Result<()> {
        member.validate()?;
        let doc = member.doc.to_string();
        scoped!(self, &member.tenant, |conn| async move {
            sqlx::query(
                "INSERT INTO members (tenant, kind, id, node, doc, updated_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (tenant, kind, id) DO UPDATE SET node = excluded.node, doc = excluded.doc, \
                         updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            )
            .bind(member.tenant.as_str())
            .bind(member.kind.as_str())
            .bind(&member.id)
            .bind(&member.node)
            .bind(doc)
            .bind(member.updated_at.as_millis())
            .bind(member.expires_at.as_millis())
            .execute(conn)
            .await
            .map_err(db_err)?;
            Ok(())
        })
    }

    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool> {
        scoped!(self, tenant, |conn| async move {
            let done = sqlx::query("DELETE FROM members WHERE tenant = $1 AND kind = $2 AND id = $3")
                .bind(tenant.as_str())
                .bind(kind.as_str())
                .bind(id)
                .execute(conn)
                .await
                .map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>> {
        let rows = scoped!(self, tenant, |conn| async move {
            sqlx::query(
                "SELECT id, node, doc, updated_at, expires_at FROM members \
                         WHERE tenant = $1 AND kind = $2 AND expires_at > $3 ORDER BY id",
            )
            .bind(tenant.as_str())
            .bind(kind.as_str())
            .bind(now.as_millis())
            .fetch_all(conn)
            .await
            .map_err(db_err)
        })?;
        rows.iter()
            .map(|row| {
                Ok(Member {
                    tenant: tenant.clone(),
                    kind,
                    id: row.try_get(0).map_err(db_err)?,
                    node: row.try_get(1).map_err(db_err)?,
                    doc: ROWS.json(row.try_get(2).map_err(db_err)?, "doc")?,
                    updated_at: Timestamp::from_millis(row.try_get(3).map_err(db_err)?),
                    expires_at: Timestamp::from_millis(row.try_get(4).map_err(db_err)?),
                })
            })
            .collect()
    }

    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros> {
        let amount = i64::try_from(amount).map_err(|_| InvalidInput::new("amount", "too large"))?;
        let total: i64 = scoped!(self, tenant, |conn| async move {
            sqlx::query_scalar(
                "INSERT INTO spend AS s (tenant, period, micros) VALUES ($1, $2, $3) \
                         ON CONFLICT (tenant, period) DO UPDATE SET micros = \
                             CASE WHEN s.micros > 9223372036854775807 - excluded.micros THEN 9223372036854775807 \
                                  ELSE s.micros + excluded.micros END \
                         RETURNING micros",
            )
            .bind(tenant.as_str())
            .bind(period)
            .bind(amount)
            .fetch_one(conn)
            .await
            .map_err(db_err)
        })?;
        Ok(total.unsigned_abs())
    }

    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros> {
        let total: Option<i64> = scoped!(self, tenant, |conn| async move {
            sqlx::query_scalar("SELECT micros FROM spend WHERE tenant = $1 AND period = $2")
                .bind(tenant.as_str())
                .bind(period)
                .fetch_optional(conn)
                .await
                .map_err(db_err)
        })?;
        Ok(total.unwrap_or(0).unsigned_abs())
    }
}

impl PostgresStore {
    /// Applies lease holders' writes; returns their outcomes in input order.
    ///
    /// Entries for one task must act one after the other, as if written one by
    /// one, or a repeated lease would apply twice in one statement: the n-th
    /// entry of a task goes into the n-th round. Entries of different tenants
    /// go into different statements, each under its own tenant setting. All
    /// statements of a batch run in one transaction.
    async fn write_entries(&self, entries: &[Entry<'_>], now: Timestamp) -> Result<Vec<WriteOutcome>> {
        let mut out = vec![WriteOutcome::LeaseLost; entries.len()];
        let Some(first) = entries.first() else { return Ok(out) };
        let mut tenants: Vec<&TenantId> = Vec::new();
        for e in entries {
            if !tenants.contains(&&e.lease.tenant) {
                tenants.push(&e.lease.tenant);
            }
        }
        let mut tx = self.begin(&first.lease.tenant).await?;
        for (i, tenant) in tenants.iter().enumerate() {
            if i > 0 {
                set_tenant(&mut tx, tenant).await?;
            }
            let mine = entries.iter().enumerate().filter(|(_, e)| &e.lease.tenant == *tenant).map(|(i, _)| i);
            for round in rounds(mine, entries) {
                write_round(&mut tx, entries, &round, now, &mut out).await?;
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }
}

/// Points an open transaction's row-level security at `tenant`.
async fn set_tenant(conn: &mut PgConnection, tenant: &TenantId) -> Result<()> {
    sqlx::query("SELECT set_config('godel.tenant', $1, true)")
        .bind(tenant.as_str())
        .execute(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The tail of a purge: `gone` holds the `seq` of the deleted tasks, whose
/// history goes with them (`task_history` has no foreign key to cascade, see
/// the migrations; output does). Returns how many tasks were deleted.
const PURGE_HISTORY: &str = "\
    , history AS (DELETE FROM task_history WHERE task_seq IN (SELECT seq FROM gone)) SELECT count(*) FROM gone";

/// The SET clause of a replay. Binds `$1` = now.
const REPLAY_SET: &str = "status = 'pending', attempt = 0, run_at = $1, cancel_requested = false, result = NULL, \
     completed_at = NULL, dead_lettered_at = NULL, updated_at = $1";

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// A fenced statement with the four [`FENCE`] parameters bound.
fn fenced<'q>(sql: &'q str, lease: &'q Lease) -> PgQuery<'q> {
    sqlx::query(sql)
        .bind(lease.tenant.as_str())
        .bind(lease.task.to_string())
        .bind(i32::try_from(lease.attempt).unwrap_or(i32::MAX))
        .bind(lease.token.to_string())
}

fn lease_status(row: Option<PgRow>, lease: &Lease) -> Result<LeaseStatus> {
    let row = row.ok_or(StoreError::LeaseLost(lease.task))?;
    Ok(LeaseStatus {
        expires_at: Timestamp::from_millis(row.try_get(0).map_err(db_err)?),
        cancel_requested: row.try_get(1).map_err(db_err)?,
    })
}

async fn status_of(conn: &mut PgConnection, tenant: &TenantId, id: TaskId) -> Result<TaskStatus> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE tenant = $1 AND id = $2::uuid")
        .bind(tenant.as_str())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_err)?;
    ROWS.parse(&status.ok_or(StoreError::NotFound(id))?, "status")
}

async fn seq_of(conn: &mut PgConnection, tenant: &TenantId, id: TaskId) -> Result<i64> {
    sqlx::query_scalar("SELECT seq FROM tasks WHERE tenant = $1 AND id = $2::uuid")
        .bind(tenant.as_str())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_err)?
        .ok_or(StoreError::NotFound(id))
}

/// A new task's columns as the store writes them.
#[derive(Debug)]
struct NewRow {
    id: TaskId,
    priority: i16,
    payload: String,
    capabilities: String,
    max_attempts: i32,
    timeout_ms: Option<i64>,
    run_at: i64,
}

impl NewRow {
    fn of(task: &NewTask, id: TaskId, now: Timestamp) -> Result<Self> {
        Ok(Self {
            id,
            priority: i16::from(task.priority.rank()),
            payload: serde_json::to_string(&task.payload).map_err(backend_err)?,
            capabilities: serde_json::to_string(&task.capabilities).map_err(backend_err)?,
            max_attempts: i32::try_from(task.max_attempts)
                .map_err(|_| InvalidInput::new("max_attempts", "too large"))?,
            timeout_ms: task.timeout.map(timeout_ms),
            run_at: task.run_at.unwrap_or(now).as_millis(),
        })
    }

    /// The task exactly as it will read back.
    fn task(&self, tenant: &TenantId, new: NewTask, now: Timestamp) -> Result<Task> {
        let mut task = Task::pending(self.id, tenant.clone(), new, now);
        // Read back from the very text stored, as `get` will.
        task.payload = ROWS.json(&self.payload, "payload")?;
        task.timeout = self.timeout_ms.map(timeout_from_ms);
        task.run_at = Timestamp::from_millis(self.run_at);
        Ok(task)
    }
}

async fn insert_task(
    conn: &mut PgConnection,
    tenant: &TenantId,
    task: NewTask,
    row: NewRow,
    now: Timestamp,
) -> Result<Enqueued> {
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, tenant, priority, status, payload, capabilities, affinity_key, idempotency_key, \
             parent_id, max_attempts, timeout_ms, run_at, created_at, updated_at) \
         VALUES ($1::uuid, $2, $3, 'pending', $4, $5, $6, $7, $8::uuid, $9, $10, $11, $12, $12) \
         ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(row.id.to_string())
    .bind(tenant.as_str())
    .bind(row.priority)
    .bind(&row.payload)
    .bind(&task.capabilities)
    .bind(task.affinity_key.as_deref())
    .bind(task.idempotency_key.as_deref())
    .bind(task.parent.map(|p| p.to_string()))
    .bind(row.max_attempts)
    .bind(row.timeout_ms)
    .bind(row.run_at)
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    if inserted.rows_affected() == 1 {
        return Ok(Enqueued { task: row.task(tenant, task, now)?, created: true });
    }
    // The idempotency key is taken: return the first task (rule 7).
    let sql = format!("SELECT {COLUMNS} FROM tasks t WHERE t.tenant = $1 AND t.idempotency_key = $2");
    let found = sqlx::query(&sql)
        .bind(tenant.as_str())
        .bind(task.idempotency_key.as_deref())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(Enqueued { task: decode_task(&found)?.1, created: false })
}

/// Inserts a batch in one statement, skipping tasks whose idempotency key is
/// taken (also by an earlier task of the same batch), and lines the results
/// up with the input: the task inserted for each entry, or the first task
/// holding its key.
async fn insert_tasks(
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
    let taken: Vec<&str> = tasks
        .iter()
        .zip(&rows)
        .filter(|(_, row)| !inserted.contains(&row.id))
        .filter_map(|(task, _)| task.idempotency_key.as_deref())
        .collect();
    let sql = format!("SELECT {COLUMNS} FROM tasks t WHERE t.tenant = $1 AND t.idempotency_key = ANY($2)");
    let existing_rows =
        sqlx::query(&sql).bind(tenant.as_str()).bind(&taken).fetch_all(&mut *conn).await.map_err(db_err)?;
    let mut existing: HashMap<String, Task> = HashMap::new();
    for row in &existing_rows {
        let (_, task, _) = decode_task(row)?;
        let key = task.idempotency_key.clone().ok_or_else(|| ROWS.corrupt("keyed task has no idempotency key"))?;
        existing.insert(key, task);
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (new, row) in tasks.into_iter().zip(&rows) {
        if inserted.contains(&row.id) {
            out.push(Enqueued { task: row.task(tenant, new, now)?, created: true });
            continue;
        }
        // Not inserted: its key was taken, before or earlier in this batch (rule 7).
        let first = new.idempotency_key.as_ref().and_then(|k| existing.get(k));
        let first =
            first.ok_or_else(|| ROWS.corrupt("a task was neither inserted nor found by its idempotency key"))?;
        out.push(Enqueued { task: first.clone(), created: false });
    }
    Ok(out)
}

/// A timeout as the `timeout_ms` column holds it.
fn timeout_ms(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// A timeout as read back from the `timeout_ms` column.
fn timeout_from_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Splits the entries at `indices` into rounds: the n-th entry of a task goes
/// into round n, so repeated entries act one after the other.
fn rounds(indices: impl Iterator<Item = usize>, entries: &[Entry<'_>]) -> Vec<Vec<usize>> {
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

/// One entry of a batched lease-holder write: the lease, whether it starts or
/// completes, and the value it writes (the agent of a start, the result of a
/// completion as JSON text).
#[derive(Debug)]
struct Entry<'a> {
    lease: &'a Lease,
    start: bool,
    extra: String,
}

impl<'a> Entry<'a> {
    fn complete(c: &'a Completion) -> Result<Self> {
        Ok(Self { lease: &c.lease, start: false, extra: serde_json::to_string(&c.result).map_err(backend_err)? })
    }
}

/// Writes the entries at `round` (one tenant, no task twice) in one fenced
/// `UPDATE … FROM unnest(…)` and fills in their outcomes.
async fn write_round(
    conn: &mut PgConnection,
    entries: &[Entry<'_>],
    round: &[usize],
    now: Timestamp,
    out: &mut [WriteOutcome],
) -> Result<()> {
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
    let tenant = &entries[round[0]].lease.tenant;
    let ids: Vec<String> = round.iter().map(|&i| entries[i].lease.task.to_string()).collect();
    let attempts: Vec<i32> =
        round.iter().map(|&i| i32::try_from(entries[i].lease.attempt).unwrap_or(i32::MAX)).collect();
    let tokens: Vec<String> = round.iter().map(|&i| entries[i].lease.token.to_string()).collect();
    let starts: Vec<bool> = round.iter().map(|&i| entries[i].start).collect();
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
    // Within a round each task appears at most once, so its id names its entry.
    let mut changed: HashMap<TaskId, bool> = HashMap::with_capacity(rows.len());
    for row in &rows {
        changed.insert(ROWS.parse(row.try_get(0).map_err(db_err)?, "id")?, row.try_get(1).map_err(db_err)?);
    }
    for &i in round {
        let e = &entries[i];
        if let Some(&cancel_requested) = changed.get(&e.lease.task) {
            out[i] = if e.start { WriteOutcome::Started { cancel_requested } } else { WriteOutcome::Completed };
        }
    }
    Ok(())
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

/// Appends ` AND …` for each constraint of `filter`.
fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, filter: &TaskFilter) {
    if !filter.statuses.is_empty() {
        let statuses: Vec<&'static str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        qb.push(" AND status = ANY(").push_bind(statuses).push(")");
    }
    if !filter.priorities.is_empty() {
        let ranks: Vec<i16> = filter.priorities.iter().map(|p| i16::from(p.rank())).collect();
        qb.push(" AND priority = ANY(").push_bind(ranks).push(")");
    }
    if let Some(agent) = &filter.agent {
        qb.push(" AND agent_id = ").push_bind(agent.as_str().to_owned());
    }
    if let Some(parent) = filter.parent {
        qb.push(" AND parent_id = ").push_bind(parent.to_string()).push("::uuid");
    }
    if let Some(t) = filter.created_after {
        qb.push(" AND created_at >= ").push_bind(t.as_millis());
    }
    if let Some(t) = filter.created_before {
        qb.push(" AND created_at < ").push_bind(t.as_millis());
    }
}

const SESSION_COLUMNS: &str = "id::text, tenant, agent_id, task_id::text, state, error, created_at, updated_at";

fn decode_session(row: &PgRow) -> Result<Session> {
    let text = |i: usize| -> Result<Option<&str>> { row.try_get::<Option<&str>, _>(i).map_err(db_err) };
    let required = |i: usize, name: &'static str| -> Result<&str> {
        text(i)?.ok_or_else(|| ROWS.corrupt(format!("{name} is NULL")))
    };
    Ok(Session {
        id: ROWS.parse(required(0, "id")?, "id")?,
        tenant: ROWS.parse(required(1, "tenant")?, "tenant")?,
        agent: ROWS.parse(required(2, "agent_id")?, "agent_id")?,
        task: text(3)?.map(|s| ROWS.parse(s, "task_id")).transpose()?,
        state: ROWS.parse(required(4, "state")?, "state")?,
        error: text(5)?.map(str::to_owned),
        created_at: Timestamp::from_millis(row.try_get(6).map_err(db_err)?),
        updated_at: Timestamp::from_millis(row.try_get(7).map_err(db_err)?),
    })
}

/// Decodes a row selected with [`COLUMNS`] into (seq, task, lease token).
fn decode_task(row: &PgRow) -> Result<(i64, Task, Option<LeaseToken>)> {
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

fn unsigned(value: i32, column: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| ROWS.corrupt(format!("column {column} holds {value}")))
}

fn backend_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend { backend: BACKEND, source: Box::new(e) }
}

/// Maps a driver error to a meaning. Lost or refused connections, an
/// exhausted or closed pool, a server shutting down or out of connections,
/// and serialization failures or deadlocks may pass if retried:
/// [`StoreError::Unavailable`]. Everything else is a backend error.
fn db_err(e: sqlx::Error) -> StoreError {
    let transient = match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-03: admin/crash shutdown,
            // cannot connect now; 53300: too many connections; 40001 and
            // 40P01: serialization failure and deadlock.
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01")
        }),
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

    /// The server opens stores inside spawned tasks.
    #[test]
    fn opening_is_send() {
        fn send<T: Send + 'static>(_: T) {}
        send(async { PostgresStore::open("postgres://127.0.0.1:1/none").await });
    }
}
