//! `openapi.json` checked against the running server.
//!
//! The routes come from two sources that must both agree with the document:
//! the `warp::path!` declarations in `src/routes/` (so a route added there
//! without being documented fails here, before anyone reads the scenario),
//! and requests sent to a real server. Every documented operation must
//! answer a real request with success, every path/method pair the document
//! leaves out must answer 404 or 405, and every response the scenario
//! provokes (errors included) must carry a status, headers and a body that
//! the document gives for that operation. WebSocket messages on `/events`
//! are validated the same way against `ServerMessage`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use reqwest::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::TestServer;

/// The document compiled into the server; the test also checks that
/// `/openapi.json` serves exactly this.
const DOCUMENT: &str = include_str!("../../openapi.json");
/// The route files serving resources under `/api/v1`, scanned for the paths
/// and methods they declare.
const API_SOURCES: [&str; 9] = [
    include_str!("../../src/routes/tasks.rs"),
    include_str!("../../src/routes/queue.rs"),
    include_str!("../../src/routes/dead_letters.rs"),
    include_str!("../../src/routes/agents.rs"),
    include_str!("../../src/routes/sessions.rs"),
    include_str!("../../src/routes/instances.rs"),
    include_str!("../../src/routes/keys.rs"),
    include_str!("../../src/routes/audit.rs"),
    include_str!("../../src/routes/quarantine.rs"),
];
/// The route files serving paths at the root (and the workers' socket).
const ROOT_SOURCES: [&str; 4] = [
    include_str!("../../src/routes/mod.rs"),
    include_str!("../../src/routes/health.rs"),
    include_str!("../../src/routes/metrics.rs"),
    include_str!("../../src/routes/events.rs"),
];
/// The methods the document may use for operations, lowercase as in OpenAPI.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
/// Stands in for `{id}` when probing paths; valid as a task, session and agent id.
const SAMPLE_ID: &str = "0190d6b5-7a1c-7000-8000-000000000000";

