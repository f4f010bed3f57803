//! The database goes away under a running server and comes back: the server
//! reports it unhealthy meanwhile, recovers on its own, and every task it
//! acknowledged completes. Each test starts a private Redis or PostgreSQL
//! (never the shared ones, which other tests use) so that it can kill it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::{Child, Command};

use super::harness::{FAST_ENGINE, Launch, Server, eventually};

/// Skips (printing why) or, under `GODEL_TEST_REQUIRE_SERVICES=1`, fails.
fn missing(what: &str) -> Result<()> {
    if std::env::var("GODEL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        bail!("{what} is required (GODEL_TEST_REQUIRE_SERVICES=1)");
    }
    #[allow(clippy::print_stderr, reason = "a skipped test says why")]
    {
        eprintln!("skipping: {what}");
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config() -> String {
    format!("{FAST_ENGINE}[[agents]]\nid = \"local\"\ncapacity = 4\n")
}

/// Submits `n` tasks and returns the ids the server acknowledged.
async fn submit(server: &Server, n: usize) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(server.submit(&json!({"command": ["sh", "-c", format!("echo {i}")]})).await?);
    }
    Ok(ids)
}

/// Waits until `/health` says the store is down, and checks what a client sees meanwhile.
async fn sees_the_outage(server: &Server) -> Result<()> {
    let health = eventually("/health to report the store down", async || {
        let (status, body) = server.get("/health").await?;
        Ok((status == StatusCode::SERVICE_UNAVAILABLE).then_some(body))
    })
    .await?;
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(health["store"]["ok"], false, "{health}");
    let (status, _) = server.get("/health/ready").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not ready while the store is down");
    let (status, _) = server.get("/health/live").await?;
    assert_eq!(status, StatusCode::OK, "alive all along");
    let (status, body) = server.post("/api/v1/tasks", &json!({"command": ["true"]})).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a submit during the outage is refused, not lost: {body}");
    assert_eq!(body["error"]["retryable"], true, "{body}");
    Ok(())
}

/// After the store is back: healthy again, and every acknowledged task completes.
async fn recovers(server: &Server, acknowledged: &[String]) -> Result<()> {
    eventually("/health to be 200 again", async || {
        let (status, _) = server.get("/health").await?;
        Ok((status == StatusCode::OK).then_some(()))
    })
    .await?;
    let more = submit(server, 10).await?;
    for id in acknowledged.iter().chain(&more) {
        server.wait_for_status(id, "completed").await?;
    }
    Ok(())
}

/// A private `redis-server` persisting every write (`appendfsync always`).
struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    async fn start(dir: &Path, port: u16) -> Result<Self> {
        let mut redis = Self { port, dir: dir.to_path_buf(), child: None };
        redis.spawn().await?;
        Ok(redis)
    }

    async fn spawn(&mut self) -> Result<()> {
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

    async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_acknowledged() -> Result<()> {
    if which("redis-server").is_none() {
        return missing("redis-server is not installed");
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("redis");
    std::fs::create_dir_all(&data)?;
    let port = free_port()?;
    let mut redis = Redis::start(&data, port).await?;
    let server =
        Launch::new(dir.path(), &config()).store(&format!("redis://127.0.0.1:{port}?prefix=outage")).start().await?;

    let acknowledged = submit(&server, 50).await?;
    redis.kill().await?;
    sees_the_outage(&server).await?;
    redis.spawn().await?;
    recovers(&server, &acknowledged).await
}

/// A private PostgreSQL cluster in `dir`, run as the `postgres` OS user
/// (initdb refuses root), listening on loopback `port` only.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Postgres {
    async fn start(dir: &Path, port: u16) -> Result<Option<Self>> {
        let Some(bin) = postgres_bin() else { return Ok(None) };
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        as_postgres(&["chown", "-R", "postgres", &dir.display().to_string()], true).await?;
        let pg = Self { bin, data, port };
        pg.run("initdb", &["-D", &pg.data.display().to_string(), "-A", "trust", "-U", "postgres", "--no-sync"]).await?;
        pg.ctl("start").await?;
        Ok(Some(pg))
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn ctl(&self, action: &str) -> Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_nothing_acknowledged() -> Result<()> {
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
    if !root || which("runuser").is_none() {
        return missing("a private PostgreSQL needs root (to run initdb as the postgres user)");
    }
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let Some(pg) = Postgres::start(dir.path(), port).await? else {
        return missing("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) are not installed");
    };
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir)?;
    let server = Launch::new(&server_dir, &config()).store(&pg.url()).start().await?;

    let acknowledged = submit(&server, 50).await?;
    pg.ctl("stop").await?;
    sees_the_outage(&server).await?;
    pg.ctl("start").await?;
    recovers(&server, &acknowledged).await?;
    let (_, health) = server.get("/health").await?;
    assert_eq!(health["store"]["backend"], "postgres", "{health}");
    Ok(())
}
