//! The real `godel-server` binary as a child process, for the server tests:
//! where the binary is, how a test starts one on a free port over a store
//! and a `godel.toml` in its own temporary directory, how it talks to it
//! (reqwest for HTTP, tokio-tungstenite for `/events`), and how it waits for
//! a condition by polling it instead of sleeping a fixed time.
//!
//! Cargo gives an integration test the paths of its own package's binaries
//! only (`CARGO_BIN_EXE_*`), and artifact dependencies are unstable, so the
//! binary is found beside the test executable in `target/<profile>/`.
//! Cargo builds a package's binaries before its integration tests, and
//! `godel-server` has integration tests of its own, so `cargo test
//! --workspace` always builds it first. `cargo test -p godel-e2e` does not:
//! after changing the server run `cargo build -p godel-server` first. The
//! harness refuses a missing binary and one older than any source file cargo
//! built it from (its dep-info file lists them), so a test never passes or
//! fails against yesterday's server. `GODEL_SERVER_BIN` names another binary
//! (say a release build) and skips that check.
//!
//! Every server is started with `--bind 127.0.0.1:0 --log-format json`; the
//! harness reads the bound address from the `godel-server started` log line.
//! Its stdout and stderr go to files in the test's directory, so the server
//! never blocks on a full pipe and a failure can quote them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any one condition may take before the test fails. Generous, so
/// that a slow machine passes; it exists so that a hang fails instead.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// How long a dropped server gets to shut down gracefully (so that it stops
/// the processes of its tasks) before it is killed.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// Engine settings that keep the tests fast: a short lease and quick
/// heartbeats, so that cancels are seen at once, and a short shutdown grace.
pub(crate) const FAST_ENGINE: &str = r#"
[engine]
lease = "2s"
heartbeat_interval = "200ms"
poll_interval = "100ms"
reclaim_interval = "500ms"
kill_grace = "1s"
shutdown_grace = "500ms"
"#;

/// Environment variables the server reads; removed so that the caller's
/// environment cannot change what a test starts.
const SERVER_ENV: [&str; 7] = [
    "GODEL_CONFIG",
    "GODEL_BIND",
    "GODEL_STORE",
    "GODEL_LOG_FORMAT",
    "GODEL_POLICY",
    "GODEL_SHUTDOWN_GRACE",
    "GODEL_LOG",
];

/// Numbers the files of each launch, so that restarts in one directory keep their logs apart.
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How to start a server: a configuration and a store in `dir`.
#[derive(Debug)]
pub(crate) struct Launch {
    dir: PathBuf,
    config: String,
    bind: String,
    store: Option<String>,
    pid_file: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Launch {
    /// A server in `dir` with `config` as its `godel.toml`, over `dir/godel.db`.
    pub(crate) fn new(dir: &Path, config: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            config: config.to_owned(),
            bind: "127.0.0.1:0".to_owned(),
            store: None,
            pid_file: None,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the server.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Uses the store at `url` instead of `dir/godel.db`.
    pub(crate) fn store(mut self, url: &str) -> Self {
        self.store = Some(url.to_owned());
        self
    }

    /// Listens on `addr` instead of a free port.
    pub(crate) fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr.to_string();
        self
    }

    /// Passes `--pid-file`.
    pub(crate) fn pid_file(mut self, path: &Path) -> Self {
        self.pid_file = Some(path.to_path_buf());
        self
    }

    /// The SQLite file every launch in this directory shares.
    pub(crate) fn store_path(dir: &Path) -> PathBuf {
        dir.join("godel.db")
    }

    /// Starts the server and waits until it listens and is ready.
    pub(crate) async fn start(self) -> Result<Server> {
        let dir = self.dir.clone();
        let mut server = self.spawn()?;
        let addr = server.wait_for_address().await?;
        server.addr = Some(addr);
        server.key = admin_key(&dir)?;
        server.http = authenticated(&server.key)?;
        let ready = eventually("GET /health/ready to answer 200", async || {
            if let Some(status) = server.try_exit_status()? {
                bail!("the server exited with {status} before it was ready: {}", server.logs());
            }
            let response = server.http.get(server.url("/health/ready")).send().await;
            Ok(response.ok().filter(|r| r.status() == StatusCode::OK).map(drop))
        });
        ready.await.with_context(|| server.logs())?;
        Ok(server)
    }

    /// Starts a server that must fail to start, and returns how it exited
    /// and what it wrote to stderr.
    pub(crate) async fn expect_failure(self) -> Result<(ExitStatus, String)> {
        let mut server = self.spawn()?;
        let status = match tokio::time::timeout(DEADLINE, server.child.wait()).await {
            Ok(status) => status?,
            Err(_) => bail!("the server was expected to fail but still runs after {DEADLINE:?}: {}", server.logs()),
        };
        let stderr = std::fs::read_to_string(&server.stderr).context("read the server's stderr")?;
        Ok((status, stderr))
    }

    fn spawn(self) -> Result<Server> {
        let n = LAUNCHES.fetch_add(1, Ordering::Relaxed);
        let config = self.dir.join(format!("godel-{n}.toml"));
        std::fs::write(&config, &self.config).with_context(|| format!("write {}", config.display()))?;
        let stdout = self.dir.join(format!("server-{n}.stdout"));
        let stderr = self.dir.join(format!("server-{n}.stderr"));
        let mut command = Command::new(binary()?);
        command
            .arg("--config")
            .arg(&config)
            .arg("--bind")
            .arg(&self.bind)
            .arg("--store")
            .arg(self.store.unwrap_or_else(|| format!("sqlite://{}", Launch::store_path(&self.dir).display())))
            .args(["--log-format", "json"]);
        if let Some(pid_file) = &self.pid_file {
            command.arg("--pid-file").arg(pid_file);
        }
        for key in SERVER_ENV {
            command.env_remove(key);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            // Tasks of agents without a work directory run here.
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).context("create the server's stdout file")?)
            .stderr(std::fs::File::create(&stderr).context("create the server's stderr file")?)
            // Whatever fails, dropping the handle still kills the server.
            .kill_on_drop(true)
            .spawn()
            .context("spawn godel-server")?;
        let http = reqwest::Client::builder().no_proxy().timeout(DEADLINE).build()?;
        Ok(Server { child, addr: None, http, key: String::new(), stdout, stderr })
    }
}