/// A method (uppercase) and a path template with every parameter named `{id}`.
type Route = (String, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_matches_the_server() {
    let server = TestServer::start(
        "[engine]\npoll_interval = \"20ms\"\nkill_grace = \"100ms\"\nshutdown_grace = \"1s\"\n\
         [[agents]]\nid = \"local\"\ncapacity = 8\ncapabilities = [\"shell\"]\n",
    )
    .await;
    let http = server.http();

    // The served document is the file, and it is well formed.
    let served = http.get(server.url("/openapi.json")).send().await.expect("GET /openapi.json");
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.expect("the document is JSON");
    let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON");
    assert_eq!(served, doc, "/openapi.json serves something other than godel-server/openapi.json");
    let mut api = Api { http, server: &server, spec: Spec::new(doc) };
    api.spec.check_well_formed();
    api.call(Method::GET, "/openapi.json", None, 200).await;

    // What the code declares is what the document describes.
    let declared = declared_routes();
    let documented = api.spec.routes();
    assert_eq!(
        declared.difference(&documented).collect::<Vec<_>>(),
        Vec::<&Route>::new(),
        "routes declared in src/routes/ but missing from openapi.json"
    );
    assert_eq!(
        documented.difference(&declared).collect::<Vec<_>>(),
        Vec::<&Route>::new(),
        "routes in openapi.json that src/routes/ does not declare"
    );

    scenario(&mut api).await;
    events(&mut api).await;
    workers(&mut api).await;
    keys(&mut api).await;
    api.probe_undocumented().await;

    // Every documented operation answered a real request with success.
    let unserved: Vec<&Route> = documented
        .iter()
        .filter(|r| !api.spec.exercised.get(*r).is_some_and(|s| s.iter().any(|c| (101..300).contains(c))))
        .collect();
    assert!(unserved.is_empty(), "documented operations that never answered with success: {unserved:?}");

    assert!(api.spec.validated > 200, "only {} responses validated", api.spec.validated);
    server.stop().await;
}

/// Requests that reach every handler, in the states that give each of its
/// documented answers that a test can provoke (not 500, 503 or 411).
async fn scenario(api: &mut Api<'_>) {
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    const DELETE: Method = Method::DELETE;

    api.call(GET, "/health/live", None, 200).await;
    api.call(GET, "/health/ready", None, 200).await;
    api.call(GET, "/metrics", None, 200).await;

    // Agents, added and removed before any task exists so that none runs on them.
    let agents = api.call(GET, "/api/v1/agents", None, 200).await;
    assert_eq!(agents["items"][0]["id"], "local");
    api.call(GET, "/api/v1/agents/local", None, 200).await;
    api.call(GET, "/api/v1/agents/ghost", None, 404).await;
    api.call(GET, "/api/v1/agents/a%20b", None, 400).await;
    let registered = json!({
        "id": "extra-1", "name": "Extra", "kind": "process", "capabilities": ["shell"], "capacity": 2,
        "command": ["sh", "-c", "{prompt}"], "default_timeout_ms": 60_000, "region": "eu",
    });
    api.call(POST, "/api/v1/agents", Some(registered.clone()), 201).await;
    api.call(POST, "/api/v1/agents", Some(registered), 409).await;
    api.call(POST, "/api/v1/agents", Some(json!({"id": "minimal"})), 201).await;
    api.call(POST, "/api/v1/agents", Some(json!({"id": "remote", "kind": "worker"})), 400).await;
    api.call(POST, "/api/v1/agents", Some(json!({"id": "bad id"})), 400).await;
    api.call(POST, "/api/v1/agents", Some(json!({"id": "x", "capacity": 1, "colour": "red"})), 400).await;
    api.call(POST, "/api/v1/agents", Some(json!({"id": "y", "command": ["x", "{nope}"]})), 400).await;
    api.call(POST, "/api/v1/agents", Some(json!({"id": "z", "default_timeout_ms": 0})), 400).await;
    api.call(GET, "/api/v1/agents/extra-1", None, 200).await;
    api.call(POST, "/api/v1/agents/extra-1/heartbeat", None, 204).await;
    api.call(POST, "/api/v1/agents/ghost/heartbeat", None, 404).await;
    api.call(POST, "/api/v1/agents/a%20b/heartbeat", None, 400).await;
    api.call(POST, "/api/v1/agents/ghost/drain", None, 404).await;
    api.call(POST, "/api/v1/agents/a%20b/drain", None, 400).await;
    let drained = api.call(POST, "/api/v1/agents/minimal/drain", None, 202).await;
    assert_eq!((drained["draining"].as_bool(), drained["worker"].as_bool()), (Some(true), Some(false)));
    api.call(DELETE, "/api/v1/agents/extra-1", None, 204).await;
    api.call(DELETE, "/api/v1/agents/extra-1", None, 404).await;
    api.call(DELETE, "/api/v1/agents/a%20b", None, 400).await;
    api.call(GET, "/api/v1/agents", None, 200).await;

    // Gateways: a registration need not answer to be accepted.
    api.call(GET, "/api/v1/instances", None, 200).await;
    let gateway = json!({"name": "spec-gw", "url": "ws://127.0.0.1:9", "agents": ["coder"], "region": "eu"});
    api.call(POST, "/api/v1/instances", Some(gateway.clone()), 201).await;
    api.call(POST, "/api/v1/instances", Some(gateway), 409).await;
    api.call(POST, "/api/v1/instances", Some(json!({"name": "x", "url": "http://x"})), 400).await;
    let listed = api.call(GET, "/api/v1/instances", None, 200).await;
    assert_eq!(listed["items"][0]["name"], "spec-gw");
    api.call(GET, "/api/v1/instances/spec-gw/health", None, 200).await;
    api.call(GET, "/api/v1/instances/ghost/health", None, 404).await;
    api.call(DELETE, "/api/v1/instances/spec-gw", None, 204).await;
    api.call(DELETE, "/api/v1/instances/spec-gw", None, 404).await;

    // Tasks in every status the queue can hold.
    let done = api
        .call(
            POST,
            "/api/v1/tasks",
            Some(json!({
                "command": ["true"], "priority": "high", "capabilities": ["shell"], "metadata": {"team": "infra"},
                "idempotency_key": "done-1", "affinity_key": "repo-1", "max_attempts": 2, "timeout_ms": 60_000,
            })),
            201,
        )
        .await;
    let done = id_of(&done);
    let again =
        api.call(POST, "/api/v1/tasks", Some(json!({"command": ["true"], "idempotency_key": "done-1"})), 200).await;
    assert_eq!(id_of(&again), done, "an idempotency key returns the first task");
    let out =
        api.call(POST, "/api/v1/tasks", Some(json!({"command": ["sh", "-c", "echo out; echo err >&2"]})), 201).await;
    let out = id_of(&out);
    let child = api
        .call(POST, "/api/v1/tasks", Some(json!({"prompt": "child", "command": ["true"], "parent_id": out})), 201)
        .await;
    let child = id_of(&child);
    let dead =
        id_of(&api.call(POST, "/api/v1/tasks", Some(json!({"command": ["false"], "max_attempts": 1})), 201).await);
    let failed = id_of(
        &api.call(POST, "/api/v1/tasks", Some(json!({"command": ["/nonexistent/godel-openapi-test"]})), 201).await,
    );
    let later =
        id_of(&api.call(POST, "/api/v1/tasks", Some(json!({"command": ["true"], "delay_ms": 3_600_000})), 201).await);
    let scheduled = id_of(
        &api.call(POST, "/api/v1/tasks", Some(json!({"command": ["true"], "run_at": "2999-01-01T00:00:00Z"})), 201)
            .await,
    );
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        let task = api.call(POST, "/api/v1/tasks", Some(json!({"command": ["sleep", "30"], "priority": "low"})), 201);
        sleepers.push(id_of(&task.await));
    }
    let batch = api
        .call(
            POST,
            "/api/v1/tasks/batch",
            Some(
                json!({"tasks": [{"command": ["true"]}, {"prompt": "p", "command": ["true"], "priority": "critical"}]}),
            ),
            201,
        )
        .await;
    assert_eq!(batch["tasks"].as_array().map(Vec::len), Some(2));

    // Bad submissions.
    api.call(POST, "/api/v1/tasks", Some(json!({"command": ["true"], "colour": "red"})), 400).await;
    api.call(POST, "/api/v1/tasks", Some(json!({"priority": "high"})), 400).await;
    api.call(
        POST,
        "/api/v1/tasks",
        Some(json!({"command": ["true"], "run_at": "2999-01-01T00:00:00Z", "delay_ms": 1})),
        400,
    )
    .await;
    api.call_raw(POST, "/api/v1/tasks", b"{\"command\": [".to_vec(), 400).await;
    api.call_raw(POST, "/api/v1/tasks", Vec::new(), 400).await;
    let huge = serde_json::to_vec(&json!({"prompt": "x".repeat(1 << 20), "command": ["true"]})).expect("json");
    api.call_raw(POST, "/api/v1/tasks", huge.clone(), 413).await;
    api.call_raw(POST, "/api/v1/tasks/batch", huge, 413).await;
    api.call(POST, "/api/v1/tasks/batch", Some(json!({"tasks": []})), 400).await;
    api.call(POST, "/api/v1/tasks/batch", Some(json!({"tasks": [{"command": ["true"]}, {"command": []}]})), 400).await;

    api.wait_for(&done, "completed").await;
    api.wait_for(&out, "completed").await;
    api.wait_for(&child, "completed").await;
    api.wait_for(&dead, "dead_letter").await;
    api.wait_for(&failed, "failed").await;
    for sleeper in &sleepers {
        api.wait_for(sleeper, "running").await;
    }

    // Listings.
    let page = api.call(GET, "/api/v1/tasks?limit=2", None, 200).await;
    let cursor = page["next_cursor"].as_str().expect("a second page").to_owned();
    api.call(GET, &format!("/api/v1/tasks?limit=2&cursor={cursor}"), None, 200).await;
    api.call(
        GET,
        "/api/v1/tasks?status=completed,dead_letter&priority=high,medium&sort=-created_at&created_after=2020-01-01T00:00:00Z&created_before=2999-01-01T00:00:00Z",
        None,
        200,
    )
    .await;
    let children = api.call(GET, &format!("/api/v1/tasks?parent_id={out}"), None, 200).await;
    assert_eq!(children["items"][0]["id"], json!(child));
    api.call(GET, "/api/v1/tasks?agent_id=local&limit=100", None, 200).await;
    api.call(GET, "/api/v1/tasks?colour=red", None, 400).await;
    api.call(GET, "/api/v1/tasks?limit=0", None, 400).await;
    api.call(GET, "/api/v1/tasks?status=finished", None, 400).await;
    api.call(GET, "/api/v1/tasks?sort=name", None, 400).await;
    api.call(GET, "/api/v1/tasks?cursor=nope", None, 400).await;
    api.call(GET, "/api/v1/tasks?limit=1&limit=2", None, 400).await;

    // One task.
    let task = api.call(GET, &format!("/api/v1/tasks/{done}"), None, 200).await;
    assert_eq!(task["status"], "completed");
    api.call(GET, &format!("/api/v1/tasks/{failed}"), None, 200).await;
    api.call(GET, "/api/v1/tasks/not-a-uuid", None, 400).await;
    api.call(GET, &format!("/api/v1/tasks/{SAMPLE_ID}"), None, 404).await;
    let history = api.call(GET, &format!("/api/v1/tasks/{out}/events"), None, 200).await;
    let kinds: Vec<&str> =
        history["items"].as_array().expect("items").iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(kinds.contains(&"task.output") && kinds.contains(&"task.completed"), "history of {out}: {kinds:?}");
    api.call(GET, &format!("/api/v1/tasks/{dead}/events"), None, 200).await;
    api.call(GET, &format!("/api/v1/tasks/{SAMPLE_ID}/events"), None, 404).await;
    api.call(GET, "/api/v1/tasks/nope/events", None, 400).await;

    // The queue.
    api.call(GET, "/api/v1/queue/depth", None, 200).await;
    let health = api.call(GET, "/api/v1/queue/health", None, 200).await;
    assert_eq!(health["dead_letters"], 1);
    api.call(GET, "/health", None, 200).await;

    // Sessions, while the sleepers run. Terminating one kills its task.
    let running = api.wait_for_session(&sleepers[0], true).await;
    let session_id = running["id"].as_str().expect("a session id").to_owned();
    api.call(GET, "/api/v1/sessions", None, 200).await;
    api.call(GET, "/api/v1/sessions?state=running,ready&agent_id=local&limit=5", None, 200).await;
    api.call(GET, "/api/v1/sessions?state=asleep", None, 400).await;
    api.call(GET, "/api/v1/sessions?sort=-created_at", None, 400).await;
    api.call(GET, &format!("/api/v1/sessions/{session_id}"), None, 200).await;
    api.call(GET, &format!("/api/v1/sessions/{SAMPLE_ID}"), None, 404).await;
    api.call(GET, "/api/v1/sessions/nope", None, 400).await;
    let terminated = api.call(POST, &format!("/api/v1/sessions/{session_id}/terminate"), None, 202).await;
    assert_eq!(terminated["task_id"], json!(sleepers[0]));
    let finished = api.wait_for_session(&done, false).await;
    let finished = finished["id"].as_str().expect("a session id").to_owned();
    api.call(POST, &format!("/api/v1/sessions/{finished}/terminate"), None, 409).await;
    api.call(POST, &format!("/api/v1/sessions/{SAMPLE_ID}/terminate"), None, 404).await;
    api.call(POST, "/api/v1/sessions/nope/terminate", None, 400).await;

    // Cancel and kill, pending and running.
    let cancelled = api.call(POST, &format!("/api/v1/tasks/{later}/cancel"), None, 200).await;
    assert_eq!(cancelled["outcome"], "cancelled");
    let requested = api.call(POST, &format!("/api/v1/tasks/{}/cancel", sleepers[1]), None, 200).await;
    assert_eq!(requested["outcome"], "cancel_requested");
    let killed = api.call(POST, &format!("/api/v1/tasks/{scheduled}/kill"), None, 200).await;
    assert_eq!(killed["outcome"], "cancelled");
    let requested = api.call(POST, &format!("/api/v1/tasks/{}/kill", sleepers[2]), None, 200).await;
    assert_eq!(requested["outcome"], "cancel_requested");
    api.call(POST, &format!("/api/v1/tasks/{done}/cancel"), None, 409).await;
    api.call(POST, &format!("/api/v1/tasks/{done}/kill"), None, 409).await;
    api.call(POST, &format!("/api/v1/tasks/{SAMPLE_ID}/cancel"), None, 404).await;
    api.call(POST, &format!("/api/v1/tasks/{SAMPLE_ID}/kill"), None, 404).await;
    api.call(POST, "/api/v1/tasks/nope/cancel", None, 400).await;
    api.call(POST, "/api/v1/tasks/nope/kill", None, 400).await;
    for sleeper in &sleepers {
        api.wait_for(sleeper, "cancelled").await;
    }

    // Retry and the dead-letter queue.
    api.call(GET, "/api/v1/dead-letters", None, 200).await;
    api.call(GET, "/api/v1/dead-letters?limit=1&priority=medium&sort=-created_at", None, 200).await;
    api.call(GET, "/api/v1/dead-letters?status=failed", None, 400).await;
    api.call(GET, "/api/v1/dead-letters/export", None, 200).await;
    api.call(GET, "/api/v1/dead-letters/export?priority=medium&created_after=2020-01-01T00:00:00Z", None, 200).await;
    api.call(GET, "/api/v1/dead-letters/export?limit=1", None, 400).await;
    api.call(POST, &format!("/api/v1/dead-letters/{done}/replay"), None, 409).await;
    api.call(POST, &format!("/api/v1/dead-letters/{SAMPLE_ID}/replay"), None, 404).await;
    api.call(POST, "/api/v1/dead-letters/nope/replay", None, 400).await;
    let replayed = api.call(POST, &format!("/api/v1/dead-letters/{dead}/replay"), None, 200).await;
    assert_eq!(replayed["status"], "pending");
    api.wait_for(&dead, "dead_letter").await;
    let bulk =
        api.call(POST, "/api/v1/dead-letters/replay", Some(json!({"priority": ["medium"], "agent_id": "local"})), 200);
    assert_eq!(bulk.await["replayed"], 1);
    api.wait_for(&dead, "dead_letter").await;
    api.call(POST, "/api/v1/dead-letters/replay", Some(json!({})), 200).await;
    api.call(POST, "/api/v1/dead-letters/replay", Some(json!({"status": ["failed"]})), 400).await;
    api.call(POST, "/api/v1/dead-letters/replay", Some(json!({"priority": ["urgent"]})), 400).await;
    // No body at all means no filter.
    api.call_raw(POST, "/api/v1/dead-letters/replay", Vec::new(), 200).await;
    let retried = api.call(POST, &format!("/api/v1/tasks/{failed}/retry"), None, 200).await;
    assert_eq!(retried["attempt"], 0);
    api.call(POST, &format!("/api/v1/tasks/{SAMPLE_ID}/retry"), None, 404).await;
    api.call(POST, "/api/v1/tasks/nope/retry", None, 400).await;
    let pending =
        id_of(&api.call(POST, "/api/v1/tasks", Some(json!({"command": ["true"], "delay_ms": 3_600_000})), 201).await);
    api.call(POST, &format!("/api/v1/tasks/{pending}/retry"), None, 409).await;

    // The quarantine: a task whose payload is damaged behind the server's back,
    // moved there by the listing that meets it.
    let damaged =
        id_of(&api.call(POST, "/api/v1/tasks", Some(json!({"command": ["true"], "delay_ms": 3_600_000})), 201).await);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", api.server.sqlite_file().display())).await.unwrap();
    sqlx::query("UPDATE tasks SET payload = '{not json' WHERE id = ?").bind(&damaged).execute(&pool).await.unwrap();
    pool.close().await;
    let page = api.call(GET, "/api/v1/tasks?status=pending&sort=-created_at&limit=5", None, 200).await;
    assert_eq!(page["quarantined"][0]["id"], damaged.as_str(), "{page}");
    api.call(GET, "/api/v1/quarantine", None, 200).await;
    api.call(GET, "/api/v1/quarantine?limit=0", None, 400).await;
    api.call(GET, &format!("/api/v1/quarantine/{damaged}"), None, 200).await;
    api.call(GET, &format!("/api/v1/quarantine/{SAMPLE_ID}"), None, 404).await;
    api.call(GET, "/api/v1/quarantine/nope", None, 400).await;
    api.call(DELETE, &format!("/api/v1/quarantine/{damaged}"), None, 204).await;
    api.call(DELETE, &format!("/api/v1/quarantine/{damaged}"), None, 404).await;
    api.call(POST, "/api/v1/quarantine/purge", None, 200).await;

    // Purge.
    api.call(DELETE, &format!("/api/v1/tasks/{pending}?purge=true"), None, 409).await;
    api.call(DELETE, &format!("/api/v1/tasks/{done}"), None, 400).await;
    api.call(DELETE, &format!("/api/v1/tasks/{done}?force=true"), None, 400).await;
    api.call(DELETE, "/api/v1/tasks/nope?purge=true", None, 400).await;
    api.call(DELETE, &format!("/api/v1/tasks/{done}?purge=true"), None, 204).await;
    api.call(DELETE, &format!("/api/v1/tasks/{done}?purge=true"), None, 404).await;
    api.call(GET, &format!("/api/v1/tasks/{done}"), None, 404).await;
}

