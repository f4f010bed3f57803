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
//! (`:dead`), idempotency keys (`:idem`), per-status counts (`:cnt`), and
//! lists of history and output per task. The lease-expiry index
//! (`<prefix>:leases`) and the cluster channel (`<prefix>:cluster`) span
//! tenants. Scripts compute their keys, so Redis Cluster is not supported;
//! one server (with replicas) is.
//!
//! Cluster messages travel over Redis pub/sub on a dedicated connection that
//! reconnects on its own; a handle drops its own echoes by its [`NodeId`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, ErrorKind, RedisError, Value};
use deadpool_redis::{Pool, PoolError, Runtime};
use futures::StreamExt;
use serde_json::Value as Json;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::InvalidInput;
use crate::event::OutputStream;
use crate::ids::{AgentId, LeaseToken, SessionId, TaskId, TenantId};
use crate::session::{Session, SessionState};
use crate::store::{
    BatchCompletion, BoxError, CancelOutcome, Claim, ClaimRequest, ClusterMessage, Completion, Cursor, Enqueued,
    Envelope, FailOutcome, Failure, HistoryEntry, Lease, LeaseStatus, LeaseWrite, Member, MemberKind, Micros, NodeId,
    OutputChunk, OutputRecord, Page, QueueCounts, QueueDepth, Reclaimed, Result, Retry, SessionQuery, SortOrder, Store,
    StoreError, TaskFilter, TaskQuery, WriteOutcome,
};
use crate::task::{NewTask, Priority, Task, TaskError, TaskPayload, TaskStatus};
use crate::time::Timestamp;

const BACKEND: &str = "redis";

/// Default key namespace.
pub const DEFAULT_PREFIX: &str = "godel";
/// Default number of pooled connections (each one multiplexed).
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Default time limit for getting a connection and for one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Finished tasks a bulk purge looks at per script call.
const PURGE_CHUNK: usize = 1_000;
/// Tasks a listing script looks at per call before handing back.
const LIST_BUDGET: usize = 5_000;
/// Messages a slow `cluster_messages` receiver may fall behind by before it loses some.
const CHANNEL_CAPACITY: usize = 1_024;

/// Options of a Redis store, parsed from its URL.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RedisOptions {
    /// The URL handed to the Redis client, without Godel's own query parameters.
    pub url: String,
    /// The key namespace: keys are `<prefix>:<tenant>:…`.
    pub prefix: String,
    /// Pooled connections.
    pub pool_size: usize,
    /// Time limit for getting a connection and for each call.
    pub timeout: Duration,
}

impl RedisOptions {
    /// Parses `redis://[user:password@]host[:port][/db][?prefix=…&pool_size=…&timeout=…]`.
    /// Godel's parameters are removed from the URL; any other parameter is an error.
    pub fn parse(url: &str) -> Result<Self, InvalidInput> {
        let (scheme, _) = url
            .split_once("://")
            .ok_or_else(|| InvalidInput::new("store url", format!("expected redis://host:port, got {url:?}")))?;
        match scheme {
            // rediss:// is TLS (rustls), the server checked against the system's roots.
            "redis" | "rediss" => {}
            other => return Err(InvalidInput::new("store url", format!("expected redis://, got {other}://"))),
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut options = RedisOptions {
            url: base.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "prefix" => {
                    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
                    if value.is_empty() || value.len() > 64 || !value.chars().all(ok) {
                        return Err(InvalidInput::new(
                            "prefix",
                            format!("expected 1 to 64 characters from A-Z a-z 0-9 _ - . :, got {value:?}"),
                        ));
                    }
                    options.prefix = value.to_owned();
                }
                "pool_size" => {
                    options.pool_size = value.parse().ok().filter(|n| (1..=1_024).contains(n)).ok_or_else(|| {
                        InvalidInput::new("pool_size", format!("expected a number from 1 to 1024, got {value:?}"))
                    })?;
                }
                "timeout" => {
                    options.timeout = parse_duration(value).filter(|d| !d.is_zero()).ok_or_else(|| {
                        InvalidInput::new(
                            "timeout",
                            format!("expected a positive duration like 5s or 500ms, got {value:?}"),
                        )
                    })?;
                }
                other => {
                    return Err(InvalidInput::new(
                        "store url",
                        format!("unknown redis option {other:?} (expected prefix, pool_size or timeout)"),
                    ));
                }
            }
        }
        Ok(options)
    }