/// A running `godel-server` process.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    addr: Option<SocketAddr>,
    http: reqwest::Client,
    /// The admin key the requests carry.
    key: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr.expect("a started server has an address")
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> Result<u32> {
        self.child.id().context("the server has exited")
    }

    /// `http://<addr><path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// The admin key the harness's requests carry.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// A WebSocket request for `url` carrying the admin key.
    pub(crate) fn ws_request(&self, url: &str) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", self.key).parse()?);
        Ok(request)
    }

    /// The HTTP client the harness uses, for requests the helpers do not cover.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request with an optional JSON body; returns the status and the
    /// body parsed as JSON (`Value::Null` if empty).
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let bytes = response.bytes().await.with_context(|| format!("read the body of {method} {path}"))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{method} {path} answered {status} with a body that is not JSON: {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })?
        };
        Ok((status, value))
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value)> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// Submits a task and returns its id.
    pub(crate) async fn submit(&self, task: &Value) -> Result<String> {
        let (status, body) = self.post("/api/v1/tasks", task).await?;
        if status != StatusCode::CREATED {
            bail!("POST /api/v1/tasks answered {status}: {body}");
        }
        Ok(body["id"].as_str().context("a created task has an id")?.to_owned())
    }

    /// A task as the API shows it.
    pub(crate) async fn task(&self, id: &str) -> Result<Value> {
        let (status, body) = self.get(&format!("/api/v1/tasks/{id}")).await?;
        if status != StatusCode::OK {
            bail!("GET task {id} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Waits until the task has `status`, and returns it.
    pub(crate) async fn wait_for_status(&self, id: &str, status: &str) -> Result<Value> {
        let mut last = Value::Null;
        let found = eventually(&format!("task {id} to be {status}"), async || {
            last = self.task(id).await?;
            Ok((last["status"] == status).then(|| last.clone()))
        })
        .await;
        found.with_context(|| format!("the task is {last}; {}", self.logs()))
    }

    /// Opens `/events` with `query` (e.g. `?since=12`, or empty).
    pub(crate) async fn events(&self, query: &str) -> Result<Events> {
        let url = format!("ws://{}/events{query}", self.addr());
        let (socket, _) =
            tokio_tungstenite::connect_async(self.ws_request(&url)?).await.with_context(|| format!("connect {url}"))?;
        Ok(Events { socket })
    }

    /// Sends `signal` to the server.
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.pid()?)?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("send {signal} to the server"))
    }

    /// Waits for the server to exit by itself (after a signal) and returns how it did.
    pub(crate) async fn exit(mut self) -> Result<ExitStatus> {
        match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("the server did not exit within {DEADLINE:?}: {}", self.logs()),
        }
    }

    /// Stops the server with SIGTERM and checks that it exited with 143.
    pub(crate) async fn stop(self) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        let logs = self.logs();
        let status = self.exit().await?;
        if status.code() != Some(143) {
            bail!("the server ended with {status} after SIGTERM, not 143: {logs}");
        }
        Ok(())
    }

    /// Its stdout and stderr so far, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_else(|e| format!("<unreadable: {e}>"));
        format!("server stdout:\n{}\nserver stderr:\n{}", read(&self.stdout), read(&self.stderr))
    }

    fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Reads the address from the `godel-server started` line of the JSON log.
    async fn wait_for_address(&mut self) -> Result<SocketAddr> {
        let stdout = self.stdout.clone();
        let found = eventually("the `godel-server started` log line", async || {
            if let Some(status) = self.try_exit_status()? {
                bail!("the server exited with {status} before it listened");
            }
            let text = std::fs::read_to_string(&stdout).context("read the server's stdout")?;
            // Only whole lines: the last one may still be being written.
            let lines = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
            for line in lines {
                let Ok(entry) = serde_json::from_str::<Value>(line) else { continue };
                if entry["message"] == "godel-server started" {
                    let addr = entry["addr"].as_str().with_context(|| format!("no addr in {line}"))?;
                    return Ok(Some(addr.parse().with_context(|| format!("parse the address in {line}"))?));
                }
            }
            Ok(None)
        });
        found.await.with_context(|| self.logs())
    }
}