/// `/events`: the upgrade, and every kind of message a client can provoke.
async fn events(api: &mut Api<'_>) {
    // Without the upgrade headers the route still answers, with 426.
    api.call(Method::GET, "/events", None, 426).await;

    // A bad query parameter is refused before the upgrade.
    for query in ["?since=soon", "?patterns=task", "?colour=red"] {
        match tokio_tungstenite::connect_async(api.server.ws(&format!("/events{query}"))).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "/events{query}");
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("an error envelope");
                api.spec.validate_response("GET", "/events", 400, &body);
            }
            other => panic!("/events{query}: expected a 400 refusal, got {other:?}"),
        }
    }

    // Replay everything since the start, then follow live.
    let (mut ws, response) =
        tokio_tungstenite::connect_async(api.server.ws("/events?since=0&patterns=*")).await.expect("a WebSocket");
    api.spec.validate_response("GET", "/events", response.status().as_u16(), &Value::Null);
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    let last = welcome["seq"].as_u64().expect("a sequence number");
    let mut messages = vec![welcome];
    loop {
        let message = next_json(&mut ws).await;
        let seq = message["seq"].as_u64();
        messages.push(message);
        if messages.len() > 2 && seq >= Some(last) {
            break;
        }
    }
    let kinds: BTreeSet<String> = messages.iter().filter_map(|m| m["type"].as_str().map(str::to_owned)).collect();
    for kind in ["subscribed", "task.created", "task.output", "task.dead_lettered", "task.cancelled", "agent.connected"]
    {
        assert!(kinds.contains(kind), "no {kind} message in the replay: {kinds:?}");
    }
    for request in
        [json!({"action": "ping"}), json!({"action": "subscribe", "patterns": ["task.*"]}), json!({"action": "dance"})]
    {
        ws.send(Message::text(request.to_string())).await.expect("sent");
        let answer = loop {
            let value = next_json(&mut ws).await;
            let is_event = value["type"].as_str().is_some_and(|t| t.contains('.'));
            messages.push(value.clone());
            if !is_event {
                break value;
            }
        };
        let expected = match request["action"].as_str() {
            Some("ping") => "pong",
            Some("subscribe") => "subscribed",
            _ => "error",
        };
        assert_eq!(answer["type"], expected, "the answer to {request}");
    }
    ws.close(None).await.expect("closed");

    // A client resuming from an earlier run of the server is told so.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(api.server.ws("/events?since=1&epoch=an-earlier-run&patterns=task.*"))
            .await
            .expect("a WebSocket");
    for _ in 0..2 {
        messages.push(next_json(&mut ws).await);
    }
    assert!(messages.iter().any(|m| m["type"] == "replay_unavailable"), "no replay_unavailable message");
    ws.close(None).await.expect("closed");

    let schema = json!({"$ref": "#/components/schemas/ServerMessage"});
    for message in &messages {
        api.spec.validate(&schema, message, "a message on /events");
    }
}

