//! Hostile input: every numeric field refused beyond its documented range,
//! text with NUL bytes refused, exactly one JSON value per body, WebSocket
//! routes answering a plain request with 426, `Allow` on 405, percent-encoded
//! path ids, and parents that must exist in the caller's tenant. Each
//! refusal is a 400 whose message names the field.

use godel_core::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestServer, client};

/// Posts `body` to `path` and returns the status and the error message, if any.
async fn post(http: &reqwest::Client, server: &TestServer, path: &str, body: &Value) -> (StatusCode, String) {
    let response = http.post(server.url(path)).json(body).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, body["error"]["message"].as_str().unwrap_or_default().to_owned())
}

/// Asserts a 400 whose message names `field`.
async fn refused(http: &reqwest::Client, server: &TestServer, path: &str, body: Value, field: &str) {
    let (status, message) = post(http, server, path, &body).await;
    assert_eq!(status, 400, "{body} was not refused: {message}");
    assert!(message.contains(field), "the refusal of {body} does not name {field}: {message}");
}

#[tokio::test]
async fn numbers_beyond_their_range_are_refused_naming_the_field() {
    let server = TestServer::start("").await;
    let http = server.http();
    let tasks = "/api/v1/tasks";
    refused(&http, &server, tasks, json!({"prompt": "p", "delay_ms": u64::MAX}), "delay_ms").await;
    refused(&http, &server, tasks, json!({"prompt": "p", "delay_ms": 365u64 * 86_400_000 + 1}), "delay_ms").await;
    refused(&http, &server, tasks, json!({"prompt": "p", "timeout_ms": u64::MAX}), "timeout_ms").await;
    refused(&http, &server, tasks, json!({"prompt": "p", "timeout_ms": 0}), "timeout_ms").await;
    refused(&http, &server, tasks, json!({"prompt": "p", "max_attempts": 1_001}), "max_attempts").await;
    refused(&http, &server, tasks, json!({"prompt": "p", "run_at": "0001-01-01T00:00:00Z"}), "run_at").await;
    let batch = json!({"tasks": [{"prompt": "p"}, {"prompt": "p", "delay_ms": u64::MAX}]});
    refused(&http, &server, "/api/v1/tasks/batch", batch, "tasks[1]: invalid delay_ms").await;
    let agents = "/api/v1/agents";
    refused(
        &http,
        &server,
        agents,
        json!({"id": "big", "command": ["true"], "capacity": 4_294_967_294u32}),
        "capacity",
    )
    .await;
    refused(&http, &server, agents, json!({"id": "zero", "command": ["true"], "capacity": 0}), "capacity").await;
    refused(
        &http,
        &server,
        agents,
        json!({"id": "slow", "command": ["true"], "default_timeout_ms": u64::MAX}),
        "default_timeout_ms",
    )
    .await;

    // The largest values in range are taken, and the task reads back as a date.
    let (status, _) = post(&http, &server, tasks, &json!({"prompt": "p", "delay_ms": 365u64 * 86_400_000})).await;
    assert_eq!(status, 201);
    let list: Value = http.get(server.url(tasks)).send().await.unwrap().json().await.unwrap();
    let run_at = list["items"][0]["run_at"].as_str().expect("run_at is a string");
    assert!(run_at.parse::<godel_core::Timestamp>().is_ok(), "run_at is not a date: {run_at}");
    let health: Value = http.get(server.url("/health")).send().await.unwrap().json().await.unwrap();
    assert!(health["queue"]["agents"]["free_slots"].as_u64().is_some(), "{health}");
    server.stop().await;
}

