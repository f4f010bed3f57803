//! API keys and the audit log through the API: the first admin key a new
//! store gets (its file, its mode, its reuse), the key routes' lifecycle
//! (create, list, get, rotate with a grace period, revoke) and their strict
//! bodies, and the audit log's filters and pages.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use godel_core::{AuditEntry, AuditOutcome, Role, Store, TenantId, Timestamp};
use godel_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::TestServer;

/// A client sending the server's first admin key.
struct Admin {
    http: reqwest::Client,
    key: String,
}

impl Admin {
    fn of(server: &TestServer) -> Self {
        Self::with_key(server.admin_key())
    }

    fn with_key(key: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a client");
        Self { http, key: key.to_owned() }
    }

    async fn call(&self, method: reqwest::Method, url: String, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, url).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn time(value: &Value) -> Timestamp {
    Timestamp::parse_rfc3339("time", value.as_str().expect("a time")).expect("an RFC 3339 time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_listed_rotated_and_revoked() {
    use reqwest::Method;
    let server = TestServer::start("").await;
    let admin = Admin::of(&server);
    let keys = server.url("/api/v1/keys");

    let (status, listed) = admin.call(Method::GET, keys.clone(), None).await;
    assert_eq!(status, 200, "{listed}");
    let items = listed["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "only the test's admin key: {listed}");
    assert_eq!(items[0]["role"], "admin");

    let before = Timestamp::now();
    let body = json!({"name": "ci", "role": "submitter", "expires_in": "30d"});
    let (status, created) = admin.call(Method::POST, keys.clone(), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("the secret").to_owned();
    assert!(secret.starts_with("gdl_") && secret.len() == 47, "{secret}");
    let id = created["key"]["id"].as_str().expect("an id").to_owned();
    assert_eq!(created["key"]["prefix"].as_str(), Some(&secret[..12]));
    assert_eq!(created["key"]["tenant"], "default");
    let expires = time(&created["key"]["expires_at"]);
    assert!(expires >= before + Duration::from_secs(30 * 86_400), "{created}");
    assert!(created["key"].get("hash").is_none(), "{created}");

    // Lists and gets show the key, never its secret.
    let (_, listed) = admin.call(Method::GET, keys.clone(), None).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    assert!(!listed.to_string().contains(&secret));
    assert_eq!(listed["items"][0]["id"], id.as_str(), "newest first: {listed}");
    let (status, one) = admin.call(Method::GET, format!("{keys}/{id}"), None).await;
    assert_eq!((status, one["name"].as_str()), (StatusCode::OK, Some("ci")));
    let (_, other) = admin.call(Method::GET, format!("{keys}?tenant=other"), None).await;
    assert_eq!(other["items"], json!([]));

    // The new key can make requests.
    let ci = Admin::with_key(&secret);
    let (status, _) = ci.call(Method::GET, server.url("/api/v1/tasks"), None).await;
    assert_eq!(status, 200);

    // A rotation with a grace of one hour: the new key has the old one's
    // name, tenant, role and expiry; the old one expires in an hour.
    let now = Timestamp::now();
    let (status, rotated) = admin.call(Method::POST, format!("{keys}/{id}/rotate"), Some(json!({"grace": "1h"}))).await;
    assert_eq!(status, 201, "{rotated}");
    let new_id = rotated["key"]["id"].as_str().expect("an id").to_owned();
    assert_ne!(new_id, id);
    assert_ne!(rotated["secret"].as_str(), Some(secret.as_str()));
    for field in ["name", "tenant", "role", "expires_at"] {
        assert_eq!(rotated["key"][field], created["key"][field], "{field}: {rotated}");
    }
    assert_eq!(rotated["previous"]["id"], id.as_str());
    let grace_end = time(&rotated["previous"]["expires_at"]);
    assert!(
        grace_end >= now + Duration::from_secs(3_600) && grace_end <= Timestamp::now() + Duration::from_secs(3_600)
    );

    // A rotation with no grace ends the old key now; an ended key cannot be
    // rotated again.
    let (status, rotated_now) =
        admin.call(Method::POST, format!("{keys}/{new_id}/rotate"), Some(json!({"grace": "0s"}))).await;
    assert_eq!(status, 201, "{rotated_now}");
    assert!(time(&rotated_now["previous"]["expires_at"]) <= Timestamp::now());
    let (status, refused) =
        admin.call(Method::POST, format!("{keys}/{new_id}/rotate"), Some(json!({"grace": "1h"}))).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));

    // Revoking is idempotent and keeps the first time.
    let (status, revoked) = admin.call(Method::DELETE, format!("{keys}/{id}"), None).await;
    assert_eq!(status, 200, "{revoked}");
    let (_, again) = admin.call(Method::DELETE, format!("{keys}/{id}"), None).await;
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    assert!(!revoked["revoked_at"].is_null());

    // Unknown and malformed ids.
    let ghost = "0190d6b5-7a1c-7000-8000-000000000000";
    for (method, path) in [
        (Method::GET, format!("{keys}/{ghost}")),
        (Method::DELETE, format!("{keys}/{ghost}")),
        (Method::POST, format!("{keys}/{ghost}/rotate")),
    ] {
        let (status, body) = admin.call(method, path, Some(json!({}))).await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    }
    let (status, _) = admin.call(Method::GET, format!("{keys}/not-a-uuid"), None).await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_authenticates_until_its_grace_ends_or_it_is_revoked() {
    use reqwest::Method;
    // The store outlives the server, to read what it wrote at its stop.
    let dir = tempfile::tempdir().expect("a directory");
    let store_url = format!("sqlite://{}", dir.path().join("godel.db").display());
    let server = TestServer::start_on(Some(&store_url), "").await;
    let admin = Admin::of(&server);
    let store = server.store().clone();
    let keys = server.url("/api/v1/keys");
    let tasks = server.url("/api/v1/tasks");
    let status = async |key: &str| Admin::with_key(key).call(Method::GET, tasks.clone(), None).await.0;
    let rotate = async |id: &str, grace: &str| {
        let (status, rotated) =
            admin.call(Method::POST, format!("{keys}/{id}/rotate"), Some(json!({"grace": grace}))).await;
        assert_eq!(status, 201, "{rotated}");
        let secret = rotated["secret"].as_str().expect("a secret").to_owned();
        (rotated["key"]["id"].as_str().expect("an id").to_owned(), secret)
    };

    let (_, created) = admin.call(Method::POST, keys.clone(), Some(json!({"name": "ci", "role": "submitter"}))).await;
    let first_id = created["key"]["id"].as_str().expect("an id").to_owned();
    let first = created["secret"].as_str().expect("a secret").to_owned();
    assert_eq!(status(&first).await, 200);

    // During an hour's grace both the old key and the new one work.
    let (second_id, second) = rotate(&first_id, "1h").await;
    assert_eq!((status(&first).await, status(&second).await), (StatusCode::OK, StatusCode::OK));

    // With no grace the old key stops at once, on this node's next request.
    let (third_id, third) = rotate(&second_id, "0s").await;
    assert_eq!(status(&second).await, 401);
    assert_eq!((status(&third).await, status(&first).await), (StatusCode::OK, StatusCode::OK));

    // A revoked key stops at once too.
    for (id, key) in [(&third_id, &third), (&first_id, &first)] {
        let (revoked, _) = admin.call(Method::DELETE, format!("{keys}/{id}"), None).await;
        assert_eq!(revoked, 200);
        let (refused, body) = Admin::with_key(key).call(Method::GET, tasks.clone(), None).await;
        assert_eq!((refused, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    }

    // Last use is written in batches, and at the latest when the server stops.
    server.stop().await;
    let used = store.get_key(&first_id.parse().expect("a key id")).await.expect("the key");
    assert!(used.last_used_at.is_some(), "{used:?}");
    let keys = store.list_keys(None).await.expect("the keys");
    assert!(keys.iter().filter(|k| k.name == "ci").all(|k| k.last_used_at.is_some()), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_bodies_are_strict_and_name_the_field() {
    let server = TestServer::start("").await;
    let admin = Admin::of(&server);
    let keys = server.url("/api/v1/keys");
    let cases = [
        (json!({"name": "ci", "role": "submitter", "scope": "all"}), "scope"),
        (json!({"name": "ci", "role": "root"}), "role"),
        (json!({"role": "viewer"}), "name"),
        (json!({"name": "a b", "role": "viewer"}), "name"),
        (json!({"name": "ci", "role": "viewer", "tenant": "no such/tenant"}), "tenant"),
        (json!({"name": "ci", "role": "viewer", "expires_in": "30s"}), "expires_in"),
        (json!({"name": "ci", "role": "viewer", "expires_in": "6years"}), "expires_in"),
        (json!({"name": "ci", "role": "viewer", "expires_in": "soon"}), "expires_in"),
    ];
    for (body, field) in cases {
        let (status, answer) = admin.call(reqwest::Method::POST, keys.clone(), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (_, created) =
        admin.call(reqwest::Method::POST, keys.clone(), Some(json!({"name": "w", "role": "worker"}))).await;
    let id = created["key"]["id"].as_str().expect("an id");
    assert!(created["key"]["expires_at"].is_null());
    for (body, field) in [(json!({"grace": "31d"}), "grace"), (json!({"grace": "1h", "now": true}), "now")] {
        let (status, answer) = admin.call(reqwest::Method::POST, format!("{keys}/{id}/rotate"), Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap_or_default().contains(field), "{answer}");
    }
    let (status, _) = admin.call(reqwest::Method::GET, format!("{keys}?role=admin"), None).await;
    assert_eq!(status, 400);
    server.stop().await;
}

fn entry(at: i64, tenant: &str, action: &str, outcome: AuditOutcome, credential: Option<&str>) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: Timestamp::from_millis(at),
        credential: credential.map(str::to_owned),
        tenant: TenantId::new(tenant).expect("a tenant"),
        role: credential.map(|_| Role::Submitter),
        action: action.to_owned(),
        target: None,
        outcome,
        status: if outcome == AuditOutcome::Denied { 401 } else { 201 },
        request_id: format!("r{at}"),
        source: "127.0.0.1".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_listed_newest_first_with_filters_and_pages() {
    use AuditOutcome::{Allowed, Denied, Failed};
    let server = TestServer::start("").await;
    let admin = Admin::of(&server);
    // Entries written straight to the store the server uses, at known times.
    let store = server.store();
    let entries = [
        entry(1_000, "default", "tasks.create", Allowed, Some("k1")),
        entry(2_000, "default", "tasks.cancel", Failed, Some("k1")),
        entry(3_000, "other", "tasks.create", Allowed, Some("k2")),
        entry(4_000, "default", "auth.failed", Denied, None),
        entry(5_000, "default", "keys.create", Allowed, Some("k1")),
    ];
    store.append_audit(&entries).await.expect("appended");
    let list = async |query: &str| {
        let (status, page) =
            admin.call(reqwest::Method::GET, server.url(&format!("/api/v1/audit?{query}")), None).await;
        (status, page)
    };
    let actions = |page: &Value| -> Vec<String> {
        page["items"].as_array().expect("items").iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect()
    };
    // Requests the guard audits may be in the log too: look at the old times only.
    let old = "until=1970-01-01T00:00:10Z";
    let (status, all) = list(old).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(actions(&all), ["keys.create", "auth.failed", "tasks.create", "tasks.cancel", "tasks.create"]);
    assert_eq!(all["items"][0]["at"], "1970-01-01T00:00:05.000Z");
    assert_eq!(all["items"][0]["credential"], "k1");
    assert!(all["items"][1]["credential"].is_null());

    assert_eq!(actions(&list(&format!("{old}&tenant=other")).await.1), ["tasks.create"]);
    assert_eq!(
        actions(&list(&format!("{old}&action=tasks.")).await.1),
        ["tasks.create", "tasks.cancel", "tasks.create"]
    );
    assert_eq!(actions(&list(&format!("{old}&action=tasks.create&tenant=default")).await.1), ["tasks.create"]);
    assert_eq!(actions(&list(&format!("{old}&outcome=denied")).await.1), ["auth.failed"]);
    assert_eq!(actions(&list(&format!("{old}&credential=k2")).await.1), ["tasks.create"]);
    let window = "since=1970-01-01T00:00:02Z&until=1970-01-01T00:00:04Z";
    assert_eq!(actions(&list(window).await.1), ["tasks.create", "tasks.cancel"]);

    // Pages of two, following the cursor, cover every entry once.
    let mut seen = Vec::new();
    let mut query = format!("{old}&limit=2");
    loop {
        let (status, page) = list(&query).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(actions(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("{old}&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, actions(&all));

    for bad in ["limit=0", "limit=101", "outcome=maybe", "since=yesterday", "colour=red", "tenant=a%20b"] {
        let (status, answer) = list(bad).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    server.stop().await;
}

/// A server's configuration over `store` with its state in `state`.
fn config(store: &str, state: &Path) -> ServerConfig {
    let toml = format!("bind = \"127.0.0.1:0\"\nstore = \"{store}\"\nstate_dir = \"{}\"\n", state.display());
    ServerConfig::from_toml(&toml, &|_| None).expect("a valid configuration")
}

/// Starts a server, waits until it listens, and stops it; returns how it ended.
async fn start_and_stop(config: ServerConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(godel_server::run(
        config,
        shutdown.clone(),
        Some(Box::new(move |_| {
            let _ = tx.send(());
        })),
    ));
    if rx.await.is_ok() {
        shutdown.cancel();
    }
    handle.await.expect("the server task")
}

async fn keys_in(store: &Arc<dyn Store>) -> Vec<godel_core::ApiKey> {
    store.list_keys(None).await.expect("the keys")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_writes_an_admin_key_that_later_starts_reuse() {
    let dir = tempfile::tempdir().expect("a directory");
    let store_url = format!("sqlite://{}", dir.path().join("godel.db").display());
    let state: PathBuf = dir.path().join("state");
    let file = state.join(godel_server::ADMIN_KEY_FILE);

    start_and_stop(config(&store_url, &state)).await.expect("the first start");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&state), 0o700);
    let secret = std::fs::read_to_string(&file).expect("the key file");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("gdl_") && secret.len() == 47);
    let store = godel_core::store::open(&store_url).await.expect("the store");
    let keys = keys_in(&store).await;
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].name.as_str(), keys[0].role, keys[0].prefix.as_str()), ("admin", Role::Admin, &secret[..12]));

    // A restart finds the key and changes nothing.
    start_and_stop(config(&store_url, &state)).await.expect("the restart");
    assert_eq!(std::fs::read_to_string(&file).expect("the key file").trim(), secret);
    assert_eq!(keys_in(&store).await, keys);

    // A new, empty store with the same state directory takes the file's key
    // rather than overwriting it.
    let fresh_url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    start_and_stop(config(&fresh_url, &state)).await.expect("the start on a fresh store");
    assert_eq!(std::fs::read_to_string(&file).expect("the key file").trim(), secret);
    let fresh = godel_core::store::open(&fresh_url).await.expect("the fresh store");
    assert_eq!(keys_in(&fresh).await.iter().map(|k| k.hash).collect::<Vec<_>>(), vec![keys[0].hash]);

    // A store that has keys leaves a missing file missing.
    std::fs::remove_file(&file).expect("removed");
    start_and_stop(config(&store_url, &state)).await.expect("the start without the file");
    assert!(!file.exists());

    // A file that is not a key is never overwritten: the start fails and says why.
    let other_state = dir.path().join("other");
    std::fs::create_dir(&other_state).expect("a directory");
    std::fs::write(other_state.join(godel_server::ADMIN_KEY_FILE), "not a key\n").expect("written");
    let empty_url = format!("sqlite://{}", dir.path().join("empty.db").display());
    let error = start_and_stop(config(&empty_url, &other_state)).await.expect_err("refused");
    assert!(format!("{error:#}").contains("admin.key"), "{error:#}");
    assert_eq!(std::fs::read_to_string(other_state.join(godel_server::ADMIN_KEY_FILE)).unwrap(), "not a key\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_on_one_store_agree_on_one_admin_key() {
    let dir = tempfile::tempdir().expect("a directory");
    let store_url = format!("sqlite://{}", dir.path().join("godel.db").display());
    let state = dir.path().join("state");
    // Made (and migrated) first: what races here is the first start, not
    // the schema's creation.
    let store = godel_core::store::open(&store_url).await.expect("the store");
    let starts: Vec<_> = (0..4).map(|_| tokio::spawn(start_and_stop(config(&store_url, &state)))).collect();
    for start in starts {
        start.await.expect("joined").expect("every server starts");
    }
    let secret = std::fs::read_to_string(state.join(godel_server::ADMIN_KEY_FILE)).expect("the key file");
    let keys = keys_in(&store).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].prefix, secret.trim()[..12]);
}