/// `/api/v1/workers/connect`: the upgrade, a hello and its welcome.
async fn workers(api: &mut Api<'_>) {
    // Without the upgrade headers: 426. (No deprecated /api alias: workers came after it.)
    let exchange = api.send(Method::GET, "/api/v1/workers/connect", None).await;
    assert_eq!(exchange.status, 426, "{}", exchange.describe());
    api.spec.check(&exchange);
    let (mut ws, response) =
        tokio_tungstenite::connect_async(api.server.ws("/api/v1/workers/connect")).await.expect("a WebSocket");
    api.spec.validate_response("GET", "/api/v1/workers/connect", response.status().as_u16(), &Value::Null);
    let hello = json!({"type": "hello", "name": "spec-worker", "concurrency": 1, "version": "test"});
    ws.send(Message::text(hello.to_string())).await.expect("send hello");
    let welcome = next_json(&mut ws).await;
    assert_eq!((welcome["type"].as_str(), welcome["agent"].as_str()), (Some("welcome"), Some("spec-worker")));
    ws.send(Message::text(json!({"type": "bye"}).to_string())).await.expect("send bye");
}

/// The next text frame on a WebSocket, as JSON.
/// API keys and the audit log.
async fn keys(api: &mut Api<'_>) {
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    api.call(GET, "/api/v1/keys", None, 200).await;
    api.call(GET, "/api/v1/keys?tenant=default", None, 200).await;
    api.call(GET, "/api/v1/keys?tenant=a%20b", None, 400).await;
    let created = api
        .call(POST, "/api/v1/keys", Some(json!({"name": "ci", "role": "submitter", "expires_in": "30d"})), 201)
        .await;
    api.call(POST, "/api/v1/keys", Some(json!({"name": "ci", "role": "root"})), 400).await;
    let id = created["key"]["id"].as_str().expect("a key id").to_owned();
    api.call(GET, &format!("/api/v1/keys/{id}"), None, 200).await;
    api.call(GET, &format!("/api/v1/keys/{SAMPLE_ID}"), None, 404).await;
    api.call(GET, "/api/v1/keys/nope", None, 400).await;
    let rotated = api.call(POST, &format!("/api/v1/keys/{id}/rotate"), Some(json!({"grace": "0s"})), 201).await;
    api.call(POST, &format!("/api/v1/keys/{id}/rotate"), Some(json!({"grace": "1h"})), 409).await;
    api.call(POST, &format!("/api/v1/keys/{id}/rotate"), Some(json!({"grace": "1y"})), 400).await;
    api.call(POST, &format!("/api/v1/keys/{SAMPLE_ID}/rotate"), Some(json!({})), 404).await;
    let new_id = rotated["key"]["id"].as_str().expect("a key id").to_owned();
    api.call(Method::DELETE, &format!("/api/v1/keys/{new_id}"), None, 200).await;
    api.call(Method::DELETE, &format!("/api/v1/keys/{SAMPLE_ID}"), None, 404).await;
    api.call(Method::DELETE, "/api/v1/keys/nope", None, 400).await;
    api.call(GET, "/api/v1/audit?limit=5&outcome=allowed&action=keys.", None, 200).await;
    api.call(GET, "/api/v1/audit?limit=0", None, 400).await;
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the connection stays open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("messages are JSON");
        }
    }
}

/// The response to one request.
#[derive(Debug)]
struct Exchange {
    method: Method,
    path: String,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Exchange {
    fn describe(&self) -> String {
        format!("{} {} -> {} {}", self.method, self.path, self.status, String::from_utf8_lossy(&self.body))
    }
}

/// A client of the test server that checks every response against the document.
struct Api<'a> {
    http: reqwest::Client,
    server: &'a TestServer,
    spec: Spec,
}

