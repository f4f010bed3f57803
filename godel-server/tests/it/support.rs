//! A server started in-process for one test: loopback, port 0, a SQLite
//! store in a fresh temporary directory, and a shutdown trigger the test owns.

use std::net::SocketAddr;

use godel_server::ServerConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server. Dropping it without [`TestServer::stop`] still tells it
/// to shut down, so a failing test does not leave it serving.
#[derive(Debug)]
pub(crate) struct TestServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server whose configuration is `godel_toml` plus the bind
    /// address and store, which this function chooses.
    pub(crate) async fn start(godel_toml: &str) -> Self {
        Self::start_on(None, godel_toml).await
    }

    /// Like [`TestServer::start`], over the store at `store_url` if given
    /// (several servers sharing one store), else a fresh SQLite file.
    pub(crate) async fn start_on(store_url: Option<&str>, godel_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = match store_url {
            Some(url) => url.to_owned(),
            None => format!("sqlite://{}", dir.path().join("godel.db").display()),
        };
        // State (the OpenClaw device key) stays in the temporary directory too.
        let toml = format!(
            "bind = \"127.0.0.1:0\"\nstore = \"{store}\"\nstate_dir = \"{}\"\n{godel_toml}",
            dir.path().join("state").display()
        );
        let config = ServerConfig::from_toml(&toml, &|_| None).expect("a valid test configuration");
        let shutdown = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let on_listening = move |addr: SocketAddr| {
            let _ = tx.send(addr);
        };
        let handle = tokio::spawn(godel_server::run(config, shutdown.clone(), Some(Box::new(on_listening))));
        let addr = match rx.await {
            Ok(addr) => addr,
            Err(_) => panic!("the server stopped before listening: {:?}", handle.await),
        };
        Self { addr, shutdown, handle: Some(handle), _dir: dir }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The temporary directory holding the store (`godel.db`) and the state
    /// directory (`state/`, where the first admin key is written).
    pub(crate) fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// `ws://127.0.0.1:<port><path>`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Shuts the server down and checks that it stopped cleanly.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("stopped once");
        match tokio::time::timeout(std::time::Duration::from_secs(30), handle).await {
            Ok(joined) => joined.expect("the server task panicked").expect("the server stopped with an error"),
            Err(_) => panic!("the server did not stop within 30 s"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
