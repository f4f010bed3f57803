//! A server started in-process for one test: loopback, port 0, a SQLite
//! store in a fresh temporary directory, and a shutdown trigger the test owns.
//! [`TestServer::http`] and [`TestServer::ws`] send the admin key the server
//! wrote to `<state_dir>/admin.key` on its first start (or, for a second
//! server on a shared store, one put straight into the store).

use std::net::SocketAddr;
use std::sync::Arc;

use godel_core::{ApiKey, KeyId, Role, Store, TenantId, Timestamp};
use godel_server::ServerConfig;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_util::sync::CancellationToken;

/// A running server. Dropping it without [`TestServer::stop`] still tells it
/// to shut down, so a failing test does not leave it serving.
#[derive(Debug)]
pub(crate) struct TestServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// The store the server uses, opened again by the test.
    store: Arc<dyn Store>,
    /// An admin key of the default tenant.
    admin: String,
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
        let store = godel_core::store::open(&store).await.expect("the test store opens");
        let admin = match std::fs::read_to_string(dir.path().join("state").join(godel_server::ADMIN_KEY_FILE)) {
            Ok(key) => key.trim().to_owned(),
            // The store had keys already: this is not its first server.
            Err(_) => create_key(&store, &TenantId::default_tenant(), Role::Admin).await,
        };
        Self { addr, shutdown, handle: Some(handle), store, admin, _dir: dir }
    }

    /// The SQLite file of a server started without a store URL.
    pub(crate) fn sqlite_file(&self) -> std::path::PathBuf {
        self._dir.path().join("godel.db")
    }

    /// The server's store, for tests that make keys or read the audit log.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A new key with `role` for `tenant`; returns its plaintext.
    pub(crate) async fn key(&self, tenant: &str, role: Role) -> String {
        create_key(&self.store, &TenantId::new(tenant).expect("a valid tenant"), role).await
    }

    /// The admin key's plaintext.
    pub(crate) fn admin_key(&self) -> &str {
        &self.admin
    }

    /// An HTTP client that sends the admin key.
    pub(crate) fn http(&self) -> reqwest::Client {
        client(&self.admin)
    }

    /// A WebSocket request for `path` carrying the admin key.
    pub(crate) fn ws(&self, path: &str) -> Request {
        self.ws_with(path, &self.admin)
    }

    /// A WebSocket request for `path` carrying `key`.
    pub(crate) fn ws_with(&self, path: &str, key: &str) -> Request {
        let mut request = self.ws_url(path).into_client_request().expect("a WebSocket URL");
        request.headers_mut().insert(AUTHORIZATION, bearer(key));
        request
    }

    /// `http://127.0.0.1:<port><path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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

/// An HTTP client that sends `key`, with a timeout so that a hang fails.
pub(crate) fn client(key: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, bearer(key));
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("a client")
}

fn bearer(key: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).expect("an ASCII key");
    value.set_sensitive(true);
    value
}

/// Puts a new key in `store`, as the keys routes would; returns its plaintext.
pub(crate) async fn create_key(store: &Arc<dyn Store>, tenant: &TenantId, role: Role) -> String {
    let new = godel_server::generate_key();
    let key = ApiKey {
        id: KeyId::new(),
        name: format!("test-{role}"),
        tenant: tenant.clone(),
        role,
        hash: new.hash,
        prefix: new.prefix.clone(),
        created_at: Timestamp::now(),
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    store.create_key(&key).await.expect("the key is stored");
    new.plaintext
}
