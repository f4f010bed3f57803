//! The Redis backend (`redis://host:port/db?prefix=…`): several Godel nodes
//! share one Redis server as their single source of truth.
//!
//! Every operation that changes state is one Lua script (the `.lua` files in
//! `store/redis/`, each prefixed with `lib.lua`), run with `EVALSHA`: Redis
//! runs a script as one atomic unit, so a claim can never hand a task to two
//! claimers (rule 1), and a status change, its history entry, the per-status
//! counts and the `Wake` notice to other nodes happen together or not at all.
//!
//! Keys live under `<prefix>:<tenant>:…` (rule 9): a hash per task
//! (`:t:<id>`), a sorted set of pending tasks per priority scored by `run_at`
//! whose members start with the zero-padded insertion sequence (`:q:<rank>`,
//! so that a range by score up to `now` is exactly the ready tasks in
//! (run_at, seq) order: rules 2 and 8), every task by sequence (`:all`, for
//! listings and cursors), finished tasks by time (`:fin`), dead letters
//! (`:dead`), idempotency keys (`:idem`), per-status counts (`:cnt`),
//! lists of history and output per task, and quarantined rows (`:qr`, and a
//! hash `:qr:<id>` each). The lease-expiry index
//! (`<prefix>:leases`) and the cluster channel (`<prefix>:cluster`) span
//! tenants. Scripts compute their keys, so Redis Cluster is not supported;
//! one server (with replicas) is.
//!
//! Cluster messages travel over Redis pub/sub on a dedicated connection that
//! reconnects on its own; a handle drops its own echoes by its [`NodeId`].

mod channel;
mod connections;
mod credentials;
mod decode;
mod ledger;
mod listener;
mod options;
mod quarantine;
mod registry;
mod scripts;
mod sessions;
mod tasks;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, ErrorKind, RedisError, Value};
use deadpool_redis::{PoolError, Runtime};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::ids::{TaskId, TenantId};
use crate::store::redis::connections::Connections;
use crate::store::redis::decode::{array, row_fields, task_of, text};
use crate::store::redis::listener::{Listener, envelope, listen, subscribe};
use crate::store::redis::scripts::{Script, Scripts, call, load_script};
use crate::store::{BoxError, ClusterMessage, Enqueued, Lease, NodeId, Result, Store, StoreError};
use crate::task::{NewTask, Task};
use crate::time::Timestamp;

pub use crate::store::redis::options::{DEFAULT_POOL_SIZE, DEFAULT_PREFIX, DEFAULT_TIMEOUT, RedisOptions};

const BACKEND: &str = "redis";

/// Finished tasks a bulk purge looks at per script call.
const PURGE_CHUNK: usize = 1_000;
/// Tasks a listing script looks at per call before handing back.
const LIST_BUDGET: usize = 5_000;
/// Messages a slow `cluster_messages` receiver may fall behind by before it loses some.
const CHANNEL_CAPACITY: usize = 1_024;

