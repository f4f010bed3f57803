//! `store-bench`: throughput and latency of the task store backends, measured
//! through the `Store` trait exactly as the engine will call it.
//!
//! For each backend it times five workloads on a fresh store: enqueue one task
//! per call, enqueue in batches, claim-then-complete one task at a time,
//! claim-then-complete in batches, and the latency from enqueueing a task on an
//! empty queue to having claimed it. Every call gets `Timestamp::now()` as its
//! `now`, as the engine's clock would give it. Each workload also checks that
//! the store did what was asked (every task claimed once, no lease lost, the
//! queue empty at the end), so a broken store cannot post a fast figure.
//! The speed targets live here, not in timed tests (see the style guide).
//!
//! Backends with a cluster channel (Redis, PostgreSQL) also get a sixth measurement: the
//! latency from enqueueing on one handle to the `Wake` arriving on another
//! handle of the same store, as a second node would see it.

// This binary is a report tool: its output is the table it prints.
#![allow(clippy::print_stdout)]

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use argh::FromArgs;
use godel_benches::{percentile, rand_u64, short, thousands};
use godel_core::store::TaskStore;
use godel_core::store::{
    ClaimRequest, ClusterMessage, Completion, MemoryStore, PostgresStore, RedisStore, SqliteStore, TaskFilter,
};
use godel_core::{AgentId, NewTask, Store, TenantId, Timestamp};
use serde_json::json;
use sqlx::Connection;
use tempfile::TempDir;

/// Batched claim-then-complete throughput the memory store must reach (tasks/s).
const MEMORY_TARGET: f64 = 200_000.0;
/// Batched claim-then-complete throughput the SQLite store must reach (tasks/s).
const SQLITE_TARGET: f64 = 20_000.0;
/// Batched claim-then-complete throughput the Redis store must reach (tasks/s).
const REDIS_TARGET: f64 = 22_000.0;
/// Cross-node wake-up p99 the Redis store must stay under.
const REDIS_WAKE_P99_TARGET: Duration = Duration::from_millis(10);

/// Batched claim-then-complete throughput the PostgreSQL store must reach (tasks/s).
const POSTGRES_TARGET: f64 = 40_000.0;
/// Cross-node wake-up p99 the PostgreSQL store must stay under.
const POSTGRES_WAKE_P99_TARGET: Duration = Duration::from_millis(10);

/// The PostgreSQL server to measure: `--postgres-url`, `GODEL_TEST_POSTGRES_URL`, or the local default.
static POSTGRES_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The Redis server to measure: `--redis-url`, `GODEL_TEST_REDIS_URL`, or the local default.
static REDIS_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Latency samples thrown away before measuring, so connection and cache warm-up do not count.
const LATENCY_WARMUP: usize = 100;

/// Measure the task store backends: enqueue and claim-then-complete throughput, and enqueue-to-claim latency.
#[derive(FromArgs, Debug)]
struct Args {
    /// which backend to measure: memory, sqlite, redis or all (default all)
    #[argh(option, default = "BackendChoice::All")]
    backend: BackendChoice,
    /// tasks per throughput workload (default 100000 for memory, 50000 for sqlite)
    #[argh(option)]
    tasks: Option<usize>,
    /// tasks per enqueue_batch, claim and complete_batch call in the batched workloads (default 100)
    #[argh(option, default = "100")]
    batch: usize,
    /// enqueue-to-claim latency samples (default 2000)
    #[argh(option, default = "2000")]
    samples: usize,
    /// the Redis server for the redis backend (default GODEL_TEST_REDIS_URL or redis://127.0.0.1:6379);
    /// each workload uses a fresh key prefix
    #[argh(option)]
    redis_url: Option<String>,
    /// the PostgreSQL server for the postgres backend (default GODEL_TEST_POSTGRES_URL or
    /// postgres://postgres@127.0.0.1:5432/test); each workload uses a fresh schema, dropped afterwards
    #[argh(option)]
    postgres_url: Option<String>,
}

/// The `--backend` flag.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BackendChoice {
    Memory,
    Sqlite,
    Redis,
    Postgres,
    All,
}

/// One backend to measure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Memory,
    Sqlite,
    Redis,
    Postgres,
}

