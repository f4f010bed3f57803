//! Private database servers for the tests that stop, kill and restart them
//! (`outage`, `chaos`): a `redis-server` and a PostgreSQL cluster in the
//! test's temporary directory, on ports of their own. The shared PostgreSQL
//! on 5432 and Redis on 6379 are never touched: other tests use them.
//!
//! A private server listens on a port below the kernel's ephemeral range.
//! A client that keeps reconnecting to a stopped server on an ephemeral port
//! can be handed that very port as its own source port and connect to
//! itself (TCP simultaneous open); the restarted server then cannot bind it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::server::harness::eventually;

/// Skips (printing why) or, under `GODEL_TEST_REQUIRE_SERVICES=1`, fails.
pub(crate) fn missing(what: &str) -> Result<()> {
    if std::env::var("GODEL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        bail!("{what} is required (GODEL_TEST_REQUIRE_SERVICES=1)");
    }
    #[allow(clippy::print_stderr, reason = "a skipped test says why")]
    {
        eprintln!("skipping: {what}");
    }
    Ok(())
}

/// A free loopback port below the ephemeral range, for a server that will be restarted.
pub(crate) fn service_port() -> Result<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral = range.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(32_768);
    let low = ephemeral.saturating_sub(12_000).max(1_024);
    for _ in 0..100 {
        let port = rand_port(low, ephemeral);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {low}..{ephemeral}")
}

fn rand_port(low: u16, high: u16) -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let spread = u32::from(high - low);
    low + u16::try_from((nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % spread).unwrap_or(0)
}

/// A private `redis-server` persisting every write (`appendfsync always`).
#[derive(Debug)]
pub(crate) struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts one with its files in `dir`; `None` (skip) when Redis is not installed.
    pub(crate) async fn start(dir: &Path) -> Result<Option<Self>> {
        if which("redis-server").is_none() {
            return missing("redis-server is not installed").map(|()| None);
        }
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        let mut redis = Self { port: service_port()?, dir, child: None };
        redis.spawn().await?;
        Ok(Some(redis))
    }

    /// `redis://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again after [`Redis::kill`], on the same port and files.
    pub(crate) async fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start redis-server")?;
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server to listen", async || {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok())
        })
        .await?;
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }
}

/// A private PostgreSQL cluster in a test's directory, run as the `postgres`
/// OS user (initdb refuses root), listening on loopback only.
#[derive(Debug)]
pub(crate) struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Postgres {
    /// Creates and starts one in `dir`; `None` (skip) when this machine cannot.
    pub(crate) async fn start(dir: &Path) -> Result<Option<Self>> {
        let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
        if !root || which("runuser").is_none() {
            return missing("a private PostgreSQL needs root (to run initdb as the postgres user)").map(|()| None);
        }
        let Some(bin) = postgres_bin() else {
            return missing("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) are not installed")
                .map(|()| None);
        };
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        as_postgres(&["chown", "-R", "postgres", &dir.display().to_string()], true).await?;
        let pg = Self { bin, data, port: service_port()? };
        pg.run("initdb", &["-D", &pg.data.display().to_string(), "-A", "trust", "-U", "postgres", "--no-sync"]).await?;
        pg.ctl("start").await?;
        Ok(Some(pg))
    }

    /// The URL of its `postgres` database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl start`, or `pg_ctl stop -m immediate` (a crash: no checkpoint,
    /// recovery from the WAL on the next start).
    pub(crate) async fn ctl(&self, action: &str) -> Result<()> {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on", self.port, self.data.display());
        let data = self.data.display().to_string();
        let mut args = vec!["-D", &data, "-w", "-l"];
        let log = self.data.join("log").display().to_string();
        args.push(&log);
        if action == "start" {
            args.extend(["-o", &options]);
        } else {
            args.extend(["-m", "immediate"]);
        }
        args.push(action);
        self.run("pg_ctl", &args).await
    }

    async fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool).display().to_string();
        let mut argv = vec![program.as_str()];
        argv.extend(args);
        as_postgres(&argv, false).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let program = self.bin.join("pg_ctl").display().to_string();
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", &program, "-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `argv` as the `postgres` user (or as is, with `as_root`).
async fn as_postgres(argv: &[&str], as_root: bool) -> Result<()> {
    let mut command = if as_root {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).args(argv);
        c
    };
    let out = command.stdin(Stdio::null()).output().await.with_context(|| format!("run {argv:?}"))?;
    if !out.status.success() {
        bail!("{argv:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).collect();
    versions.sort();
    versions.into_iter().rev().find(|bin| bin.join("initdb").exists())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.exists())
}
