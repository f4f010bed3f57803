//! The durable task store: [`Store`], the sum of one trait per concern
//! ([`TaskStore`], [`SessionStore`], [`Registry`], [`Ledger`],
//! [`ClusterChannel`], [`Credentials`]), and its backends, picked from a URL by [`open`], the
//! only place that matches on the backend kind.
//!
//! Every backend keeps the ten rules written on [`TaskStore`]; the
//! conformance suite in `godel-core/tests/it/conformance` proves them for
//! each one. Each backend but memory is a folder with one file per concern;
//! the SQL backends share what they decide from rows in `sql/`. A backend is
//! compiled only with its Cargo feature (`sqlite`, `postgres`, `redis`).

mod cluster;
mod cursor;
mod error;
pub mod faulty;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use crate::store::cluster::{ClusterMessage, Envelope, Member, MemberKind, NodeId};
pub use crate::store::cursor::{Cursor, SortOrder};
pub use crate::store::error::{BoxError, StoreError};
pub use crate::store::memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use crate::store::postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use crate::store::redis::{RedisOptions, RedisStore};
#[cfg(feature = "sqlite")]
pub use crate::store::sqlite::SqliteStore;

use crate::InvalidInput;
use crate::credential::{ApiKey, AuditEntry, AuditQuery, KeyHash};
use crate::ids::{AgentId, KeyId, LeaseToken, SessionId, TaskId, TenantId};
use crate::money::Micros;
use crate::output::{OutputChunk, OutputStream};
use crate::session::{Session, SessionState};
use crate::task::{NewTask, Priority, Task, TaskError, TaskStatus};
use crate::time::Timestamp;

/// The store's traits, to bring every concern's methods into scope at once:
/// `use godel_core::store::prelude::*`.
pub mod prelude {
    pub use crate::store::{ClusterChannel, Credentials, Ledger, Registry, SessionStore, Store, TaskStore};
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store as one value: every concern below, usable as an
/// `Arc<dyn Store>` by the engine and the server. Callers bring the concern
/// they use into scope (`use godel_core::store::TaskStore`), or all of them
/// with `use godel_core::store::prelude::*`.
#[async_trait]
pub trait Store: TaskStore + SessionStore + Registry + Ledger + ClusterChannel + Credentials + Debug {
    /// The backend's name: `memory`, `sqlite`, …
    fn backend(&self) -> &'static str;

    /// A cheap round trip that proves the backend answers (for health probes).
    async fn ping(&self) -> Result<()>;
}

/// The durable task queue: enqueue, claim, the lease holder's writes, and
/// the reads and maintenance around them.
///
/// # The contract
///
/// Every backend keeps these rules; the conformance suite proves each one.
///
/// 1. **Claim is atomic.** Two claimers never get the same task. SQLite: one
///    `UPDATE … WHERE seq IN (SELECT … LIMIT n) RETURNING`; Postgres:
///    `FOR UPDATE SKIP LOCKED`; Redis: a Lua script; memory: one lock.
/// 2. **Order is (priority, run_at, sequence).** All ready `critical` tasks
///    are claimed before any `high`, FIFO within a priority. A task whose
///    `run_at` is in the future is not ready.
/// 3. **Leases are attempt-scoped and fenced.** A claim returns a [`Lease`]
///    bound to (task, attempt). Every later write for that attempt (start,
///    heartbeat, output, complete, fail, release) must present it; a stale
///    lease gets [`StoreError::LeaseLost`] and changes nothing.
/// 4. **Expired leases are reclaimed.** [`TaskStore::reclaim_expired`] makes a
///    task whose lease lapsed ready again (the attempt stays counted) or
///    dead-letters it when its attempts are spent.
/// 5. **Cancel works across processes.** Cancelling a pending task is
///    immediate; cancelling a leased one sets a flag that the holder sees on
///    its next heartbeat, and it then aborts and calls [`TaskStore::confirm_cancel`].
/// 6. **Time is an argument.** Methods that depend on time take `now`; the
///    store never reads the clock.
/// 7. **Idempotency keys are unique per tenant.** Enqueueing twice with one
///    key returns the first task.
/// 8. **Counts are exact.** [`TaskStore::depth`] per priority equals the number
///    of ready tasks of that priority.
/// 9. **Tenants are walls.** Every read and write is scoped to a tenant (the
///    [`Lease`] carries its tenant); no call can see or touch another
///    tenant's rows. The one exception is [`TaskStore::reclaim_expired`], a
///    maintenance sweep that only moves lapsed leases and reports what it moved.
/// 10. **Batches where it pays.** [`TaskStore::enqueue_batch`], [`TaskStore::claim`],
///     [`TaskStore::write_batch`] and [`TaskStore::complete_batch`] take many tasks in
///     one round trip.
///
/// A write presenting an expired lease that nobody has reclaimed yet is still
/// accepted: the token is the fence, and until a reclaim rotates it nobody
/// else can hold the task.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Adds a task. With an idempotency key already used by this tenant, returns
    /// the first task and `created: false` instead. By default, an
    /// [`enqueue_batch`](TaskStore::enqueue_batch) of one.
    async fn enqueue(&self, tenant: &TenantId, task: NewTask, now: Timestamp) -> Result<Enqueued> {
        let out = self.enqueue_batch(tenant, vec![task], now).await?;
        out.into_iter().next().ok_or_else(|| StoreError::Backend {
            backend: "store",
            source: "a batch of one task was enqueued as none".into(),
        })
    }

