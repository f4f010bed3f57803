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

mod batch;
mod credentials;
mod decode;
mod ledger;
mod quarantine;
mod registry;
mod sessions;
mod tasks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::ids::{LeaseToken, TaskId, TenantId};
use crate::store::sql::Rows;
use crate::store::{BoxError, ClusterChannel, Lease, LeaseStatus, Result, Store, StoreError};
use crate::task::TaskStatus;
use crate::time::Timestamp;

const BACKEND: &str = "sqlite";
/// Decoding with this backend's name in errors.
const ROWS: Rows = Rows(BACKEND);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

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
        if let Some(writer) = self.writer.lock().await.take()
            && let Err(e) = writer.close().await
        {
            tracing::warn!(error = %e, "closing the SQLite writer connection failed");
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
}

/// One node on its own file: nobody to tell anything.
impl ClusterChannel for SqliteStore {}

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

/// A lease token as the `lease_token` column holds it: 32 lowercase hex digits.
fn token_text(token: &LeaseToken) -> String {
    token.as_uuid().simple().to_string()
}

fn backend_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    ROWS.error(e)
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
    ROWS.driver(e, transient)
}
