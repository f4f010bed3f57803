//! `engine-bench`: the peer workloads (`WORKLOAD.md` beside the peer
//! benchmarks) run through Godel's embedded engine, on every store, writing
//! the same JSON result line as the peers so that their `summarize.py` tables
//! Godel beside graphile-worker, BullMQ and apalis.
//!
//! - **burndown**: a fresh store; `--n` tasks submitted as `--n / --enqueue-batch`
//!   awaited batch submits; then the clock starts, the engine starts with one
//!   agent of `--concurrency` slots, and the clock stops when the store
//!   reports every task completed (polled every 2 ms once the handler ran
//!   `--n` times, as the peers do).
//! - **latency**: the engine idles; 100 warm-up tasks, a second of rest, then
//!   `--n` single submits 2 ms apart, each carrying its wall-clock submit time
//!   `t`, which the handler subtracts from its own clock when it begins.
//!
//! The handler is a no-op agent that only counts (and, for latency, records
//! the delay), so what is measured is Godel's own overhead. Each run checks
//! that the store agrees (every task completed once, nothing left queued).
//!
//! `--profile` adds what each task cost the store over the process phase:
//! commits and WAL bytes (PostgreSQL, from `pg_stat_database` and
//! `pg_current_wal_lsn()`; both count the whole server, so other clients of
//! it show up too), HOT updates of the tasks table, Redis commands (`INFO
//! commandstats`), and CPU per task of the client and of the store's server.
//!
//! ```sh
//! cargo run --release -p godel-benches --bin engine-bench -- \
//!     --backend postgres --test burndown --n 20000 --concurrency 50 --results-file ../peers/results.jsonl
//! ```

// This binary is a report tool: its output is the line it prints.
#![allow(clippy::print_stdout)]

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use argh::FromArgs;
use async_trait::async_trait;
use godel_benches::rand_u64;
use godel_core::adapter::{AbortMode, AdapterError, OutputSink};
use godel_core::store::{MemoryStore, PostgresStore, RedisStore, SqliteStore, TaskFilter};
use godel_core::{
    Adapter, AgentConfig, AgentId, AgentKind, AgentSession, CancellationToken, EngineConfig, NewTask, Orchestrator,
    Outcome, Store, Task, TaskStatus, Timestamp,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Warm-up tasks of the latency test, not recorded.
const WARMUP: usize = 100;

/// Run the peer workloads (WORKLOAD.md) through Godel's embedded engine.
#[derive(FromArgs, Debug)]
struct Args {
    /// memory, sqlite, postgres or redis
    #[argh(option)]
    backend: Backend,
    /// burndown or latency (default burndown)
    #[argh(option, default = "Test::Burndown")]
    test: Test,
    /// tasks (burndown, default 20000) or samples (latency, default 1000)
    #[argh(option)]
    n: Option<usize>,
    /// slots of the one agent: tasks run at once (default 50; latency 10)
    #[argh(option)]
    concurrency: Option<u32>,
    /// tasks per batch submit in the burndown (default 1000)
    #[argh(option, default = "1000")]
    enqueue_batch: usize,
    /// latency: pause between single submits in milliseconds (default 2)
    #[argh(option, default = "2")]
    gap_ms: u64,
    /// round number, recorded in the result line (default 0)
    #[argh(option, default = "0")]
    run: u32,
    /// give up after this many seconds (default 170)
    #[argh(option, default = "170")]
    timeout_s: u64,
    /// append the result line to this file (default $RESULTS_FILE; else only printed)
    #[argh(option)]
    results_file: Option<String>,
    /// add the per-task cost profile (commits, WAL, commands, CPU) to the line
    #[argh(switch)]
    profile: bool,
    /// the PostgreSQL server (default GODEL_TEST_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/test);
    /// each run uses a fresh schema, dropped afterwards. Store URL parameters such as listen=false pass through.
    #[argh(option)]
    postgres_url: Option<String>,
    /// the Redis server (default GODEL_TEST_REDIS_URL or redis://127.0.0.1:6379); each run uses a fresh key prefix
    #[argh(option)]
    redis_url: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Memory,
    Sqlite,
    Postgres,
    Redis,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(Self::Memory),
            "sqlite" => Ok(Self::Sqlite),
            "postgres" => Ok(Self::Postgres),
            "redis" => Ok(Self::Redis),
            _ => Err(format!("expected memory, sqlite, postgres or redis; got {s:?}")),
        }
    }
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Redis => "redis",
        }
    }

    /// The store's server processes, for CPU accounting.
    fn server_process(self) -> Option<&'static str> {
        match self {
            Backend::Postgres => Some("postgres"),
            Backend::Redis => Some("redis-server"),
            Backend::Memory | Backend::Sqlite => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Test {
    Burndown,
    Latency,
}

impl FromStr for Test {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "burndown" => Ok(Self::Burndown),
            "latency" => Ok(Self::Latency),
            _ => Err(format!("expected burndown or latency; got {s:?}")),
        }
    }
}