    /// Adds many tasks atomically (all or none), in order; results line up with the input.
    async fn enqueue_batch(&self, tenant: &TenantId, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>>;

    /// Claims up to `request.limit` ready tasks the claimer is capable of, in
    /// contract order, moving them to `assigned` under fresh leases. By
    /// default, the claims of a [`claim_or_quarantine`](TaskStore::claim_or_quarantine).
    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Claim>> {
        Ok(self.claim_or_quarantine(request, now).await?.claims)
    }

    /// Claims as [`claim`](TaskStore::claim) does, decoding each claimed row
    /// on its own: a row that does not decode is moved to the quarantine
    /// (out of the queue, so it is never claimed again) and reported, and the
    /// other rows are claimed as usual.
    async fn claim_or_quarantine(&self, request: &ClaimRequest, now: Timestamp) -> Result<Claimed>;

    /// Marks an assigned task as running on `agent` (which may differ from the
    /// claimer, e.g. when a dispatcher hands a task to the agent its affinity
    /// key prefers). Reports a pending cancel like a heartbeat.
    async fn start(&self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus>;

    /// Starts and completes many tasks in one round trip, each entry exactly
    /// as [`TaskStore::start`] or [`TaskStore::complete`] would. A stale lease does
    /// not stop the others: its outcome is [`WriteOutcome::LeaseLost`].
    /// Outcomes line up with the input; entries for the same task act one
    /// after the other, in input order.
    async fn write_batch(&self, writes: &[LeaseWrite], now: Timestamp) -> Result<Vec<WriteOutcome>>;

    /// Extends the lease to `now + extend_by` and reports whether a cancel was requested.
    async fn heartbeat(&self, lease: &Lease, extend_by: Duration, now: Timestamp) -> Result<LeaseStatus>;

    /// Appends output chunks to the current attempt's record.
    async fn append_output(&self, lease: &Lease, chunks: &[OutputChunk], now: Timestamp) -> Result<()>;

    /// Completes a task with its result.
    async fn complete(&self, lease: &Lease, result: Value, now: Timestamp) -> Result<()>;

    /// Completes many tasks in one round trip. A stale lease in the batch does
    /// not stop the others; it is reported in [`BatchCompletion::lease_lost`].
    /// Entries for the same task act one after the other, in input order, so
    /// only the first of two identical leases completes.
    ///
    /// By default, a [`write_batch`](TaskStore::write_batch) of the completions.
    async fn complete_batch(&self, completions: &[Completion], now: Timestamp) -> Result<BatchCompletion> {
        let writes: Vec<LeaseWrite> = completions.iter().cloned().map(LeaseWrite::Complete).collect();
        let outcomes = self.write_batch(&writes, now).await?;
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

    /// Fails the current attempt: back to pending after the backoff, dead-letter
    /// when attempts are spent, `failed` when not retryable, `cancelled` when a
    /// cancel was requested.
    async fn fail(&self, lease: &Lease, failure: &Failure, now: Timestamp) -> Result<FailOutcome>;

    /// Gives a task back without counting the attempt (e.g. at shutdown): it
    /// becomes ready again at once, or cancelled if a cancel was requested.
    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<TaskStatus>;

    /// The holder aborted after seeing a cancel request: the task becomes cancelled.
    async fn confirm_cancel(&self, lease: &Lease, now: Timestamp) -> Result<()>;

    /// Cancels a task: at once if pending, by flag if leased. A terminal task
    /// gives [`StoreError::InvalidTransition`].
    async fn cancel(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<CancelOutcome>;

    /// Makes tasks whose lease lapsed at or before `now` ready again, or
    /// dead-letters (or, if cancel was requested, cancels) them. At most `limit` per call.
    async fn reclaim_expired(&self, now: Timestamp, limit: usize) -> Result<Vec<Reclaimed>>;

    /// Puts a dead-lettered, failed or cancelled task back in the queue with a
    /// fresh set of attempts. By default, a [`replay_if`](TaskStore::replay_if)
    /// from any of the [`REPLAYABLE`] statuses.
    async fn replay(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<Task> {
        self.replay_if(tenant, id, &REPLAYABLE, now).await
    }

    /// Replays a task only if its status is one of `only_from` (a non-empty
    /// subset of [`REPLAYABLE`]), checked and changed atomically: a task in
    /// another status gives [`StoreError::InvalidTransition`] and is left as
    /// it was. E.g. replaying a dead letter with `&[TaskStatus::DeadLetter]`
    /// cannot revive a task that someone cancelled or purged meanwhile.
    async fn replay_if(&self, tenant: &TenantId, id: TaskId, only_from: &[TaskStatus], now: Timestamp) -> Result<Task>;

    /// Replays every dead-lettered task matching `filter` (its `statuses` must be
    /// empty or exactly `[dead_letter]`). Returns how many were replayed.
    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64>;

    /// Deletes a terminal task and its output. Non-terminal tasks give
    /// [`StoreError::InvalidTransition`].
    async fn purge(&self, tenant: &TenantId, id: TaskId) -> Result<()>;

    /// Deletes terminal tasks matching `filter` (its `statuses` must all be
    /// terminal; empty means every terminal status) that finished before
    /// `finished_before`. Returns how many were deleted.
    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64>;

    /// One task.
    async fn get(&self, tenant: &TenantId, id: TaskId) -> Result<Task>;

    /// A page of tasks in submission order (or its reverse).
    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>>;

    /// A task's recorded output, oldest first, across attempts.
    async fn output(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<OutputRecord>>;

    /// Every change of a task's status, attempt or cancel flag, oldest first;
    /// written atomically with the change itself.
    async fn history(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<HistoryEntry>>;

    /// Ready tasks per priority.
    async fn depth(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueDepth>;

    /// Counts for health reports.
    async fn counts(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueCounts>;

    /// A page of the tenant's quarantined rows, in the order their tasks were submitted.
    async fn quarantined(&self, tenant: &TenantId, query: &QuarantineQuery) -> Result<Page<Quarantined>>;

    /// One quarantined row; [`StoreError::NotFound`] if there is none.
    async fn get_quarantined(&self, tenant: &TenantId, id: TaskId) -> Result<Quarantined>;

    /// Deletes one quarantined row; [`StoreError::NotFound`] if there is none.
    async fn drop_quarantined(&self, tenant: &TenantId, id: TaskId) -> Result<()>;

    /// Deletes every quarantined row of the tenant and returns how many went.
    async fn purge_quarantined(&self, tenant: &TenantId) -> Result<u64>;
}

/// Where sessions are recorded.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Inserts or updates sessions, in order, in one round trip. The caller
    /// (the engine) has already checked each state change against the
    /// lifecycle table; the store keeps the latest state.
    async fn save_sessions(&self, sessions: &[Session]) -> Result<()>;

    /// One session.
    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session>;

    /// Sessions matching `query`, newest first.
    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>>;

    /// Ends every live session of `agents` in state `error` with the reason `why`
    /// (e.g. after an engine restart, whose sessions died with it). Returns how many.
    async fn abandon_sessions(&self, tenant: &TenantId, agents: &[AgentId], why: &str, now: Timestamp) -> Result<u64>;
}

/// The registry every node sharing the store can read: agents, gateway
/// instances and gateways, each row alive until it expires (see [`Member`]).
#[async_trait]
pub trait Registry: Send + Sync {
    /// Announces a registry row, replacing the one with its (tenant, kind, id).
    async fn put_member(&self, member: &Member) -> Result<()>;

    /// Removes a registry row; false if there was none.
    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool>;

    /// The registry rows of `kind` not expired at `now`, by id.
    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>>;
}

/// Spend per tenant and period, added atomically so that budgets hold across nodes.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Adds `amount` to the tenant's spend in `period` (e.g. `2026-11`) and
    /// returns the new total, atomically, so budgets hold across nodes.
    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros>;

    /// The tenant's spend in `period`; 0 if nothing was spent.
    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros>;
}

/// The notices nodes sharing the store send each other (see
/// [`ClusterMessage`]). A backend without a channel keeps the defaults.
#[async_trait]
pub trait ClusterChannel: Send + Sync {
    /// Messages from the other nodes sharing this store (never this handle's
    /// own), for as long as the receiver lives. `None` when the backend has no
    /// channel (memory, SQLite) or runs poll-only. A receiver that lags loses
    /// messages: that costs latency, never correctness.
    fn cluster_messages(&self) -> Option<tokio::sync::broadcast::Receiver<ClusterMessage>> {
        None
    }

    /// Sends `message` to the other nodes sharing this store; nothing without a channel.
    async fn broadcast(&self, message: &ClusterMessage) -> Result<()> {
        let _ = message;
        Ok(())
    }
}

/// API keys and the audit log: what the server authenticates requests with
/// and where it records what they did.
///
/// Keys are looked up by hash across tenants (authentication comes before
/// the tenant is known); everything else names a key by id. The audit log is
/// append-only: entries are numbered by the store in the order they were
/// appended, listed newest first, and leave only through
/// [`Credentials::prune_audit`].
#[async_trait]
pub trait Credentials: Send + Sync {
    /// Stores a new key. [`StoreError::Conflict`] if its id or hash is taken.
    async fn create_key(&self, key: &ApiKey) -> Result<()>;

    /// The key with this hash, of any tenant; `None` if there is none.
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>>;

    /// One key; [`StoreError::KeyNotFound`] if there is none.
    async fn get_key(&self, id: &KeyId) -> Result<ApiKey>;

    /// The keys of `tenant` (of every tenant with `None`), newest first.
    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>>;

    /// Revokes a key at `now` and returns it. Revoking again changes nothing:
    /// the first `revoked_at` stays.
    async fn revoke_key(&self, id: &KeyId, now: Timestamp) -> Result<ApiKey>;

    /// Makes a key expire at `at` unless it already expires earlier (a
    /// rotation's grace period), and returns it.
    async fn expire_key(&self, id: &KeyId, at: Timestamp) -> Result<ApiKey>;

    /// Records when keys were last used; a time earlier than the one stored is
    /// ignored, as is a key that no longer exists.
    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()>;

    /// Whether any key exists at all, revoked and expired ones included.
    async fn has_keys(&self) -> Result<bool>;

    /// Appends entries in order; each one's `seq` is ignored and assigned.
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()>;

    /// A page of entries matching `query`, newest first. An entry appended
    /// while a reader pages through comes before every cursor, so paging
    /// neither skips nor repeats an entry.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>>;

    /// Deletes up to `limit` entries made before `before`, oldest first, and
    /// returns how many went.
    async fn prune_audit(&self, before: Timestamp, limit: usize) -> Result<u64>;
}

/// Which sessions [`SessionStore::list_sessions`] returns. Empty and `None` match everything.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionQuery {
    /// Any of these states.
    pub states: Vec<SessionState>,
    /// On this agent.
    pub agent: Option<AgentId>,
    /// Running this task.
    pub task: Option<TaskId>,
    /// At most this many, 1 to [`MAX_PAGE_SIZE`].
    pub limit: usize,
}

impl Default for SessionQuery {
    fn default() -> Self {
        Self { states: Vec::new(), agent: None, task: None, limit: 20 }
    }
}

impl SessionQuery {
    /// True if `session` matches.
    pub fn matches(&self, session: &Session) -> bool {
        (self.states.is_empty() || self.states.contains(&session.state))
            && self.agent.as_ref().is_none_or(|a| session.agent == *a)
            && self.task.is_none_or(|t| session.task == Some(t))
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidInput> {
        if !(1..=MAX_PAGE_SIZE).contains(&self.limit) {
            return Err(InvalidInput::new("limit", format!("expected 1 to {MAX_PAGE_SIZE}, got {}", self.limit)));
        }
        Ok(())
    }
}

/// Opens the store a URL names: `memory://`, `sqlite://path/to/file.db`
/// (relative), `sqlite:///abs/path.db`,
/// `postgres://user@host/db?schema=godel&max_connections=10` (also
/// `postgresql://`; Godel's query parameters are listed on
/// `PostgresStore::open` and in docs/store.md), or
/// `redis://[user:password@]host[:port][/db][?prefix=godel&pool_size=8&timeout=5s]`
/// (see `RedisOptions::parse`; `rediss://` for TLS). PostgreSQL's `sslmode`
/// is honoured, with rustls. The only place that matches on the backend
/// kind. A URL for a backend this build left out is an error naming its
/// Cargo feature.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    #[cfg_attr(not(feature = "sqlite"), allow(unused_variables))]
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        InvalidInput::new("store url", format!("expected scheme://…, e.g. sqlite://.godel/godel.db; got {url:?}"))
    })?;
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(InvalidInput::new(
                    "store url",
                    "sqlite:// needs a file path, e.g. sqlite://.godel/godel.db",
                )
                .into());
            }
            Ok(Arc::new(SqliteStore::open(std::path::Path::new(path)).await?))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(PostgresStore::open(url).await?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => crate::store::redis::open_shared(url).await,
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(left_out("sqlite", "sqlite")),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(left_out(scheme, "postgres")),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(left_out(scheme, "redis")),
        other => Err(InvalidInput::new(
            "store url",
            format!("unsupported backend {other:?} (expected memory://, sqlite://, postgres:// or redis://)"),
        )
        .into()),
    }
}

/// The error for a URL whose backend this build was compiled without.
#[cfg(not(all(feature = "sqlite", feature = "postgres", feature = "redis")))]
fn left_out(scheme: &str, feature: &str) -> StoreError {
    InvalidInput::new(
        "store url",
        format!("{scheme}:// needs godel-core's `{feature}` feature, which this build was compiled without"),
    )
    .into()
}

/// What [`TaskStore::enqueue`] returns.
#[derive(Clone, PartialEq, Debug)]
pub struct Enqueued {
    /// The task, as stored.
    pub task: Task,
    /// False when an idempotency key matched an existing task, which is returned instead.
    pub created: bool,
}

/// Who is claiming, what it can do, and how much it wants.
#[derive(Clone, PartialEq, Debug)]
pub struct ClaimRequest {
    /// Only this tenant's tasks are considered.
    pub tenant: TenantId,
    /// Recorded on the claimed tasks.
    pub agent: AgentId,
    /// Only tasks whose required capabilities are a subset of these are claimed.
    pub capabilities: Vec<String>,
    /// At most this many tasks.
    pub limit: usize,
    /// The lease lasts this long unless renewed.
    pub lease_for: Duration,
}

/// Proof that the holder owns one attempt of one task.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Lease {
    /// The task's owner.
    pub tenant: TenantId,
    /// The task.
    pub task: TaskId,
    /// The attempt this lease is for.
    pub attempt: u32,
    /// The secret.
    pub token: LeaseToken,
}

/// What [`TaskStore::claim_or_quarantine`] did.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Claimed {
    /// The tasks claimed, in contract order.
    pub claims: Vec<Claim>,
    /// Rows the claim picked that did not decode, now quarantined.
    pub quarantined: Vec<Quarantined>,
}

/// A task row that did not decode (something other than Godel wrote to the
/// database), moved out of the queue with the reason. It is never claimed,
/// listed as a task or counted as one again; an operator reads it and drops it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Quarantined {
    /// The task's id as stored.
    pub id: String,
    /// Why the row did not decode.
    pub error: String,
    /// The row as stored, a JSON object of its columns (SQL) or hash fields
    /// (Redis), each as the backend held it.
    pub raw: String,
}

