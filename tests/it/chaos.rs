//! The chaos suite: real `godel-server` processes run a batch of tasks while
//! the world breaks under them, and a ledger of side effects says what
//! happened. Every task's command appends `start <task> <attempt> <ms>` to
//! the ledger, works for a moment, then appends `end …`; each run happens in
//! a fresh per-task directory. After the faults the test waits for every
//! task to complete and checks:
//!
//! - 0 tasks lost: every acknowledged task ends `completed`;
//! - 0 completed twice: no task's history moves to `completed` more than once;
//! - side effects twice only for runs in flight at a fault: a task that ran
//!   more than once was held by what the fault hit (the store's leases right
//!   after a kill), or one of its earlier runs overlapped the fault's window
//!   (widened by one lease before it, for a completion the fault swallowed);
//! - 0 leaked processes (no process names the ledger once the server has
//!   stopped) and 0 leaked per-task directories.
//!
//! The faults: SIGKILL the server (SQLite, PostgreSQL, Redis), SIGKILL a
//! remote worker, crash and restart a private PostgreSQL or Redis, cut or
//! blackhole the database connections through a TCP proxy (PostgreSQL,
//! Redis), a connection pool far smaller than the work (all three), and one
//! of two nodes' clocks running ahead (PostgreSQL).
//! Each test prints its figures on one `chaos:` line (see
//! docs/reliability.md). The short form runs in CI; `GODEL_CHAOS_TASKS` and
//! `GODEL_CHAOS_FAULTS` make it the long form.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use godel_core::store::{Store, TaskFilter, TaskQuery};
use godel_core::{AgentId, StoreError, TaskStatus, TenantId, Timestamp};
use godel_e2e::proxy::Proxy;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::server::cluster::{self, eventually_long};
use crate::server::harness::{FAST_ENGINE, Launch, Server, Worker};
use crate::server::services::{Postgres, Redis, missing};

/// The engine's lease in [`FAST_ENGINE`]: how long a dead holder keeps a task.
const LEASE_MS: i64 = 2_000;

/// How long a database outage or a blackhole lasts: past the lease, so that
/// the engine loses the leases it holds and must not finish their tasks twice.
const OUTAGE: Duration = Duration::from_millis(3_000);