/// An empty store for one run, cleaned up by [`Fixture::finish`].
struct Fixture {
    store: Arc<dyn Store>,
    kind: Kind,
}

enum Kind {
    Memory,
    Sqlite { store: SqliteStore, _dir: tempfile::TempDir },
    Postgres { store: PostgresStore, admin: sqlx::PgPool, schema: String },
    Redis { admin: redis::aio::MultiplexedConnection },
}

impl Fixture {
    async fn open(backend: Backend, args: &Args) -> anyhow::Result<Self> {
        match backend {
            Backend::Memory => Ok(Fixture { store: Arc::new(MemoryStore::new()), kind: Kind::Memory }),
            Backend::Sqlite => {
                let dir = tempfile::Builder::new().prefix("godel-engine-bench").tempdir()?;
                let store = SqliteStore::open(&dir.path().join("bench.db")).await?;
                Ok(Fixture { store: Arc::new(store.clone()), kind: Kind::Sqlite { store, _dir: dir } })
            }
            Backend::Postgres => {
                let base = server_url(
                    args.postgres_url.as_deref(),
                    "GODEL_TEST_POSTGRES_URL",
                    "postgres://postgres@127.0.0.1:5432/test",
                );
                let schema = format!("godel_bench_{:016x}", rand_u64());
                let url = format!("{base}{}schema={schema}", if base.contains('?') { '&' } else { '?' });
                let store = PostgresStore::open(&url).await.with_context(|| format!("opening {base}"))?;
                let admin_url = base.split('?').next().unwrap_or(&base);
                let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(admin_url).await?;
                Ok(Fixture { store: Arc::new(store.clone()), kind: Kind::Postgres { store, admin, schema } })
            }
            Backend::Redis => {
                let url = server_url(args.redis_url.as_deref(), "GODEL_TEST_REDIS_URL", "redis://127.0.0.1:6379");
                let sep = if url.contains('?') { '&' } else { '?' };
                let store_url = format!("{url}{sep}prefix=godel-bench-{:016x}", rand_u64());
                let store = RedisStore::open(&store_url).await.with_context(|| format!("opening {url}"))?;
                let server = url.split('?').next().unwrap_or(&url);
                let admin = redis::Client::open(server)?.get_multiplexed_async_connection().await?;
                Ok(Fixture { store: Arc::new(store), kind: Kind::Redis { admin } })
            }
        }
    }