/// A listing of quarantined rows.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct QuarantineQuery {
    /// Page size, 1 to [`MAX_PAGE_SIZE`].
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

impl Default for QuarantineQuery {
    fn default() -> Self {
        Self { limit: 20, cursor: None }
    }
}

impl QuarantineQuery {
    /// Checks the limit and the cursor, and returns the sequence number the page starts after.
    pub(crate) fn validate(&self) -> Result<Option<i64>, InvalidInput> {
        TaskQuery { limit: self.limit, cursor: self.cursor.clone(), ..TaskQuery::default() }.validate()
    }
}

/// The page quarantined rows make, from up to `limit + 1` rows with their
/// sequence numbers, the extra one telling that another page follows.
pub(crate) fn quarantine_page(mut rows: Vec<(i64, Quarantined)>, limit: usize) -> Page<Quarantined> {
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        Cursor::after(SortOrder::Ascending, rows.last().expect("non-empty").0)
    });
    Page { items: rows.into_iter().map(|(_, q)| q).collect(), next_cursor, quarantined: Vec::new() }
}

/// A claimed task and the lease that goes with it.
#[derive(Clone, PartialEq, Debug)]
pub struct Claim {
    /// Present this on every write for the attempt.
    pub lease: Lease,
    /// The task as claimed (status `assigned`).
    pub task: Task,
}

