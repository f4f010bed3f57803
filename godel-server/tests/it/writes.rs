//! Writes through the API go through the orchestrator: a retry or a
//! dead-letter replay publishes its event and wakes the dispatcher, so the
//! task runs at once even though the engine's poll is an hour away; and the
//! engine's errors by meaning become their statuses (an unknown agent is 404,
//! a taken id 409).

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::TestServer;

/// An engine that only claims when woken: the poll is an hour away.
const ENGINE: &str = "[engine]\npoll_interval = \"1h\"\nkill_grace = \"100ms\"\nshutdown_grace = \"1s\"\n\
     [[agents]]\nid = \"local\"\ncapacity = 2\n";

/// Submits a task that fails until `marker` exists, with a single attempt,
/// and waits for it to be dead-lettered. Returns its id.
async fn dead_letter(server: &TestServer, http: &reqwest::Client, marker: &Path) -> String {
    let body = json!({"command": ["test", "-e", marker.display().to_string()], "max_attempts": 1});
    let created: Value = http.post(server.url("/api/v1/tasks")).json(&body).send().await.unwrap().json().await.unwrap();
    let id = created["id"].as_str().expect("a task id").to_owned();
    assert_eq!(wait_for_status(server, http, &id, "dead_letter").await, "dead_letter");
    id
}

/// Polls the task until it reaches `status` or 10 s pass; returns the last status seen.
async fn wait_for_status(server: &TestServer, http: &reqwest::Client, id: &str, status: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let task: Value =
            http.get(server.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
        let seen = task["status"].as_str().unwrap_or_default().to_owned();
        if seen == status || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Subscribes to `patterns` and returns the socket once the subscription is confirmed.
async fn subscribe(
    server: &TestServer,
    patterns: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(server.ws(&format!("/events?patterns={patterns}"))).await.unwrap();
    loop {
        let message = next_json(&mut socket).await;
        if message["type"] == "subscribed" {
            return socket;
        }
    }
}

async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket stays open")
            .expect("a readable message");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_published_and_runs_at_once() {
    let server = TestServer::start(ENGINE).await;
    let http = server.http();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ready");
    let id = dead_letter(&server, &http, &marker).await;
    let mut events = subscribe(&server, "task.replayed").await;

    std::fs::write(&marker, b"").unwrap();
    let response = http.post(server.url(&format!("/api/v1/tasks/{id}/retry"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let event = next_json(&mut events).await;
    assert_eq!(event["type"], "task.replayed", "{event}");
    assert_eq!(wait_for_status(&server, &http, &id, "completed").await, "completed", "woken, not polled");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_replays_are_published_and_run_at_once() {
    let server = TestServer::start(ENGINE).await;
    let http = server.http();
    let dir = tempfile::tempdir().unwrap();
    let (one, bulk) = (dir.path().join("one"), dir.path().join("bulk"));
    let first = dead_letter(&server, &http, &one).await;
    let second = dead_letter(&server, &http, &bulk).await;
    let mut events = subscribe(&server, "task.replayed,system.dead_letters_replayed").await;

    // One by id: its event, and it runs without waiting for the poll.
    std::fs::write(&one, b"").unwrap();
    let response = http.post(server.url(&format!("/api/v1/dead-letters/{first}/replay"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let event = next_json(&mut events).await;
    assert_eq!(event["type"], "task.replayed", "{event}");
    assert_eq!(wait_for_status(&server, &http, &first, "completed").await, "completed", "woken, not polled");

    // A completed task is not a dead letter: 409, and nothing changes.
    let response = http.post(server.url(&format!("/api/v1/dead-letters/{first}/replay"))).send().await.unwrap();
    assert_eq!(response.status(), 409);

    // By filter: one event for the lot, and they run at once too.
    std::fs::write(&bulk, b"").unwrap();
    let response = http.post(server.url("/api/v1/dead-letters/replay")).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["replayed"], 1);
    let event = next_json(&mut events).await;
    assert_eq!(event["type"], "system.dead_letters_replayed", "{event}");
    assert_eq!(wait_for_status(&server, &http, &second, "completed").await, "completed", "woken, not polled");
    server.stop().await;
}

#[tokio::test]
async fn agent_errors_map_by_meaning() {
    let server = TestServer::start(ENGINE).await;
    let http = server.http();
    for (method, path) in [
        (reqwest::Method::DELETE, "/api/v1/agents/nobody"),
        (reqwest::Method::POST, "/api/v1/agents/nobody/drain"),
        (reqwest::Method::POST, "/api/v1/agents/nobody/heartbeat"),
    ] {
        let response = http.request(method.clone(), server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    let taken = json!({"id": "local", "command": ["true"]});
    let response = http.post(server.url("/api/v1/agents")).json(&taken).send().await.unwrap();
    assert_eq!(response.status(), 409, "the id is taken by the configured agent");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    server.stop().await;
}
