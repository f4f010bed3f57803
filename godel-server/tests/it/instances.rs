//! `/api/v1/instances`: OpenClaw gateways registered through the API are
//! connected to, listed with their live state, used for tasks, kept in the
//! store, and let go of on deregistration; bad registrations name the field.

use std::time::{Duration, Instant};

use godel_fakes::openclaw::{FakeConfig, FakeGateway};
use serde_json::{Value, json};

use crate::support::TestServer;

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("a response");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("a body");
    (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON") })
}

async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn gateways_registered_through_the_api_run_tasks_until_deregistered() {
    use reqwest::Method;
    let config = FakeConfig { agents: vec!["coder".into()], default_agent: "coder".into(), ..FakeConfig::default() };
    let fake = FakeGateway::start(config).await.expect("a fake gateway");
    let server = TestServer::start("[engine]\npoll_interval = \"20ms\"\n").await;
    let http = server.http();
    let instances = server.url("/api/v1/instances");

    // Bad registrations are refused, naming what is wrong.
    for (body, needle) in [
        (json!({}), "name"),
        (json!({"name": "gw", "url": "http://127.0.0.1:1"}), "url"),
        (json!({"name": "gw", "url": "ws://127.0.0.1:1", "max_sessions": 0}), "max_sessions"),
        (json!({"name": "gw", "url": "ws://127.0.0.1:1", "colour": "red"}), "colour"),
        (json!({"name": "gw", "url": "ws://127.0.0.1:1", "token": "a", "token_env": "B"}), "at most one"),
        (json!({"name": "gw", "url": "ws://127.0.0.1:1", "token_env": "GODEL_NO_SUCH_VAR"}), "GODEL_NO_SUCH_VAR"),
        (json!({"name": "a b", "url": "ws://127.0.0.1:1"}), "name"),
    ] {
        let (status, reply) = call(&http, Method::POST, instances.clone(), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
    }

    let registration =
        json!({"name": "gw1", "url": fake.url(), "agents": ["coder"], "max_sessions": 10, "region": "eu"});
    let (status, created) = call(&http, Method::POST, instances.clone(), Some(registration.clone())).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["name"].as_str(), created["source"].as_str()), (Some("gw1"), Some("api")));
    let (status, _) = call(&http, Method::POST, instances.clone(), Some(registration)).await;
    assert_eq!(status, 409, "a name is registered once");

    let health_url = server.url("/api/v1/instances/gw1/health");
    let health = eventually("gw1 to be ready", async || {
        let (_, health) = call(&http, Method::GET, health_url.clone(), None).await;
        (health["ok"] == true).then_some(health)
    })
    .await;
    assert_eq!(health["state"], "ready");
    let (_, listed) = call(&http, Method::GET, instances.clone(), None).await;
    let gw = &listed["items"][0];
    assert_eq!(
        (gw["name"].as_str(), gw["state"].as_str(), gw["max_sessions"].as_u64()),
        (Some("gw1"), Some("ready"), Some(10))
    );
    assert_eq!(gw["capabilities"], json!(["agent:coder", "region:eu"]));

    // A task for the hosted agent runs there.
    let (_, task) = call(
        &http,
        Method::POST,
        server.url("/api/v1/tasks"),
        Some(json!({"prompt": "hi", "capabilities": ["agent:coder"]})),
    )
    .await;
    let task_url = server.url(&format!("/api/v1/tasks/{}", task["id"].as_str().expect("an id")));
    let done = eventually("the task to complete on gw1", async || {
        let (_, task) = call(&http, Method::GET, task_url.clone(), None).await;
        (task["status"] == "completed").then_some(task)
    })
    .await;
    assert_eq!(done["agent_id"], "gateway-gw1");
    assert_eq!(fake.total_runs_started(), 1);

    let (status, _) = call(&http, Method::DELETE, server.url("/api/v1/instances/gw1"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&http, Method::DELETE, server.url("/api/v1/instances/gw1"), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&http, Method::GET, health_url, None).await;
    assert_eq!(status, 404);
    let (_, listed) = call(&http, Method::GET, instances, None).await;
    assert_eq!(listed["items"], json!([]));
    server.stop().await;
}

/// Two servers on one store share a gateway registered on one of them: both
/// connect, and they split its capacity so that together they stay under 90%
/// of its session limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_a_gateway_split_its_capacity() {
    use godel_fakes::openclaw::RunScript;
    use reqwest::Method;

    let slow = |message: &str| RunScript { step_delay: Duration::from_millis(150), ..RunScript::echo(message) };
    let config = FakeConfig { script: std::sync::Arc::new(slow), ..FakeConfig::default() };
    let fake = FakeGateway::start(config).await.expect("a fake gateway");
    let dir = tempfile::tempdir().expect("a directory for the shared store");
    let store = format!("sqlite://{}", dir.path().join("shared.db").display());
    let toml = |node: &str| format!("[engine]\nnode = \"{node}\"\npoll_interval = \"20ms\"\n");
    let a = TestServer::start_on(Some(&store), &toml("node-a")).await;
    let b = TestServer::start_on(Some(&store), &toml("node-b")).await;
    let http = a.http();

    let registration = json!({"name": "shared", "url": fake.url(), "agents": ["main"], "max_sessions": 10});
    let (status, _) = call(&http, Method::POST, a.url("/api/v1/instances"), Some(registration)).await;
    assert_eq!(status, 201);
    // Each node lists both views, with shares of 5 and 4 (90% of 10 is 9).
    let views = eventually("both nodes to use the gateway with split shares", async || {
        let (_, listed) = call(&http, Method::GET, b.url("/api/v1/instances"), None).await;
        let items = listed["items"].as_array().cloned().unwrap_or_default();
        let shares: Vec<(String, u64)> = items
            .iter()
            .filter(|v| v["state"] == "ready")
            .map(|v| (v["node"].as_str().unwrap_or_default().to_owned(), v["capacity"].as_u64().unwrap_or(0)))
            .collect();
        let mut sorted = shares.clone();
        sorted.sort();
        (sorted == [("node-a".to_owned(), 5), ("node-b".to_owned(), 4)]).then_some(listed)
    })
    .await;
    assert_eq!(views["items"].as_array().map(Vec::len), Some(2), "{views}");

    // A burst of slow tasks never has more than 9 sessions open at once.
    let mut ids = Vec::new();
    for n in 0..30 {
        let server = if n % 2 == 0 { &a } else { &b };
        let (_, task) = call(
            &http,
            Method::POST,
            server.url("/api/v1/tasks"),
            Some(json!({"prompt": format!("task {n}"), "capabilities": ["agent:main"]})),
        )
        .await;
        ids.push(task["id"].as_str().expect("an id").to_owned());
    }
    for id in &ids {
        let url = a.url(&format!("/api/v1/tasks/{id}"));
        eventually("every task to complete", async || {
            let (_, task) = call(&http, Method::GET, url.clone(), None).await;
            (task["status"] == "completed").then_some(task)
        })
        .await;
    }
    assert!(fake.peak_active_runs() <= 9, "at most 9 sessions at once, saw {}", fake.peak_active_runs());
    assert!(fake.peak_active_runs() >= 5, "both nodes ran sessions at once, saw {}", fake.peak_active_runs());
    drop(http); // its idle keep-alive connections would make each stop wait out the HTTP drain
    b.stop().await;
    a.stop().await;
}