/// The Redis store. Cheap to share behind an `Arc`; dropping the last
/// handle stops its pub/sub listener.
pub struct RedisStore {
    conns: Connections,
    prefix: String,
    leases: String,
    channel: String,
    node: NodeId,
    timeout: Duration,
    scripts: Scripts,
    messages: broadcast::Sender<ClusterMessage>,
    _listener: Listener,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).field("node", &self.node).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the server a `redis://` URL names (see [`RedisOptions::parse`]),
    /// loads the scripts and subscribes to the cluster channel.
    pub async fn open(url: &str) -> Result<Self> {
        Self::connect(RedisOptions::parse(url)?).await
    }

    /// Like [`RedisStore::open`], with options already parsed.
    pub async fn connect(options: RedisOptions) -> Result<Self> {
        let open_err = |e: BoxError| StoreError::Open { backend: BACKEND, location: options.location(), source: e };
        let timeout = options.timeout;
        let pool = deadpool_redis::Config::from_url(options.url.clone())
            .builder()
            .map_err(|e| open_err(e.into()))?
            .max_size(options.pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| open_err(e.into()))?;
        let scripts = Scripts::load(&pool, timeout).await?;
        let channel = format!("{}:cluster", options.prefix);
        let node = NodeId::random();
        let client = redis::Client::open(options.url.as_str()).map_err(|e| open_err(e.into()))?;
        // Subscribe before returning, so that no message sent after `open` is missed.
        let first = timed(timeout, subscribe(&client, &channel)).await?;
        let (messages, _) = broadcast::channel(CHANNEL_CAPACITY);
        let stop = CancellationToken::new();
        let task = tokio::spawn(listen(client, channel.clone(), node, messages.clone(), stop.clone(), first));
        let slots = (0..options.pool_size).map(|_| Mutex::new(None)).collect();
        Ok(Self {
            conns: Connections { pool, slots, next: AtomicUsize::new(0) },
            leases: format!("{}:leases", options.prefix),
            prefix: options.prefix,
            channel,
            node,
            timeout,
            scripts,
            messages,
            _listener: Listener { _stop: stop.drop_guard(), task },
        })
    }

    /// This handle's id in cluster messages.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The key prefix of one tenant.
    fn tenant_key(&self, tenant: &TenantId) -> String {
        format!("{}:{}", self.prefix, tenant)
    }

    fn wake(&self, tenant: &TenantId) -> Result<String> {
        envelope(self.node, ClusterMessage::Wake { tenant: tenant.clone() })
    }

    /// Runs a plain command.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let (slot, mut conn) = self.conns.get().await?;
        let reply = timed_raw(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        self.conns.settle(slot, reply)
    }

    /// Runs a pipeline.
    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        let (slot, mut conn) = self.conns.get().await?;
        let reply = timed_raw(self.timeout, pipe.query_async::<T>(&mut conn)).await;
        self.conns.settle(slot, reply)
    }

    /// Runs a script call built with [`call`]; reloads the script once if
    /// the server forgot it (after a restart).
    async fn eval(&self, script: &Script, cmd: redis::Cmd) -> Result<Value> {
        let (slot, mut conn) = self.conns.get().await?;
        match timed_raw(self.timeout, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Err(e)) if e.kind() == ErrorKind::NoScriptError => {
                load_script(&self.conns.pool, &script.body, self.timeout).await?;
                self.query(&cmd).await
            }
            reply => self.conns.settle(slot, reply),
        }
    }

    /// Runs a fenced single-lease script whose arguments start with T, leases, tenant, id, attempt, token.
    async fn lease_script(&self, script: &Script, lease: &Lease, extra: &[String]) -> Result<Value> {
        let mut args = call(script);
        args.arg(self.tenant_key(&lease.tenant))
            .arg(&self.leases)
            .arg(lease.tenant.as_str())
            .arg(lease.task.to_string())
            .arg(lease.attempt)
            .arg(lease.token.to_string());
        for e in extra {
            args.arg(e);
        }
        let reply = self.eval(script, args).await?;
        if text(&reply)? == "l" { Err(StoreError::LeaseLost(lease.task)) } else { Ok(reply) }
    }

    async fn insert(&self, tenant: &TenantId, mut tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        crate::store::validate_batch(&mut tasks)?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<TaskId> = tasks.iter().map(|_| TaskId::new()).collect();
        let mut args = call(&self.scripts.enqueue);
        args.arg(self.tenant_key(tenant))
            .arg(now.as_millis())
            .arg(&self.channel)
            .arg(self.wake(tenant)?)
            .arg(tasks.len());
        for (task, id) in tasks.iter().zip(&ids) {
            args.arg(id.to_string())
                .arg(task.idempotency_key.as_deref().unwrap_or(""))
                .arg(u32::from(task.priority.rank()))
                .arg(task.run_at.unwrap_or(now).as_millis())
                .arg(serde_json::to_string(&task.payload).map_err(backend_err)?)
                .arg(task.capabilities.join(" "))
                .arg(task.affinity_key.as_deref().unwrap_or(""))
                .arg(task.parent.map(|p| p.to_string()).unwrap_or_default())
                .arg(task.max_attempts)
                .arg(task.timeout.map(|t| t.as_nanos().to_string()).unwrap_or_default());
        }
        let reply = array(self.eval(&self.scripts.enqueue, args).await?)?;
        if reply.len() != tasks.len() {
            return Err(corrupt("enqueue reply", format!("{} entries for {} tasks", reply.len(), tasks.len())));
        }
        tasks
            .into_iter()
            .zip(ids)
            .zip(reply)
            .map(|((task, id), entry)| match entry {
                Value::Int(1) => Ok(Enqueued { task: Task::pending(id, tenant.clone(), task, now), created: true }),
                other => Ok(Enqueued { task: task_of(tenant, &row_fields(other)?)?, created: false }),
            })
            .collect()
    }

    async fn write(&self, writes: &[(char, &Lease, String)], now: Timestamp) -> Result<Vec<String>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = call(&self.scripts.write);
        args.arg(&self.prefix).arg(&self.leases).arg(now.as_millis()).arg(writes.len());
        for (kind, lease, extra) in writes {
            args.arg(kind.to_string())
                .arg(lease.tenant.as_str())
                .arg(lease.task.to_string())
                .arg(lease.attempt)
                .arg(lease.token.to_string())
                .arg(extra);
        }
        let reply = array(self.eval(&self.scripts.write, args).await?)?;
        if reply.len() != writes.len() {
            return Err(corrupt("write reply", format!("{} outcomes for {} writes", reply.len(), writes.len())));
        }
        reply.iter().map(text).collect()
    }

    async fn exists_then<T: redis::FromRedisValue>(&self, tenant: &TenantId, id: TaskId, cmd: redis::Cmd) -> Result<T> {
        let mut pipe = redis::pipe();
        pipe.atomic().exists(self.task_key(tenant, id)).add_command(cmd);
        let (exists, value): (bool, T) = self.query_pipe(&pipe).await?;
        if exists { Ok(value) } else { Err(StoreError::NotFound(id)) }
    }

    fn task_key(&self, tenant: &TenantId, id: TaskId) -> String {
        format!("{}:{}:t:{}", self.prefix, tenant, id)
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// Opens a shared handle, for [`crate::store::open`].
pub(crate) async fn open_shared(url: &str) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(RedisStore::open(url).await?))
}

