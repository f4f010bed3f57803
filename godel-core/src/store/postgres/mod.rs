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

// Before the modules, so that they can use it.
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
        let out: $crate::store::Result<_> = {
            let $conn: &mut sqlx::PgConnection = &mut tx;
            $body.await
        };
        match out {
            Ok(value) => tx.commit().await.map_err($crate::store::postgres::db_err).map(|()| value),
            Err(e) => Err(e),
        }
    }};
    ($store:expr, $tenant:expr, |$conn:ident| $body:expr) => {{
        scoped!(@begin $store.begin($tenant), |$conn| $body)
    }};
}

mod batch;
mod channel;
mod credentials;
mod decode;
mod ledger;
mod notify;
mod options;
mod quarantine;
mod registry;
mod sessions;
mod tasks;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row};
use tokio::sync::{Mutex, broadcast};

use crate::ids::{TaskId, TenantId};
use crate::store::postgres::notify::ListenTask;
use crate::store::postgres::options::PgOptions;
use crate::store::sql::Rows;
use crate::store::{BoxError, ClusterMessage, Lease, LeaseStatus, NodeId, Result, Store, StoreError};
use crate::task::TaskStatus;
use crate::time::Timestamp;

const BACKEND: &str = "postgres";
/// Decoding with this backend's name in errors.
const ROWS: Rows = Rows(BACKEND);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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

fn unsigned(value: i32, column: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| ROWS.corrupt(format!("column {column} holds {value}")))
}

fn backend_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    ROWS.error(e)
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
    ROWS.driver(e, transient)
}
