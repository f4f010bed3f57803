//! Several `godel-server` processes sharing one PostgreSQL store: every task
//! runs once however many nodes compete, a node killed with SIGKILL loses
//! nothing, and events and agents are visible from every node.
//!
//! Each test gets its own schema (`?schema=godel_t_…`, dropped later by the
//! core suite's stale-schema sweep). Without PostgreSQL the tests skip with
//! a printed reason, or fail under `GODEL_TEST_REQUIRE_SERVICES=1`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use godel_core::store::{MemberKind, Store, TaskQuery};
use godel_core::{StoreError, TaskStatus, TenantId, Timestamp};
use serde_json::{Value, json};

use super::harness::{FAST_ENGINE, Launch, Server, eventually};

/// A fresh schema on the test PostgreSQL, or `None` (skip) when there is none.
pub(crate) async fn postgres() -> Result<Option<(String, Arc<dyn Store>)>> {
    let base = std::env::var("GODEL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let random = godel_core::TaskId::new().to_string();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}schema=godel_t_{secs}_{}", &random[random.len() - 8..]);
    match godel_core::store::open(&url).await {
        Ok(store) => Ok(Some((url, store))),
        Err(e @ (StoreError::Open { .. } | StoreError::Unavailable { .. })) => {
            if std::env::var("GODEL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                bail!("PostgreSQL is required (GODEL_TEST_REQUIRE_SERVICES=1) but unavailable: {e}");
            }
            #[allow(clippy::print_stderr, reason = "a skipped test says why")]
            {
                eprintln!("skipping: PostgreSQL unavailable: {e}");
            }
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A node whose agents append `<task id> <node>` to `ledger` for every run.
fn node_config(node: &str, ledger: &Path, agents: &[(&str, &str)]) -> String {
    let mut config = format!("{FAST_ENGINE}node = \"{node}\"\n");
    for (id, capability) in agents {
        config.push_str(&format!(
            "[[agents]]\nid = \"{id}\"\ncapacity = 4\ncapabilities = [\"{capability}\"]\n\
             command = [\"sh\", \"-c\", \"echo {{task_id}} {node} >> {}\"]\n",
            ledger.display()
        ));
    }
    config
}

async fn start_nodes(dir: &Path, url: &str, ledger: &Path, n: usize) -> Result<Vec<Server>> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node_dir = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&node_dir)?;
        let config = node_config(&format!("node{i}"), ledger, &[("a", "work"), ("b", "work")]);
        nodes.push(Launch::new(&node_dir, &config).store(url).start().await?);
    }
    Ok(nodes)
}

/// Submits `n` prompt tasks needing `work`, in batches spread over the nodes.
async fn submit_all(nodes: &[Server], n: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for (i, chunk) in (0..n).collect::<Vec<_>>().chunks(500).enumerate() {
        let tasks: Vec<Value> =
            chunk.iter().map(|k| json!({"prompt": format!("task {k}"), "capabilities": ["work"]})).collect();
        let node = &nodes[i % nodes.len()];
        let (status, body) = node.post("/api/v1/tasks/batch", &json!({ "tasks": tasks })).await?;
        if !status.is_success() {
            bail!("batch submit answered {status}: {body}");
        }
        let items = body["items"].as_array().or_else(|| body["tasks"].as_array()).context("batch items")?;
        ids.extend(items.iter().map(|t| t["id"].as_str().unwrap_or_default().to_owned()));
    }
    Ok(ids)
}

async fn wait_all_completed(node: &Server, n: u64) -> Result<()> {
    let what = format!("{n} tasks to complete");
    let found = eventually_long(&what, async || {
        let (_, health) = node.get("/api/v1/queue/health").await?;
        Ok((health["completed"].as_u64() == Some(n)).then_some(()))
    });
    found.await.with_context(|| node.logs())
}

