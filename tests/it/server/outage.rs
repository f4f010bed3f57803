//! The database goes away under a running server and comes back: the server
//! reports it unhealthy meanwhile, recovers on its own, and every task it
//! acknowledged completes. Each test starts a private Redis or PostgreSQL
//! (see `services`; never the shared ones, which other tests use) so that it
//! can kill it.

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::json;

use crate::server::harness::{FAST_ENGINE, Launch, Server, eventually};
use crate::server::services::{Postgres, Redis};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(mut redis) = Redis::start(dir.path()).await? else { return Ok(()) };
    let server = Launch::new(dir.path(), &config()).store(&format!("{}?prefix=outage", redis.url())).start().await?;

    let acknowledged = submit(&server, 50).await?;
    redis.kill().await?;
    sees_the_outage(&server).await?;
    redis.spawn().await?;
    recovers(&server, &acknowledged).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_nothing_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(pg) = Postgres::start(dir.path()).await? else { return Ok(()) };
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