/// What a heartbeat or start reports to the lease holder.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LeaseStatus {
    /// When the lease now lapses.
    pub expires_at: Timestamp,
    /// A user asked to cancel: abort and call [`TaskStore::confirm_cancel`].
    pub cancel_requested: bool,
}

/// Recorded output, as read back.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutputRecord {
    /// The attempt that produced it.
    pub attempt: u32,
    /// Where it came from.
    pub stream: OutputStream,
    /// The text.
    pub data: String,
    /// When it was recorded.
    pub at: Timestamp,
}

/// One change in a task's life, as [`TaskStore::history`] returns it: the task's
/// state right after the change.
#[derive(Clone, PartialEq, Debug)]
pub struct HistoryEntry {
    /// When it happened.
    pub at: Timestamp,
    /// The attempt number after the change.
    pub attempt: u32,
    /// The status after the change.
    pub status: TaskStatus,
    /// The agent holding or last holding the task.
    pub agent: Option<AgentId>,
    /// The task's latest error at that point.
    pub error: Option<TaskError>,
    /// Whether a cancel had been requested.
    pub cancel_requested: bool,
}

impl HistoryEntry {
    fn of(task: &Task) -> Self {
        Self {
            at: task.updated_at,
            attempt: task.attempt,
            status: task.status,
            agent: task.agent.clone(),
            error: task.error.clone(),
            cancel_requested: task.cancel_requested,
        }
    }

