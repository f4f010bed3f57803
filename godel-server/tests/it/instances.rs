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
    let http = reqwest::Client::new();
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