    /// Store-side counters, when the backend has them.
    async fn counters(&self) -> anyhow::Result<Counters> {
        match &self.kind {
            Kind::Postgres { admin, schema, .. } => {
                let (commits, wal_bytes): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
                             WHERE datname = current_database()), \
                            pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
                )
                .fetch_one(admin)
                .await?;
                let (updates, hot_updates): (i64, i64) = sqlx::query_as(
                    "SELECT COALESCE(sum(n_tup_upd), 0)::bigint, COALESCE(sum(n_tup_hot_upd), 0)::bigint \
                     FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'tasks'",
                )
                .bind(schema)
                .fetch_one(admin)
                .await?;
                Ok(Counters { commits, wal_bytes, updates, hot_updates, commands: 0 })
            }
            Kind::Redis { admin } => {
                let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut admin.clone()).await?;
                let commands = info
                    .lines()
                    .filter_map(|l| l.split("calls=").nth(1))
                    .filter_map(|rest| rest.split(',').next()?.parse::<i64>().ok())
                    .sum();
                Ok(Counters { commands, ..Counters::default() })
            }
            Kind::Memory | Kind::Sqlite { .. } => Ok(Counters::default()),
        }
    }

    fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Memory => "memory store",
            Kind::Sqlite { .. } => "SQLite file (WAL, synchronous=NORMAL)",
            Kind::Postgres { .. } => "PostgreSQL, a fresh schema per run",
            Kind::Redis { .. } => "Redis, a fresh key prefix per run",
        }
    }

    async fn finish(self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Memory => {}
            Kind::Sqlite { store, .. } => store.close().await,
            Kind::Postgres { store, admin, schema } => {
                store.close().await;
                sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(&admin).await?;
            }
            Kind::Redis { .. } => {
                let tenant = EngineConfig::default().tenant;
                self.store.purge_finished(&tenant, &TaskFilter::default(), Timestamp::from_millis(i64::MAX)).await?;
            }
        }
        Ok(())
    }
}

/// Cumulative store counters; a run reports their growth.
#[derive(Clone, Copy, Default, Debug)]
struct Counters {
    commits: i64,
    wal_bytes: i64,
    updates: i64,
    hot_updates: i64,
    commands: i64,
}

fn server_url(flag: Option<&str>, env: &str, default: &str) -> String {
    flag.map(str::to_owned).or_else(|| std::env::var(env).ok()).unwrap_or_else(|| default.to_owned())
}

/// The no-op handler: counts the tasks it ran and records how long after
/// their submit (the payload's `t`, epoch milliseconds) each began.
#[derive(Debug, Default)]
struct Handler {
    handled: AtomicUsize,
    /// Wakes whoever waits for `handled` to reach a count.
    progress: Notify,
    first_at: Mutex<Option<Instant>>,
    latencies: Mutex<Vec<f64>>,
}

/// The adapter and session over a shared [`Handler`].
#[derive(Debug, Clone)]
struct Noop(Arc<Handler>);

#[async_trait]
impl Adapter for Noop {
    async fn open_session(&self, _task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        Ok(Box::new(self.clone()))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

#[async_trait]
impl AgentSession for Noop {
    async fn run(&self, task: &Task, _output: OutputSink) -> Outcome {
        let handler = &self.0;
        if let Some(t) = task.payload.extra.get("t").and_then(Value::as_f64) {
            let latency = now_ms() - t;
            if task.payload.extra.get("warmup").is_none() {
                handler.latencies.lock().unwrap_or_else(PoisonError::into_inner).push(latency);
            }
        }
        handler.first_at.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(Instant::now);
        handler.handled.fetch_add(1, Ordering::Relaxed);
        handler.progress.notify_waiters();
        Outcome::Completed { result: Value::Null }
    }

    async fn abort(&self, _mode: AbortMode) {}

    async fn close(&self, _outcome: &Outcome) {}
}

impl Handler {
    async fn wait_for(&self, count: usize, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let notified = self.progress.notified();
            if self.handled.load(Ordering::Relaxed) >= count {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                bail!("only {} of {count} tasks ran in time", self.handled.load(Ordering::Relaxed));
            }
        }
    }
}

/// Wall-clock epoch milliseconds, sub-millisecond resolution.
fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn task(payload: Value) -> NewTask {
    let mut task = NewTask::prompt("noop");
    if let Value::Object(extra) = payload {
        task.payload.extra = extra;
    }
    task
}

/// CPU time (user + system) of processes, from `/proc`: this one, or every
/// process named `name`.
fn cpu_ms(name: Option<&str>) -> f64 {
    fn of(stat: &str) -> Option<(String, f64)> {
        let comm = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((comm, ticks * 10.0)) // CLK_TCK is 100 on Linux
    }
    let Some(name) = name else {
        return std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| of(&s)).map_or(0.0, |(_, ms)| ms);
    };
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| of(&s))
        .filter(|(comm, _)| comm == name)
        .map(|(_, ms)| ms)
        .sum()
}