    fn same_state(&self, task: &Task) -> bool {
        self.status == task.status && self.attempt == task.attempt && self.cancel_requested == task.cancel_requested
    }
}

/// A lease holder's write, as [`TaskStore::write_batch`] takes it.
#[derive(Clone, PartialEq, Debug)]
pub enum LeaseWrite {
    /// [`TaskStore::start`] on this agent (which may differ from the claimer).
    Start {
        /// The lease for the attempt.
        lease: Lease,
        /// The agent that runs it.
        agent: AgentId,
    },
    /// [`TaskStore::complete`] with this result.
    Complete(Completion),
}

/// What [`TaskStore::write_batch`] did with one entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteOutcome {
    /// The task is running. A start does not move the lease's expiry, so
    /// only the cancel flag is reported: when set, abort and call
    /// [`TaskStore::confirm_cancel`], as after a [`TaskStore::start`] that reports it.
    Started {
        /// A user asked to cancel.
        cancel_requested: bool,
    },
    /// The task is completed.
    Completed,
    /// The lease was stale; nothing changed.
    LeaseLost,
}

/// One entry of [`TaskStore::complete_batch`].
#[derive(Clone, PartialEq, Debug)]
pub struct Completion {
    /// The lease for the attempt.
    pub lease: Lease,
    /// The result to record.
    pub result: Value,
}

