//! Bad requests get a 4xx, never a 500: a table of malformed HTTP requests,
//! each answered with its status and the `{"error":{"code","message",
//! "retryable"}}` envelope whose message names what was wrong, after which
//! the store holds exactly what it held before; and bad `/events` traffic,
//! answered with an error frame on a connection that stays open.

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::server::harness::{FAST_ENGINE, Launch, Server, gated};

/// One agent with one slot.
fn config() -> String {
    format!("{FAST_ENGINE}\n[[agents]]\nid = \"solo\"\ncapacity = 1\n")
}

/// What a case sends.
#[derive(Debug)]
enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
}

/// One malformed request and what must come back.
#[derive(Debug)]
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Body,
    status: u16,
    code: &'static str,
    /// Words the message must contain: the field, parameter or value at fault.
    names: Vec<String>,
}

fn case(name: &'static str, method: Method, path: &str, body: Body, status: u16, code: &'static str) -> Case {
    Case { name, method, path: path.to_owned(), body, status, code, names: Vec::new() }
}

impl Case {
    fn naming(mut self, words: &[&str]) -> Self {
        self.names = words.iter().map(|w| (*w).to_owned()).collect();
        self
    }
}

/// The table. `running` is a task that runs for the whole test.
fn cases(running: &str) -> Vec<Case> {
    use Method as M;
    let task = |extra: Value| {
        let mut body = json!({"command": ["true"]});
        body.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
        Body::Json(body)
    };
    let unknown = "0190a5f8-9a4e-7000-8000-000000000000";
    let running_path = format!("/api/v1/tasks/{running}");
    // Just over the 1 MiB limit, and valid JSON up to where it is cut, so only its size is wrong.
    let oversized = format!("{{\"prompt\": \"{}\"}}", "x".repeat(1 << 20)).into_bytes();
    vec![
        case(
            "malformed JSON",
            M::POST,
            "/api/v1/tasks",
            Body::Raw(b"{\"command\": [".to_vec()),
            400,
            "invalid_request",
        )
        .naming(&["malformed JSON"]),
        case("empty body", M::POST, "/api/v1/tasks", Body::Raw(Vec::new()), 400, "invalid_request").naming(&["body"]),
        // Bodies are read with a length limit, which needs the length up front.
        case("no body", M::POST, "/api/v1/tasks", Body::None, 400, "invalid_request").naming(&["JSON body"]),
        case("unknown field", M::POST, "/api/v1/tasks", task(json!({"priorty": "high"})), 400, "invalid_request")
            .naming(&["priorty"]),
        case("wrong type", M::POST, "/api/v1/tasks", Body::Json(json!({"command": "true"})), 400, "invalid_request")
            .naming(&["command"]),
        case("bad priority", M::POST, "/api/v1/tasks", task(json!({"priority": "urgent"})), 400, "invalid_request")
            .naming(&["priority", "urgent"]),
        case("oversized body", M::POST, "/api/v1/tasks", Body::Raw(oversized), 413, "invalid_request")
            .naming(&["too large"]),
        case("bad cursor", M::GET, "/api/v1/tasks?cursor=not-a-cursor", Body::None, 400, "invalid_request")
            .naming(&["cursor"]),
        case("limit 0", M::GET, "/api/v1/tasks?limit=0", Body::None, 400, "invalid_request").naming(&["limit"]),
        case("limit 101", M::GET, "/api/v1/tasks?limit=101", Body::None, 400, "invalid_request").naming(&["limit"]),
        case("limit not a number", M::GET, "/api/v1/tasks?limit=ten", Body::None, 400, "invalid_request")
            .naming(&["limit", "ten"]),
        case("unknown query parameter", M::GET, "/api/v1/tasks?colour=red", Body::None, 400, "invalid_request")
            .naming(&["colour"]),
        case("bad status filter", M::GET, "/api/v1/tasks?status=done", Body::None, 400, "invalid_request")
            .naming(&["done"]),
        case("bad task id", M::GET, "/api/v1/tasks/not-a-uuid", Body::None, 400, "invalid_request")
            .naming(&["task id", "not-a-uuid"]),
        case("unknown task", M::GET, &format!("/api/v1/tasks/{unknown}"), Body::None, 404, "not_found")
            .naming(&[unknown]),
        case("unknown route", M::GET, "/api/v1/nothing-here", Body::None, 404, "not_found").naming(&["route"]),
        case("wrong method", M::PUT, "/api/v1/tasks", Body::Json(json!({})), 405, "invalid_request")
            .naming(&["method"]),
        case("purge of a running task", M::DELETE, &format!("{running_path}?purge=true"), Body::None, 409, "conflict")
            .naming(&[running]),
        case("DELETE without purge=true", M::DELETE, &running_path, Body::None, 400, "invalid_request")
            .naming(&["purge=true"]),
        case("empty batch", M::POST, "/api/v1/tasks/batch", Body::Json(json!({"tasks": []})), 400, "invalid_request")
            .naming(&["tasks"]),
        case(
            "batch with a bad priority",
            M::POST,
            "/api/v1/tasks/batch",
            Body::Json(json!({"tasks": [{"command": ["true"]}, {"command": ["true"], "priority": "urgent"}]})),
            400,
            "invalid_request",
        )
        .naming(&["tasks[1]", "priority"]),
        case(
            "batch with a wrong type",
            M::POST,
            "/api/v1/tasks/batch",
            Body::Json(json!({"tasks": [{"command": ["true"]}, {"command": ["true"]}, {"command": "true"}]})),
            400,
            "invalid_request",
        )
        .naming(&["tasks[2]", "command"]),
    ]
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_envelope_naming_the_problem() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;
    let running = server.submit(&json!({"command": gated(&dir.path().join("gate"), "true", "")})).await?;
    server.wait_for_status(&running, "running").await?;

    // A connection per case: after answering 413 without reading the body
    // the server closes the connection (without saying `Connection: close`),
    // and a pooled connection would fail the next case for the wrong reason.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", server.key()).parse()?);
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).default_headers(headers).build()?;
    let mut failures = Vec::new();
    for case in cases(&running) {
        if let Err(e) = check(&http, &server, &case).await {
            failures.push(format!("{}: {e:#}", case.name));
        }
    }
    assert!(failures.is_empty(), "{} of the cases failed:\n{}", failures.len(), failures.join("\n"));

    // Nothing a bad request sent was stored, not even the good half of a batch.
    let (_, page) = server.get("/api/v1/tasks").await?;
    let ids: Vec<&str> = page["items"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, [running.as_str()], "the tasks after the bad requests");
    assert_eq!(server.task(&running).await?["status"], "running", "the purge left the running task alone");
    server.stop().await
}