impl Api<'_> {
    /// Sends a request with an optional JSON body, checks its status and
    /// documentation, and returns the body as JSON (null when empty).
    async fn call(&mut self, method: Method, path: &str, body: Option<Value>, expect: u16) -> Value {
        let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
        self.call_inner(method, path, body, expect).await
    }

    /// Like `call` with a body sent as is.
    async fn call_raw(&mut self, method: Method, path: &str, body: Vec<u8>, expect: u16) -> Value {
        self.call_inner(method, path, Some(body), expect).await
    }

    async fn call_inner(&mut self, method: Method, path: &str, body: Option<Vec<u8>>, expect: u16) -> Value {
        let exchange = self.send(method.clone(), path, body.clone()).await;
        assert_eq!(exchange.status, expect, "{}", exchange.describe());
        self.spec.check(&exchange);
        // The deprecated alias answers the same, and says it is deprecated.
        // Only for requests that change nothing, so that sending twice is harmless.
        if let (Some(rest), true) = (path.strip_prefix("/api/v1/"), method == Method::GET) {
            let alias = self.send(method, &format!("/api/{rest}"), body).await;
            assert_eq!(alias.status, expect, "{}", alias.describe());
            assert_eq!(
                alias.headers.get("deprecation").map(|v| v.as_bytes()),
                Some(&b"true"[..]),
                "{}",
                alias.describe()
            );
            assert!(alias.headers.contains_key("sunset"), "{}", alias.describe());
        }
        if exchange.body.is_empty() {
            Value::Null
        } else if is_json(&exchange.headers) {
            serde_json::from_slice(&exchange.body).expect("checked above")
        } else {
            Value::String(String::from_utf8_lossy(&exchange.body).into_owned())
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Exchange {
        let mut request = self.http.request(method.clone(), self.server.url(path));
        if let Some(body) = body {
            // Said outright: the client leaves it out for an empty body, and
            // the server answers 411 to a body without a length.
            let length = body.len().to_string();
            if body.len() > 1 << 20 {
                // The server refuses it unread and drops the connection; a
                // pooled connection would fail whichever request came next.
                request = request.header(CONNECTION, "close");
            }
            request = request.header(CONTENT_TYPE, "application/json").header(CONTENT_LENGTH, length).body(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("a body").to_vec();
        Exchange { method, path: path.to_owned(), status, headers, body }
    }

    /// Polls a task until it reaches `status`.
    async fn wait_for(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let task = self.send(Method::GET, &format!("/api/v1/tasks/{id}"), None).await;
            let task: Value = serde_json::from_slice(&task.body).expect("a task");
            if task["status"] == status {
                return;
            }
            assert!(Instant::now() < deadline, "task {id} never became {status}: {task}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the task has a session, a running one if asked.
    async fn wait_for_session(&self, task: &str, running: bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.send(Method::GET, &format!("/api/v1/sessions?task_id={task}"), None).await;
            let list: Value = serde_json::from_slice(&list.body).expect("sessions");
            let found = list["items"].as_array().into_iter().flatten().find(|s| !running || s["state"] == "running");
            if let Some(session) = found {
                return session.clone();
            }
            assert!(Instant::now() < deadline, "task {task} never had a matching session: {list}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends every method the document leaves out for each documented path
    /// (and its deprecated alias): the server must not serve them.
    async fn probe_undocumented(&mut self) {
        let paths: Vec<String> = self.spec.doc["paths"].as_object().expect("paths").keys().cloned().collect();
        for template in paths {
            let concrete = template.replace("{id}", SAMPLE_ID);
            let alias = concrete.strip_prefix("/api/v1/").map(|rest| format!("/api/{rest}"));
            for method in METHODS {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
                if self.spec.route_for(method.as_str(), &concrete).is_some() {
                    continue;
                }
                for path in std::iter::once(&concrete).chain(alias.as_ref()) {
                    let exchange = self.send(method.clone(), path, Some(b"{}".to_vec())).await;
                    assert!(matches!(exchange.status, 404 | 405), "served but not documented: {}", exchange.describe());
                    let body: Value = serde_json::from_slice(&exchange.body).expect("an error envelope");
                    self.spec.validate(&json!({"$ref": "#/components/schemas/Error"}), &body, &exchange.describe());
                }
            }
        }
    }
}

/// The document, with compiled schemas and a record of what was exercised.
struct Spec {
    doc: Value,
    validators: HashMap<String, jsonschema::Validator>,
    /// Statuses seen per documented operation.
    exercised: BTreeMap<Route, BTreeSet<u16>>,
    validated: usize,
}

impl Spec {
    fn new(doc: Value) -> Self {
        Self { doc, validators: HashMap::new(), exercised: BTreeMap::new(), validated: 0 }
    }

    /// Every documented operation.
    fn routes(&self) -> BTreeSet<Route> {
        let mut routes = BTreeSet::new();
        for (template, item) in self.doc["paths"].as_object().expect("paths") {
            for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                routes.insert((method.to_uppercase(), normalize(template)));
            }
        }
        routes
    }

    /// Structural checks no request would catch: every reference resolves,
    /// every schema compiles, and path parameters match their templates.
    fn check_well_formed(&mut self) {
        assert_eq!(self.doc["openapi"], "3.1.0");
        let mut refs = Vec::new();
        collect_refs(&self.doc, &mut refs);
        for reference in refs {
            let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {reference}"));
            assert!(self.doc.pointer(pointer).is_some(), "$ref {reference} does not resolve");
        }
        let names: Vec<String> =
            self.doc["components"]["schemas"].as_object().expect("component schemas").keys().cloned().collect();
        for name in names {
            self.validator(&json!({"$ref": format!("#/components/schemas/{name}")}));
        }
        for (template, item) in self.doc["paths"].as_object().expect("paths") {
            let in_template: BTreeSet<&str> =
                template.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            for method in METHODS.iter().filter_map(|m| item.get(*m)) {
                let declared: BTreeSet<&str> = item["parameters"]
                    .as_array()
                    .into_iter()
                    .chain(method["parameters"].as_array())
                    .flatten()
                    .map(|p| self.resolve(p))
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert_eq!(declared, in_template, "path parameters of {template}");
                assert!(method["operationId"].is_string(), "{template} has an operation without operationId");
            }
        }
    }

    /// Follows a `$ref` to the document's components.
    fn resolve<'v>(&'v self, value: &'v Value) -> &'v Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let target = reference.strip_prefix('#').and_then(|p| self.doc.pointer(p));
                self.resolve(target.unwrap_or_else(|| panic!("$ref {reference} does not resolve")))
            }
            None => value,
        }
    }

    /// The documented operation a request reaches: literal segments win over
    /// parameters, as in OpenAPI path matching (and in the server's routes).
    fn route_for(&self, method: &str, path: &str) -> Option<Route> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        let method = method.to_lowercase();
        let paths = self.doc["paths"].as_object().expect("paths");
        let mut candidates: Vec<(usize, &String)> = paths
            .keys()
            .filter_map(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') && part.ends_with('}') {
                        if segment.is_empty() {
                            return None;
                        }
                    } else if part == segment {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, template))
            })
            .collect();
        candidates.sort_by_key(|(literal, _)| std::cmp::Reverse(*literal));
        candidates
            .into_iter()
            .find(|(_, template)| paths[*template].get(&method).is_some())
            .map(|(_, template)| (method.to_uppercase(), template.clone()))
    }

    /// Checks a response against the documented operation it reached.
    fn check(&mut self, exchange: &Exchange) {
        let what = exchange.describe();
        let route = self
            .route_for(exchange.method.as_str(), &exchange.path)
            .unwrap_or_else(|| panic!("{what}: no documented operation matches"));
        let operation = &self.doc["paths"][&route.1][route.0.to_lowercase()];
        let response = operation["responses"]
            .get(exchange.status.to_string())
            .unwrap_or_else(|| panic!("{what}: status {} is not documented for {route:?}", exchange.status));
        let response = self.resolve(response).clone();
        for name in response["headers"].as_object().into_iter().flatten().map(|(name, _)| name) {
            assert!(exchange.headers.contains_key(name.as_str()), "{what}: no {name} header");
        }
        match response["content"].as_object() {
            None => assert!(exchange.body.is_empty(), "{what}: documented without a body"),
            Some(content) => {
                let actual = exchange.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                let (media, schema) = content
                    .iter()
                    .find(|(media, _)| essence(media) == essence(actual))
                    .map(|(media, value)| (media.clone(), value["schema"].clone()))
                    .unwrap_or_else(|| panic!("{what}: content type {actual:?} is not documented"));
                let body = std::str::from_utf8(&exchange.body).unwrap_or_else(|_| panic!("{what}: not UTF-8"));
                if essence(&media) == "application/json" {
                    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
                    self.validate(&schema, &value, &what);
                } else if essence(&media) == "application/x-ndjson" {
                    for line in body.lines() {
                        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: {e}"));
                        self.validate(&schema, &value, &what);
                    }
                } else {
                    self.validate(&schema, &Value::String(body.to_owned()), &what);
                }
            }
        }
        self.exercised.entry((route.0, normalize(&route.1))).or_default().insert(exchange.status);
    }

    /// Checks a response seen outside `check` (the WebSocket handshake).
    fn validate_response(&mut self, method: &str, path: &str, status: u16, body: &Value) {
        let what = format!("{method} {path} -> {status}");
        let route = self.route_for(method, path).unwrap_or_else(|| panic!("{what}: not documented"));
        let response = &self.doc["paths"][&route.1][method.to_lowercase()]["responses"];
        let response = response.get(status.to_string()).unwrap_or_else(|| panic!("{what}: status not documented"));
        let schema = self.resolve(response)["content"]["application/json"]["schema"].clone();
        if !schema.is_null() {
            self.validate(&schema, body, &what);
        }
        self.exercised.entry((route.0, normalize(&route.1))).or_default().insert(status);
    }

    /// Validates `instance` against `schema`, whose references point into
    /// the document's components.
    fn validate(&mut self, schema: &Value, instance: &Value, what: &str) {
        let errors: Vec<String> =
            self.validator(schema).iter_errors(instance).map(|e| format!("at {}: {e}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{what}: does not match {schema}:\n{}\n{instance:#}", errors.join("\n"));
        self.validated += 1;
    }

    fn validator(&mut self, schema: &Value) -> &jsonschema::Validator {
        let key = schema.to_string();
        if !self.validators.contains_key(&key) {
            // The schema becomes the root of a resource that also holds the
            // components, so `#/components/schemas/X` resolves in it.
            let mut root = serde_json::Map::new();
            root.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
            root.insert("components".into(), json!({"schemas": self.doc["components"]["schemas"].clone()}));
            for (k, v) in schema.as_object().unwrap_or_else(|| panic!("a schema object, got {schema}")) {
                root.insert(k.clone(), v.clone());
            }
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&Value::Object(root))
                .unwrap_or_else(|e| panic!("invalid schema {key}: {e}"));
            self.validators.insert(key.clone(), validator);
        }
        &self.validators[&key]
    }
}

