//! The attack table: requests an attacker would send, against a real server,
//! each with the exact status, the error envelope's code and (for refused
//! ones) the audit entry it leaves; the role matrix walked over every
//! documented route; and attempts to reach a protected handler by bending
//! the path.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use godel_core::{AuditEntry, AuditOutcome, AuditQuery, Role, Timestamp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestServer, client};

/// A test Ed25519 key pair; the server verifies tokens with the public half.
const JWT_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEID99o/TQYcUwaRe/yjthJHafiQzEYkWa7wqlSsqTGkq+\n-----END PRIVATE KEY-----\n";
const JWT_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAwzbRmTk8xmNXifeTktvJQF3WXe03J3pr4stJXdK7im4=\n-----END PUBLIC KEY-----\n";

const ENGINE: &str = "[engine]\npoll_interval = \"20ms\"\nretry_initial = \"10ms\"\nretry_max = \"20ms\"\n";

/// What came back.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn request_id(&self) -> String {
        self.headers.get("x-request-id").and_then(|v| v.to_str().ok()).expect("an x-request-id").to_owned()
    }
}

async fn send(
    http: &reqwest::Client,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut request = http.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("a body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, body }
}

/// The audit entry of a request, once the writer has written it.
async fn audited(server: &TestServer, request_id: &str) -> AuditEntry {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let query = AuditQuery { limit: 100, ..AuditQuery::default() };
        let page = server.store().list_audit(&query).await.expect("the audit log reads");
        if let Some(entry) = page.items.into_iter().find(|e| e.request_id == request_id) {
            return entry;
        }
        assert!(Instant::now() < deadline, "no audit entry for request {request_id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a refusal: status, envelope code, and a `denied` audit entry.
async fn refused(server: &TestServer, answer: &Answer, status: u16, code: &str, what: &str) -> AuditEntry {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert_eq!(answer.code(), code, "{what}: {}", answer.body);
    assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
    let entry = audited(server, &answer.request_id()).await;
    assert_eq!(entry.outcome, AuditOutcome::Denied, "{what}");
    assert_eq!(entry.status, status, "{what}");
    assert_eq!(entry.source, "127.0.0.1", "{what}");
    entry
}

fn jwt(claims: &Value) -> String {
    let key = EncodingKey::from_ed_pem(JWT_PRIVATE.as_bytes()).expect("the test key");
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).expect("a token")
}

fn claims(role: &str) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"sub": "ann", "tenant": "default", "role": role, "iss": "idp", "aud": "godel",
           "exp": now + 600, "nbf": now - 5, "iat": now - 5})
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn attack_server(dir: &std::path::Path) -> TestServer {
    let public = dir.join("jwt.pub.pem");
    std::fs::write(&public, JWT_PUBLIC).expect("the public key is written");
    TestServer::start(&format!(
        "{ENGINE}[auth.rate_limit]\nfailed_per_source = 1000\n\
         [auth.jwt]\nalgorithm = \"EdDSA\"\npublic_key_file = \"{}\"\nissuer = \"idp\"\naudience = \"godel\"\n\
         leeway = \"5s\"\nmax_lifetime = \"1h\"\n",
        public.display()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = attack_server(dir.path()).await;
    let anonymous = reqwest::Client::new();
    let tasks = server.url("/api/v1/tasks");
    let get =
        |headers: &'static [(&'static str, &'static str)]| send(&anonymous, Method::GET, tasks.clone(), headers, None);

    let answer = get(&[]).await;
    let entry = refused(&server, &answer, 401, "unauthorized", "no credential").await;
    assert_eq!(answer.headers.get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    assert_eq!((entry.action.as_str(), entry.credential), ("auth.failed", None));
    assert_eq!(entry.target.as_deref(), Some("tasks.list"));

    refused(&server, &get(&[("authorization", "Bearer")]).await, 401, "unauthorized", "malformed header").await;
    refused(&server, &get(&[("authorization", "Bearer ")]).await, 401, "unauthorized", "empty token").await;
    refused(&server, &get(&[("authorization", "Basic YWRtaW46YWRtaW4=")]).await, 401, "unauthorized", "wrong scheme")
        .await;
    let unknown = format!("Bearer {}", godel_server::generate_key().plaintext);
    let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &unknown)], None).await;
    refused(&server, &answer, 401, "unauthorized", "unknown key").await;
    let truncated = format!("Bearer {}", &godel_server::generate_key().plaintext[..20]);
    let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &truncated)], None).await;
    refused(&server, &answer, 401, "unauthorized", "malformed key").await;

    // Two Authorization headers: refused even if one is good.
    let admin = server.key("default", Role::Admin).await;
    let answer = anonymous
        .get(tasks.clone())
        .header("authorization", format!("Bearer {admin}"))
        .header("authorization", "Bearer other")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401, "two Authorization headers");

    // A revoked key, never used before, and one revoked while in use: the
    // second stops working within the key cache's freshness.
    let viewer = server.key("default", Role::Viewer).await;
    let key =
        server.store().list_keys(None).await.unwrap().into_iter().find(|k| viewer.starts_with(&k.prefix)).unwrap();
    let with_viewer = client(&viewer);
    assert_eq!(send(&with_viewer, Method::GET, tasks.clone(), &[], None).await.status, 200);
    server.store().revoke_key(&key.id, Timestamp::now()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    let answer = loop {
        let answer = send(&with_viewer, Method::GET, tasks.clone(), &[], None).await;
        if answer.status != 200 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    refused(&server, &answer, 401, "unauthorized", "revoked key").await;
    let revoked = server.key("default", Role::Viewer).await;
    let key =
        server.store().list_keys(None).await.unwrap().into_iter().find(|k| revoked.starts_with(&k.prefix)).unwrap();
    server.store().revoke_key(&key.id, Timestamp::now()).await.unwrap();
    let answer = send(&client(&revoked), Method::GET, tasks.clone(), &[], None).await;
    refused(&server, &answer, 401, "unauthorized", "revoked key never used").await;

    // JWTs: a good one, then one for each check.
    let bearer = |token: &str| format!("Bearer {token}");
    let good = jwt(&claims("viewer"));
    let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &bearer(&good))], None).await;
    assert_eq!(answer.status, 200, "a valid JWT: {}", answer.body);
    let now = jsonwebtoken::get_current_timestamp();
    let variants: Vec<(&str, Value)> = vec![
        ("expired JWT", json!({"exp": now - 60, "nbf": now - 600, "iat": now - 600})),
        ("JWT not yet valid", json!({"nbf": now + 60, "iat": now + 60, "exp": now + 600})),
        ("wrong issuer", json!({"iss": "someone-else"})),
        ("wrong audience", json!({"aud": "another-service"})),
        ("too long a lifetime", json!({"exp": now + 7200})),
    ];
    for (what, overrides) in variants {
        let mut c = claims("admin");
        for (k, v) in overrides.as_object().unwrap() {
            c[k] = v.clone();
        }
        let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &bearer(&jwt(&c)))], None).await;
        refused(&server, &answer, 401, "unauthorized", what).await;
    }
    let parts: Vec<&str> = good.split('.').collect();
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &bearer(&none))], None).await;
    refused(&server, &answer, 401, "unauthorized", "alg none").await;
    // HS256 with the server's public key as the shared secret.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("admin"),
        &EncodingKey::from_secret(JWT_PUBLIC.as_bytes()),
    )
    .unwrap();
    let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &bearer(&confused))], None).await;
    refused(&server, &answer, 401, "unauthorized", "HS256 signed with the public key").await;
    let mut promoted = claims("viewer");
    promoted["role"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(promoted.to_string().as_bytes()), parts[2]);
    let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &bearer(&tampered))], None).await;
    refused(&server, &answer, 401, "unauthorized", "tampered signature").await;
    let mut huge = claims("viewer");
    huge["padding"] = json!("x".repeat(9 * 1024));
    let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &bearer(&jwt(&huge)))], None).await;
    refused(&server, &answer, 401, "unauthorized", "oversized token").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_be_turned_against_the_server() {
    let server = TestServer::start(ENGINE).await;
    let admin = server.http();
    let tasks = server.url("/api/v1/tasks");
    let body = r#"{"command":["sh","-c","echo pwned"]}"#;
    let port = server.url("").rsplit(':').next().unwrap().to_owned();

    // A cross-site "simple" request, with and without the operator's key.
    let cross_site = [("origin", "http://evil.example"), ("content-type", "text/plain")];
    let answer = send(&admin, Method::POST, tasks.clone(), &cross_site, Some(body)).await;
    let entry = refused(&server, &answer, 403, "forbidden", "cross-site text/plain POST").await;
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("Origin"));
    assert_eq!(entry.action, "tasks.create");
    let answer = send(&reqwest::Client::new(), Method::POST, tasks.clone(), &cross_site, Some(body)).await;
    refused(&server, &answer, 403, "forbidden", "cross-site POST without a key").await;
    // DNS rebinding: the page's own name, pointed at 127.0.0.1.
    let rebound = format!("evil.example:{port}");
    let answer = send(
        &admin,
        Method::POST,
        tasks.clone(),
        &[("host", &rebound), ("content-type", "application/json")],
        Some(body),
    )
    .await;
    let refusal = refused(&server, &answer, 403, "forbidden", "rebinding Host").await;
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("Host"));
    assert_eq!(refusal.credential, None);
    // Same site but not JSON: the browser would not have asked first.
    let answer = send(&admin, Method::POST, tasks.clone(), &[("content-type", "text/plain")], Some(body)).await;
    refused(&server, &answer, 415, "invalid_request", "text/plain POST").await;
    let answer = send(&admin, Method::POST, tasks.clone(), &[], Some(body)).await;
    refused(&server, &answer, 415, "invalid_request", "a body without a type").await;
    // Nothing ran.
    let listed = send(&admin, Method::GET, tasks.clone(), &[], None).await;
    assert_eq!(listed.body["items"], json!([]));

    // The loopback origin on the server's port, and JSON, are fine.
    let origin = format!("http://localhost:{port}");
    let json_type = ("content-type", "application/json");
    let answer = send(&admin, Method::POST, tasks.clone(), &[("origin", &origin), json_type], Some(body)).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let entry = audited(&server, &answer.request_id()).await;
    assert_eq!((entry.action.as_str(), entry.outcome, entry.status), ("tasks.create", AuditOutcome::Allowed, 201));
    assert_eq!(entry.target.as_deref(), answer.body["id"].as_str());
    assert_eq!(entry.role, Some(Role::Admin));
    // An empty POST without a type (what `curl -X POST` sends) is fine too.
    let id = answer.body["id"].as_str().unwrap();
    let answer = send(&admin, Method::POST, server.url(&format!("/api/v1/tasks/{id}/cancel")), &[], None).await;
    assert_ne!(answer.status, 415, "{}", answer.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_kept_to_their_rights() {
    let server = TestServer::start(ENGINE).await;
    let viewer = client(&server.key("default", Role::Viewer).await);
    let submitter = client(&server.key("default", Role::Submitter).await);
    let worker = client(&server.key("default", Role::Worker).await);
    let json_type = [("content-type", "application/json")];
    let task = r#"{"command":["true"]}"#;

    let answer = send(&viewer, Method::POST, server.url("/api/v1/tasks"), &json_type, Some(task)).await;
    let entry = refused(&server, &answer, 403, "forbidden", "viewer submits").await;
    assert_eq!((entry.action.as_str(), entry.role), ("tasks.create", Some(Role::Viewer)));
    assert!(entry.credential.is_some());
    let created = send(&submitter, Method::POST, server.url("/api/v1/tasks"), &json_type, Some(task)).await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().unwrap();
    let answer =
        send(&submitter, Method::DELETE, server.url(&format!("/api/v1/tasks/{id}?purge=true")), &[], None).await;
    refused(&server, &answer, 403, "forbidden", "submitter purges").await;
    let answer = send(&worker, Method::GET, server.url("/api/v1/tasks"), &[], None).await;
    refused(&server, &answer, 403, "forbidden", "worker lists tasks").await;
    let answer = send(&submitter, Method::GET, server.url("/api/v1/keys"), &[], None).await;
    refused(&server, &answer, 403, "forbidden", "submitter lists keys").await;
    let new_key = r#"{"name":"mine","role":"admin"}"#;
    let answer = send(&submitter, Method::POST, server.url("/api/v1/keys"), &json_type, Some(new_key)).await;
    refused(&server, &answer, 403, "forbidden", "submitter creates a key").await;
    let answer = send(&submitter, Method::GET, server.url("/api/v1/tenants/default/tasks"), &[], None).await;
    refused(&server, &answer, 403, "forbidden", "submitter uses the tenants route").await;
    // A route that does not exist: 401 without a credential, 404 with one.
    let answer = send(&reqwest::Client::new(), Method::GET, server.url("/api/v1/nothing"), &[], None).await;
    refused(&server, &answer, 401, "unauthorized", "unknown route, no key").await;
    let answer = send(&viewer, Method::GET, server.url("/api/v1/nothing"), &[], None).await;
    refused(&server, &answer, 404, "not_found", "unknown route").await;
    server.stop().await;
}

/// Waits until `task` (read with `http`) has a terminal status.
async fn finished(server: &TestServer, http: &reqwest::Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let task = send(http, Method::GET, server.url(&format!("/api/v1/tasks/{id}")), &[], None).await.body;
        if ["completed", "failed", "cancelled", "dead_letter"].contains(&task["status"].as_str().unwrap_or("")) {
            return task;
        }
        assert!(Instant::now() < deadline, "task {id} did not finish: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_do_not_see_each_other() {
    let server = TestServer::start(&format!("{ENGINE}[[agents]]\nid = \"local\"\ncapacity = 2\n")).await;
    let admin = server.http();
    let other = client(&server.key("acme", Role::Operator).await);
    let json_type = [("content-type", "application/json")];

    // Events: the other tenant subscribes before anything happens.
    let (mut theirs, _) = tokio_tungstenite::connect_async(
        server.ws_with("/events?patterns=task.*", &server.key("acme", Role::Viewer).await),
    )
    .await
    .expect("the other tenant subscribes");
    let (mut ours, _) = tokio_tungstenite::connect_async(server.ws("/events?patterns=task.*")).await.unwrap();

    let done =
        send(&admin, Method::POST, server.url("/api/v1/tasks"), &json_type, Some(r#"{"command":["true"]}"#)).await;
    let done = done.body["id"].as_str().unwrap().to_owned();
    let dead = send(
        &admin,
        Method::POST,
        server.url("/api/v1/tasks"),
        &json_type,
        Some(r#"{"command":["false"],"max_attempts":1}"#),
    )
    .await;
    let dead = dead.body["id"].as_str().unwrap().to_owned();
    assert_eq!(finished(&server, &admin, &done).await["status"], "completed");
    assert_eq!(finished(&server, &admin, &dead).await["status"], "dead_letter");

    let url = |path: String| server.url(&path);
    let not_found = [
        (Method::GET, format!("/api/v1/tasks/{done}"), "cross-tenant get"),
        (Method::GET, format!("/api/v1/tasks/{done}/events"), "cross-tenant history"),
        (Method::POST, format!("/api/v1/tasks/{done}/cancel"), "cross-tenant cancel"),
        (Method::POST, format!("/api/v1/tasks/{done}/retry"), "cross-tenant retry"),
        (Method::DELETE, format!("/api/v1/tasks/{done}?purge=true"), "cross-tenant purge"),
        (Method::POST, format!("/api/v1/dead-letters/{dead}/replay"), "cross-tenant replay"),
    ];
    for (method, path, what) in not_found {
        let answer = send(&other, method, url(path), &[], None).await;
        assert_eq!((answer.status, answer.code()), (404, "not_found"), "{what}: {}", answer.body);
    }
    let listed = send(&other, Method::GET, server.url("/api/v1/tasks"), &[], None).await;
    assert_eq!(listed.body["items"], json!([]), "cross-tenant list");
    let dead_letters = send(&other, Method::GET, server.url("/api/v1/dead-letters"), &[], None).await;
    assert_eq!(dead_letters.body["items"], json!([]), "cross-tenant dead letters");
    let sessions = send(&admin, Method::GET, server.url(&format!("/api/v1/sessions?task_id={done}")), &[], None).await;
    if let Some(session) = sessions.body["items"][0]["id"].as_str() {
        let answer = send(&other, Method::GET, server.url(&format!("/api/v1/sessions/{session}")), &[], None).await;
        assert_eq!((answer.status, answer.code()), (404, "not_found"), "cross-tenant session read");
        let theirs = send(&other, Method::GET, server.url("/api/v1/sessions"), &[], None).await;
        assert_eq!(theirs.body["items"], json!([]), "cross-tenant session list");
    }
    // Our task is still there, untouched.
    assert_eq!(finished(&server, &admin, &done).await["status"], "completed");

    // Our subscriber saw the task; theirs saw none of it.
    loop {
        let frame: Value = match ours.next().await.unwrap().unwrap() {
            Message::Text(text) => serde_json::from_str(&text).unwrap(),
            _ => continue,
        };
        if frame["type"] == "task.completed" {
            break;
        }
    }
    theirs.send(Message::text(r#"{"action":"ping"}"#)).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(Ok(message)) = theirs.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert!(!frame["type"].as_str().unwrap_or("").starts_with("task."), "another tenant's event: {frame}");
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "the other tenant's connection closed");

    // An admin acts on another tenant only through the tenants route, audited.
    let answer = send(&admin, Method::GET, server.url(&format!("/api/v1/tenants/acme/tasks/{done}")), &[], None).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    let entry = audited(&server, &answer.request_id()).await;
    assert_eq!((entry.action.as_str(), entry.tenant.as_str()), ("tenants.tasks.get", "acme"));
    let answer = send(&admin, Method::GET, server.url("/api/v1/tenants/default/tasks"), &[], None).await;
    assert_eq!(answer.body["items"].as_array().map(Vec::len), Some(2), "{}", answer.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_and_flooding_hit_429() {
    let server = TestServer::start(&format!("{ENGINE}[auth.rate_limit]\nper_credential = 5\n")).await;
    let anonymous = reqwest::Client::new();
    let tasks = server.url("/api/v1/tasks");
    for attempt in 0..10 {
        let guess = format!("Bearer {}", godel_server::generate_key().plaintext);
        let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &guess)], None).await;
        assert_eq!(answer.status, 401, "guess {attempt}");
    }
    let guess = format!("Bearer {}", godel_server::generate_key().plaintext);
    let answer = send(&anonymous, Method::GET, tasks.clone(), &[("authorization", &guess)], None).await;
    let entry = refused(&server, &answer, 429, "rate_limited", "brute force").await;
    assert_eq!(entry.action, "auth.failed");
    for header in ["retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(answer.headers.contains_key(header), "429 without {header}");
    }
    assert_eq!(answer.headers["ratelimit-limit"], "10");
    // The address stays refused, even with a good key, until its window frees up.
    let answer = send(&server.http(), Method::GET, tasks.clone(), &[], None).await;
    assert_eq!(answer.status, 429);
    server.stop().await;

    // A credential over its rate (5 per second, a burst of 10).
    let server = TestServer::start(&format!("{ENGINE}[auth.rate_limit]\nper_credential = 5\n")).await;
    let http = server.http();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(send(&http, Method::GET, server.url("/api/v1/queue/depth"), &[], None).await.status);
    }
    assert!(statuses.iter().take(10).all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    server.stop().await;
}

/// Sends one raw HTTP/1.1 request, so that the path reaches the server byte
/// for byte (an HTTP client would normalize `..` and `//`).
async fn raw(server: &TestServer, method: &str, path: &str, extra: &str) -> u16 {
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("a connection");
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bent_paths_reach_no_protected_handler() {
    let server = TestServer::start(ENGINE).await;
    for (path, status) in
        [("/health/live", 200), ("/health/ready", 200), ("/openapi.json", 200), ("/health", 401), ("/metrics", 401)]
    {
        assert_eq!(raw(&server, "GET", path, "").await, status, "{path}");
    }
    let bent = [
        "/api/v1/tasks?limit=1",
        "/api/v1/tasks/",
        "//api/v1/tasks",
        "/api/v1//tasks",
        "/api/v1/./tasks",
        "/api/v1/x/../tasks",
        "/health/live/../../api/v1/tasks",
        "/health/live/..%2F..%2Fapi%2Fv1%2Ftasks",
        "/openapi.json/../api/v1/tasks",
        "/api/v1/%74asks",
        "/%61pi/v1/tasks",
        "/API/V1/TASKS",
        "/Api/v1/tasks",
        "/api/tasks",
        "/api/tasks/",
        "/api//tasks",
        "/health/live%00/../../api/v1/tasks",
        "/health%2Flive",
        "/metrics/",
        "/health/",
        "/api/v1/tenants/default/tasks",
        "/api/v1/tenants/default/../tasks",
        "/api/v1/tenants/default/health/live",
        "/api/v1/workers/connect",
        "/api/workers/connect",
        "/events",
    ];
    for path in bent {
        for method in ["GET", "POST", "DELETE"] {
            let status = raw(&server, method, path, "").await;
            assert!(matches!(status, 400 | 401 | 404 | 405), "{method} {path} answered {status} without a credential");
        }
    }
    server.stop().await;

    let server = TestServer::start(&format!("{ENGINE}[auth]\npublic_health = true\npublic_metrics = true\n")).await;
    assert_eq!(raw(&server, "GET", "/health", "").await, 200);
    assert_eq!(raw(&server, "GET", "/metrics", "").await, 200);
    assert_eq!(raw(&server, "GET", "/api/v1/tasks", "").await, 401);
    server.stop().await;
}

/// The role matrix of `docs/security.md`: `(METHOD, path) -> roles allowed`.
fn documented_matrix() -> Vec<(String, String, Vec<Role>)> {
    let doc = include_str!("../../../docs/security.md");
    let mut rows = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| ") && l.contains('`')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() != 8 {
            continue;
        }
        let allowed = Role::ALL
            .iter()
            .zip(&cells[2..7])
            .filter(|(_, c)| matches!(**c, "✓" | "public"))
            .map(|(r, _)| *r)
            .collect();
        rows.push((cells[0].to_owned(), cells[1].trim_matches('`').to_owned(), allowed));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_each_role_as_the_matrix_says() {
    let server = TestServer::start(ENGINE).await;
    let matrix = documented_matrix();
    assert!(matrix.len() > 30, "the matrix in docs/security.md has {} rows", matrix.len());
    let openapi: Value = serde_json::from_str(godel_server::OPENAPI).unwrap();
    let mut clients = Vec::new();
    for role in Role::ALL {
        clients.push((role, client(&server.key("default", role).await)));
    }
    const SAMPLE_ID: &str = "0190d6b5-7a1c-7000-8000-000000000000";
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|m| *m != "parameters") {
            let method = method.to_uppercase();
            let row = matrix.iter().find(|(m, p, _)| *m == method && p == path);
            let (_, _, allowed) = row.unwrap_or_else(|| panic!("{method} {path} has no row in docs/security.md"));
            let concrete = path.replace("{id}", SAMPLE_ID).replace("{name}", "nobody");
            for (role, http) in &clients {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let body = (method != Method::GET).then_some("{}");
                let headers: &[(&str, &str)] =
                    if body.is_some() { &[("content-type", "application/json")] } else { &[] };
                let answer = send(http, method.clone(), server.url(&concrete), headers, body).await;
                if allowed.contains(role) {
                    assert!(
                        !matches!(answer.status, 401 | 403) && answer.status < 500,
                        "{role} {method} {path}: {} {}",
                        answer.status,
                        answer.body
                    );
                } else {
                    assert_eq!((answer.status, answer.code()), (403, "forbidden"), "{role} {method} {path}");
                }
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn audit_entries_past_their_retention_are_deleted_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("godel.db").display());
    let store = godel_core::store::open(&url).await.unwrap();
    let now = Timestamp::now().as_millis();
    let day = 24 * 3600 * 1000;
    let entry = |days_ago: i64, action: &str| AuditEntry {
        seq: 0,
        at: Timestamp::from_millis(now - days_ago * day),
        credential: None,
        tenant: godel_core::TenantId::default_tenant(),
        role: None,
        action: action.to_owned(),
        target: None,
        outcome: AuditOutcome::Allowed,
        status: 200,
        request_id: String::new(),
        source: "127.0.0.1".to_owned(),
    };
    // More than one batch past the 30 days, and one entry within them.
    let mut entries: Vec<AuditEntry> = (0..1_200).map(|_| entry(45, "tasks.old")).collect();
    entries.push(entry(10, "tasks.recent"));
    store.append_audit(&entries).await.unwrap();

    let server = TestServer::start_on(Some(&url), "[audit]\nretention = \"30days\"\n").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let old = AuditQuery { action: Some("tasks.old".into()), limit: 1, ..AuditQuery::default() };
    while !store.list_audit(&old).await.unwrap().items.is_empty() {
        assert!(Instant::now() < deadline, "entries past the retention are still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recent = AuditQuery { action: Some("tasks.recent".into()), ..AuditQuery::default() };
    assert_eq!(store.list_audit(&recent).await.unwrap().items.len(), 1, "an entry within the retention stays");
    server.stop().await;
}