/// Sends one case and checks the answer.
async fn check(http: &reqwest::Client, server: &Server, case: &Case) -> Result<()> {
    let mut request = http.request(case.method.clone(), server.url(&case.path));
    request = match &case.body {
        Body::None => request,
        Body::Json(value) => request.json(value),
        // An empty body would go out without a length; say it, as a client that sends one would.
        Body::Raw(bytes) if bytes.is_empty() => {
            request.header("content-type", "application/json").header("content-length", "0")
        }
        Body::Raw(bytes) => request.header("content-type", "application/json").body(bytes.clone()),
    };
    let response = request.send().await.context("send")?;
    let status = response.status();
    let text = response.text().await.context("read the body")?;
    anyhow::ensure!(status != StatusCode::INTERNAL_SERVER_ERROR, "500: {text}");
    anyhow::ensure!(status.as_u16() == case.status, "expected {}, got {status}: {text}", case.status);
    let body: Value = serde_json::from_str(&text).with_context(|| format!("the body is not JSON: {text:?}"))?;
    let error = &body["error"];
    anyhow::ensure!(error["code"] == case.code, "expected code {}: {body}", case.code);
    anyhow::ensure!(error["retryable"] == false, "a bad request is not retryable: {body}");
    let message = error["message"].as_str().with_context(|| format!("no message: {body}"))?;
    for name in &case.names {
        anyhow::ensure!(message.contains(name.as_str()), "the message does not name {name:?}: {message:?}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_websocket_traffic_gets_an_error_frame_and_the_connection_stays_open() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Launch::new(dir.path(), &config()).start().await?;

    // A bad query is refused before the upgrade, with the envelope.
    let url = format!("ws://{}/events?since=yesterday", server.addr());
    match tokio_tungstenite::connect_async(server.ws_request(&url)?).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400, "{response:?}");
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default())?;
            assert_eq!(body["error"]["code"], "invalid_request", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("since"), "the message names since: {body}");
        }
        other => panic!("?since=yesterday was not refused with an HTTP error: {other:?}"),
    }

    let mut events = server.events("").await?;
    events.next_of_type("welcome").await?;
    let frame = |value: Value| Message::text(value.to_string());
    let bad = [
        ("not JSON", Message::text("subscribe me")),
        ("binary", Message::binary(b"{}".to_vec())),
        ("no patterns", frame(json!({"action": "subscribe"}))),
        ("empty patterns", frame(json!({"action": "subscribe", "patterns": []}))),
        ("bad pattern", frame(json!({"action": "subscribe", "patterns": ["task.**"]}))),
        ("unknown action", frame(json!({"action": "shout", "patterns": ["task.*"]}))),
        ("unknown field", frame(json!({"action": "subscribe", "patterns": ["task.*"], "since": 3}))),
    ];
    for (name, message) in bad {
        events.send_frame(message).await?;
        let answer = events.next().await.with_context(|| format!("answer to {name}"))?;
        assert_eq!(answer["type"], "error", "{name}: {answer}");
        assert_eq!(answer["code"], "invalid_request", "{name}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {answer}");
    }
    // Still open, and still useful.
    let subscribed = events.subscribe(&["task.*"]).await?;
    assert_eq!(subscribed["patterns"], json!(["task.*"]));
    let id = server.submit(&json!({"command": ["true"]})).await?;
    let created = events.next().await?;
    assert_eq!((&created["type"], &created["data"]["task_id"]), (&json!("task.created"), &json!(id)), "{created}");
    events.close().await?;
    server.stop().await
}