/// The routes `src/routes/` declares with `warp::path!`: those of the
/// resource files live under `/api/v1`, the others at the root.
fn declared_routes() -> BTreeSet<Route> {
    let api = API_SOURCES.iter().map(|source| ("/api/v1", *source));
    let root = ROOT_SOURCES.iter().map(|source| ("", *source));
    let routes: BTreeSet<Route> =
        api.chain(root).flat_map(|(prefix, source)| routes_in_source(source, prefix)).collect();
    assert!(routes.len() > 20, "found only {} routes in src/routes/; has its shape changed?", routes.len());
    routes
}

/// The routes one file declares with `warp::path!`, each with the method
/// filter of its statement, under `prefix`. Panics on a declaration it
/// cannot read, so a new shape of route cannot slip past unnoticed.
fn routes_in_source(source: &str, prefix: &str) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (at, macro_call) in source.match_indices("warp::path!(") {
        let rest = &source[at + macro_call.len()..];
        let args = &rest[..rest.find(')').expect("the macro call closes")];
        let statement = &rest[..rest.find(';').expect("the statement ends")];
        let segments: Vec<&str> = args.split('/').map(str::trim).collect();
        if segments.last() == Some(&"..") {
            // A prefix (`/api/v1/..`), not a route.
            continue;
        }
        let path: Vec<&str> = segments
            .iter()
            .map(|s| match *s {
                "String" => "{id}",
                literal => literal.strip_prefix('"').and_then(|l| l.strip_suffix('"')).unwrap_or_else(|| {
                    panic!("cannot read the segment {literal} of warp::path!({args})");
                }),
            })
            .collect();
        let method = if statement.contains("warp::ws()") {
            "GET".to_owned()
        } else {
            let methods: Vec<&str> =
                METHODS.into_iter().filter(|m| statement.contains(&format!("warp::{m}()"))).collect();
            match methods.as_slice() {
                [method] => method.to_uppercase(),
                _ => panic!("cannot tell the method of warp::path!({args}): {statement}"),
            }
        };
        routes.insert((method, format!("{prefix}/{}", path.join("/"))));
    }
    routes
}

/// A template with every parameter renamed `{id}`, as the source scan writes it.
fn normalize(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') && s.ends_with('}') { "{id}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

fn collect_refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::Object(map) => {
            if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                out.push(reference);
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A media type without its parameters, lowercase.
fn essence(media: &str) -> String {
    media.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| essence(v) == "application/json")
}

fn id_of(task: &Value) -> String {
    task["id"].as_str().unwrap_or_else(|| panic!("no id in {task}")).to_owned()
}