impl Drop for Server {
    /// A test that fails half-way leaves its server running: ask it to shut
    /// down gracefully, which stops the processes of its tasks, and give it
    /// a moment before `kill_on_drop` ends it. Then show its logs if the
    /// test panicked.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && self.signal(Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + DROP_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        if std::thread::panicking() {
            #[allow(clippy::print_stderr, reason = "a failing test's diagnostics")]
            {
                eprintln!("{}", self.logs());
            }
        }
    }
}

/// A WebSocket connection to `/events`.
#[derive(Debug)]
pub(crate) struct Events {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Events {
    /// Sends a JSON text frame.
    pub(crate) async fn send(&mut self, message: &Value) -> Result<()> {
        self.send_frame(Message::text(message.to_string())).await
    }

    /// Sends any frame, well-formed or not.
    pub(crate) async fn send_frame(&mut self, frame: Message) -> Result<()> {
        self.socket.send(frame).await.context("send a WebSocket message")
    }

    /// Subscribes to `patterns` and returns the server's `subscribed` answer.
    pub(crate) async fn subscribe(&mut self, patterns: &[&str]) -> Result<Value> {
        self.send(&serde_json::json!({"action": "subscribe", "patterns": patterns})).await?;
        self.next_of_type("subscribed").await
    }

    /// The next JSON text message, waiting at most [`DEADLINE`].
    pub(crate) async fn next(&mut self) -> Result<Value> {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .with_context(|| format!("no WebSocket message within {DEADLINE:?}"))?
                .context("the server closed the WebSocket")?
                .context("read a WebSocket message")?;
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).context("parse a WebSocket message"),
                Message::Close(frame) => bail!("the server closed the WebSocket: {frame:?}"),
                // Pings are answered by tungstenite itself.
                _ => continue,
            }
        }
    }

    /// The next message, which must be of `kind`.
    pub(crate) async fn next_of_type(&mut self, kind: &str) -> Result<Value> {
        let message = self.next().await?;
        if message["type"] != kind {
            bail!("expected a {kind} message, got {message}");
        }
        Ok(message)
    }

    /// Waits for the server to close the connection, and returns the close code.
    pub(crate) async fn closed(&mut self) -> Result<u16> {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .with_context(|| format!("the WebSocket stayed open for {DEADLINE:?}"))?
                .context("the connection ended without a close frame")?
                .context("read a WebSocket message")?;
            if let Message::Close(frame) = message {
                return Ok(frame.map_or(1005, |f| f.code.into()));
            }
        }
    }

    /// Closes the connection.
    pub(crate) async fn close(mut self) -> Result<()> {
        self.socket.close(None).await.context("close the WebSocket")
    }
}

/// A `godel worker` process with the capability `remote`, its output in
/// `worker-<name>.log` (appended to, so that a restart keeps the first run's).
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) child: Child,
    log: PathBuf,
}

impl Worker {
    /// Starts a worker named `name` in `dir`, connected to `server`.
    pub(crate) fn start(dir: &Path, server: &Server, name: &str) -> Result<Self> {
        Self::start_with(dir, server, name, &[])
    }

    /// Starts a worker with more arguments, e.g. `["--concurrency", "4"]`.
    pub(crate) fn start_with(dir: &Path, server: &Server, name: &str, args: &[&str]) -> Result<Self> {
        let log = dir.join(format!("worker-{name}.log"));
        let open = || std::fs::File::options().create(true).append(true).open(&log);
        let child = Command::new(cli_binary()?)
            .args(["worker", "--server", &server.url(""), "--name", name, "--capability", "remote"])
            .args(["--log-format", "json"])
            .args(args)
            .env("GODEL_LOG", "debug")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .kill_on_drop(true)
            .spawn()
            .context("spawn godel worker")?;
        Ok(Self { child, log })
    }

