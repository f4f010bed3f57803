//! A task row that does not decode (its payload overwritten with SQL) never
//! makes a listing fail: the task and dead-letter listings and the export
//! answer 200 with the healthy tasks and name the row, which the quarantine
//! routes then show and drop, and queue health counts meanwhile.

use std::time::Duration;

use godel_core::store::{ClaimRequest, Failure, Retry};
use godel_core::{AgentId, NewTask, Priority, TaskError, TaskErrorKind, TaskId, TenantId, Timestamp};
use serde_json::Value;

use crate::support::TestServer;

/// No task is claimable by the server's agents: the rows stay where the test puts them.
const NEED: &str = "nobody-has-this";

async fn corrupt_payload(db: &std::path::Path, id: TaskId) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let done = sqlx::query("UPDATE tasks SET payload = '{not json' WHERE id = ?")
        .bind(id.to_string())
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_answer_and_name_a_row_that_does_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("godel.db");
    let server = TestServer::start_on(Some(&format!("sqlite://{}", db.display())), "").await;
    let store = server.store();
    let tenant = TenantId::default_tenant();
    let now = Timestamp::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        let task = NewTask::prompt(format!("t{i}")).capability(NEED);
        ids.push(store.enqueue(&tenant, task, now).await.unwrap().task.id);
    }
    // A dead letter: claimed first (critical) and failed with its one attempt spent.
    let dead = store
        .enqueue(&tenant, NewTask::prompt("dead").capability(NEED).priority(Priority::Critical).max_attempts(1), now)
        .await
        .unwrap()
        .task
        .id;
    let request = ClaimRequest {
        tenant: tenant.clone(),
        agent: AgentId::new("test").unwrap(),
        capabilities: vec![NEED.to_owned()],
        limit: 1,
        lease_for: Duration::from_secs(30),
    };
    let claim = store.claim(&request, now).await.unwrap().pop().expect("the dead letter to be");
    assert_eq!(claim.task.id, dead);
    let failure =
        Failure { error: TaskError::new(TaskErrorKind::Error, "exit 1"), retry: Retry::After(Duration::ZERO) };
    store.fail(&claim.lease, &failure, now).await.unwrap();
    corrupt_payload(&db, ids[1]).await;

    let http = server.http();
    let get = |path: &str| {
        let request = http.get(server.url(path));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let json = |text: &str| serde_json::from_str::<Value>(text).unwrap();

    let (status, body) = get("/api/v1/tasks").await;
    assert_eq!(status, 200, "{body}");
    let page = json(&body);
    let listed: Vec<&str> = page["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[0].to_string(), ids[2].to_string(), dead.to_string()]);
    assert_eq!(page["quarantined"][0]["id"], ids[1].to_string(), "{body}");
    assert!(!page["quarantined"][0]["error"].as_str().unwrap().is_empty());

    // Damaged after the task listing met it, so that the dead-letter listing meets it first.
    corrupt_payload(&db, dead).await;
    let (status, body) = get("/api/v1/dead-letters").await;
    assert_eq!(status, 200, "{body}");
    let page = json(&body);
    assert_eq!(page["items"], Value::Array(Vec::new()));
    assert_eq!(page["quarantined"][0]["id"], dead.to_string(), "{body}");
    let (status, body) = get("/api/v1/dead-letters/export").await;
    assert_eq!((status, body.as_str()), (200, ""));

    let (status, body) = get("/api/v1/queue/health").await;
    assert_eq!(status, 200, "{body}");
    let health = json(&body);
    assert_eq!(health["quarantined"], 2);
    assert_eq!(health["status"], "degraded");

    let (status, body) = get("/api/v1/quarantine?limit=1").await;
    assert_eq!(status, 200, "{body}");
    let first = json(&body);
    assert_eq!(first["items"][0]["id"], ids[1].to_string());
    let cursor = first["next_cursor"].as_str().expect("a second page").to_owned();
    let (_, body) = get(&format!("/api/v1/quarantine?limit=1&cursor={cursor}")).await;
    assert_eq!(json(&body)["items"][0]["id"], dead.to_string());

    let (status, body) = get(&format!("/api/v1/quarantine/{}", ids[1])).await;
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["raw"].as_str().unwrap().contains("{not json"), "{body}");

    let path = format!("/api/v1/quarantine/{}", ids[1]);
    let dropped = http.delete(server.url(&path)).send().await.unwrap();
    assert_eq!(dropped.status().as_u16(), 204);
    assert_eq!(get(&path).await.0, 404);
    let purged = http.post(server.url("/api/v1/quarantine/purge")).send().await.unwrap();
    assert_eq!(purged.json::<Value>().await.unwrap()["purged"], 1);
    let (_, body) = get("/api/v1/queue/health").await;
    assert_eq!(json(&body)["quarantined"], 0);
    server.stop().await;
}