/// The document's schemas against godel-wire's types, field by field: the
/// properties each schema lists are the fields the type has, the fields a
/// type cannot do without are required by the document, and each enum lists
/// the values the type accepts. Each type's fields are found by sending a
/// sample with every field through the type (a field the type does not have
/// is dropped or refused), and its required fields by leaving each one out.
#[test]
fn the_document_matches_godel_wire() {
    let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON");
    let schemas = &doc["components"]["schemas"];
    let schema = |pointer: &str| -> &Value {
        schemas.pointer(pointer).unwrap_or_else(|| panic!("openapi.json has no schema at {pointer}"))
    };
    let at = "2024-05-01T12:00:00Z";
    let id = SAMPLE_ID;
    let task_error = json!({"kind": "error", "message": "exit 1"});
    let task = json!({
        "id": id, "priority": "high", "status": "failed", "prompt": "p", "command": ["true"],
        "metadata": {"a": 1}, "capabilities": ["gpu"], "affinity_key": "k", "idempotency_key": "i",
        "parent_id": id, "attempt": 1, "max_attempts": 3, "timeout_ms": 5, "run_at": at, "agent_id": "a",
        "cancel_requested": false, "result": {"exit_code": 0}, "error": task_error, "created_at": at,
        "updated_at": at, "started_at": at, "completed_at": at, "dead_lettered_at": at,
    });
    let depth = json!({"critical": 1, "high": 2, "medium": 3, "low": 4, "total": 10});
    let summary = json!({"total": 1, "online": 1, "free_slots": 2});
    let queue = json!({
        "status": "healthy", "reasons": [], "pending": 1, "ready": 1, "scheduled": 0, "assigned": 0,
        "running": 0, "completed": 0, "failed": 0, "cancelled": 0, "dead_letters": 0, "stale_leases": 0, "quarantined": 0,
        "oldest_pending_age_ms": 3, "completed_last_minute": 0, "depth": depth, "agents": summary,
    });
    let store = json!({"backend": "memory", "ok": true, "latency_ms": 0.1, "error": "e"});
    let health =
        json!({"status": "healthy", "version": "1", "uptime_s": 1, "ready": true, "store": store, "queue": queue});
    let agent = json!({
        "id": "a", "name": "a", "kind": "process", "capabilities": ["gpu"], "max_capacity": 2, "current_load": 1,
        "status": "busy", "last_heartbeat": at, "region": "eu", "active_tasks": [id], "node": "n",
    });
    let session = json!({
        "id": id, "agent_id": "a", "task_id": id, "state": "running", "error": "e", "created_at": at, "updated_at": at,
    });
    let instance = json!({
        "name": "g", "agent_id": "gateway-g", "url": "ws://h:1", "region": "eu", "agents": ["a"],
        "capabilities": ["c"], "max_sessions": 10, "current_sessions": 1, "capacity": 9, "state": "ready",
        "message": "m", "last_check": at, "protocol": 3, "server_version": "1", "default_agent": "a",
        "source": "api", "node": "n",
    });
    let instance_health = json!({
        "name": "g", "ok": true, "state": "ready", "message": "m", "last_check": at, "current_sessions": 1,
        "max_sessions": 10, "node": "n",
    });
    let submit = json!({
        "prompt": "p", "command": ["true"], "priority": "low", "capabilities": ["gpu"], "affinity_key": "k",
        "idempotency_key": "i", "parent_id": id, "max_attempts": 2, "timeout_ms": 5, "run_at": at,
        "delay_ms": 5, "metadata": {"a": 1},
    });
    let register_agent = json!({
        "id": "a", "name": "a", "kind": "process", "capabilities": ["gpu"], "capacity": 2, "command": ["x"],
        "workdir": "/tmp", "default_timeout_ms": 5, "region": "eu",
    });
    let register_instance = json!({
        "name": "g", "url": "ws://h:1", "token": "t", "token_env": "T", "password_env": "P", "agents": ["a"],
        "capabilities": ["c"], "max_sessions": 10, "region": "eu",
    });
    let history_entry = json!({
        "type": "task.failed", "at": at, "attempt": 1, "status": "failed", "agent_id": "a", "stream": "stdout",
        "data": "hi", "error": task_error,
    });
    let event = json!({"seq": 1, "type": "task.created", "at": at, "data": {"task_id": id, "priority": "high"}});

    // Responses: the client needs no field the document does not promise.
    response::<godel_wire::Task>(schema("/Task"), &task);
    response::<godel_wire::TaskError>(schema("/TaskError"), &task_error);
    let quarantined = json!({"id": id, "error": "e", "raw": "{}"});
    response::<godel_wire::Page<godel_wire::Task>>(
        schema("/TaskPage"),
        &json!({"items": [task], "next_cursor": "c", "quarantined": [{"id": id, "error": "e"}]}),
    );
    response::<godel_wire::Page<godel_wire::Quarantined>>(
        schema("/QuarantinePage"),
        &json!({"items": [quarantined], "next_cursor": "c"}),
    );
    response::<godel_wire::Quarantined>(schema("/Quarantined"), &quarantined);
    response::<godel_wire::QuarantinedTask>(schema("/QuarantinedTask"), &json!({"id": id, "error": "e"}));
    response::<godel_wire::QuarantinePurged>(schema("/QuarantinePurged"), &json!({"purged": 1}));
    response::<godel_wire::Cancelled>(schema("/StopResult"), &json!({"outcome": "cancelled", "task": task}));
    response::<godel_wire::SubmitBatch<godel_wire::Task>>(schema("/TaskList"), &json!({"tasks": [task]}));
    response::<godel_wire::QueueDepth>(schema("/QueueDepth"), &depth);
    response::<godel_wire::QueueHealth>(schema("/QueueHealth"), &queue);
    response::<godel_wire::AgentSummary>(schema("/QueueHealth/properties/agents"), &summary);
    response::<godel_wire::Health>(schema("/Health"), &health);
    response::<godel_wire::StoreHealth>(schema("/Health/properties/store"), &store);
    response::<godel_wire::Agent>(schema("/Agent"), &agent);
    response::<godel_wire::Session>(schema("/Session"), &session);
    response::<godel_wire::Instance>(schema("/Instance"), &instance);
    response::<godel_wire::InstanceHealth>(schema("/InstanceHealth"), &instance_health);
    response::<godel_wire::Replayed>(schema("/ReplayCount"), &json!({"replayed": 2}));
    response::<godel_wire::ErrorEnvelope>(
        schema("/Error"),
        &json!({"error": {"code": "not_found", "message": "m", "retryable": false}}),
    );
    response::<godel_wire::ErrorBody>(
        schema("/Error/properties/error"),
        &json!({"code": "not_found", "message": "m", "retryable": false}),
    );
    response::<godel_wire::Event>(schema("/Event"), &event);
    // A task's history is one type on the wire side and two in the document.
    let fields = Fields::of::<godel_wire::TaskEvent>(&history_entry);
    let mut documented_union = BTreeSet::new();
    for variant in ["/TaskLifecycleEvent", "/TaskOutputEvent"] {
        let documented = Fields::documented(schema(variant));
        assert!(fields.required.is_subset(&documented.required), "{variant}: {fields:?} vs {documented:?}");
        documented_union.extend(documented.properties);
    }
    assert_eq!(fields.properties, documented_union, "godel_wire::TaskEvent: fields differ from the document's");

    // Requests: the same fields, and the same required ones.
    request::<godel_wire::SubmitTask>(schema("/CreateTask"), &submit);
    request::<godel_wire::SubmitBatch>(schema("/CreateBatch"), &json!({"tasks": [submit]}));
    request::<godel_wire::RegisterAgent>(schema("/RegisterAgent"), &register_agent);
    request::<godel_wire::RegisterInstance>(schema("/RegisterInstance"), &register_instance);
    request::<godel_wire::ReplayDeadLetters>(
        schema("/BulkReplay"),
        &json!({"priority": ["high"], "agent_id": "a", "created_after": at, "created_before": at}),
    );

    // The /events frames, variant by variant.
    let client_frames = [
        json!({"action": "subscribe", "patterns": ["task.*"]}),
        json!({"action": "unsubscribe", "patterns": ["task.*"]}),
        json!({"action": "ping"}),
    ];
    frames::<godel_wire::ClientFrame>(schema("/ClientMessage"), "action", &client_frames);
    let control_frames = [
        json!({"type": "welcome", "seq": 1, "epoch": "e", "replay_window": 10}),
        json!({"type": "subscribed", "patterns": ["task.*"]}),
        json!({"type": "lagged", "missed": 2, "message": "m"}),
        json!({"type": "replay_unavailable", "since": 1, "oldest": 5, "message": "m"}),
        json!({"type": "pong", "seq": 1}),
        json!({"type": "error", "code": "invalid_request", "message": "m"}),
    ];
    frames::<godel_wire::Control>(schema("/ServerMessage"), "type", &control_frames);

    // Enums: the values the document lists are the ones the type accepts.
    enum_values::<godel_wire::Priority>(schema("/Priority"));
    enum_values::<godel_wire::TaskStatus>(schema("/TaskStatus"));
    enum_values::<godel_wire::TaskErrorKind>(schema("/TaskError/properties/kind"));
    enum_values::<godel_wire::AgentKind>(schema("/AgentKind"));
    enum_values::<godel_wire::AgentStatus>(schema("/AgentStatus"));
    enum_values::<godel_wire::SessionState>(schema("/SessionState"));
    enum_values::<godel_wire::CancelOutcome>(schema("/StopResult/properties/outcome"));
}

