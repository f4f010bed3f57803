// A real server for the examples of docs/sdk.md, which run as doctests of
// godel-sdk: each example is an `async fn example(url: String, key: String)`, and two
// hidden lines include this file and call `serve(example)` from `main`. It
// is also a module of the integration tests, so that clippy checks it and a
// test runs it. It opens with plain comments, not `//!`, because `include!`
// does not accept inner attributes.

/// Starts a server in-process on a free loopback port over a SQLite store
/// in a fresh temporary directory, runs `example` with its URL and its first
/// admin key, stops the
/// server, and panics if either failed.
pub(crate) fn serve<F, Fut, E>(example: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Debug,
{
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let toml = format!(
            r#"
            bind = "127.0.0.1:0"
            store = "sqlite://{0}/godel.db"
            state_dir = "{0}/state"
            [engine]
            heartbeat_interval = "100ms"
            poll_interval = "50ms"
            kill_grace = "500ms"
            shutdown_grace = "200ms"
            retry_initial = "10ms"
            retry_max = "20ms"
            [[agents]]
            id = "worker"
            capacity = 4
            command = ["sh", "-c", "printf '%s\n' \"$1\"", "sh", "{{prompt}}"]
            "#,
            dir.path().display()
        );
        let config = godel_server::ServerConfig::from_toml(&toml, &|_| None).expect("a valid configuration");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let on_listening = move |addr: std::net::SocketAddr| {
            let _ = tx.send(addr);
        };
        let server = tokio::spawn(Box::pin(godel_server::run(config, shutdown.clone(), Some(Box::new(on_listening)))));
        let addr = rx.await.expect("the server listens");
        let key = std::fs::read_to_string(dir.path().join("state").join(godel_server::ADMIN_KEY_FILE))
            .expect("the server's first admin key");
        let result = example(format!("http://{addr}"), key.trim().to_owned()).await;
        shutdown.cancel();
        server.await.expect("the server does not panic").expect("the server stops cleanly");
        result.expect("the example succeeds");
    });
}
