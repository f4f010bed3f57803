//! Secrets stay secret: a server run with a store password, a JWT secret in
//! its environment, a gateway token and requests carrying a bearer token
//! writes none of them to its logs, its errors or `/metrics`.

use anyhow::Result;
use serde_json::json;

use super::cluster::postgres;
use super::harness::{FAST_ENGINE, Launch};

const PG_PASSWORD: &str = "pg-password-7f3a9c";
const JWT_SECRET: &str = "jwt-secret-0123456789abcdef0123456789abcdef";
const GATEWAY_TOKEN: &str = "gateway-token-5e8d1b";
const BEARER: &str = "gdl_bearer-token-that-must-not-be-logged";

fn assert_hidden(what: &str, text: &str) {
    for secret in [PG_PASSWORD, JWT_SECRET, GATEWAY_TOKEN, BEARER] {
        assert!(!text.contains(secret), "{what} shows the secret {secret:?}:\n{text}");
    }
}

fn config() -> String {
    // The gateway is not there: the server keeps trying, and logging, with its token.
    format!("{FAST_ENGINE}[[gateways]]\nname = \"gw\"\nurl = \"ws://127.0.0.1:1\"\ntoken = \"{GATEWAY_TOKEN}\"\n")
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_is_named_without_its_password() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("postgres://godel:{PG_PASSWORD}@127.0.0.1:1/test?acquire_timeout=1s");
    let (status, stderr) = Launch::new(dir.path(), &config())
        .store(&url)
        .env("GODEL_JWT_SECRET", JWT_SECRET)
        .env("GODEL_LOG", "debug")
        .expect_failure()
        .await?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("godel:***@127.0.0.1:1"), "the store is named, its password hidden: {stderr}");
    assert_hidden("stderr", &stderr);
    Ok(())
}

#[tokio::test]
async fn a_running_server_logs_no_secret() -> Result<()> {
    let Some((url, _store)) = postgres().await? else { return Ok(()) };
    // The test database trusts local connections, so any password works; the point is where it shows.
    let with_password = url.replacen("://postgres@", &format!("://postgres:{PG_PASSWORD}@"), 1);
    assert_ne!(with_password, url, "the test PostgreSQL URL has the expected shape: {url}");
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config())
        .store(&with_password)
        .env("GODEL_JWT_SECRET", JWT_SECRET)
        .env("GODEL_LOG", "debug")
        .start()
        .await?;
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {BEARER}");
    let response = http.get(server.url("/api/v1/tasks")).header("authorization", &bearer).send().await?;
    assert!(response.status().is_success() || response.status() == 401, "{}", response.status());
    let registration = json!({"name": "api-gw", "url": "ws://127.0.0.1:1", "token": GATEWAY_TOKEN});
    let response = http.post(server.url("/api/v1/instances")).header("authorization", &bearer).json(&registration);
    let reply = response.send().await?.text().await?;
    assert_hidden("the registration's reply", &reply);
    let listed = http.get(server.url("/api/v1/instances")).header("authorization", &bearer).send().await?;
    assert_hidden("the gateway list", &listed.text().await?);
    let metrics = http.get(server.url("/metrics")).header("authorization", &bearer).send().await?.text().await?;
    assert_hidden("/metrics", &metrics);
    let logs = server.logs();
    server.stop().await?;
    assert!(logs.contains("postgres:***@"), "the start line names the store without its password: {logs}");
    assert_hidden("the server's logs", &logs);
    Ok(())
}
