//! The fixture every test drives: a real `godel-server` started in-process
//! on a free loopback port over a SQLite file in its own temporary
//! directory, with short engine intervals and one process agent; the
//! helpers that wait for a condition by polling it (never a fixed sleep);
//! and a small TCP proxy that a test can cut to drop the client's
//! connections without stopping the server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use godel_sdk::embed::{TaskId, TaskStatus};
use godel_sdk::{Client, Error, Event, EventStream, Task};
use godel_server::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How long any one condition may take before the test fails. Generous so
/// that a loaded machine passes; it exists so that a hang fails instead.
pub(crate) const DEADLINE: Duration = Duration::from_secs(15);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(10);

/// Engine settings that keep the tests fast: quick polls and heartbeats, so
/// that claims and cancels are seen at once, short grace periods, and
/// retries after a few milliseconds.
const FAST_ENGINE: &str = r#"
[engine]
lease = "2s"
heartbeat_interval = "100ms"
poll_interval = "50ms"
reclaim_interval = "500ms"
kill_grace = "500ms"
shutdown_grace = "200ms"
retry_initial = "10ms"
retry_max = "20ms"
"#;

/// One process agent. Command tasks run their own argv; prompt tasks run
/// the template, which prints the prompt.
pub(crate) const WORKER: &str = r#"
[[agents]]
id = "worker"
capacity = 4
capabilities = ["sh"]
command = ["sh", "-c", "printf '%s\n' \"$1\"", "sh", "{prompt}"]
"#;

/// A server running in this process. Dropping it without [`TestServer::stop`]
/// still tells it to shut down, so a failing test does not leave it serving.
#[derive(Debug)]
pub(crate) struct TestServer {
    client: Client,
    addr: SocketAddr,
    toml: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with the [`WORKER`] agent.
    pub(crate) async fn start() -> Result<Self> {
        Self::start_with(WORKER).await
    }

    /// A server with these `[[agents]]`.
    pub(crate) async fn start_with(agents: &str) -> Result<Self> {
        let dir = tempfile::tempdir().context("create a temporary directory")?;
        let store = dir.path().join("godel.db");
        // The state directory (the first admin key) stays in the temporary directory too.
        let toml = format!(
            "store = \"sqlite://{}\"\nstate_dir = \"{}\"\n{FAST_ENGINE}\n{agents}",
            store.display(),
            dir.path().join("state").display()
        );
        let (addr, shutdown, handle) = launch(&toml, "127.0.0.1:0".parse()?).await?;
        // The admin key the server wrote on its first start.
        let key = std::fs::read_to_string(dir.path().join("state").join(godel_server::ADMIN_KEY_FILE))
            .context("the server's first admin key")?;
        let client = Client::new(&format!("http://{addr}"))?.with_api_key(key.trim())?;
        Ok(Self { client, addr, toml, shutdown, handle: Some(handle), dir })
    }

    /// A client for `url` (a proxy in front of the server) with the server's admin key.
    pub(crate) fn client_at(&self, url: &str) -> Result<Client> {
        let key = std::fs::read_to_string(self.dir().join("state").join(godel_server::ADMIN_KEY_FILE))?;
        Ok(Client::new(url)?.with_api_key(key.trim())?)
    }

    /// A client for it.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its temporary directory (the store lives there).
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Shuts it down and checks that it stopped cleanly.
    pub(crate) async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        let handle = self.handle.take().context("the server is not running")?;
        match tokio::time::timeout(DEADLINE, handle).await {
            Ok(joined) => joined.context("the server task panicked")?.context("the server stopped with an error"),
            Err(_) => bail!("the server did not stop within {DEADLINE:?}"),
        }
    }

    /// Starts it again on the same port over the same store.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        if self.handle.is_some() {
            self.stop().await?;
        }
        let (addr, shutdown, handle) = launch(&self.toml, self.addr).await?;
        assert_eq!(addr, self.addr, "the restarted server listens on the same address");
        (self.shutdown, self.handle) = (shutdown, Some(handle));
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn launch(
    toml: &str,
    bind: SocketAddr,
) -> Result<(SocketAddr, CancellationToken, JoinHandle<anyhow::Result<()>>)> {
    let mut config = ServerConfig::from_toml(toml, &|_| None).context("a valid test configuration")?;
    config.bind = bind;
    let shutdown = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let on_listening = move |addr: SocketAddr| {
        let _ = tx.send(addr);
    };
    // Boxed: the server's future is large, and this keeps test futures small.
    let run = Box::pin(godel_server::run(config, shutdown.clone(), Some(Box::new(on_listening))));
    let handle = tokio::spawn(run);
    match rx.await {
        Ok(addr) => Ok((addr, shutdown, handle)),
        Err(_) => bail!("the server stopped before listening: {:?}", handle.await),
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

/// Waits until task `id` has `status`.
pub(crate) async fn wait_for(client: &Client, id: TaskId, status: TaskStatus) -> Result<Task> {
    let mut last = None;
    let found = eventually(&format!("task {id} to be {status}"), async || {
        let task = client.task(id).await?;
        last = Some(task.status);
        Ok((task.status == status).then_some(task))
    })
    .await;
    found.with_context(|| format!("its last status was {last:?}"))
}

/// The next item of `events`, failing after [`DEADLINE`].
pub(crate) async fn next_item(events: &mut EventStream) -> Result<Result<Event, Error>> {
    match tokio::time::timeout(DEADLINE, events.next()).await {
        Ok(Some(item)) => Ok(item),
        Ok(None) => bail!("the event stream ended"),
        Err(_) => bail!("no event within {DEADLINE:?}"),
    }
}

/// The next event of `events`; any error item fails the test.
pub(crate) async fn next_event(events: &mut EventStream) -> Result<Event> {
    next_item(events).await?.context("expected an event, got an error item")
}

/// Reads events until one about `task` has type `kind`; returns everything
/// read, that one last. Error items fail the test.
pub(crate) async fn events_until(events: &mut EventStream, task: TaskId, kind: &str) -> Result<Vec<Event>> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(events).await?;
        let done = event.task_id() == Some(task) && event.kind == kind;
        seen.push(event);
        if done {
            return Ok(seen);
        }
    }
}

/// A TCP proxy in front of a server. [`Proxy::cut`] drops every connection
/// through it and refuses new ones until [`Proxy::heal`], which is how a
/// test takes the network away from a client while the server runs on.
#[derive(Debug)]
pub(crate) struct Proxy {
    addr: SocketAddr,
    open: Arc<Mutex<bool>>,
    connections: Arc<Mutex<JoinSet<()>>>,
    _accept: AbortOnDrop,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(Mutex::new(true));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let accept = tokio::spawn({
            let (open, connections) = (open.clone(), connections.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !*open.lock().expect("not poisoned") {
                        continue; // dropping the socket refuses the connection
                    }
                    connections.lock().expect("not poisoned").spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Ok(Self { addr, open, connections, _accept: AbortOnDrop(accept) })
    }

    /// `http://<proxy address>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every connection and refuses new ones.
    pub(crate) fn cut(&self) {
        *self.open.lock().expect("not poisoned") = false;
        self.connections.lock().expect("not poisoned").abort_all();
    }

    /// Accepts connections again.
    pub(crate) fn heal(&self) {
        *self.open.lock().expect("not poisoned") = true;
    }
}