/// What [`TaskStore::complete_batch`] did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct BatchCompletion {
    /// Tasks now completed.
    pub completed: Vec<TaskId>,
    /// Tasks whose lease was stale; they were not changed.
    pub lease_lost: Vec<TaskId>,
}

/// Whether a failed attempt may be retried.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Retry {
    /// Retry after this delay if attempts remain (dead-letter otherwise).
    After(Duration),
    /// Do not retry: the task becomes `failed`.
    Never,
}

/// A failed attempt.
#[derive(Clone, PartialEq, Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: TaskError,
    /// Whether and when to retry.
    pub retry: Retry,
}

/// Where [`TaskStore::fail`] left the task.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FailOutcome {
    /// Pending again, claimable from `run_at`.
    Retrying {
        /// When it becomes ready.
        run_at: Timestamp,
    },
    /// Out of attempts.
    DeadLettered,
    /// Not retryable.
    Failed,
    /// A cancel was requested while it ran.
    Cancelled,
}

/// What [`TaskStore::cancel`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CancelOutcome {
    /// It was pending and is now cancelled.
    Cancelled,
    /// It is leased; the holder will see the request on its next heartbeat.
    Requested,
}

/// A task moved by [`TaskStore::reclaim_expired`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reclaimed {
    /// Its tenant.
    pub tenant: TenantId,
    /// The task.
    pub task: TaskId,
    /// Its priority.
    pub priority: Priority,
    /// The attempt whose lease lapsed.
    pub attempt: u32,
    /// Where it went: `pending`, `dead_letter` or `cancelled`.
    pub status: TaskStatus,
}