    /// The URL without credentials, for error messages.
    fn location(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://…@{host}"),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }
}

/// `250ms`, `5s` or `2m`.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    match &s[split..] {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// One Lua script: its source (with `lib.lua` in front) and its SHA1 as the
/// server reported it when the script was loaded.
#[derive(Debug)]
struct Script {
    body: String,
    sha: String,
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        /// Every script the store runs.
        #[derive(Debug)]
        struct Scripts {
            $($name: Script,)*
        }

        impl Scripts {
            /// Loads every script into the server's script cache.
            async fn load(pool: &Pool, timeout: Duration) -> Result<Self> {
                Ok(Self {
                    $($name: {
                        let body = format!(
                            "{}\n{}",
                            include_str!("redis/lib.lua"),
                            include_str!(concat!("redis/", stringify!($name), ".lua"))
                        );
                        let sha = load_script(pool, &body, timeout).await?;
                        Script { body, sha }
                    },)*
                })
            }
        }
    };
}

scripts!(
    enqueue,
    claim,
    write,
    heartbeat,
    output,
    fail,
    release,
    confirm_cancel,
    cancel,
    reclaim,
    replay,
    purge,
    list,
    counts,
    sessions,
);

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

/// Multiplexed connections shared by every call. Each is taken out of the
/// pool once and reused until it breaks: the pool's own hand-out checks every
/// connection with a round trip (`UNWATCH` and `PING`), which would double
/// the round trips of a store whose calls are each one script.
struct Connections {
    pool: Pool,
    slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    next: AtomicUsize,
}

impl Connections {
    /// A connection (and its slot), round-robin over the slots; a new one from the pool if the slot is empty.
    async fn get(&self) -> Result<(usize, MultiplexedConnection)> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Some(conn) = self.lock(slot).clone() {
            return Ok((slot, conn));
        }
        let conn = deadpool_redis::Connection::take(self.pool.get().await.map_err(pool_err)?);
        *self.lock(slot) = Some(conn.clone());
        Ok((slot, conn))
    }

    /// The reply of a call on `slot`'s connection; forgets the connection if
    /// it broke or timed out, so that the next call on the slot opens a new one.
    fn settle<T>(&self, slot: usize, reply: Result<Result<T, RedisError>>) -> Result<T> {
        match reply {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    *self.lock(slot) = None;
                }
                Err(redis_err(e))
            }
            Err(timeout) => {
                *self.lock(slot) = None;
                Err(timeout)
            }
        }
    }

    fn lock(&self, slot: usize) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        // A slot holds a cloneable handle; a panic cannot leave it half-written.
        self.slots[slot].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The pub/sub listener task, stopped and aborted when the store is dropped.
#[derive(Debug)]
struct Listener {
    _stop: DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
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
        // Validate everything first so a bad task leaves nothing behind.
        for task in &mut tasks {
            task.validate()?;
        }
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

/// A call of `script`, to which the caller adds the script's arguments.
fn call(script: &Script) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&script.sha).arg(0);
    cmd
}

/// Loads a script into the server's cache and returns its SHA1.
async fn load_script(pool: &Pool, body: &str, timeout: Duration) -> Result<String> {
    let mut conn = pool.get().await.map_err(pool_err)?;
    timed(timeout, redis::cmd("SCRIPT").arg("LOAD").arg(body).query_async::<String>(&mut conn)).await
}

async fn subscribe(client: &redis::Client, channel: &str) -> Result<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await.map_err(redis_err)?;
    pubsub.subscribe(channel).await.map_err(redis_err)?;
    Ok(pubsub)
}

/// Forwards messages from other nodes until `stop`; reconnects (with a
/// capped backoff) whenever the connection drops.
async fn listen(
    client: redis::Client,
    channel: String,
    node: NodeId,
    messages: broadcast::Sender<ClusterMessage>,
    stop: CancellationToken,
    first: redis::aio::PubSub,
) {
    let mut next = Some(first);
    let mut delay = Duration::from_millis(50);
    loop {
        let pubsub = match next.take() {
            Some(pubsub) => pubsub,
            None => {
                let attempt = tokio::select! {
                    () = stop.cancelled() => return,
                    r = tokio::time::timeout(Duration::from_secs(5), subscribe(&client, &channel)) => r,
                };
                match attempt {
                    Ok(Ok(pubsub)) => {
                        tracing::info!(channel, "redis pub/sub reconnected");
                        delay = Duration::from_millis(50);
                        pubsub
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(channel, error = %e, "redis pub/sub reconnect failed");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    Err(_) => continue,
                }
            }
        };
        let mut stream = pubsub.into_on_message();
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                msg = stream.next() => msg,
            };
            let Some(msg) = msg else { break };
            let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
            match serde_json::from_slice::<Envelope>(&payload) {
                Ok(envelope) if envelope.origin != node => {
                    // No receiver is fine: nobody is listening yet.
                    let _ = messages.send(envelope.message);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(channel, error = %e, "ignoring a malformed cluster message"),
            }
        }
        tracing::warn!(channel, "redis pub/sub connection lost; reconnecting");
    }
}