/// A type's fields as seen through serde, or a schema's as documented.
#[derive(Debug)]
struct Fields {
    properties: BTreeSet<String>,
    required: BTreeSet<String>,
}

impl Fields {
    /// Sends `sample` (every field set) through `T`: the fields it keeps are
    /// its properties, the fields it cannot be read without are required.
    fn of<T: serde::Serialize + serde::de::DeserializeOwned>(sample: &Value) -> Self {
        let name = std::any::type_name::<T>();
        let parsed: T = serde_json::from_value(sample.clone())
            .unwrap_or_else(|e| panic!("the sample for {name} does not parse: {e}\n{sample}"));
        let kept = serde_json::to_value(&parsed).expect("wire types serialize");
        let object = |v: &Value| -> BTreeSet<String> {
            v.as_object().unwrap_or_else(|| panic!("{name} is not an object: {v}")).keys().cloned().collect()
        };
        let properties = object(&kept);
        assert_eq!(properties, object(sample), "{name} dropped fields of its sample (or the sample misses some)");
        let required = properties
            .iter()
            .filter(|field| {
                let mut without = sample.clone();
                without.as_object_mut().expect("an object").remove(*field);
                serde_json::from_value::<T>(without).is_err()
            })
            .cloned()
            .collect();
        Self { properties, required }
    }

    fn documented(schema: &Value) -> Self {
        let names = |v: &Value| -> BTreeSet<String> {
            match v {
                Value::Object(map) => map.keys().cloned().collect(),
                Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                _ => BTreeSet::new(),
            }
        };
        Self { properties: names(&schema["properties"]), required: names(&schema["required"]) }
    }
}

/// A response type: the same fields as the document, and none that the
/// client requires but the document leaves optional.
fn response<T: serde::Serialize + serde::de::DeserializeOwned>(schema: &Value, sample: &Value) {
    let name = std::any::type_name::<T>();
    let fields = Fields::of::<T>(sample);
    let documented = Fields::documented(schema);
    assert_eq!(fields.properties, documented.properties, "{name}: fields differ from the document's");
    assert!(
        fields.required.is_subset(&documented.required),
        "{name} requires fields the document leaves optional: {:?}",
        fields.required.difference(&documented.required).collect::<Vec<_>>()
    );
}

/// A request type: the same fields and the same required ones.
fn request<T: serde::Serialize + serde::de::DeserializeOwned>(schema: &Value, sample: &Value) {
    let name = std::any::type_name::<T>();
    let fields = Fields::of::<T>(sample);
    let documented = Fields::documented(schema);
    assert_eq!(fields.properties, documented.properties, "{name}: fields differ from the document's");
    assert_eq!(fields.required, documented.required, "{name}: required fields differ from the document's");
    let mut unknown = sample.clone();
    unknown["not_a_field"] = json!(1);
    assert!(serde_json::from_value::<T>(unknown).is_err(), "{name} accepts unknown fields");
}

/// A tagged enum of frames: each variant's fields (tag included) are those
/// of the document's `oneOf` entry with the same tag.
fn frames<T: serde::Serialize + serde::de::DeserializeOwned>(schema: &Value, tag: &str, samples: &[Value]) {
    let variants = schema["oneOf"].as_array().expect("a oneOf of frames");
    for sample in samples {
        let value = sample[tag].as_str().expect("a tagged sample");
        let documented = variants
            .iter()
            .find(|v| v["properties"][tag]["const"] == value)
            .unwrap_or_else(|| panic!("the document has no {tag} {value:?}"));
        let fields = Fields::of::<T>(sample);
        let documented = Fields::documented(documented);
        assert_eq!(fields.properties, documented.properties, "{value}: fields differ from the document's");
        assert!(fields.required.is_subset(&documented.required), "{value}: {fields:?} vs {documented:?}");
    }
    let tagged = variants.iter().filter(|v| v["properties"][tag]["const"].is_string()).count();
    assert_eq!(
        tagged,
        samples.len(),
        "{}: the document has frames this check does not cover",
        std::any::type_name::<T>()
    );
}

/// The enum's values in the document are exactly those the type accepts.
/// Serde names every accepted value when it refuses one, which is how the
/// type's side is read without listing it again here.
fn enum_values<T: serde::de::DeserializeOwned>(schema: &Value) {
    let name = std::any::type_name::<T>();
    let documented: BTreeSet<String> = schema["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: the document lists no enum: {schema}"))
        .iter()
        .map(|v| v.as_str().expect("string values").to_owned())
        .collect();
    let refusal = match serde_json::from_value::<T>(json!("surely-not-a-value")) {
        Ok(_) => panic!("{name} accepts anything"),
        Err(e) => e.to_string(),
    };
    // "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    let list = refusal
        .split_once("expected ")
        .map(|(_, list)| list.trim_start_matches("one of "))
        .unwrap_or_else(|| panic!("{name}: cannot read the accepted values from {refusal:?}"));
    let accepted: BTreeSet<String> = list
        .split(", ")
        .flat_map(|v| v.split(" or "))
        .map(|v| v.trim_matches(|c| c == '`' || c == ' ').to_owned())
        .collect();
    assert_eq!(accepted, documented, "{name}: values differ from the document's");
}