#[tokio::test]
async fn text_with_nul_bytes_is_refused_naming_the_field() {
    let server = TestServer::start("").await;
    let http = server.http();
    let tasks = "/api/v1/tasks";
    for (field, body) in [
        ("idempotency_key", json!({"prompt": "p", "idempotency_key": "a\u{0}b"})),
        ("affinity_key", json!({"prompt": "p", "affinity_key": "a\u{0}b"})),
        ("prompt", json!({"prompt": "a\u{0}b"})),
        ("command", json!({"command": ["echo", "a\u{0}b"]})),
        ("metadata", json!({"prompt": "p", "metadata": {"k": ["a\u{0}b"]}})),
        ("metadata", json!({"prompt": "p", "metadata": {"k\u{0}": 1}})),
        ("capability", json!({"prompt": "p", "capabilities": ["a\u{0}b"]})),
    ] {
        refused(&http, &server, tasks, body, field).await;
    }
    let agent = json!({"id": "nul", "command": ["echo", "{prompt}\u{0}"]});
    refused(&http, &server, "/api/v1/agents", agent, "command").await;
    let agent = json!({"id": "nul", "command": ["true"], "region": "eu\u{0}"});
    refused(&http, &server, "/api/v1/agents", agent, "region").await;
    server.stop().await;
}

#[tokio::test]
async fn a_body_is_exactly_one_json_value() {
    let server = TestServer::start("").await;
    let response = server
        .http()
        .post(server.url("/api/v1/tasks"))
        .header("content-type", "application/json")
        .body(r#"{"prompt": "p"}xyz"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("trailing"), "{body}");
    let response = server
        .http()
        .post(server.url("/api/v1/tasks"))
        .header("content-type", "application/json")
        .body("{\"prompt\": \"p\"}\n\t ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "trailing whitespace is fine");
    server.stop().await;
}

#[tokio::test]
async fn websocket_routes_answer_a_plain_get_with_426() {
    let server = TestServer::start("").await;
    for path in ["/events", "/api/v1/workers/connect"] {
        let response = server.http().get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED, "{path}");
        let headers = response.headers();
        assert_eq!(headers["upgrade"], "websocket", "{path}");
        assert_eq!(headers["connection"], "Upgrade", "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{path}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn method_not_allowed_says_which_are() {
    let server = TestServer::start("").await;
    let http = server.http();
    for (method, path, allow) in [
        (reqwest::Method::PUT, "/api/v1/tasks", "GET, POST"),
        (reqwest::Method::POST, "/api/v1/tasks/0190d6b5-7a1c-7000-8000-000000000000", "GET, DELETE"),
        (reqwest::Method::DELETE, "/health", "GET"),
        // A literal path is its own route, never the `{id}` route it looks like.
        (reqwest::Method::GET, "/api/v1/tasks/batch", "POST"),
    ] {
        let response = http.request(method.clone(), server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn path_ids_are_percent_decoded() {
    let server = TestServer::start("").await;
    let http = server.http();
    let created: Value = http
        .post(server.url("/api/v1/tasks"))
        .json(&json!({"prompt": "p"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let encoded = id.replace('-', "%2D");
    let response = http.get(server.url(&format!("/api/v1/tasks/{encoded}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["id"], id);
    let response = http.get(server.url("/api/v1/agents/loc%61l")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the agent `local`, percent-encoded");
    server.stop().await;
}

#[tokio::test]
async fn a_parent_must_be_a_task_of_the_callers_tenant() {
    let server = TestServer::start("").await;
    let http = server.http();
    let unknown = "0190d6b5-7a1c-7000-8000-000000000000";
    refused(&http, &server, "/api/v1/tasks", json!({"prompt": "p", "parent_id": unknown}), "parent_id").await;
    let batch = json!({"tasks": [{"prompt": "p", "parent_id": unknown}]});
    refused(&http, &server, "/api/v1/tasks/batch", batch, "parent_id").await;

    let other = client(&server.key("other", Role::Submitter).await);
    let (status, _) = post(&other, &server, "/api/v1/tasks", &json!({"prompt": "theirs"})).await;
    assert_eq!(status, 201);
    let theirs: Value = other.get(server.url("/api/v1/tasks")).send().await.unwrap().json().await.unwrap();
    let theirs = theirs["items"][0]["id"].as_str().unwrap().to_owned();
    refused(&http, &server, "/api/v1/tasks", json!({"prompt": "p", "parent_id": theirs}), "parent_id").await;

    let (status, _) = post(&other, &server, "/api/v1/tasks", &json!({"prompt": "child", "parent_id": theirs})).await;
    assert_eq!(status, 201, "a parent of one's own tenant is fine");
    server.stop().await;
}