async fn timed_raw<T>(timeout: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(timeout, fut).await.map_err(|_| StoreError::Unavailable {
        backend: BACKEND,
        source: format!("no answer within {timeout:?}").into(),
    })
}

async fn timed<T, E: IntoStoreError>(timeout: Duration, fut: impl Future<Output = Result<T, E>>) -> Result<T> {
    timed_raw(timeout, fut).await?.map_err(IntoStoreError::into_store_error)
}

/// Errors of the Redis client and of the pool, as store errors.
trait IntoStoreError {
    fn into_store_error(self) -> StoreError;
}

impl IntoStoreError for RedisError {
    fn into_store_error(self) -> StoreError {
        redis_err(self)
    }
}

impl IntoStoreError for StoreError {
    fn into_store_error(self) -> StoreError {
        self
    }
}

/// Connection trouble (refused, dropped, timed out) and a server that is
/// loading its data or failing over are `Unavailable`: retrying may succeed.
fn redis_err(e: RedisError) -> StoreError {
    let transient = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError | ErrorKind::TryAgain | ErrorKind::ClusterDown | ErrorKind::MasterDown
        );
    if transient {
        StoreError::Unavailable { backend: BACKEND, source: Box::new(e) }
    } else {
        StoreError::Backend { backend: BACKEND, source: Box::new(e) }
    }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => redis_err(e),
        PoolError::Timeout(_) => StoreError::Unavailable { backend: BACKEND, source: Box::new(e) },
        other => StoreError::Backend { backend: BACKEND, source: Box::new(other) },
    }
}

fn backend_err(e: impl Into<BoxError>) -> StoreError {
    StoreError::Backend { backend: BACKEND, source: e.into() }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    backend_err(format!("unexpected {what}: {detail}"))
}