/// Filters shared by listing, bulk replay and purge. Empty vectors and `None`s match everything.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TaskFilter {
    /// Any of these statuses.
    pub statuses: Vec<TaskStatus>,
    /// Any of these priorities.
    pub priorities: Vec<Priority>,
    /// Held or last held by this agent.
    pub agent: Option<AgentId>,
    /// Children of this task.
    pub parent: Option<TaskId>,
    /// Created at or after.
    pub created_after: Option<Timestamp>,
    /// Created strictly before.
    pub created_before: Option<Timestamp>,
}

impl TaskFilter {
    /// True if `task` matches.
    pub fn matches(&self, task: &Task) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&task.status))
            && (self.priorities.is_empty() || self.priorities.contains(&task.priority))
            && self.agent.as_ref().is_none_or(|a| task.agent.as_ref() == Some(a))
            && self.parent.is_none_or(|p| task.parent == Some(p))
            && self.created_after.is_none_or(|t| task.created_at >= t)
            && self.created_before.is_none_or(|t| task.created_at < t)
    }

    /// The filter with its statuses forced to `[dead_letter]`, or an error if it asked for others.
    pub(crate) fn for_dead_letters(&self) -> Result<TaskFilter, InvalidInput> {
        if self.statuses.iter().any(|s| *s != TaskStatus::DeadLetter) {
            return Err(InvalidInput::new("status", "bulk replay only takes dead-lettered tasks"));
        }
        Ok(TaskFilter { statuses: vec![TaskStatus::DeadLetter], ..self.clone() })
    }

    /// The filter with its statuses limited to terminal ones, or an error if it asked for others.
    pub(crate) fn for_purge(&self) -> Result<TaskFilter, InvalidInput> {
        if let Some(s) = self.statuses.iter().find(|s| !s.is_terminal()) {
            return Err(InvalidInput::new("status", format!("only terminal tasks can be purged, not {s}")));
        }
        let statuses = if self.statuses.is_empty() { TaskStatus::TERMINAL.to_vec() } else { self.statuses.clone() };
        Ok(TaskFilter { statuses, ..self.clone() })
    }
}

/// Checks (and normalizes) every task of a batch before any is written, so
/// that a bad one leaves nothing behind.
pub(crate) fn validate_batch(tasks: &mut [NewTask]) -> Result<(), InvalidInput> {
    tasks.iter_mut().try_for_each(NewTask::validate)
}

/// Most tasks one page may hold.
pub const MAX_PAGE_SIZE: usize = 1_000;

/// A listing request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TaskQuery {
    /// Which tasks.
    pub filter: TaskFilter,
    /// Oldest or newest first.
    pub order: SortOrder,
    /// Page size, 1 to [`MAX_PAGE_SIZE`].
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

impl Default for TaskQuery {
    fn default() -> Self {
        Self { filter: TaskFilter::default(), order: SortOrder::Ascending, limit: 20, cursor: None }
    }
}

impl TaskQuery {
    /// Checks the limit and the cursor, and returns the sequence number the page starts after.
    pub(crate) fn validate(&self) -> Result<Option<i64>, InvalidInput> {
        if !(1..=MAX_PAGE_SIZE).contains(&self.limit) {
            return Err(InvalidInput::new("limit", format!("expected 1 to {MAX_PAGE_SIZE}, got {}", self.limit)));
        }
        self.cursor.as_ref().map(|c| c.position(self.order)).transpose()
    }
}