/// How long the whole batch may take to complete after the last fault.
const DRAIN_DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_server_on_sqlite() -> Result<()> {
    kill_the_server(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_server_on_postgres() -> Result<()> {
    kill_the_server(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_server_on_redis() -> Result<()> {
    kill_the_server(Backend::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_a_worker() -> Result<()> {
    let mut chaos = Chaos::new("sigkill-worker/sqlite")?;
    let url = chaos.sqlite_url();
    // The local agent cannot take `remote` tasks: only the workers run them.
    let server = chaos.launch(&url, 0).start().await?;
    let args = ["--concurrency", "4"];
    // Beside the server, where they find its admin key.
    let home = chaos.dir().join("server");
    let mut workers =
        vec![Worker::start_with(&home, &server, "w1", &args)?, Worker::start_with(&home, &server, "w2", &args)?];
    let store = godel_core::store::open(&url).await?;
    let ids = chaos.submit(&server, json!(["remote"])).await?;
    for fault in 0..chaos.faults {
        chaos.wait_for_progress(fault).await?;
        let victim = fault % workers.len();
        let name = format!("w{}", victim + 1);
        let started = now_ms();
        workers[victim].signal(Signal::SIGKILL)?;
        workers[victim].child.wait().await?;
        let held = held(&store, Some(&name)).await?;
        workers[victim] = Worker::start_with(&home, &server, &name, &args)?;
        chaos.fault(started, now_ms(), held);
    }
    chaos.drain(&store, &ids).await?;
    server.stop().await?;
    drop(workers);
    chaos.verdict(&store, &ids).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_postgres() -> Result<()> {
    let mut chaos = Chaos::new("restart-postgres")?;
    let pg_dir = chaos.dir().join("pg");
    std::fs::create_dir_all(&pg_dir)?;
    let Some(pg) = Postgres::start(&pg_dir).await? else { return Ok(()) };
    let url = pg.url();
    let server = chaos.launch(&url, 4).start().await?;
    let store = godel_core::store::open(&url).await?;
    let ids = chaos.submit(&server, json!([])).await?;
    for fault in 0..chaos.faults {
        chaos.wait_for_progress(fault).await?;
        let started = now_ms();
        pg.ctl("stop").await?;
        tokio::time::sleep(OUTAGE).await;
        pg.ctl("start").await?;
        healthy(&server).await?;
        chaos.fault(started, now_ms(), HashSet::new());
    }
    chaos.drain(&store, &ids).await?;
    server.stop().await?;
    chaos.verdict(&store, &ids).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_redis() -> Result<()> {
    let mut chaos = Chaos::new("restart-redis")?;
    let Some(mut redis) = Redis::start(chaos.dir()).await? else { return Ok(()) };
    let url = format!("{}?prefix=chaos", redis.url());
    let server = chaos.launch(&url, 4).start().await?;
    let store = godel_core::store::open(&url).await?;
    let ids = chaos.submit(&server, json!([])).await?;
    for fault in 0..chaos.faults {
        chaos.wait_for_progress(fault).await?;
        let started = now_ms();
        redis.kill().await?;
        tokio::time::sleep(OUTAGE).await;
        redis.spawn().await?;
        healthy(&server).await?;
        chaos.fault(started, now_ms(), HashSet::new());
    }
    chaos.drain(&store, &ids).await?;
    server.stop().await?;
    chaos.verdict(&store, &ids).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_blackhole_postgres_connections() -> Result<()> {
    break_the_network(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_blackhole_redis_connections() -> Result<()> {
    break_the_network(Backend::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_the_sqlite_pool() -> Result<()> {
    exhaust_the_pool(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_the_postgres_pool() -> Result<()> {
    exhaust_the_pool(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_the_redis_pool() -> Result<()> {
    exhaust_the_pool(Backend::Redis).await
}

/// How far ahead the skewed node's clock runs: more than the lease, so that
/// it takes the other node's live leases for lapsed ones.
const SKEW_SECS: i64 = 3;

/// Two servers share a PostgreSQL schema; one's clock runs [`SKEW_SECS`]
/// ahead (libfaketime, for the server and the processes it starts). Its
/// reclaim sweep takes the other node's tasks from under it: they run again,
/// and the fence must still let each complete once. The whole run is the
/// fault's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skew_one_node_s_clock() -> Result<()> {
    let library = Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    if !library.exists() {
        return missing("libfaketime is not installed (apt-get install faketime)");
    }
    let mut chaos = Chaos::new("clock-skew/postgres")?;
    // A per-task directory is named by its task alone, so two attempts of one
    // task running at once (which a skew past the lease makes common) would
    // share it, and the first to finish would remove it under the other.
    chaos.per_task_dirs = false;
    let Some(url) = chaos.store_url(Backend::Postgres).await? else { return Ok(()) };
    let started = now_ms();
    let on_time = chaos.launch_node("node0", &url, 4).start().await?;
    let ahead = chaos
        .launch_node("node1", &url, 4)
        .env("LD_PRELOAD", &library.display().to_string())
        .env("FAKETIME", &format!("+{SKEW_SECS}"))
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .start()
        .await?;
    let store = godel_core::store::open(&url).await?;
    let ids = chaos.submit(&on_time, json!([])).await?;
    chaos.drain(&store, &ids).await?;
    // The skewed node's runs write skewed times to the ledger.
    chaos.fault(started, now_ms() + SKEW_SECS * 1_000, HashSet::new());
    on_time.stop().await?;
    ahead.stop().await?;
    chaos.verdict(&store, &ids).await
}

/// SIGKILL the server mid-run and start it again on the same store.
async fn kill_the_server(backend: Backend) -> Result<()> {
    let mut chaos = Chaos::new(&format!("sigkill-server/{}", backend.name()))?;
    let Some(url) = chaos.store_url(backend).await? else { return Ok(()) };
    let mut server = chaos.launch(&url, 4).start().await?;
    let store = godel_core::store::open(&url).await?;
    let ids = chaos.submit(&server, json!([])).await?;
    for fault in 0..chaos.faults {
        chaos.wait_for_progress(fault).await?;
        let started = now_ms();
        server.signal(Signal::SIGKILL)?;
        server.exit().await?;
        // The dead server's leases, as it left them: exactly its runs in flight.
        let held = held(&store, None).await?;
        server = chaos.launch(&url, 4).start().await?;
        chaos.fault(started, now_ms(), held);
    }
    chaos.drain(&store, &ids).await?;
    server.stop().await?;
    chaos.verdict(&store, &ids).await
}

/// The server reaches its database through a [`Proxy`], which drops every
/// connection (odd faults) or lets nothing through for [`OUTAGE`] (even ones).
async fn break_the_network(backend: Backend) -> Result<()> {
    let mut chaos = Chaos::new(&format!("proxy/{}", backend.name()))?;
    let Some(url) = chaos.store_url(backend).await? else { return Ok(()) };
    let upstream = address_of(&url)?;
    let proxy = Proxy::start(upstream).await?;
    let proxied = url.replacen(&upstream.to_string(), &proxy.addr().to_string(), 1);
    let server = chaos.launch(&proxied, 4).start().await?;
    let store = godel_core::store::open(&url).await?;
    let ids = chaos.submit(&server, json!([])).await?;
    for fault in 0..chaos.faults {
        chaos.wait_for_progress(fault).await?;
        let started = now_ms();
        if fault % 2 == 0 {
            proxy.cut();
        } else {
            proxy.blackhole();
            tokio::time::sleep(OUTAGE).await;
            proxy.restore();
        }
        healthy(&server).await?;
        chaos.fault(started, now_ms(), HashSet::new());
    }
    chaos.drain(&store, &ids).await?;
    server.stop().await?;
    chaos.verdict(&store, &ids).await
}

/// Sixteen slots of work and sixteen concurrent submitters over one or two
/// database connections: the pool is exhausted for the whole run, so the
/// fault's window is the whole run. Submitters retry what is refused (503,
/// retryable) with the same idempotency key, as a client should.
async fn exhaust_the_pool(backend: Backend) -> Result<()> {
    let mut chaos = Chaos::new(&format!("pool/{}", backend.name()))?;
    let Some(url) = chaos.store_url(backend).await? else { return Ok(()) };
    let small = match backend {
        // SQLite has one writer connection whatever the load.
        Backend::Sqlite => url.clone(),
        Backend::Postgres => format!("{url}&max_connections=2&acquire_timeout=1s"),
        Backend::Redis => format!("{url}&pool_size=1"),
    };
    let server = chaos.launch(&small, 16).start().await?;
    let store = godel_core::store::open(&url).await?;
    let started = now_ms();
    let (ids, refused) = chaos.submit_concurrently(&server, 16).await?;
    chaos.drain(&store, &ids).await?;
    chaos.fault(started, now_ms(), HashSet::new());
    chaos.refused = refused;
    server.stop().await?;
    chaos.verdict(&store, &ids).await
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
    Redis,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Redis => "redis",
        }
    }
}

/// One fault: when it began and ended (ms since the epoch), and the tasks
/// the store showed held by what it hit, when that is known exactly.
#[derive(Debug)]
struct Fault {
    start: i64,
    end: i64,
    held: HashSet<String>,
}

/// One scenario's directory, ledger and record of faults.
#[derive(Debug)]
struct Chaos {
    name: String,
    dir: tempfile::TempDir,
    ledger: PathBuf,
    work: PathBuf,
    tasks: usize,
    faults: usize,
    record: Vec<Fault>,
    refused: usize,
    /// Whether local agents run each task in a fresh directory under `work`.
    per_task_dirs: bool,
    began: Instant,
}

impl Chaos {
    fn new(name: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ledger = dir.path().join("ledger");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work)?;
        let setting = |var: &str, default: usize| {
            std::env::var(var).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
        };
        Ok(Self {
            name: name.to_owned(),
            dir,
            ledger,
            work,
            tasks: setting("GODEL_CHAOS_TASKS", 40),
            faults: setting("GODEL_CHAOS_FAULTS", 2),
            record: Vec::new(),
            refused: 0,
            per_task_dirs: true,
            began: Instant::now(),
        })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn sqlite_url(&self) -> String {
        format!("sqlite://{}", Launch::store_path(&self.dir().join("server")).display())
    }

    /// A fresh namespace on the shared service of `backend` (which is never
    /// stopped), or `None` when the test should skip.
    async fn store_url(&self, backend: Backend) -> Result<Option<String>> {
        match backend {
            Backend::Sqlite => Ok(Some(self.sqlite_url())),
            Backend::Postgres => Ok(cluster::postgres().await?.map(|(url, _)| url)),
            Backend::Redis => {
                let base =
                    std::env::var("GODEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
                let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                let random = godel_core::TaskId::new().to_string();
                let sep = if base.contains('?') { '&' } else { '?' };
                // The core suite's sweep deletes `godel-t-<secs>-…` prefixes once stale.
                let url = format!("{base}{sep}prefix=godel-t-{secs}-{}", &random[random.len() - 8..]);
                match godel_core::store::open(&url).await {
                    Ok(_) => Ok(Some(url)),
                    Err(e @ (StoreError::Open { .. } | StoreError::Unavailable { .. })) => {
                        missing(&format!("Redis unavailable: {e}")).map(|()| None)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// A server in `dir/server` over `store`, with a local agent of `capacity`
    /// slots (0: none; the tasks then need a worker) in per-task directories.
    fn launch(&self, store: &str, capacity: u32) -> Launch {
        self.launch_node("server", store, capacity)
    }

    /// Like [`Chaos::launch`], for the node `node` in `dir/<node>`.
    fn launch_node(&self, node: &str, store: &str, capacity: u32) -> Launch {
        let server_dir = self.dir().join(node);
        std::fs::create_dir_all(&server_dir).expect("create the server's directory");
        let mut config = format!("{FAST_ENGINE}retry_initial = \"100ms\"\nretry_max = \"500ms\"\nnode = \"{node}\"\n");
        if capacity > 0 {
            config.push_str(&format!("[[agents]]\nid = \"local\"\ncapacity = {capacity}\n"));
        }
        if capacity > 0 && self.per_task_dirs {
            config.push_str(&format!("isolation = \"per-task\"\nworkdir = \"{}\"\n", self.work.display()));
        }
        Launch::new(&server_dir, &config).store(store)
    }

    /// A task whose command writes its start and end to the ledger.
    fn task(&self, capabilities: &Value, key: Option<String>) -> Value {
        let script = "echo \"start $GODEL_TASK_ID $GODEL_ATTEMPT $(date +%s%3N)\" >> \"$1\"; sleep 0.3; \
                      echo \"end $GODEL_TASK_ID $GODEL_ATTEMPT $(date +%s%3N)\" >> \"$1\"";
        let ledger = self.ledger.display().to_string();
        let mut task = json!({
            "command": ["sh", "-c", script, "sh", ledger],
            "capabilities": capabilities,
            "max_attempts": 20,
        });
        if let Some(key) = key {
            task["idempotency_key"] = json!(key);
        }
        task
    }

    /// Submits the batch in chunks; returns the acknowledged ids.
    async fn submit(&self, server: &Server, capabilities: Value) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(self.tasks);
        let all: Vec<Value> = (0..self.tasks).map(|_| self.task(&capabilities, None)).collect();
        for chunk in all.chunks(500) {
            let (status, body) = server.post("/api/v1/tasks/batch", &json!({ "tasks": chunk })).await?;
            if !status.is_success() {
                bail!("batch submit answered {status}: {body}");
            }
            let items = body["items"].as_array().or_else(|| body["tasks"].as_array()).context("batch items")?;
            ids.extend(items.iter().map(|t| t["id"].as_str().unwrap_or_default().to_owned()));
        }
        Ok(ids)
    }

    /// Submits the batch from `clients` concurrent submitters, retrying what
    /// is refused as retryable; returns the ids and how many submits were refused.
    async fn submit_concurrently(&self, server: &Server, clients: usize) -> Result<(Vec<String>, usize)> {
        let per_client = self.tasks.div_ceil(clients);
        let submitters = (0..clients).map(|c| async move {
            let mut ids = Vec::new();
            let mut refused = 0;
            for i in (c * per_client..(c + 1) * per_client).filter(|i| *i < self.tasks) {
                let task = self.task(&json!([]), Some(format!("chaos-{i}")));
                loop {
                    let (status, body) = server.post("/api/v1/tasks", &task).await?;
                    if status.is_success() {
                        ids.push(body["id"].as_str().context("a created task has an id")?.to_owned());
                        break;
                    }
                    if status.as_u16() != 503 || body["error"]["retryable"] != true {
                        bail!("a submit under a small pool answered {status}: {body}");
                    }
                    refused += 1;
                }
            }
            anyhow::Ok((ids, refused))
        });
        let mut ids = Vec::with_capacity(self.tasks);
        let mut refused = 0;
        for result in futures::future::join_all(submitters).await {
            let (mine, n) = result?;
            ids.extend(mine);
            refused += n;
        }
        Ok((ids, refused))
    }

    /// Waits until the ledger shows the share of runs that fault `n` should
    /// strike after, so that the faults fall while work is in flight.
    async fn wait_for_progress(&self, n: usize) -> Result<()> {
        let want = self.tasks * (n + 1) / (self.faults + 1);
        eventually_long(&format!("{want} runs to start"), async || {
            let starts = std::fs::read_to_string(&self.ledger)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("start"))
                .count();
            Ok((starts >= want.max(1)).then_some(()))
        })
        .await
    }

    fn fault(&mut self, start: i64, end: i64, held: HashSet<String>) {
        self.record.push(Fault { start, end, held });
    }

    /// Waits until every task in `ids` is completed (or the deadline passes;
    /// the verdict then counts what is lost).
    async fn drain(&self, store: &Arc<dyn Store>, ids: &[String]) -> Result<()> {
        let tenant = TenantId::default_tenant();
        let want = u64::try_from(ids.len())?;
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while Instant::now() < deadline {
            match store.counts(&tenant, Timestamp::now()).await {
                Ok(counts) if counts.status(TaskStatus::Completed) >= want => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(())
    }

    /// Checks the ledger and the store against the guarantees and prints the figures.
    async fn verdict(&self, store: &Arc<dyn Store>, ids: &[String]) -> Result<()> {
        let tenant = TenantId::default_tenant();
        let mut lost = Vec::new();
        let mut completed_twice = Vec::new();
        let mut statuses = HashMap::new();
        let mut query = TaskQuery { limit: 100, ..TaskQuery::default() };
        loop {
            let page = store.list(&tenant, &query).await?;
            for task in &page.items {
                let completions =
                    store.history(&tenant, task.id).await?.iter().filter(|h| h.status == TaskStatus::Completed).count();
                if completions > 1 {
                    completed_twice.push(task.id.to_string());
                }
                statuses.insert(task.id.to_string(), task.status);
            }
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        for id in ids {
            if statuses.get(id) != Some(&TaskStatus::Completed) {
                lost.push(format!("{id} ({:?})", statuses.get(id)));
            }
        }
        let runs = self.runs()?;
        let never_ran: Vec<&String> = ids.iter().filter(|id| !runs.contains_key(*id)).collect();
        let twice: Vec<&String> = runs.iter().filter(|(_, r)| r.len() > 1).map(|(id, _)| id).collect();
        let unexplained: Vec<&String> = twice.iter().copied().filter(|id| !self.explained(id, &runs[*id])).collect();
        let processes = leaked_processes(&self.ledger)?;
        let dirs: Vec<String> =
            std::fs::read_dir(&self.work)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        let leaked_dirs = dirs.len();
        #[allow(clippy::print_stderr, reason = "the scenario's figures, recorded in docs/reliability.md")]
        {
            eprintln!(
                "chaos: {}: {} tasks, {} faults, {} lost, {} completed twice, {} ran twice ({} not in flight at a fault), \
                 {} submits refused and retried, {} leaked processes, {} leaked directories, {:.1} s",
                self.name,
                ids.len(),
                self.record.len(),
                lost.len(),
                completed_twice.len(),
                twice.len(),
                unexplained.len(),
                self.refused,
                processes.len(),
                leaked_dirs,
                self.began.elapsed().as_secs_f64()
            );
        }
        assert_eq!(ids.len(), self.tasks, "every submit was acknowledged");
        assert!(lost.is_empty(), "{}: tasks lost: {lost:?}", self.name);
        assert!(never_ran.is_empty(), "{}: completed tasks that never ran: {never_ran:?}", self.name);
        assert!(completed_twice.is_empty(), "{}: completed twice: {completed_twice:?}", self.name);
        assert!(unexplained.is_empty(), "{}: ran twice without being in flight at a fault: {unexplained:?}", self.name);
        assert!(processes.is_empty(), "{}: task processes outlived the server: {processes:?}", self.name);
        // A SIGKILLed server leaves the directories of its runs in flight behind
        // until a restart reaps them; nothing else may be left.
        let killed: HashSet<&String> = self.record.iter().flat_map(|f| &f.held).collect();
        let stray: Vec<&String> = dirs.iter().filter(|d| !killed.contains(d)).collect();
        assert!(stray.is_empty(), "{}: per-task directories left behind: {stray:?}", self.name);
        Ok(())
    }

    /// True if one of a task's runs but the last was in flight at a fault.
    fn explained(&self, id: &str, runs: &[Run]) -> bool {
        self.record.iter().any(|fault| {
            fault.held.contains(id)
                || runs[..runs.len() - 1]
                    .iter()
                    .any(|run| run.start <= fault.end && run.end.is_none_or(|end| end >= fault.start - LEASE_MS))
        })
    }

    /// The ledger's runs per task, by start time.
    fn runs(&self) -> Result<HashMap<String, Vec<Run>>> {
        let text = std::fs::read_to_string(&self.ledger).unwrap_or_default();
        let mut runs: HashMap<String, Vec<Run>> = HashMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [what, id, attempt, at] = fields[..] else { bail!("ledger line {line:?}") };
            let at: i64 = at.parse().with_context(|| format!("ledger line {line:?}"))?;
            let task = runs.entry(id.to_owned()).or_default();
            match what {
                "start" => task.push(Run { attempt: attempt.to_owned(), start: at, end: None }),
                "end" => {
                    let run = task.iter_mut().find(|r| r.attempt == attempt && r.end.is_none());
                    run.with_context(|| format!("an end without a start: {line:?}"))?.end = Some(at);
                }
                _ => bail!("ledger line {line:?}"),
            }
        }
        for task in runs.values_mut() {
            task.sort_by_key(|r| r.start);
        }
        Ok(runs)
    }
}

/// One run of a task's command, from the ledger.
#[derive(Debug)]
struct Run {
    attempt: String,
    start: i64,
    end: Option<i64>,
}

/// The tasks the store shows leased (by `agent`, if given): what a fault
/// that just struck their holder had in flight.
async fn held(store: &Arc<dyn Store>, agent: Option<&str>) -> Result<HashSet<String>> {
    let filter = TaskFilter {
        statuses: vec![TaskStatus::Assigned, TaskStatus::Running],
        agent: agent.map(AgentId::new).transpose()?,
        ..TaskFilter::default()
    };
    let query = TaskQuery { filter, limit: 1_000, ..TaskQuery::default() };
    let page = store.list(&TenantId::default_tenant(), &query).await?;
    Ok(page.items.iter().map(|t| t.id.to_string()).collect())
}

/// Waits until the server reports its store healthy again.
async fn healthy(server: &Server) -> Result<()> {
    eventually_long("/health to answer 200", async || {
        let (status, _) = server.get("/health").await?;
        Ok((status == 200).then_some(()))
    })
    .await
}

/// Processes whose command line names `ledger`: task processes still running.
fn leaked_processes(ledger: &Path) -> Result<Vec<String>> {
    let needle = ledger.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    Ok(found)
}

/// The `host:port` of a store URL.
fn address_of(url: &str) -> Result<SocketAddr> {
    let rest = url.split_once("://").map(|(_, r)| r).context("a URL")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default().replace("localhost", "127.0.0.1");
    host_port.parse().with_context(|| format!("the address in {url} (an IP and a port)"))
}

fn now_ms() -> i64 {
    Timestamp::now().as_millis()
}
