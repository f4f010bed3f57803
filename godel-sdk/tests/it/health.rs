//! The probes: `health`, `ready` and `metrics`.

use anyhow::Result;
use godel_sdk::embed::Priority;
use godel_sdk::{Error, SubmitTask};

use crate::support::{TestServer, eventually};

#[tokio::test]
async fn a_running_server_is_healthy_and_ready() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client().clone();
    client.ready().await?;
    let health = client.health().await?;
    assert_eq!(health.status, "healthy");
    assert!(health.ready);
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"), "the workspace versions the SDK and the server together");
    assert_eq!((health.store.backend.as_str(), health.store.ok, health.store.error.as_deref()), ("sqlite", true, None));
    let queue = health.queue.expect("a queue report when the store answers");
    assert_eq!((queue.pending, queue.agents.total), (0, 1));

    server.stop().await?;
    let err = client.ready().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { url, .. } if *url == format!("{}/health/ready", server.url())),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn metrics_count_what_happens() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    client.submit(&SubmitTask::prompt("counted").priority(Priority::High).capability("gpu")).await?;
    let text = eventually("the submit to be counted", async || {
        let text = client.metrics().await?;
        Ok(text.lines().any(|l| l == "godel_tasks_created_total{priority=\"high\"} 1").then_some(text))
    })
    .await?;
    assert!(text.lines().any(|l| l == "godel_queue_depth{priority=\"high\"} 1"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    server.stop().await
}

/// The server the examples of docs/sdk.md run against starts, serves and stops.
#[test]
fn the_documentation_server_serves_an_example() {
    crate::doc_server::serve(|url, key| async move {
        let client = godel_sdk::Client::new(&url)?.with_api_key(&key)?;
        client.ready().await?;
        assert_eq!(client.agents().await?[0].id, "worker");
        Ok::<_, Error>(())
    });
}