/// Busy and total jiffies of the whole machine.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    let total: f64 = v.iter().sum();
    (total - idle, total)
}

fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// CPU use over a window, as the peers account it.
struct CpuWindow {
    started: Instant,
    client: f64,
    server: f64,
    machine: (f64, f64),
    server_name: Option<&'static str>,
}

impl CpuWindow {
    fn start(server_name: Option<&'static str>) -> Self {
        Self {
            started: Instant::now(),
            client: cpu_ms(None),
            server: server_name.map_or(0.0, |n| cpu_ms(Some(n))),
            machine: machine_cpu(),
            server_name,
        }
    }

    /// `(client ms, server ms, json of percentages)`.
    fn stop(&self) -> (f64, f64, Value) {
        let wall = self.started.elapsed().as_secs_f64() * 1e3;
        let client = cpu_ms(None) - self.client;
        let server = self.server_name.map_or(0.0, |n| cpu_ms(Some(n))) - self.server;
        let (busy, total) = machine_cpu();
        let pct = |x: f64| (x / wall * 1000.0).round() / 10.0;
        let machine = if total > self.machine.1 {
            ((busy - self.machine.0) / (total - self.machine.1) * 1000.0).round() / 10.0
        } else {
            0.0
        };
        let usage = json!({
            "wall_ms": wall.round(),
            "client_cpu_pct": pct(client),
            "server_cpu_pct": self.server_name.map(|_| pct(server)),
            "machine_busy_pct": machine,
        });
        (client, server, usage)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = argh::from_env();
    let n = args.n.unwrap_or(match args.test {
        Test::Burndown => 20_000,
        Test::Latency => 1_000,
    });
    let concurrency = args.concurrency.unwrap_or(match args.test {
        Test::Burndown => 50,
        Test::Latency => 10,
    });
    ensure!(n >= 1, "invalid --n: expected at least 1");
    ensure!(concurrency >= 1, "invalid --concurrency: expected at least 1");
    ensure!(args.enqueue_batch >= 1, "invalid --enqueue-batch: expected at least 1");

    let fixture = Fixture::open(args.backend, &args).await?;
    let outcome = tokio::time::timeout(Duration::from_secs(args.timeout_s), run(&fixture, &args, n, concurrency)).await;
    let finished = fixture.finish().await;
    let mut line = outcome.map_err(|_| anyhow::anyhow!("timed out after {} s", args.timeout_s))??;
    finished?;

    let obj = line.as_object_mut().expect("the result line is an object");
    obj.insert("date".into(), json!(Timestamp::now().to_string()));
    let text = serde_json::to_string(&line)?;
    println!("{text}");
    if let Some(path) = args.results_file.clone().or_else(|| std::env::var("RESULTS_FILE").ok()) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        writeln!(file, "{text}")?;
    }
    Ok(())
}