fn envelope(origin: NodeId, message: ClusterMessage) -> Result<String> {
    serde_json::to_string(&Envelope { origin, message }).map_err(backend_err)
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

fn text(v: &Value) -> Result<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|e| corrupt("reply", e)),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Okay => Ok("OK".to_owned()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(corrupt("reply", format!("{other:?}"))),
    }
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        other => text(other)?.parse().map_err(|e| corrupt("number", e)),
    }
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt("reply", format!("expected an array, got {other:?}"))),
    }
}

/// A flat field/value list (or a RESP3 map) as a map.
fn fields(v: Value) -> Result<HashMap<String, String>> {
    match v {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| Ok((text(k)?, text(v)?))).collect(),
        other => {
            let items = array(other)?;
            items.chunks(2).map(|pair| Ok((text(&pair[0])?, text(pair.get(1).unwrap_or(&Value::Nil))?))).collect()
        }
    }
}

/// The fields `read_task` in `lib.lua` returns, in order.
const TASK_FIELDS: [&str; 23] = [
    "id", "pri", "st", "pay", "caps", "aff", "idem", "par", "att", "max", "to", "run", "ag", "exp", "cxl", "res",
    "err", "cr", "up", "sa", "ca", "dl", "tok",
];

/// A `read_task` row as a map of the fields present.
fn row_fields(v: Value) -> Result<HashMap<String, String>> {
    let row = array(v)?;
    if row.len() != TASK_FIELDS.len() {
        return Err(corrupt("task row", format!("{} fields, expected {}", row.len(), TASK_FIELDS.len())));
    }
    let mut map = HashMap::with_capacity(row.len());
    for (name, value) in TASK_FIELDS.iter().zip(&row) {
        if *value != Value::Nil {
            map.insert((*name).to_owned(), text(value)?);
        }
    }
    Ok(map)
}

struct Fields<'a>(&'a HashMap<String, String>);

impl Fields<'_> {
    /// An optional field: absent or empty means none (see `lib.lua`).
    fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn req(&self, name: &str) -> Result<&str> {
        self.opt(name).ok_or_else(|| corrupt("record", format!("field {name} missing")))
    }

    fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.req(name)?.parse().map_err(|e| corrupt("record", format!("field {name}: {e}")))
    }

    fn parse_opt<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.opt(name).map(|v| v.parse().map_err(|e| corrupt("record", format!("field {name}: {e}")))).transpose()
    }

    fn time(&self, name: &str) -> Result<Timestamp> {
        Ok(Timestamp::from_millis(self.parse(name)?))
    }

    fn time_opt(&self, name: &str) -> Result<Option<Timestamp>> {
        Ok(self.parse_opt::<i64>(name)?.map(Timestamp::from_millis))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.opt(name)
            .map(|v| serde_json::from_str(v).map_err(|e| corrupt("record", format!("field {name}: {e}"))))
            .transpose()
    }
}

fn task_of(tenant: &TenantId, map: &HashMap<String, String>) -> Result<Task> {
    let f = Fields(map);
    let rank: u8 = f.parse("pri")?;
    Ok(Task {
        id: f.parse("id")?,
        tenant: tenant.clone(),
        priority: Priority::from_rank(rank).ok_or_else(|| corrupt("record", format!("priority rank {rank}")))?,
        status: f.parse("st")?,
        payload: f.json::<TaskPayload>("pay")?.ok_or_else(|| corrupt("record", "field pay missing"))?,
        capabilities: f.opt("caps").map(|c| c.split_whitespace().map(str::to_owned).collect()).unwrap_or_default(),
        affinity_key: f.opt("aff").map(str::to_owned),
        idempotency_key: f.opt("idem").map(str::to_owned),
        parent: f.parse_opt("par")?,
        attempt: f.parse("att")?,
        max_attempts: f.parse("max")?,
        timeout: f.parse_opt::<u64>("to")?.map(Duration::from_nanos),
        run_at: f.time("run")?,
        agent: f.parse_opt("ag")?,
        lease_expires_at: f.time_opt("exp")?,
        cancel_requested: f.opt("cxl") == Some("1"),
        result: f.json::<Json>("res")?,
        error: f.json::<TaskError>("err")?,
        created_at: f.time("cr")?,
        updated_at: f.time("up")?,
        started_at: f.time_opt("sa")?,
        completed_at: f.time_opt("ca")?,
        dead_lettered_at: f.time_opt("dl")?,
    })
}