/// A fresh store, and for SQLite the temporary directory its file lives in.
// One fixture lives per run, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Fixture {
    Memory(MemoryStore),
    Sqlite {
        store: SqliteStore,
        _dir: TempDir,
    },
    /// A store on a fresh key prefix, and a second handle on it (another node).
    Redis {
        store: Box<RedisStore>,
        peer: Box<RedisStore>,
    },
    /// A store on a fresh schema, a second handle on it (another node), and
    /// the schema's name, dropped at the end.
    Postgres {
        store: PostgresStore,
        peer: PostgresStore,
        schema: String,
    },
}

/// What one throughput workload measured.
#[derive(Debug)]
struct Throughput {
    tasks: usize,
    elapsed: Duration,
}

/// What the latency workload measured.
#[derive(Debug)]
struct Latency {
    samples: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Latency {
    fn of(mut timings: Vec<Duration>) -> Self {
        timings.sort_unstable();
        Self {
            samples: timings.len(),
            p50: percentile(&timings, 0.50),
            p99: percentile(&timings, 0.99),
            max: *timings.last().expect("at least one sample"),
        }
    }
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(Self::Memory),
            "sqlite" => Ok(Self::Sqlite),
            "redis" => Ok(Self::Redis),
            "postgres" => Ok(Self::Postgres),
            "all" => Ok(Self::All),
            _ => Err(format!("expected memory, sqlite, redis, postgres or all; got {s:?}")),
        }
    }
}

impl Backend {
    fn default_tasks(self) -> usize {
        match self {
            Backend::Memory => 100_000,
            Backend::Sqlite => 50_000,
            Backend::Redis => 50_000,
            Backend::Postgres => 50_000,
        }
    }

    fn target(self) -> f64 {
        match self {
            Backend::Memory => MEMORY_TARGET,
            Backend::Sqlite => SQLITE_TARGET,
            Backend::Redis => REDIS_TARGET,
            Backend::Postgres => POSTGRES_TARGET,
        }
    }

    /// Opens an empty store; SQLite gets a new file in a new temporary directory.
    async fn open(self) -> anyhow::Result<Fixture> {
        match self {
            Backend::Memory => Ok(Fixture::Memory(MemoryStore::new())),
            Backend::Sqlite => {
                let dir = tempfile::Builder::new().prefix("godel-store-bench").tempdir()?;
                let store = SqliteStore::open(&dir.path().join("bench.db")).await?;
                Ok(Fixture::Sqlite { store, _dir: dir })
            }
            Backend::Redis => {
                let base = REDIS_URL.get().context("redis url not set")?;
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}prefix=godel-bench-{:016x}", rand_u64());
                let store = RedisStore::open(&url).await.with_context(|| format!("opening {base}"))?;
                let peer = RedisStore::open(&url).await?;
                Ok(Fixture::Redis { store: Box::new(store), peer: Box::new(peer) })
            }
            Backend::Postgres => {
                let base = POSTGRES_URL.get().context("postgres url not set")?;
                let sep = if base.contains('?') { '&' } else { '?' };
                let schema = format!("godel_bench_{:016x}", rand_u64());
                let url = format!("{base}{sep}schema={schema}");
                let store = PostgresStore::open(&url).await.with_context(|| format!("opening {base}"))?;
                let peer = PostgresStore::open(&url).await?;
                Ok(Fixture::Postgres { store, peer, schema })
            }
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Redis => "redis",
            Backend::Postgres => "postgres",
        })
    }
}

impl Fixture {
    fn store(&self) -> &dyn Store {
        match self {
            Fixture::Memory(store) => store,
            Fixture::Sqlite { store, .. } => store,
            Fixture::Redis { store, .. } => &**store,
            Fixture::Postgres { store, .. } => store,
        }
    }

    /// A second handle on the same store, as another node would open it.
    fn peer(&self) -> Option<&dyn Store> {
        match self {
            Fixture::Redis { peer, .. } => Some(&**peer),
            Fixture::Postgres { peer, .. } => Some(peer),
            Fixture::Memory(_) | Fixture::Sqlite { .. } => None,
        }
    }

