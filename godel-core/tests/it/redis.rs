//! Checks specific to the Redis backend: its URL options, and a server that
//! dies and comes back under an open handle. The restart test runs a private
//! `redis-server` (never the shared one) on a free port with its own data
//! directory and `appendfsync always`.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use godel_core::store::prelude::*;
use godel_core::store::{ClaimRequest, ClusterMessage, Completion, RedisStore, StoreError};
use godel_core::{AgentId, NewTask, TaskStatus, TenantId, Timestamp};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::conformance::service_missing;

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn field_of(result: Result<std::sync::Arc<dyn Store>, StoreError>) -> String {
    match result {
        Err(StoreError::InvalidInput(e)) => e.field.to_string(),
        Err(other) => panic!("expected InvalidInput, got {other}"),
        Ok(_) => panic!("expected InvalidInput, got a store"),
    }
}

#[tokio::test]
async fn bad_url_options_name_the_parameter() {
    // None of these reaches the network: options are checked first.
    let open = godel_core::store::open;
    assert_eq!(field_of(open("redis://127.0.0.1:1?prefix=").await), "prefix");
    assert_eq!(field_of(open("redis://127.0.0.1:1?prefix=has%20space").await), "prefix");
    assert_eq!(field_of(open("redis://127.0.0.1:1?pool_size=0").await), "pool_size");
    assert_eq!(field_of(open("redis://127.0.0.1:1?pool_size=many").await), "pool_size");
    assert_eq!(field_of(open("redis://127.0.0.1:1?timeout=soon").await), "timeout");
    assert_eq!(field_of(open("redis://127.0.0.1:1?timeout=0s").await), "timeout");
    assert_eq!(field_of(open("redis://127.0.0.1:1?prefix=ok&colour=blue").await), "store url");
    // rediss:// is TLS, parsed like redis:// (the scheme stays in the URL the client connects with).
    let tls = godel_core::store::RedisOptions::parse("rediss://u:secret@h:7/2?prefix=app").unwrap();
    assert_eq!(tls.url, "rediss://u:secret@h:7/2");

    let options =
        godel_core::store::RedisOptions::parse("redis://u:secret@h:7/2?timeout=250ms&prefix=app:godel&pool_size=3")
            .unwrap();
    assert_eq!(options.url, "redis://u:secret@h:7/2");
    assert_eq!((options.prefix.as_str(), options.pool_size), ("app:godel", 3));
    assert_eq!(options.timeout, Duration::from_millis(250));

    // A server that is not there is Unavailable (retryable), not a panic or a hang.
    let port = free_port();
    match godel_core::store::open(&format!("redis://127.0.0.1:{port}?timeout=2s")).await {
        Err(e) => assert!(e.is_retryable(), "expected a retryable error, got {e}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

/// Starts a private redis-server with AOF on every write; None if there is no redis-server.
fn start_server(port: u16, dir: &Path) -> Option<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()
}

/// Polls `check` every 20 ms until it is true or `within` has passed.
async fn eventually<F: AsyncFnMut() -> bool>(within: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_keeps_acknowledged_tasks_and_the_handle_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut server) = start_server(port, dir.path()) else {
        return service_missing::<()>("redis-server", "the redis-server binary could not be started").unwrap_or(());
    };
    let url = format!("redis://127.0.0.1:{port}?prefix=restart&timeout=1s");
    let mut opened = None;
    assert!(
        eventually(Duration::from_secs(10), async || {
            opened = RedisStore::open(&url).await.ok();
            opened.is_some()
        })
        .await,
        "the private redis-server did not start"
    );
    let store = opened.unwrap();
    let peer = RedisStore::open(&url).await.unwrap();
    let mut woken = peer.cluster_messages().unwrap();

    let t = TenantId::new("acme").unwrap();
    let tasks: Vec<NewTask> = (0..20).map(|i| NewTask::prompt(format!("task {i}"))).collect();
    let enqueued = store.enqueue_batch(&t, tasks, T0).await.unwrap();
    let request = ClaimRequest {
        tenant: t.clone(),
        agent: AgentId::new("agent-1").unwrap(),
        capabilities: Vec::new(),
        limit: 10,
        lease_for: Duration::from_secs(30),
    };
    let claims = store.claim(&request, T0).await.unwrap();
    let completions: Vec<Completion> =
        claims.iter().map(|c| Completion { lease: c.lease.clone(), result: json!({"ok": true}) }).collect();
    assert_eq!(store.complete_batch(&completions, T0).await.unwrap().completed.len(), 10);

    // Down: calls fail as Unavailable (retryable), they do not hang.
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    for _ in 0..3 {
        let err = store.get(&t, enqueued[0].task.id).await.expect_err("the server is down");
        assert!(matches!(err, StoreError::Unavailable { .. }), "expected Unavailable, got {err}");
        let err = store.enqueue(&t, NewTask::prompt("lost?"), T0).await.expect_err("the server is down");
        assert!(err.is_retryable(), "expected a retryable error, got {err}");
    }

    // Back: the same handles recover on their own, scripts reload, and
    // every acknowledged task is there as it was acknowledged.
    let _server = start_server(port, dir.path()).unwrap();
    assert!(eventually(Duration::from_secs(10), async || store.ping().await.is_ok()).await, "the pool never recovered");
    let counts = store.counts(&t, T0).await.unwrap();
    assert_eq!((counts.status(TaskStatus::Completed), counts.status(TaskStatus::Pending)), (10, 10));
    for e in &enqueued {
        let task = store.get(&t, e.task.id).await.unwrap();
        let completed = claims.iter().any(|c| c.task.id == e.task.id);
        let expected = if completed { TaskStatus::Completed } else { TaskStatus::Pending };
        assert_eq!(task.status, expected, "task {} after the restart", e.task.id);
    }
    let rest = store.claim(&ClaimRequest { limit: 100, ..request }, T0).await.unwrap();
    assert_eq!(rest.len(), 10, "the pending tasks are claimable after the restart");

    // Pub/sub reconnects too: a broadcast reaches the peer again (messages
    // sent while its listener was still reconnecting are lost, so keep sending).
    let wake = ClusterMessage::Wake { tenant: t.clone() };
    assert!(
        eventually(Duration::from_secs(10), async || {
            store.broadcast(&wake).await.is_ok()
                && matches!(tokio::time::timeout(Duration::from_millis(100), woken.recv()).await, Ok(Ok(_)))
        })
        .await,
        "the peer's pub/sub listener never reconnected"
    );
}

/// Every script that makes tasks ready now publishes a `Wake` for the tenant,
/// including those whose message is built inside Lua (the reclaim sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_that_readies_tasks_wakes_other_nodes() {
    use godel_core::store::{Failure, Retry, TaskFilter};
    use godel_core::{TaskError, TaskErrorKind};

    let Some(fixture) = crate::conformance::redis().await else { return };
    let (store, peer) = (fixture.store, fixture.peer.expect("redis has a peer"));
    let mut woken = peer.cluster_messages().unwrap();
    let t = TenantId::new("acme").unwrap();
    let expect_wake = async |woken: &mut tokio::sync::broadcast::Receiver<ClusterMessage>, what: &str| {
        let got = tokio::time::timeout(Duration::from_secs(5), woken.recv()).await;
        let got = got.unwrap_or_else(|_| panic!("no wake after {what}")).unwrap();
        assert_eq!(got, ClusterMessage::Wake { tenant: TenantId::new("acme").unwrap() }, "after {what}");
    };
    let request = ClaimRequest {
        tenant: t.clone(),
        agent: AgentId::new("agent-1").unwrap(),
        capabilities: Vec::new(),
        limit: 1,
        lease_for: Duration::from_secs(30),
    };
    let retry_now =
        Failure { error: TaskError::new(TaskErrorKind::Error, "boom"), retry: Retry::After(Duration::ZERO) };

    store.enqueue(&t, NewTask::prompt("wake me").max_attempts(3), T0).await.unwrap();
    expect_wake(&mut woken, "enqueue").await;
    let claim = store.claim(&request, T0).await.unwrap().pop().unwrap();
    store.release(&claim.lease, T0).await.unwrap();
    expect_wake(&mut woken, "release").await;
    let claim = store.claim(&request, T0).await.unwrap().pop().unwrap();
    store.fail(&claim.lease, &retry_now, T0).await.unwrap();
    expect_wake(&mut woken, "a failure retried at once").await;
    store.claim(&request, T0).await.unwrap().pop().unwrap();
    assert_eq!(store.reclaim_expired(T0 + Duration::from_secs(30), 10).await.unwrap().len(), 1);
    expect_wake(&mut woken, "reclaim").await;
    let claim = store.claim(&request, T0).await.unwrap().pop().unwrap();
    store.fail(&claim.lease, &retry_now, T0).await.unwrap();
    assert_eq!(store.get(&t, claim.task.id).await.unwrap().status, TaskStatus::DeadLetter);
    store.replay(&t, claim.task.id, T0).await.unwrap();
    expect_wake(&mut woken, "replay").await;
    let claim = store.claim(&request, T0).await.unwrap().pop().unwrap();
    let never = Failure { retry: Retry::Never, ..retry_now.clone() };
    store.fail(&claim.lease, &never, T0).await.unwrap();
    store.cancel(&t, claim.task.id, T0).await.expect_err("a failed task cannot be cancelled");
    store.replay(&t, claim.task.id, T0).await.unwrap();
    expect_wake(&mut woken, "replay of a failed task").await;
    for _ in 0..3 {
        let claim = store.claim(&request, T0).await.unwrap().pop().unwrap();
        store.fail(&claim.lease, &retry_now, T0).await.unwrap();
        if store.get(&t, claim.task.id).await.unwrap().status != TaskStatus::DeadLetter {
            expect_wake(&mut woken, "a failure retried at once").await;
        }
    }
    assert_eq!(store.replay_dead_letters(&t, &TaskFilter::default(), T0).await.unwrap(), 1);
    expect_wake(&mut woken, "bulk replay").await;

    // A scheduled task is not ready, so it wakes nobody.
    store.enqueue(&t, NewTask::prompt("later").run_at(T0 + Duration::from_secs(60)), T0).await.unwrap();
    store.broadcast(&ClusterMessage::Wake { tenant: TenantId::new("marker").unwrap() }).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), woken.recv()).await.unwrap().unwrap();
    assert_eq!(
        next,
        ClusterMessage::Wake { tenant: TenantId::new("marker").unwrap() },
        "a scheduled enqueue woke a node"
    );
}
