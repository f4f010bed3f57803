//! The server's edges: thousands of idle and slow connections do not keep a
//! task from being submitted and run; idle, slow and surplus connections are
//! closed; workers reattach to their runs only with their session secret and
//! declare no more capacity than allowed; gateways registered through the
//! API name only allowed variables and hosts.
//!
//! Closes are observed by reading until end of file, never by sleeping and
//! finding nothing.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use godel_core::Role;

use crate::support::{self, TestServer};

/// Generous: each wait ends as soon as what it waits for happens.
const DEADLINE: Duration = Duration::from_secs(20);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Reads until the server closes the connection (end of file or a reset),
/// ignoring anything it sends first; fails after [`DEADLINE`].
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, read_to_end).await.expect("the server closes the connection");
}

async fn wait_for_status(http: &reqwest::Client, server: &TestServer, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let task: Value =
            http.get(server.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
        if task["status"] == status {
            return task;
        }
        assert!(Instant::now() < deadline, "task {id} never reached {status}: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit(http: &reqwest::Client, server: &TestServer, body: &Value) -> String {
    let response = http.post(server.url("/api/v1/tasks")).json(body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    created["id"].as_str().expect("a task id").to_owned()
}

#[tokio::test]
async fn thousands_of_idle_and_slow_connections_leave_room_for_a_task() {
    let server = TestServer::start("[engine]\npoll_interval = \"50ms\"\n").await;
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let mut idle = Vec::with_capacity(3_000);
    for _ in 0..3_000 {
        idle.push(TcpStream::connect(&addr).await.expect("an idle connection"));
    }
    // Slowloris: a header byte every couple of seconds, for as long as the test runs.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&addr).await.expect("a slow connection");
        slow.push(tokio::spawn(async move {
            let request = b"GET /api/v1/tasks HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
            for byte in request {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }

    let http = server.http();
    let id = submit(&http, &server, &json!({"command": ["echo", "still here"]})).await;
    let task = wait_for_status(&http, &server, &id, "completed").await;
    assert_eq!(task["status"], "completed");
    for task in slow {
        task.abort();
    }
    drop(idle);
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let server = TestServer::start("[limits]\nidle_timeout = \"300ms\"\n").await;
    let addr = server.url("").trim_start_matches("http://").to_owned();

    // A connection that never sends anything.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    closed_by_server(&mut silent).await;

    // A keep-alive connection after its request was answered.
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    closed_by_server(&mut kept).await;

    // A WebSocket is not idle-timed: it still answers after several idle periods.
    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws("/events")).await.unwrap();
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(1) {
        socket.send(Message::text(r#"{"action":"ping"}"#)).await.unwrap();
        let reply = tokio::time::timeout(DEADLINE, socket.next()).await.unwrap().unwrap().unwrap();
        assert!(reply.is_text(), "{reply:?}");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered > 0);
    server.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_at_the_header_read_timeout() {
    let server = TestServer::start("[limits]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"1h\"\n").await;
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let drip = tokio::spawn(async move {
        for byte in b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let cut = async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, cut).await.expect("the slow request is cut");
    drip.abort();
    server.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let server = TestServer::start("[limits]\nmax_connections = 2\n").await;
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let held = [TcpStream::connect(&addr).await.unwrap(), TcpStream::connect(&addr).await.unwrap()];
    // Both are being served: each answers a request.
    let mut held = held;
    for stream in &mut held {
        stream.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    let mut surplus = TcpStream::connect(&addr).await.unwrap();
    closed_by_server(&mut surplus).await;

    // Once one closes, a new connection is served again.
    drop(held);
    let http = server.http();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match http.get(server.url("/health/live")).send().await {
            Ok(response) if response.status() == 200 => break,
            _ => assert!(Instant::now() < deadline, "no room for a new connection after the others closed"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(DEADLINE, socket.next()).await.expect("a frame").expect("open").unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// Connects as a worker named `name`, with the admin key, still running
/// `running`, and returns the socket with the server's first reply
/// (`welcome` or `error`).
async fn hello(
    server: &TestServer,
    name: &str,
    concurrency: u32,
    session: Option<&str>,
    running: Value,
) -> (Socket, Value) {
    hello_as(server, server.admin_key(), name, concurrency, session, running).await
}

/// [`hello`] with `key`.
async fn hello_as(
    server: &TestServer,
    key: &str,
    name: &str,
    concurrency: u32,
    session: Option<&str>,
    running: Value,
) -> (Socket, Value) {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(server.ws_with("/api/v1/workers/connect", key)).await.unwrap();
    let mut frame = json!({"type": "hello", "name": name, "concurrency": concurrency, "version": "test",
                           "capabilities": ["remote"], "running": running});
    if let Some(session) = session {
        frame["session"] = session.into();
    }
    socket.send(Message::text(frame.to_string())).await.unwrap();
    let reply = next_frame(&mut socket).await;
    (socket, reply)
}

#[tokio::test]
async fn a_worker_reattaches_to_its_runs_only_with_its_session_secret() {
    // A long lease: the reconnect grace must outlast the test.
    let server = TestServer::start("[engine]\npoll_interval = \"50ms\"\nlease = \"60s\"\n").await;
    let http = server.http();
    let (mut worker, welcome) = hello(&server, "w1", 1, None, json!([])).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let secret = welcome["session"].as_str().expect("a session secret").to_owned();
    assert!(secret.len() >= 43, "256 bits at least: {secret}");

    let id = submit(&http, &server, &json!({"command": ["true"], "capabilities": ["remote"]})).await;
    let assign = next_frame(&mut worker).await;
    assert_eq!((assign["type"].as_str(), assign["task"]["id"].as_str()), (Some("assign"), Some(id.as_str())));
    let attempt = assign["task"]["attempt"].clone();
    let running = json!([{"task": id, "attempt": attempt}]);
    drop(worker);

    // The same name without the secret, or with a wrong one, is refused and settles nothing.
    let finished = json!({"type": "finished", "task": id, "attempt": attempt,
                          "outcome": {"status": "completed", "result": {"by": "impostor"}}});
    for session in [None, Some("not-the-secret"), Some(&secret[..secret.len() - 1])] {
        let (mut impostor, reply) = hello(&server, "w1", 1, session, running.clone()).await;
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("conflict")), "{reply}");
        let _ = impostor.send(Message::text(finished.to_string())).await;
        // The refusal closes the connection.
        loop {
            match tokio::time::timeout(DEADLINE, impostor.next()).await.expect("the refusal closes") {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    let task: Value = http.get(server.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(task["status"], "running", "the impostor settled nothing: {task}");

    // The worker itself, with its secret, gets a new one and settles its run.
    let (mut worker, welcome) = hello(&server, "w1", 1, Some(&secret), running).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_ne!(welcome["session"].as_str(), Some(secret.as_str()), "each connection has its own secret");
    let mut finished = finished;
    finished["outcome"]["result"] = json!({"by": "worker"});
    worker.send(Message::text(finished.to_string())).await.unwrap();
    let task = wait_for_status(&http, &server, &id, "completed").await;
    assert_eq!(task["result"], json!({"by": "worker"}));
    drop(worker);
    server.stop().await;
}

#[tokio::test]
async fn a_worker_runs_only_the_tasks_of_its_keys_tenant() {
    let server = TestServer::start("[engine]\npoll_interval = \"50ms\"\n").await;
    let acme = support::client(&server.key("acme", Role::Submitter).await);
    let umbrella = support::client(&server.key("umbrella", Role::Submitter).await);
    let (acme_worker, umbrella_worker) =
        (server.key("acme", Role::Worker).await, server.key("umbrella", Role::Worker).await);

    // acme's worker has free slots the whole time; umbrella's task is ready before acme's.
    let (mut worker_a, welcome) = hello_as(&server, &acme_worker, "wa", 2, None, json!([])).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let secret = welcome["session"].as_str().expect("a session secret").to_owned();
    let remote = json!({"command": ["true"], "capabilities": ["remote"]});
    let theirs = submit(&umbrella, &server, &remote).await;
    let ours = submit(&acme, &server, &remote).await;
    let assign = next_frame(&mut worker_a).await;
    assert_eq!((assign["type"].as_str(), assign["task"]["id"].as_str()), (Some("assign"), Some(ours.as_str())));
    let done = |id: &str, attempt: &Value| json!({"type": "finished", "task": id, "attempt": attempt, "outcome": {"status": "completed", "result": null}});
    worker_a.send(Message::text(done(&ours, &assign["task"]["attempt"]).to_string())).await.unwrap();
    let task = wait_for_status(&acme, &server, &ours, "completed").await;
    assert_eq!(task["agent_id"], "wa");

    // umbrella's task waited for umbrella's worker, which gets it.
    let (mut worker_u, welcome) = hello_as(&server, &umbrella_worker, "wu", 1, None, json!([])).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let assign = next_frame(&mut worker_u).await;
    assert_eq!((assign["type"].as_str(), assign["task"]["id"].as_str()), (Some("assign"), Some(theirs.as_str())));
    worker_u.send(Message::text(done(&theirs, &assign["task"]["attempt"]).to_string())).await.unwrap();
    let task = wait_for_status(&umbrella, &server, &theirs, "completed").await;
    assert_eq!(task["agent_id"], "wu");

    // A worker of another tenant cannot take over acme's worker's name, even with its secret.
    drop(worker_a);
    let (_socket, reply) = hello_as(&server, &umbrella_worker, "wa", 1, Some(&secret), json!([])).await;
    assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("conflict")), "{reply}");
    drop(worker_u);
    server.stop().await;
}

#[tokio::test]
async fn a_worker_declaring_more_than_the_capacity_cap_is_refused() {
    let server = TestServer::start("[workers]\nmax_capacity = 4\n").await;
    let (_socket, reply) = hello(&server, "big", 5, None, json!([])).await;
    assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("invalid_request")), "{reply}");
    assert!(reply["message"].as_str().unwrap_or_default().contains("workers.max_capacity"), "{reply}");
    let (_socket, reply) = hello(&server, "fits", 4, None, json!([])).await;
    assert_eq!(reply["type"], "welcome", "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn gateways_through_the_api_name_only_allowed_variables_and_hosts() {
    let server = TestServer::start("[gateways_api]\nallowed_token_env = [\"GODEL_TEST_GATEWAY_TOKEN\"]\n").await;
    let http = server.http();
    for (body, needles) in [
        (
            json!({"name": "gw", "url": "ws://127.0.0.1:1", "token_env": "AWS_SECRET_ACCESS_KEY"}),
            ["AWS_SECRET_ACCESS_KEY", "gateways_api.allowed_token_env"],
        ),
        (
            json!({"name": "gw", "url": "ws://127.0.0.1:1", "password_env": "HOME"}),
            ["HOME", "gateways_api.allowed_token_env"],
        ),
        (json!({"name": "gw", "url": "ws://evil.example:1"}), ["evil.example", "gateways_api.allowed_hosts"]),
        (json!({"name": "gw", "url": "ws://127.0.0.1@evil.example:1"}), ["evil.example", "gateways_api.allowed_hosts"]),
    ] {
        let response = http.post(server.url("/api/v1/instances")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 403, "{body}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"]["code"], "forbidden");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(needles.iter().all(|n| message.contains(n)), "{body}: {message}");
    }
    // An allowed variable passes the check (and is then read: here it is unset).
    let body = json!({"name": "gw", "url": "ws://localhost:1", "token_env": "GODEL_TEST_GATEWAY_TOKEN"});
    let response = http.post(server.url("/api/v1/instances")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 400, "allowed, but not set");
    server.stop().await;
}
