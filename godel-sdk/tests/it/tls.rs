//! HTTPS and WSS end to end: a server with a certificate made for the test;
//! a client and a worker that trust it through a CA file reach it, a client
//! that does not is refused.

use anyhow::{Context, Result};
use godel_sdk::embed::TaskStatus;
use godel_sdk::worker::{CancellationToken, ProcessConfig, WorkDir, Worker, WorkerOptions};
use godel_sdk::{Client, ClientOptions, Error, SubmitTask, TlsOptions};

use crate::support::{WORKER, launch, wait_for};

#[tokio::test]
async fn clients_trusting_the_ca_file_reach_a_tls_server_and_others_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, certified.cert.pem())?;
    std::fs::write(&key_file, certified.key_pair.serialize_pem())?;
    let toml = format!(
        "store = \"sqlite://{}\"\nstate_dir = \"{}\"\n[engine]\npoll_interval = \"50ms\"\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{WORKER}",
        dir.path().join("godel.db").display(),
        dir.path().join("state").display(),
        cert_file.display(),
        key_file.display(),
    );
    let (addr, shutdown, handle) = launch(&toml, "127.0.0.1:0".parse()?).await?;
    let url = format!("https://localhost:{}", addr.port());
    let trusting = TlsOptions { ca_file: Some(cert_file.clone()) };

    let key = std::fs::read_to_string(dir.path().join("state/admin.key")).context("the server's first admin key")?;
    let key = key.trim();
    let client = Client::with_tls(&url, ClientOptions::default(), &trusting)?.with_api_key(key)?;
    client.health().await.context("HTTPS with the CA file")?;
    // The event stream goes over wss:// with the same trust.
    let mut events = client.events(&["task.*"]);
    events.subscribed().await.context("WSS with the CA file")?;
    let task = client.submit(&SubmitTask::prompt("over TLS").capability("sh")).await?;
    assert_eq!(wait_for(&client, task.id, TaskStatus::Completed).await?.status, TaskStatus::Completed);

    // A worker connects over wss:// and runs a task.
    let worker = Worker::new(WorkerOptions {
        server: url.clone(),
        api_key: Some(key.to_owned()),
        tls: trusting.clone(),
        name: "tls-worker".to_owned(),
        capabilities: vec!["remote".to_owned()],
        concurrency: 1,
        region: None,
        process: ProcessConfig { command: None, workdir: WorkDir::Inherit, env: Vec::new(), runs: None },
    })?;
    let drain = CancellationToken::new();
    let working = tokio::spawn({
        let drain = drain.clone();
        async move { worker.run(drain).await }
    });
    let remote = client.submit(&SubmitTask::command(["echo", "remote"]).capability("remote")).await?;
    let done = wait_for(&client, remote.id, TaskStatus::Completed).await?;
    assert_eq!(done.agent_id.as_deref(), Some("tls-worker"));
    drain.cancel();
    working.await??;

    // Without the CA file the certificate is not trusted: the connection is refused.
    let untrusting = Client::new(&url)?;
    match untrusting.health().await {
        Err(Error::Unreachable { .. }) => {}
        other => panic!("expected the untrusted certificate to be refused, got {other:?}"),
    }
    // Plain HTTP to the TLS port gets no answer either.
    let plain = Client::new(&format!("http://localhost:{}", addr.port()))?;
    assert!(plain.health().await.is_err(), "plain HTTP is not served on the TLS port");
    // A CA file that is not one is an error naming it.
    std::fs::write(dir.path().join("empty.pem"), "")?;
    let bad = TlsOptions { ca_file: Some(dir.path().join("empty.pem")) };
    match Client::with_tls(&url, ClientOptions::default(), &bad) {
        Err(Error::CaFile { path, .. }) => assert_eq!(path, dir.path().join("empty.pem")),
        other => panic!("expected a CA file error, got {other:?}"),
    }

    shutdown.cancel();
    handle.await??;
    Ok(())
}
