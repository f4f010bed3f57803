//! Rows that do not decode, on every backend: each test damages rows through
//! the backend's own client (SQL, Redis commands) and checks that the store
//! moves them to the quarantine instead of failing the claim or the listing
//! that meets them. Memory holds values, not stored text: for it the tests
//! check the quarantine's calls on an empty quarantine.

use std::sync::Arc;
use std::time::Duration;

use godel_core::store::{ClaimRequest, Failure, QuarantineQuery, Retry, Store, StoreError, TaskFilter, TaskQuery};
use godel_core::{AgentId, NewTask, Priority, TaskError, TaskErrorKind, TaskId, TaskStatus, TenantId, Timestamp};

use crate::conformance::Raw;

type Db = Arc<dyn Store>;

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn claimer(tenant: &TenantId, limit: usize) -> ClaimRequest {
    ClaimRequest {
        tenant: tenant.clone(),
        agent: AgentId::new("agent-1").unwrap(),
        capabilities: Vec::new(),
        limit,
        lease_for: Duration::from_secs(30),
    }
}

async fn enqueue(store: &Db, tenant: &TenantId, task: NewTask) -> TaskId {
    store.enqueue(tenant, task, T0).await.unwrap().task.id
}

/// The quarantine's calls on a store with nothing in it.
async fn empty_quarantine_answers(store: &Db, t: &TenantId) {
    let page = store.quarantined(t, &QuarantineQuery::default()).await.unwrap();
    assert!(page.items.is_empty() && page.next_cursor.is_none());
    let id = TaskId::new();
    assert!(matches!(store.get_quarantined(t, id).await, Err(StoreError::NotFound(got)) if got == id));
    assert!(matches!(store.drop_quarantined(t, id).await, Err(StoreError::NotFound(got)) if got == id));
    assert_eq!(store.purge_quarantined(t).await.unwrap(), 0);
    assert_eq!(store.counts(t, T0).await.unwrap().quarantined, 0);
    let bad = QuarantineQuery { limit: 0, ..QuarantineQuery::default() };
    assert!(matches!(store.quarantined(t, &bad).await, Err(StoreError::InvalidInput(_))));
}

/// Three tasks of one priority and one `run_at`, the middle one's payload
/// not JSON: one claim returns the two healthy tasks and quarantines the
/// middle one, which is never claimed, listed or counted as a task again.
pub(crate) async fn a_corrupt_row_never_blocks_a_claim(store: Db, raw: Option<Raw>) {
    let t = tenant("acme");
    let ids = [
        enqueue(&store, &t, NewTask::prompt("first").priority(Priority::High)).await,
        enqueue(&store, &t, NewTask::prompt("second").priority(Priority::High)).await,
        enqueue(&store, &t, NewTask::prompt("third").priority(Priority::High)).await,
    ];
    let Some(raw) = raw else {
        let claimed = store.claim_or_quarantine(&claimer(&t, 3), T0).await.unwrap();
        assert_eq!(claimed.claims.iter().map(|c| c.task.id).collect::<Vec<_>>(), ids);
        assert!(claimed.quarantined.is_empty());
        empty_quarantine_answers(&store, &t).await;
        return;
    };
    raw.corrupt_payload(&t, ids[1]).await;

    let claimed = store.claim_or_quarantine(&claimer(&t, 3), T0).await.unwrap();
    assert_eq!(claimed.claims.iter().map(|c| c.task.id).collect::<Vec<_>>(), [ids[0], ids[2]]);
    assert!(claimed.claims.iter().all(|c| c.task.status == TaskStatus::Assigned));
    assert_eq!(claimed.quarantined.len(), 1);
    let moved = &claimed.quarantined[0];
    assert_eq!(moved.id, ids[1].to_string());
    assert!(!moved.error.is_empty());
    assert!(moved.raw.contains("{not json"), "the raw row keeps the stored text: {}", moved.raw);

    // The healthy ones run to the end.
    for claim in &claimed.claims {
        store.start(&claim.lease, &AgentId::new("agent-1").unwrap(), T0).await.unwrap();
        store.complete(&claim.lease, serde_json::json!("done"), T0).await.unwrap();
    }
    // The quarantined row is out of the queue for good: not claimed again,
    // even after any lease it held would have lapsed.
    let later = T0 + Duration::from_secs(3_600);
    assert!(store.reclaim_expired(later, 100).await.unwrap().is_empty());
    assert!(store.claim_or_quarantine(&claimer(&t, 3), later).await.unwrap().claims.is_empty());
    assert_eq!(store.depth(&t, later).await.unwrap().total(), 0);
    let counts = store.counts(&t, later).await.unwrap();
    assert_eq!(counts.quarantined, 1);
    assert_eq!(counts.status(TaskStatus::Completed), 2);
    assert_eq!(counts.status(TaskStatus::Assigned) + counts.status(TaskStatus::Pending), 0);
    let listed = store.list(&t, &TaskQuery::default()).await.unwrap();
    assert_eq!(listed.items.iter().map(|task| task.id).collect::<Vec<_>>(), [ids[0], ids[2]]);
    assert!(listed.quarantined.is_empty());
    assert!(matches!(store.get(&t, ids[1]).await, Err(StoreError::NotFound(_))));

    // Read, scoped to the tenant, then dropped.
    let page = store.quarantined(&t, &QuarantineQuery::default()).await.unwrap();
    assert_eq!(page.items, vec![moved.clone()]);
    assert_eq!(store.get_quarantined(&t, ids[1]).await.unwrap(), *moved);
    empty_quarantine_answers(&store, &tenant("other")).await;
    store.drop_quarantined(&t, ids[1]).await.unwrap();
    empty_quarantine_answers(&store, &t).await;
}