fn session_of(tenant: &TenantId, map: &HashMap<String, String>) -> Result<Session> {
    let f = Fields(map);
    Ok(Session {
        id: f.parse("id")?,
        tenant: tenant.clone(),
        agent: f.parse("ag")?,
        task: f.parse_opt("task")?,
        state: f.parse::<SessionState>("st")?,
        created_at: f.time("cr")?,
        updated_at: f.time("up")?,
        // Read as stored: a session's reason may be empty (sessions are never emptied in place).
        error: map.get("err").cloned(),
    })
}

/// The six filter arguments the scripts' `parse_filter` reads.
fn filter_args(args: &mut redis::Cmd, filter: &TaskFilter) {
    let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
    let priorities: Vec<String> = filter.priorities.iter().map(|p| p.rank().to_string()).collect();
    args.arg(statuses.join(","))
        .arg(priorities.join(","))
        .arg(filter.agent.as_ref().map(AgentId::as_str).unwrap_or(""))
        .arg(filter.parent.map(|p| p.to_string()).unwrap_or_default())
        .arg(filter.created_after.map(|t| t.as_millis().to_string()).unwrap_or_default())
        .arg(filter.created_before.map(|t| t.as_millis().to_string()).unwrap_or_default());
}

/// A script's answer about one task by id: `n` (missing), `t:<status>` (wrong status) or something else.
fn task_answer(reply: &Value, id: TaskId, action: &'static str) -> Result<()> {
    if let Ok(s) = text(reply) {
        if s == "n" {
            return Err(StoreError::NotFound(id));
        }
        if let Some(status) = s.strip_prefix("t:") {
            let from = status.parse().map_err(|e| corrupt("status", e))?;
            return Err(StoreError::InvalidTransition { task: id, from, action });
        }
    }
    Ok(())
}