/// Like `eventually`, for the long runs here: up to three minutes.
pub(crate) async fn eventually_long<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if std::time::Instant::now() >= deadline {
            bail!("gave up after 3 minutes waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs per task id, from the agents' ledger, with the nodes that ran them.
fn ledger_runs(ledger: &Path) -> Result<HashMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(ledger).context("read the ledger")?;
    let mut runs: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let (task, node) = line.split_once(' ').with_context(|| format!("ledger line {line:?}"))?;
        runs.entry(task.to_owned()).or_default().push(node.to_owned());
    }
    Ok(runs)
}

/// Every task as the store has it, with the number of times its history
/// records a move to `completed`.
async fn completions(store: &Arc<dyn Store>) -> Result<HashMap<String, (TaskStatus, u32, usize)>> {
    let tenant = TenantId::default_tenant();
    let mut out = HashMap::new();
    let mut query = TaskQuery { limit: 100, ..TaskQuery::default() };
    loop {
        let page = store.list(&tenant, &query).await?;
        for task in &page.items {
            let history = store.history(&tenant, task.id).await?;
            let completed = history.iter().filter(|h| h.status == TaskStatus::Completed).count();
            out.insert(task.id.to_string(), (task.status, task.attempt, completed));
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return Ok(out),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_run_every_task_exactly_once() -> Result<()> {
    let Some((url, _store)) = postgres().await? else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger");
    let nodes = start_nodes(dir.path(), &url, &ledger, 3).await?;
    let ids = submit_all(&nodes, 5_000).await?;
    wait_all_completed(&nodes[0], 5_000).await?;

    let runs = ledger_runs(&ledger)?;
    assert_eq!(runs.len(), 5_000, "every task ran");
    let twice: Vec<_> = runs.iter().filter(|(_, nodes)| nodes.len() > 1).collect();
    assert!(twice.is_empty(), "tasks ran more than once: {:?}", &twice[..twice.len().min(5)]);
    assert!(ids.iter().all(|id| runs.contains_key(id)), "the ledger names the submitted tasks");
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for nodes in runs.values() {
        *per_node.entry(nodes[0].as_str()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "every node took a share: {per_node:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_s_tasks_are_finished_by_the_others() -> Result<()> {
    let Some((url, store)) = postgres().await? else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger");
    let mut nodes = start_nodes(dir.path(), &url, &ledger, 3).await?;
    submit_all(&nodes, 5_000).await?;
    eventually_long("a fifth of the tasks to complete", async || {
        let (_, health) = nodes[0].get("/api/v1/queue/health").await?;
        Ok((health["completed"].as_u64().unwrap_or(0) >= 1_000).then_some(()))
    })
    .await?;
    let victim = nodes.remove(1);
    victim.signal(nix::sys::signal::Signal::SIGKILL)?;
    let killed_at = Timestamp::now();
    drop(victim);
    wait_all_completed(&nodes[0], 5_000).await?;

    let tasks = completions(&store).await?;
    assert_eq!(tasks.len(), 5_000, "no task lost");
    for (id, (status, _, completed)) in &tasks {
        assert_eq!(*status, TaskStatus::Completed, "task {id}");
        assert_eq!(*completed, 1, "task {id} completed exactly once");
    }
    let rerun = tasks.values().filter(|(_, attempt, _)| *attempt > 1).count();
    let runs = ledger_runs(&ledger)?;
    assert!(tasks.keys().all(|id| runs.contains_key(id)), "every task ran");
    // The dead node held leases when it died; the survivors took those tasks over.
    assert!(rerun > 0, "some of node1's tasks ran again elsewhere after their lease lapsed");
    let survivors_finished = runs
        .iter()
        .filter(|(id, _)| tasks[id.as_str()].1 > 1)
        .all(|(_, nodes)| nodes.last().is_some_and(|n| n != "node1"));
    assert!(survivors_finished, "retried tasks were finished by node0 or node2");
    assert!(Timestamp::now() > killed_at);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wake_ups_and_agents_cross_nodes() -> Result<()> {
    let Some((url, store)) = postgres().await? else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir)?;
    std::fs::create_dir_all(&b_dir)?;
    // Only node A can run `special` tasks; node B's agent needs something else.
    let a = Launch::new(&a_dir, &node_config("node-a", &ledger, &[("runner", "special")])).store(&url).start().await?;
    let b = Launch::new(&b_dir, &node_config("node-b", &ledger, &[("idle", "other")])).store(&url).start().await?;

    // B lists A's agent, with its node.
    let agents = eventually("node B to list node A's agent", async || {
        let (_, body) = b.get("/api/v1/agents").await?;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        Ok(items.iter().any(|a| a["node"] == "node-a" && a["id"] == "runner").then_some(items))
    })
    .await?;
    assert!(agents.iter().any(|a| a["node"] == "node-b" && a["id"] == "idle"), "{agents:?}");
    eventually("one registry row per agent of each node", async || {
        let members = store.members(&TenantId::default_tenant(), MemberKind::Agent, Timestamp::now()).await?;
        let mut ids: Vec<String> = members.into_iter().map(|m| m.id).collect();
        ids.sort();
        Ok((ids == ["node-a/runner", "node-b/idle"]).then_some(()))
    })
    .await?;

    // A task submitted on B runs on A (woken over NOTIFY); B's subscribers see A's events.
    let mut events = b.events("").await?;
    events.next_of_type("welcome").await?;
    events.subscribe(&["task.*"]).await?;
    let id = b.submit(&json!({"prompt": "hello", "capabilities": ["special"]})).await?;
    let mut seen = Vec::new();
    while !seen.contains(&"task.completed".to_owned()) {
        let event = events.next().await?;
        if event["task_id"] == id.as_str() || event["data"]["task_id"] == id.as_str() {
            seen.push(event["type"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(seen.contains(&"task.started".to_owned()), "A's start reached B: {seen:?}");
    let task = b.task(&id).await?;
    assert_eq!(task["agent_id"], "runner");
    assert_eq!(ledger_runs(&ledger)?[&id], vec!["node-a".to_owned()]);

    // A node that stops withdraws its agents.
    a.stop().await?;
    eventually("node A's agent to leave the registry", async || {
        let (_, body) = b.get("/api/v1/agents").await?;
        Ok(body["items"].as_array().is_some_and(|items| items.iter().all(|a| a["node"] != "node-a")).then_some(()))
    })
    .await?;
    Ok(())
}

/// A key revoked through one node is refused by another node sharing the
/// store within a few seconds: each node trusts a key lookup for 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_node_is_refused_by_the_others() -> Result<()> {
    let Some((url, _store)) = postgres().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let node_dir = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&node_dir)?;
        nodes.push(Launch::new(&node_dir, &format!("{FAST_ENGINE}node = \"node{i}\"\n")).store(&url).start().await?);
    }
    let (status, created) = nodes[0].post("/api/v1/keys", &json!({"name": "ci", "role": "viewer"})).await?;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().context("the new key's secret")?;
    let id = created["key"]["id"].as_str().context("the new key's id")?;
    let viewer = super::harness::authenticated(secret)?;
    let depth = nodes[1].url("/api/v1/queue/depth");
    assert_eq!(viewer.get(&depth).send().await?.status(), 200, "the other node takes the new key");

    let (status, body) = nodes[0].request(reqwest::Method::DELETE, &format!("/api/v1/keys/{id}"), None).await?;
    assert_eq!(status, 200, "{body}");
    let revoked = std::time::Instant::now();
    // The first refusal is a 401; further failed attempts from this address
    // may meet the failed-authentication limit (429) instead.
    eventually("the other node to refuse the revoked key", async || {
        let status = viewer.get(&depth).send().await?.status();
        Ok(matches!(status.as_u16(), 401 | 429).then_some(status))
    })
    .await?;
    assert!(revoked.elapsed() < std::time::Duration::from_secs(6), "refused only after {:?}", revoked.elapsed());
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