    /// Checks that nothing is left in the queue, then closes the store.
    async fn finish(self) -> anyhow::Result<()> {
        let counts = self.store().counts(&tenant(), Timestamp::now()).await?;
        ensure!(counts.ready == 0 && counts.scheduled == 0, "tasks left in the queue: {counts:?}");
        if let Fixture::Sqlite { store, .. } = &self {
            store.close().await;
        }
        if let Fixture::Redis { store, .. } = &self {
            // The server outlives the run: leave (almost) nothing behind.
            store.purge_finished(&tenant(), &TaskFilter::default(), Timestamp::from_millis(i64::MAX)).await?;
        }
        if let Fixture::Postgres { store, peer, schema } = &self {
            store.close().await;
            peer.close().await;
            let base = POSTGRES_URL.get().context("postgres url not set")?;
            let base = base.split('?').next().unwrap_or(base);
            let mut conn = sqlx::PgConnection::connect(base).await?;
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await?;
        }
        Ok(())
    }
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Args = argh::from_env();
    // One sequential caller: a current-thread runtime measures the store, not
    // cross-thread wake-ups in the executor. SQLite's connections still run on
    // sqlx's own worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(&args))
}

async fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(args.batch >= 1, "invalid --batch: expected at least 1, got 0");
    ensure!(args.samples >= 1, "invalid --samples: expected at least 1, got 0");
    ensure!(args.tasks != Some(0), "invalid --tasks: expected at least 1, got 0");
    let backends: &[Backend] = match args.backend {
        BackendChoice::Memory => &[Backend::Memory],
        BackendChoice::Sqlite => &[Backend::Sqlite],
        BackendChoice::Redis => &[Backend::Redis],
        BackendChoice::Postgres => &[Backend::Postgres],
        BackendChoice::All => &[Backend::Memory, Backend::Sqlite, Backend::Redis, Backend::Postgres],
    };
    let postgres_url = args.postgres_url.clone().unwrap_or_else(|| {
        std::env::var("GODEL_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    });
    POSTGRES_URL.get_or_init(|| postgres_url);
    let redis_url = args.redis_url.clone().unwrap_or_else(|| {
        std::env::var("GODEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    });
    REDIS_URL.get_or_init(|| redis_url);
    println!(
        "store-bench: batch {}, {} latency samples, {} CPUs, tokio current-thread runtime",
        args.batch,
        args.samples,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for &backend in backends {
        bench_backend(backend, args).await.with_context(|| format!("benchmarking the {backend} store"))?;
    }
    Ok(())
}

async fn bench_backend(backend: Backend, args: &Args) -> anyhow::Result<()> {
    let tasks = args.tasks.unwrap_or_else(|| backend.default_tasks());
    let batch = args.batch;
    println!();
    let settings = match backend {
        Backend::Memory => "",
        Backend::Sqlite => " (WAL, synchronous=NORMAL, one writer connection)",
        Backend::Redis => " (one Lua script per call, EVALSHA over a pooled multiplexed connection)",
        Backend::Postgres => " (a transaction per call: BEGIN with the tenant setting, one statement, COMMIT)",
    };
    println!("{backend}{settings}: {tasks} tasks per throughput workload");
    println!("  {:<34} {:>9} {:>9} {:>13}  target", "workload", "tasks", "seconds", "tasks/s");

    let single = enqueue_single(backend, tasks).await.context("enqueue single")?;
    print_throughput("enqueue single", &single, None);
    let batched = enqueue_batched(backend, tasks, batch).await.context("enqueue batched")?;
    print_throughput(&format!("enqueue batched ({batch})"), &batched, None);
    let single = claim_complete(backend, tasks, 1).await.context("claim-then-complete single")?;
    print_throughput("claim+complete single", &single, None);
    let batched = claim_complete(backend, tasks, batch).await.context("claim-then-complete batched")?;
    print_throughput(&format!("claim+complete batched ({batch})"), &batched, Some(backend.target()));

    let latency = enqueue_to_claim(backend, args.samples).await.context("enqueue-to-claim latency")?;
    println!(
        "  {:<34} {:>9}  p50 {} / p99 {} / max {}",
        "enqueue-to-claim latency",
        latency.samples,
        short(latency.p50),
        short(latency.p99),
        short(latency.max)
    );
    let wake_target = match backend {
        Backend::Redis => Some(REDIS_WAKE_P99_TARGET),
        Backend::Postgres => Some(POSTGRES_WAKE_P99_TARGET),
        Backend::Memory | Backend::Sqlite => None,
    };
    if let Some(target) = wake_target {
        let wake = wake_latency(backend, args.samples).await.context("cross-node wake latency")?;
        let verdict = if wake.p99 < target { "met" } else { "MISSED" };
        println!(
            "  {:<34} {:>9}  p50 {} / p99 {} / max {}  p99 < {} {verdict}",
            "enqueue-to-wake on another node",
            wake.samples,
            short(wake.p50),
            short(wake.p99),
            short(wake.max),
            short(target)
        );
    }
    Ok(())
}

/// Enqueues one task on one handle and times until the other handle (a
/// second node on the same store) receives the `Wake`; claims and completes
/// the task untimed so that the queue is empty again.
async fn wake_latency(backend: Backend, samples: usize) -> anyhow::Result<Latency> {
    let fixture = backend.open().await?;
    let (store, peer) = (fixture.store(), fixture.peer().with_context(|| format!("{backend} has no second node"))?);
    let mut woken = peer.cluster_messages().context("no cluster channel")?;
    let tenant = tenant();
    let request = claim_request(1)?;
    let mut timings = Vec::with_capacity(samples);
    for i in 0..LATENCY_WARMUP + samples {
        let start = Instant::now();
        store.enqueue(&tenant, new_task(i), Timestamp::now()).await?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), woken.recv())
                .await
                .context("no wake within 5 s")?
                .context("the cluster channel closed or lagged")?;
            if message == (ClusterMessage::Wake { tenant: tenant.clone() }) {
                break;
            }
        }
        let elapsed = start.elapsed();
        let claims = store.claim(&request, Timestamp::now()).await?;
        let [claim] = claims.as_slice() else { anyhow::bail!("claimed {} tasks, expected 1", claims.len()) };
        store.complete(&claim.lease, result(), Timestamp::now()).await?;
        if i >= LATENCY_WARMUP {
            timings.push(elapsed);
        }
    }
    fixture.finish().await?;
    Ok(Latency::of(timings))
}

/// A random number for fresh key prefixes (the benches do not depend on `rand`).
/// One `enqueue` call per task.
async fn enqueue_single(backend: Backend, tasks: usize) -> anyhow::Result<Throughput> {
    let fixture = backend.open().await?;
    let store = fixture.store();
    let tenant = tenant();
    let start = Instant::now();
    for i in 0..tasks {
        let enqueued = store.enqueue(&tenant, new_task(i), Timestamp::now()).await?;
        ensure!(enqueued.created, "enqueue returned an existing task");
    }
    let elapsed = start.elapsed();
    check_depth(store, tasks).await?;
    drain(store, 1_000).await?;
    fixture.finish().await?;
    Ok(Throughput { tasks, elapsed })
}

/// One `enqueue_batch` call per `batch` tasks.
async fn enqueue_batched(backend: Backend, tasks: usize, batch: usize) -> anyhow::Result<Throughput> {
    let fixture = backend.open().await?;
    let store = fixture.store();
    let start = Instant::now();
    fill(store, tasks, batch).await?;
    let elapsed = start.elapsed();
    check_depth(store, tasks).await?;
    drain(store, 1_000).await?;
    fixture.finish().await?;
    Ok(Throughput { tasks, elapsed })
}

/// Fills a queue (untimed, in batches of 1,000), then times claiming
/// `batch` tasks per call and completing them: with `complete` one by one
/// when `batch` is 1, with one `complete_batch` otherwise.
async fn claim_complete(backend: Backend, tasks: usize, batch: usize) -> anyhow::Result<Throughput> {
    let fixture = backend.open().await?;
    let store = fixture.store();
    fill(store, tasks, 1_000).await?;
    let start = Instant::now();
    let done = drain(store, batch).await?;
    let elapsed = start.elapsed();
    ensure!(done == tasks, "claimed and completed {done} tasks, expected {tasks}");
    fixture.finish().await?;
    Ok(Throughput { tasks, elapsed })
}

/// Enqueues one task on an empty queue and claims it at once, timing from
/// before the enqueue to after the claim returns; completes it untimed so the
/// queue is empty again for the next sample.
async fn enqueue_to_claim(backend: Backend, samples: usize) -> anyhow::Result<Latency> {
    let fixture = backend.open().await?;
    let store = fixture.store();
    let tenant = tenant();
    let request = claim_request(1)?;
    let mut timings = Vec::with_capacity(samples);
    for i in 0..LATENCY_WARMUP + samples {
        let start = Instant::now();
        let enqueued = store.enqueue(&tenant, new_task(i), Timestamp::now()).await?;
        let claims = store.claim(&request, Timestamp::now()).await?;
        let elapsed = start.elapsed();
        let [claim] = claims.as_slice() else { anyhow::bail!("claimed {} tasks, expected 1", claims.len()) };
        ensure!(claim.task.id == enqueued.task.id, "claimed a different task than the one just enqueued");
        store.complete(&claim.lease, result(), Timestamp::now()).await?;
        if i >= LATENCY_WARMUP {
            timings.push(elapsed);
        }
    }
    fixture.finish().await?;
    Ok(Latency::of(timings))
}

/// Enqueues `tasks` tasks with one `enqueue_batch` call per `batch`.
async fn fill(store: &dyn Store, tasks: usize, batch: usize) -> anyhow::Result<()> {
    let tenant = tenant();
    let mut next = 0;
    while next < tasks {
        let end = (next + batch).min(tasks);
        let n = store.enqueue_batch(&tenant, (next..end).map(new_task).collect(), Timestamp::now()).await?.len();
        ensure!(n == end - next, "enqueue_batch returned {n} tasks, expected {}", end - next);
        next = end;
    }
    Ok(())
}

/// Claims `batch` tasks per call and completes them until the queue is empty;
/// returns how many were completed. A batch of 1 uses `complete`, anything
/// larger one `complete_batch` per claim.
async fn drain(store: &dyn Store, batch: usize) -> anyhow::Result<usize> {
    let request = claim_request(batch)?;
    let mut done = 0;
    loop {
        let claims = store.claim(&request, Timestamp::now()).await?;
        let claimed = claims.len();
        if claimed == 0 {
            return Ok(done);
        }
        ensure!(claimed <= batch, "claimed {claimed} tasks with a limit of {batch}");
        if batch == 1 {
            for claim in &claims {
                store.complete(&claim.lease, result(), Timestamp::now()).await?;
            }
        } else {
            let completions: Vec<Completion> =
                claims.into_iter().map(|c| Completion { lease: c.lease, result: result() }).collect();
            let outcome = store.complete_batch(&completions, Timestamp::now()).await?;
            ensure!(outcome.lease_lost.is_empty(), "complete_batch lost {} leases", outcome.lease_lost.len());
            let completed = outcome.completed.len();
            ensure!(completed == claimed, "complete_batch completed {completed} of {claimed} tasks");
        }
        done += claimed;
    }
}

/// Checks that exactly `expected` tasks are ready.
async fn check_depth(store: &dyn Store, expected: usize) -> anyhow::Result<()> {
    let depth = store.depth(&tenant(), Timestamp::now()).await?.total();
    ensure!(depth == expected as u64, "{depth} tasks ready after enqueueing {expected}");
    Ok(())
}

fn tenant() -> TenantId {
    TenantId::default_tenant()
}

fn claim_request(limit: usize) -> anyhow::Result<ClaimRequest> {
    Ok(ClaimRequest {
        tenant: tenant(),
        agent: AgentId::new("store-bench")?,
        capabilities: Vec::new(),
        limit,
        lease_for: Duration::from_secs(300),
    })
}

/// A small, realistic task: a prompt of a few dozen bytes.
fn new_task(i: usize) -> NewTask {
    NewTask::prompt(format!("summarise the build log of job {i}"))
}

/// A small, realistic result.
fn result() -> serde_json::Value {
    json!({"exit_code": 0, "summary": "ok"})
}

fn print_throughput(workload: &str, t: &Throughput, target: Option<f64>) {
    let verdict = match target {
        Some(target) if t.per_second() >= target => format!(">= {} met", thousands(target)),
        Some(target) => format!(">= {} MISSED ({:.0}% of target)", thousands(target), 100.0 * t.per_second() / target),
        None => String::new(),
    };
    let line = format!(
        "  {:<34} {:>9} {:>9.3} {:>13}  {verdict}",
        workload,
        t.tasks,
        t.elapsed.as_secs_f64(),
        thousands(t.per_second())
    );
    println!("{}", line.trim_end());
}