fn status_of(s: &str) -> Result<TaskStatus> {
    s.parse().map_err(|e| corrupt("status", e))
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

    async fn enqueue(&self, tenant: &TenantId, task: NewTask, now: Timestamp) -> Result<Enqueued> {
        let mut out = self.insert(tenant, vec![task], now).await?;
        out.pop().ok_or_else(|| corrupt("enqueue reply", "no task"))
    }

    async fn enqueue_batch(&self, tenant: &TenantId, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        self.insert(tenant, tasks, now).await
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Claim>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        // Each lease's token is this random UUID with its last 8 hex digits
        // replaced by the claim's index in the batch: 96 random bits, unique per call.
        let base = LeaseToken::random().to_string();
        let mut args = call(&self.scripts.claim);
        args.arg(self.tenant_key(&request.tenant))
            .arg(&self.leases)
            .arg(request.tenant.as_str())
            .arg(now.as_millis())
            .arg((now + request.lease_for).as_millis())
            .arg(request.agent.as_str())
            .arg(request.limit.min(i64::MAX as usize))
            .arg(&base[..28]);
        for cap in &request.capabilities {
            args.arg(cap);
        }
        let reply = array(self.eval(&self.scripts.claim, args).await?)?;
        reply
            .into_iter()
            .map(|entry| {
                let map = row_fields(entry)?;
                let task = task_of(&request.tenant, &map)?;
                let token = Fields(&map).parse::<LeaseToken>("tok")?;
                let lease = Lease { tenant: request.tenant.clone(), task: task.id, attempt: task.attempt, token };
                Ok(Claim { lease, task })
            })
            .collect()
    }

    async fn start(&self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus> {
        let out = self.write(&[('s', lease, agent.as_str().to_owned())], now).await?;
        match out.first().map(String::as_str) {
            Some("l") => Err(StoreError::LeaseLost(lease.task)),
            Some(s) => {
                let (cancel, expires) = s[1..].split_once(':').ok_or_else(|| corrupt("start reply", s))?;
                let expires = expires.parse().map_err(|e| corrupt("start reply", e))?;
                Ok(LeaseStatus { expires_at: Timestamp::from_millis(expires), cancel_requested: cancel == "1" })
            }
            None => Err(corrupt("start reply", "empty")),
        }
    }

    async fn write_batch(&self, writes: &[LeaseWrite], now: Timestamp) -> Result<Vec<WriteOutcome>> {
        let entries = writes
            .iter()
            .map(|w| match w {
                LeaseWrite::Start { lease, agent } => Ok(('s', lease, agent.as_str().to_owned())),
                LeaseWrite::Complete(c) => Ok(('c', &c.lease, serde_json::to_string(&c.result).map_err(backend_err)?)),
            })
            .collect::<Result<Vec<_>>>()?;
        let out = self.write(&entries, now).await?;
        out.iter()
            .map(|s| match s.as_bytes().first() {
                Some(b'l') => Ok(WriteOutcome::LeaseLost),
                Some(b'c') => Ok(WriteOutcome::Completed),
                Some(b's') => Ok(WriteOutcome::Started { cancel_requested: s.as_bytes().get(1) == Some(&b'1') }),
                _ => Err(corrupt("write outcome", s)),
            })
            .collect()
    }

    async fn heartbeat(&self, lease: &Lease, extend_by: Duration, now: Timestamp) -> Result<LeaseStatus> {
        let expires_at = now + extend_by;
        let reply = self.lease_script(&self.scripts.heartbeat, lease, &[expires_at.as_millis().to_string()]).await?;
        Ok(LeaseStatus { expires_at, cancel_requested: text(&reply)? == "1" })
    }

    async fn append_output(&self, lease: &Lease, chunks: &[OutputChunk], now: Timestamp) -> Result<()> {
        let mut args = call(&self.scripts.output);
        args.arg(self.tenant_key(&lease.tenant))
            .arg(lease.task.to_string())
            .arg(lease.attempt)
            .arg(lease.token.to_string())
            .arg(now.as_millis());
        for chunk in chunks {
            args.arg(chunk.stream.as_str()).arg(&chunk.data);
        }
        match text(&self.eval(&self.scripts.output, args).await?)?.as_str() {
            "l" => Err(StoreError::LeaseLost(lease.task)),
            _ => Ok(()),
        }
    }

    async fn complete(&self, lease: &Lease, result: Json, now: Timestamp) -> Result<()> {
        let result = serde_json::to_string(&result).map_err(backend_err)?;
        match self.write(&[('c', lease, result)], now).await?.first().map(String::as_str) {
            Some("c") => Ok(()),
            _ => Err(StoreError::LeaseLost(lease.task)),
        }
    }

    async fn complete_batch(&self, completions: &[Completion], now: Timestamp) -> Result<BatchCompletion> {
        let entries = completions
            .iter()
            .map(|c| Ok(('c', &c.lease, serde_json::to_string(&c.result).map_err(backend_err)?)))
            .collect::<Result<Vec<_>>>()?;
        let out = self.write(&entries, now).await?;
        let mut done = BatchCompletion::default();
        for (c, outcome) in completions.iter().zip(out) {
            if outcome == "c" {
                done.completed.push(c.lease.task);
            } else {
                done.lease_lost.push(c.lease.task);
            }
        }
        Ok(done)
    }

    async fn fail(&self, lease: &Lease, failure: &Failure, now: Timestamp) -> Result<FailOutcome> {
        let (retryable, run_at) = match failure.retry {
            Retry::After(delay) => ("1", now + delay),
            Retry::Never => ("0", now),
        };
        let extra = [
            now.as_millis().to_string(),
            serde_json::to_string(&failure.error).map_err(backend_err)?,
            retryable.to_owned(),
            run_at.as_millis().to_string(),
            self.channel.clone(),
            self.wake(&lease.tenant)?,
        ];
        let reply = self.lease_script(&self.scripts.fail, lease, &extra).await?;
        Ok(match status_of(&text(&reply)?)? {
            TaskStatus::Pending => FailOutcome::Retrying { run_at },
            TaskStatus::DeadLetter => FailOutcome::DeadLettered,
            TaskStatus::Failed => FailOutcome::Failed,
            _ => FailOutcome::Cancelled,
        })
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<TaskStatus> {
        let extra = [now.as_millis().to_string(), self.channel.clone(), self.wake(&lease.tenant)?];
        let reply = self.lease_script(&self.scripts.release, lease, &extra).await?;
        status_of(&text(&reply)?)
    }

    async fn confirm_cancel(&self, lease: &Lease, now: Timestamp) -> Result<()> {
        self.lease_script(&self.scripts.confirm_cancel, lease, &[now.as_millis().to_string()]).await?;
        Ok(())
    }

    async fn cancel(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        let mut args = call(&self.scripts.cancel);
        args.arg(self.tenant_key(tenant)).arg(id.to_string()).arg(now.as_millis());
        let reply = self.eval(&self.scripts.cancel, args).await?;
        task_answer(&reply, id, "cancel")?;
        match text(&reply)?.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "requested" => Ok(CancelOutcome::Requested),
            other => Err(corrupt("cancel reply", other)),
        }
    }

    async fn reclaim_expired(&self, now: Timestamp, limit: usize) -> Result<Vec<Reclaimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut args = call(&self.scripts.reclaim);
        args.arg(&self.prefix)
            .arg(&self.leases)
            .arg(now.as_millis())
            .arg(limit.min(i64::MAX as usize))
            .arg(&self.channel)
            .arg(self.node.to_string());
        let reply = array(self.eval(&self.scripts.reclaim, args).await?)?;
        reply
            .into_iter()
            .map(|row| {
                let row = array(row)?;
                let [tenant, task, rank, attempt, status] = row.as_slice() else {
                    return Err(corrupt("reclaim reply", format!("{row:?}")));
                };
                let rank: u8 = int(rank)?.try_into().map_err(|e| corrupt("priority", e))?;
                Ok(Reclaimed {
                    tenant: TenantId::new(text(tenant)?).map_err(|e| corrupt("tenant", e))?,
                    task: text(task)?.parse().map_err(|e| corrupt("task id", e))?,
                    priority: Priority::from_rank(rank).ok_or_else(|| corrupt("priority", rank))?,
                    attempt: int(attempt)?.try_into().map_err(|e| corrupt("attempt", e))?,
                    status: status_of(&text(status)?)?,
                })
            })
            .collect()
    }

    async fn replay(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<Task> {
        let mut args = call(&self.scripts.replay);
        args.arg(self.tenant_key(tenant))
            .arg(now.as_millis())
            .arg(&self.channel)
            .arg(self.wake(tenant)?)
            .arg("one")
            .arg(id.to_string());
        let reply = self.eval(&self.scripts.replay, args).await?;
        task_answer(&reply, id, "replay")?;
        task_of(tenant, &row_fields(reply)?)
    }

    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64> {
        let filter = filter.for_dead_letters()?;
        let mut args = call(&self.scripts.replay);
        args.arg(self.tenant_key(tenant)).arg(now.as_millis()).arg(&self.channel).arg(self.wake(tenant)?).arg("bulk");
        filter_args(&mut args, &filter);
        let n = int(&self.eval(&self.scripts.replay, args).await?)?;
        u64::try_from(n).map_err(|e| corrupt("count", e))
    }

    async fn purge(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        let mut args = call(&self.scripts.purge);
        args.arg(self.tenant_key(tenant)).arg("one").arg(id.to_string());
        let reply = self.eval(&self.scripts.purge, args).await?;
        task_answer(&reply, id, "purge")
    }

    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64> {
        let filter = filter.for_purge()?;
        // Chunks keep each script short; tasks that do not match stay in the
        // index, so the next chunk starts after them.
        let mut offset = 0;
        let mut total = 0;
        loop {
            let mut args = call(&self.scripts.purge);
            args.arg(self.tenant_key(tenant)).arg("bulk").arg(finished_before.as_millis()).arg(offset).arg(PURGE_CHUNK);
            filter_args(&mut args, &filter);
            let reply = array(self.eval(&self.scripts.purge, args).await?)?;
            let [deleted, examined] = reply.as_slice() else {
                return Err(corrupt("purge reply", format!("{reply:?}")));
            };
            let (deleted, examined) = (int(deleted)?, int(examined)?);
            total += deleted;
            offset += examined - deleted;
            if examined < PURGE_CHUNK as i64 {
                return u64::try_from(total).map_err(|e| corrupt("count", e));
            }
        }
    }

    async fn get(&self, tenant: &TenantId, id: TaskId) -> Result<Task> {
        let map: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(self.task_key(tenant, id))).await?;
        if map.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        task_of(tenant, &map)
    }

    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>> {
        let after = query.validate()?;
        let order = match query.order {
            SortOrder::Ascending => "a",
            SortOrder::Descending => "d",
        };
        let mut position = after.map(|s| s.to_string()).unwrap_or_default();
        let mut rows: Vec<(i64, Task)> = Vec::new();
        let wanted = query.limit + 1;
        loop {
            let mut args = call(&self.scripts.list);
            args.arg(self.tenant_key(tenant)).arg(order).arg(&position).arg(wanted - rows.len()).arg(LIST_BUDGET);
            filter_args(&mut args, &query.filter);
            let reply = array(self.eval(&self.scripts.list, args).await?)?;
            let mut items = reply.into_iter();
            let last = text(&items.next().unwrap_or(Value::Nil)).unwrap_or_default();
            let done = items.next().map(|v| int(&v)).transpose()?.unwrap_or(1) == 1;
            while let (Some(seq), Some(task)) = (items.next(), items.next()) {
                rows.push((int(&seq)?, task_of(tenant, &row_fields(task)?)?));
            }
            if done || rows.len() >= wanted || last.is_empty() {
                break;
            }
            position = last;
        }
        let next_cursor = (rows.len() > query.limit).then(|| {
            rows.truncate(query.limit);
            Cursor::after(query.order, rows.last().expect("non-empty").0)
        });
        Ok(Page { items: rows.into_iter().map(|(_, t)| t).collect(), next_cursor })
    }

    async fn output(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<OutputRecord>> {
        let key = format!("{}:o:{id}", self.tenant_key(tenant));
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(key).arg(0).arg(-1);
        let entries: Vec<String> = self.exists_then(tenant, id, cmd).await?;
        entries
            .iter()
            .map(|e| {
                let mut parts = e.splitn(4, '|');
                let (Some(attempt), Some(stream), Some(at), Some(data)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(corrupt("output entry", e));
                };
                Ok(OutputRecord {
                    attempt: attempt.parse().map_err(|e| corrupt("output attempt", e))?,
                    stream: stream.parse::<OutputStream>().map_err(|e| corrupt("output stream", e))?,
                    data: data.to_owned(),
                    at: Timestamp::from_millis(at.parse().map_err(|e| corrupt("output time", e))?),
                })
            })
            .collect()
    }

    async fn history(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<HistoryEntry>> {
        let key = format!("{}:h:{id}", self.tenant_key(tenant));
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(key).arg(0).arg(-1);
        let entries: Vec<String> = self.exists_then(tenant, id, cmd).await?;
        entries
            .iter()
            .map(|e| {
                let parts: Vec<&str> = e.splitn(6, '|').collect();
                let [at, attempt, status, cancel, agent, error] = parts.as_slice() else {
                    return Err(corrupt("history entry", e));
                };
                Ok(HistoryEntry {
                    at: Timestamp::from_millis(at.parse().map_err(|e| corrupt("history time", e))?),
                    attempt: attempt.parse().map_err(|e| corrupt("history attempt", e))?,
                    status: status_of(status)?,
                    agent: (!agent.is_empty())
                        .then(|| AgentId::new(*agent))
                        .transpose()
                        .map_err(|e| corrupt("history agent", e))?,
                    error: (!error.is_empty())
                        .then(|| serde_json::from_str(error))
                        .transpose()
                        .map_err(|e| corrupt("history error", e))?,
                    cancel_requested: *cancel == "1",
                })
            })
            .collect()
    }

    async fn depth(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueDepth> {
        let base = self.tenant_key(tenant);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for p in Priority::ALL {
            pipe.zcount(format!("{base}:q:{}", p.rank()), "-inf", now.as_millis());
        }
        let counts: Vec<u64> = self.query_pipe(&pipe).await?;
        let mut depth = QueueDepth::default();
        for (p, n) in Priority::ALL.into_iter().zip(counts) {
            depth.add(p, n);
        }
        Ok(depth)
    }

    async fn counts(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueCounts> {
        let mut args = call(&self.scripts.counts);
        args.arg(self.tenant_key(tenant)).arg(tenant.as_str()).arg(&self.leases).arg(now.as_millis());
        let reply = array(self.eval(&self.scripts.counts, args).await?)?;
        let [by_status, ready, scheduled, expired, oldest] =
            <[Value; 5]>::try_from(reply).map_err(|r| corrupt("counts reply", format!("{r:?}")))?;
        let mut counts = QueueCounts::default();
        for (status, n) in fields(by_status)? {
            let n: i64 = n.parse().map_err(|e| corrupt("count", e))?;
            counts.add_status(status_of(&status)?, u64::try_from(n).map_err(|e| corrupt("count", e))?);
        }
        for n in array(ready)? {
            counts.ready += u64::try_from(int(&n)?).map_err(|e| corrupt("count", e))?;
        }
        counts.scheduled = u64::try_from(int(&scheduled)?).map_err(|e| corrupt("count", e))?;
        counts.expired_leases = u64::try_from(int(&expired)?).map_err(|e| corrupt("count", e))?;
        let oldest = text(&oldest)?;
        if !oldest.is_empty() {
            counts.oldest_ready = Some(Timestamp::from_millis(oldest.parse().map_err(|e| corrupt("run_at", e))?));
        }
        Ok(counts)
    }

    async fn save_sessions(&self, sessions: &[Session]) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for s in sessions {
            let base = self.tenant_key(&s.tenant);
            let key = format!("{base}:s:{}", s.id);
            pipe.hset_multiple(
                &key,
                &[
                    ("id", s.id.to_string()),
                    ("ag", s.agent.to_string()),
                    ("st", s.state.as_str().to_owned()),
                    ("cr", s.created_at.as_millis().to_string()),
                    ("up", s.updated_at.as_millis().to_string()),
                ],
            )
            .ignore();
            match s.task {
                Some(task) => pipe.hset(&key, "task", task.to_string()).ignore(),
                None => pipe.hdel(&key, "task").ignore(),
            };
            match &s.error {
                Some(err) => pipe.hset(&key, "err", err).ignore(),
                None => pipe.hdel(&key, "err").ignore(),
            };
            pipe.zadd(format!("{base}:ss"), s.id.to_string(), s.created_at.as_millis()).ignore();
        }
        self.query_pipe::<()>(&pipe).await
    }

    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session> {
        let key = format!("{}:s:{id}", self.tenant_key(tenant));
        let map: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(key)).await?;
        if map.is_empty() {
            return Err(StoreError::SessionNotFound(id));
        }
        session_of(tenant, &map)
    }

    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>> {
        query.validate()?;
        let mut args = call(&self.scripts.sessions);
        args.arg(self.tenant_key(tenant)).arg("all");
        let reply = array(self.eval(&self.scripts.sessions, args).await?)?;
        let mut sessions = Vec::new();
        for entry in reply {
            let session = session_of(tenant, &fields(entry)?)?;
            if query.matches(&session) {
                sessions.push(session);
            }
        }
        sessions.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
        sessions.truncate(query.limit);
        Ok(sessions)
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
        let mut args = call(&self.scripts.sessions);
        args.arg(self.tenant_key(tenant)).arg("abandon").arg(now.as_millis()).arg(reason);
        for agent in agents {
            args.arg(agent.as_str());
        }
        let n = int(&self.eval(&self.scripts.sessions, args).await?)?;
        u64::try_from(n).map_err(|e| corrupt("count", e))
    }

    fn cluster_messages(&self) -> Option<broadcast::Receiver<ClusterMessage>> {
        Some(self.messages.subscribe())
    }

    async fn broadcast(&self, message: &ClusterMessage) -> Result<()> {
        let payload = envelope(self.node, message.clone())?;
        let _: i64 = self.query(redis::cmd("PUBLISH").arg(&self.channel).arg(payload)).await?;
        Ok(())
    }

    async fn put_member(&self, member: &Member) -> Result<()> {
        member.validate()?;
        let key = format!("{}:m:{}", self.tenant_key(&member.tenant), member.kind.as_str());
        let row = serde_json::json!({
            "node": member.node,
            "doc": member.doc,
            "updated_at": member.updated_at.as_millis(),
            "expires_at": member.expires_at.as_millis(),
        });
        let _: i64 = self.query(redis::cmd("HSET").arg(key).arg(&member.id).arg(row.to_string())).await?;
        Ok(())
    }

    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool> {
        let key = format!("{}:m:{}", self.tenant_key(tenant), kind.as_str());
        let removed: i64 = self.query(redis::cmd("HDEL").arg(key).arg(id)).await?;
        Ok(removed > 0)
    }

    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>> {
        #[derive(serde::Deserialize)]
        struct Row {
            node: String,
            doc: Json,
            updated_at: i64,
            expires_at: i64,
        }
        let key = format!("{}:m:{}", self.tenant_key(tenant), kind.as_str());
        let rows: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(key)).await?;
        let mut members = Vec::new();
        for (id, row) in rows {
            let row: Row = serde_json::from_str(&row).map_err(|e| corrupt("member", e))?;
            if row.expires_at > now.as_millis() {
                members.push(Member {
                    tenant: tenant.clone(),
                    kind,
                    id,
                    node: row.node,
                    doc: row.doc,
                    updated_at: Timestamp::from_millis(row.updated_at),
                    expires_at: Timestamp::from_millis(row.expires_at),
                });
            }
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros> {
        let amount = i64::try_from(amount)
            .map_err(|_| InvalidInput::new("amount", format!("expected at most {}, got {amount}", i64::MAX)))?;
        let key = format!("{}:spend", self.tenant_key(tenant));
        let total: i64 = self.query(redis::cmd("HINCRBY").arg(key).arg(period).arg(amount)).await?;
        u64::try_from(total).map_err(|e| corrupt("spend", e))
    }

    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros> {
        let key = format!("{}:spend", self.tenant_key(tenant));
        let total: Option<i64> = self.query(redis::cmd("HGET").arg(key).arg(period)).await?;
        u64::try_from(total.unwrap_or(0)).map_err(|e| corrupt("spend", e))
    }
}

/// Opens a shared handle, for [`crate::store::open`].
pub(crate) async fn open_shared(url: &str) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(RedisStore::open(url).await?))
}