/// A listing that meets rows that do not decode returns the healthy ones,
/// names the others (now quarantined), and pages on as if they were there;
/// a dead letter that does not decode leaves the dead-letter listing working.
pub(crate) async fn listings_name_corrupt_rows_and_keep_paging(store: Db, raw: Option<Raw>) {
    let t = tenant("acme");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(enqueue(&store, &t, NewTask::prompt(format!("t{i}")).priority(Priority::Low)).await);
    }
    let dead = enqueue(&store, &t, NewTask::prompt("dead").max_attempts(1)).await;
    let claim = store.claim(&claimer(&t, 1), T0).await.unwrap().pop().unwrap();
    assert_eq!(claim.task.id, dead);
    let failure =
        Failure { error: TaskError::new(TaskErrorKind::Error, "exit code 1"), retry: Retry::After(Duration::ZERO) };
    store.fail(&claim.lease, &failure, T0).await.unwrap();
    let dead_letters = TaskQuery {
        filter: TaskFilter { statuses: vec![TaskStatus::DeadLetter], ..TaskFilter::default() },
        ..TaskQuery::default()
    };
    let Some(raw) = raw else {
        let page = store.list(&t, &dead_letters).await.unwrap();
        assert_eq!(page.items.iter().map(|task| task.id).collect::<Vec<_>>(), [dead]);
        assert!(page.quarantined.is_empty());
        empty_quarantine_answers(&store, &t).await;
        return;
    };
    for id in [ids[1], ids[3], dead] {
        raw.corrupt_payload(&t, id).await;
    }

    let page = store.list(&t, &dead_letters).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.quarantined.iter().map(|q| q.id.clone()).collect::<Vec<_>>(), [dead.to_string()]);

    let mut seen = Vec::new();
    let mut named = Vec::new();
    let mut cursor = None;
    loop {
        let query = TaskQuery { limit: 2, cursor: cursor.take(), ..TaskQuery::default() };
        let page = store.list(&t, &query).await.unwrap();
        seen.extend(page.items.iter().map(|task| task.id));
        named.extend(page.quarantined.iter().map(|q| q.id.clone()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, [ids[0], ids[2], ids[4]]);
    assert_eq!(named, [ids[1].to_string(), ids[3].to_string()]);
    assert_eq!(store.depth(&t, T0).await.unwrap().total(), 3);

    // The quarantine pages in submission order.
    let first = store.quarantined(&t, &QuarantineQuery { limit: 2, cursor: None }).await.unwrap();
    let cursor = first.next_cursor.clone().expect("a second page");
    let second = store.quarantined(&t, &QuarantineQuery { limit: 2, cursor: Some(cursor) }).await.unwrap();
    assert!(second.next_cursor.is_none());
    let all: Vec<String> = first.items.iter().chain(&second.items).map(|q| q.id.clone()).collect();
    assert_eq!(all, [ids[1].to_string(), ids[3].to_string(), dead.to_string()]);
    assert_eq!(store.counts(&t, T0).await.unwrap().quarantined, 3);

    assert_eq!(store.purge_quarantined(&t).await.unwrap(), 3);
    empty_quarantine_answers(&store, &t).await;
}