/// One page of a listing.
#[derive(Clone, PartialEq, Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass this to get the next page; `None` on the last one.
    pub next_cursor: Option<Cursor>,
    /// Rows of this page's range that did not decode: moved to the
    /// quarantine instead of being listed (task listings only).
    pub quarantined: Vec<Quarantined>,
}

/// The statuses a task can be replayed from: the finished ones but `completed`.
pub const REPLAYABLE: [TaskStatus; 3] = [TaskStatus::DeadLetter, TaskStatus::Failed, TaskStatus::Cancelled];

/// Checks the statuses a [`TaskStore::replay_if`] allows (a non-empty subset
/// of [`REPLAYABLE`]) and returns their names.
pub(crate) fn replay_from(only_from: &[TaskStatus]) -> Result<Vec<&'static str>, InvalidInput> {
    if only_from.is_empty() {
        return Err(InvalidInput::new("only_from", "expected at least one status to replay from"));
    }
    if let Some(s) = only_from.iter().find(|s| !REPLAYABLE.contains(s)) {
        return Err(InvalidInput::new(
            "only_from",
            format!("a {s} task cannot be replayed (only dead_letter, failed or cancelled)"),
        ));
    }
    Ok(only_from.iter().map(|s| s.as_str()).collect())
}

/// Checks an audit listing's limit and cursor, and returns the sequence number
/// its page starts below (entries are listed newest first).
pub(crate) fn audit_start(query: &AuditQuery) -> Result<Option<i64>, InvalidInput> {
    query.validate()?;
    query.cursor.as_deref().map(|c| c.parse::<Cursor>()?.position(SortOrder::Descending)).transpose()
}

/// The page an audit listing's rows make: up to `limit + 1` entries newest
/// first, the extra one telling that another page follows.
pub(crate) fn audit_page(mut rows: Vec<AuditEntry>, limit: usize) -> Page<AuditEntry> {
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        let last = rows.last().expect("non-empty").seq;
        Cursor::after(SortOrder::Descending, i64::try_from(last).unwrap_or(i64::MAX))
    });
    Page { items: rows, next_cursor, quarantined: Vec::new() }
}

/// Ready tasks per priority.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct QueueDepth([u64; 4]);

impl QueueDepth {
    /// Ready tasks of priority `p`.
    pub fn get(&self, p: Priority) -> u64 {
        self.0[usize::from(p.rank())]
    }

    /// Ready tasks in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn add(&mut self, p: Priority, n: u64) {
        self.0[usize::from(p.rank())] += n;
    }
}

impl std::fmt::Display for QueueDepth {
    /// `critical=1 high=2 medium=0 low=5`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = Priority::ALL.iter().map(|p| format!("{p}={}", self.get(*p))).collect();
        f.write_str(&parts.join(" "))
    }
}

/// Counts for health reports.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct QueueCounts {
    by_status: [u64; 7],
    /// Pending and ready now.
    pub ready: u64,
    /// Pending with a `run_at` still in the future (scheduled or backing off).
    pub scheduled: u64,
    /// Leased tasks whose lease has lapsed but that nobody has reclaimed yet.
    pub expired_leases: u64,
    /// The earliest `run_at` among ready tasks: how long the queue's head has waited.
    pub oldest_ready: Option<Timestamp>,
    /// Rows moved to the quarantine because they did not decode (not counted in any status).
    pub quarantined: u64,
}

impl QueueCounts {
    /// Tasks in status `s`.
    pub fn status(&self, s: TaskStatus) -> u64 {
        self.by_status[s.index()]
    }

    pub(crate) fn add_status(&mut self, s: TaskStatus, n: u64) {
        self.by_status[s.index()] += n;
    }
}

#[cfg(test)]
mod tests {
    /// The server opens stores inside spawned tasks.
    #[test]
    fn opening_is_send() {
        fn send<T: Send + 'static>(_: T) {}
        send(async { crate::store::open("memory://").await });
        #[cfg(feature = "sqlite")]
        send(async { crate::store::SqliteStore::open(std::path::Path::new("never-opened.db")).await });
        #[cfg(feature = "postgres")]
        send(async { crate::store::PostgresStore::open("postgres://127.0.0.1:1/none").await });
    }
}