    /// What it logged so far, for failure messages.
    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the worker.
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id().context("the worker has exited")?)?;
        Ok(kill(Pid::from_raw(pid), signal)?)
    }

    /// Waits for the worker to exit and returns its exit code.
    pub(crate) async fn exit_code(&mut self) -> Result<Option<i32>> {
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .with_context(|| format!("the worker did not exit: {}", self.logs()))??;
        Ok(status.code())
    }
}

/// Polls `probe` every [`POLL`] until it returns `Some`, for at most [`DEADLINE`].
pub(crate) async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("gave up after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A `sh -c` command that waits until `gate` exists (for at most a minute,
/// so that a failed test leaves no process behind for long), then runs `then`.
/// In `then`, `$1` is the gate and `$2` is `arg`.
pub(crate) fn gated(gate: &Path, then: &str, arg: &str) -> Value {
    let script =
        format!("i=0; while [ ! -e \"$1\" ]; do i=$((i+1)); [ $i -gt 3000 ] && exit 3; sleep 0.02; done; {then}");
    serde_json::json!(["sh", "-c", script, "sh", gate, arg])
}

/// The `godel-server` binary to test (`GODEL_SERVER_BIN` overrides it).
fn binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    locate(&BINARY, "godel-server", "godel-server", "GODEL_SERVER_BIN")
}

/// The `godel` CLI binary to test (`GODEL_CLI_BIN` overrides it).
pub(crate) fn cli_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    locate(&BINARY, "godel", "godel-cli", "GODEL_CLI_BIN")
}

fn locate(cache: &'static OnceLock<Result<PathBuf, String>>, name: &str, package: &str, var: &str) -> Result<PathBuf> {
    let found = cache.get_or_init(|| match std::env::var_os(var) {
        Some(path) => Ok(PathBuf::from(path)),
        None => built_binary(name, package, var).map_err(|e| format!("{e:#}")),
    });
    found.clone().map_err(anyhow::Error::msg)
}

/// `target/<profile>/<name>`, checked to exist and to be newer than its sources.
fn built_binary(name: &str, package: &str, var: &str) -> Result<PathBuf> {
    // The test runs as target/<profile>/deps/e2e-<hash>.
    let exe = std::env::current_exe().context("locate the test executable")?;
    let dir = exe.parent().and_then(Path::parent).context("the test executable is not in target/<profile>/deps")?;
    let binary = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = match std::fs::metadata(&binary) {
        Ok(meta) => meta.modified()?,
        Err(_) => bail!(
            "{} is missing: run `cargo build -p {package}` (`cargo test --workspace` builds it), \
             or point {var} at a {name} binary",
            binary.display()
        ),
    };
    if let Some(source) = newer_source(&dir.join(format!("{name}.d")), built)? {
        bail!(
            "{} is older than {}: run `cargo build -p {package}` (`cargo test --workspace` builds it), \
             or point {var} at a {name} binary",
            binary.display(),
            source.display()
        );
    }
    Ok(binary)
}

/// A source file listed in cargo's dep-info file `dep_info` that changed
/// after `built` (or is gone), if any. A missing dep-info file proves nothing.
fn newer_source(dep_info: &Path, built: SystemTime) -> Result<Option<PathBuf>> {
    let Ok(text) = std::fs::read_to_string(dep_info) else { return Ok(None) };
    // `target: dep dep …`, with spaces in paths escaped as `\ `.
    let Some((_, deps)) = text.lines().next().and_then(|line| line.split_once(": ")) else { return Ok(None) };
    let deps = deps.replace("\\ ", "\u{0}");
    for dep in deps.split_whitespace() {
        let path = PathBuf::from(dep.replace('\u{0}', " "));
        let changed = std::fs::metadata(&path).and_then(|m| m.modified()).map_or(true, |modified| modified > built);
        if changed {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// An HTTP client that sends `key` with every request.
pub(crate) fn authenticated(key: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse()?);
    Ok(reqwest::Client::builder().no_proxy().timeout(DEADLINE).default_headers(headers).build()?)
}

/// The admin key a server in `dir` can be called with. A server writes its
/// first admin key into its state directory (`.godel`, under the directory
/// it runs in) before it listens; a node joining a store that has keys
/// already writes none, and uses the key of a node started beside it.
fn admin_key(dir: &Path) -> Result<String> {
    let file = |dir: &Path| dir.join(".godel").join("admin.key");
    let mut candidates = vec![file(dir)];
    if let Some(parent) = dir.parent() {
        for sibling in std::fs::read_dir(parent)?.flatten() {
            candidates.push(file(&sibling.path()));
        }
    }
    let key = candidates.iter().find_map(|path| std::fs::read_to_string(path).ok());
    Ok(key.with_context(|| format!("no admin.key in {} or beside it", dir.display()))?.trim().to_owned())
}