/// Runs the test on a fresh store and returns its result line.
async fn run(fixture: &Fixture, args: &Args, n: usize, concurrency: u32) -> anyhow::Result<Value> {
    let store = fixture.store.clone();
    let handler = Arc::new(Handler::default());
    let agent = AgentConfig::new(AgentId::new("noop")?, AgentKind::Process, Arc::new(Noop(handler.clone())))
        .capacity(concurrency);
    let orchestrator = Orchestrator::builder(store.clone()).config(EngineConfig::default()).agent(agent).build()?;
    let tenant = orchestrator.config().tenant.clone();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let shutdown = CancellationToken::new();
    let start_engine = || {
        let (o, s) = (orchestrator.clone(), shutdown.clone());
        tokio::spawn(async move { o.run(s).await })
    };

    let mut line = json!({
        "system": "godel",
        "backend": args.backend.name(),
        "version": env!("CARGO_PKG_VERSION"),
        "test": match args.test { Test::Burndown => "burndown", Test::Latency => "latency" },
        "n": n,
        "concurrency": concurrency,
        "enqueue_per_s": null,
        "processed_per_s": null,
        "p50_ms": null,
        "p95_ms": null,
        "p99_ms": null,
        "run": args.run,
        "config": {"agents": 1, "slots": concurrency, "engine": "default settings", "store": fixture.describe()},
    });
    let expected;
    match args.test {
        Test::Burndown => {
            let t_enqueue = Instant::now();
            let mut i = 0;
            while i < n {
                let batch: Vec<NewTask> = (i..n.min(i + args.enqueue_batch)).map(|i| task(json!({"i": i}))).collect();
                i += batch.len();
                orchestrator.submit_batch(batch).await?;
            }
            let enqueue_ms = t_enqueue.elapsed().as_secs_f64() * 1e3;
            let counts = store.counts(&tenant, Timestamp::now()).await?;
            ensure!(counts.ready == n as u64, "expected {n} queued tasks, found {counts:?}");

            let before = fixture.counters().await?;
            let cpu = CpuWindow::start(args.backend.server_process());
            let t0 = Instant::now();
            let engine = start_engine();
            handler.wait_for(n, deadline).await?;
            let all_handled = t0.elapsed();
            while store.counts(&tenant, Timestamp::now()).await?.status(TaskStatus::Completed) < n as u64 {
                ensure!(Instant::now() < deadline, "not every task completed in time");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let process = t0.elapsed();
            let (client_ms, server_ms, mut usage) = cpu.stop();
            shutdown.cancel();
            engine.await??;
            let first = handler.first_at.lock().unwrap_or_else(PoisonError::into_inner).map(|at| at - t0);

            line["enqueue_per_s"] = json!((n as f64 / enqueue_ms * 1e3).round());
            line["processed_per_s"] = json!((n as f64 / process.as_secs_f64()).round());
            line["notes"] = json!(format!(
                "rust-api; submit_batch x{} (batch {}); one agent of {concurrency} slots; timer from engine start to the store showing all completed",
                n.div_ceil(args.enqueue_batch),
                args.enqueue_batch
            ));
            let extra = usage.as_object_mut().expect("object");
            extra.insert("enqueue_ms".into(), json!(enqueue_ms.round()));
            extra.insert("process_ms".into(), json!((process.as_secs_f64() * 1e3).round()));
            extra.insert("first_job_after_ms".into(), json!(first.map(|d| (d.as_secs_f64() * 1e3).round())));
            extra.insert("all_handled_after_ms".into(), json!((all_handled.as_secs_f64() * 1e3).round()));
            if args.profile {
                extra.insert("profile".into(), profile(fixture, before, n, client_ms, server_ms).await?);
            }
            extra.insert("loadavg".into(), json!(loadavg()));
            line["extra"] = usage;
            expected = n;
        }
        Test::Latency => {
            let engine = start_engine();
            for _ in 0..WARMUP {
                orchestrator.submit(task(json!({"warmup": true, "t": now_ms()}))).await?;
                tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
            }
            handler.wait_for(WARMUP, deadline).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;

            let before = fixture.counters().await?;
            let cpu = CpuWindow::start(args.backend.server_process());
            let mut submits = Vec::with_capacity(n);
            let t_enqueue = Instant::now();
            for i in 0..n {
                let t = now_ms();
                orchestrator.submit(task(json!({"i": i, "t": t}))).await?;
                submits.push(now_ms() - t);
                if args.gap_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
                }
            }
            let enqueue_s = t_enqueue.elapsed().as_secs_f64();
            handler.wait_for(WARMUP + n, deadline).await?;
            while store.counts(&tenant, Timestamp::now()).await?.status(TaskStatus::Completed) < (WARMUP + n) as u64 {
                ensure!(Instant::now() < deadline, "not every task completed in time");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let (client_ms, server_ms, mut usage) = cpu.stop();
            shutdown.cancel();
            engine.await??;

            let mut latencies = std::mem::take(&mut *handler.latencies.lock().unwrap_or_else(PoisonError::into_inner));
            ensure!(latencies.len() == n, "recorded {} latencies, expected {n}", latencies.len());
            latencies.sort_by(f64::total_cmp);
            submits.sort_by(f64::total_cmp);
            line["p50_ms"] = json!(round3(nearest_rank(&latencies, 50.0)));
            line["p95_ms"] = json!(round3(nearest_rank(&latencies, 95.0)));
            line["p99_ms"] = json!(round3(nearest_rank(&latencies, 99.0)));
            line["notes"] = json!(format!(
                "rust-api; single submit then {} ms sleep; one agent of {concurrency} slots; the engine wakes itself on submit (no poll)",
                args.gap_ms
            ));
            let extra = usage.as_object_mut().expect("object");
            extra.insert("min_ms".into(), json!(round3(latencies[0])));
            extra.insert("max_ms".into(), json!(round3(latencies[n - 1])));
            extra.insert("mean_ms".into(), json!(round3(latencies.iter().sum::<f64>() / n as f64)));
            extra.insert("offered_rate_per_s".into(), json!((n as f64 / enqueue_s).round()));
            extra.insert("submit_p50_ms".into(), json!(round3(nearest_rank(&submits, 50.0))));
            extra.insert("submit_p99_ms".into(), json!(round3(nearest_rank(&submits, 99.0))));
            if args.profile {
                extra.insert("profile".into(), profile(fixture, before, n, client_ms, server_ms).await?);
            }
            extra.insert("loadavg".into(), json!(loadavg()));
            line["extra"] = usage;
            expected = WARMUP + n;
        }
    }

    let counts = store.counts(&tenant, Timestamp::now()).await?;
    ensure!(counts.status(TaskStatus::Completed) == expected as u64, "{counts:?}, expected {expected} completed");
    ensure!(counts.ready == 0 && counts.scheduled == 0, "tasks left in the queue: {counts:?}");
    ensure!(
        handler.handled.load(Ordering::Relaxed) == expected,
        "the handler ran {} times, expected {expected}",
        handler.handled.load(Ordering::Relaxed)
    );
    for agent in orchestrator.agents() {
        ensure!(agent.current_load == 0, "agent {} still counts {} slots in use", agent.id, agent.current_load);
    }
    Ok(line)
}

/// What each task cost over the measured phase.
async fn profile(
    fixture: &Fixture,
    before: Counters,
    n: usize,
    client_ms: f64,
    server_ms: f64,
) -> anyhow::Result<Value> {
    // PostgreSQL publishes other sessions' statistics up to a second late.
    if matches!(fixture.kind, Kind::Postgres { .. }) {
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let after = fixture.counters().await?;
    let per = |x: i64| (x as f64 / n as f64 * 1000.0).round() / 1000.0;
    let mut p = json!({
        "client_cpu_us_per_task": (client_ms * 1e3 / n as f64).round(),
        "server_cpu_us_per_task": (server_ms * 1e3 / n as f64).round(),
    });
    match fixture.kind {
        Kind::Postgres { .. } => {
            p["commits_per_task"] = json!(per(after.commits - before.commits));
            p["wal_bytes_per_task"] = json!(per(after.wal_bytes - before.wal_bytes).round());
            p["task_updates_per_task"] = json!(per(after.updates - before.updates));
            p["hot_updates_per_task"] = json!(per(after.hot_updates - before.hot_updates));
        }
        Kind::Redis { .. } => p["commands_per_task"] = json!(per(after.commands - before.commands)),
        Kind::Memory | Kind::Sqlite { .. } => {}
    }
    Ok(p)
}

fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
