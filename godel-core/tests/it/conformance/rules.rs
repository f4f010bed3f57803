//! The rules of the store contract, one async function each, written against
//! `dyn Store` only. Time is always passed in: nothing here sleeps.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use godel_core::store::{
    CancelOutcome, Claim, ClaimRequest, ClusterMessage, Completion, Cursor, FailOutcome, Failure, Lease, LeaseWrite,
    Member, MemberKind, Retry, SessionQuery, SortOrder, Store, StoreError, TaskFilter, TaskQuery, WriteOutcome,
};
use godel_core::{
    AgentId, Backoff, LeaseToken, NewTask, Priority, Task, TaskError, TaskErrorKind, TaskId, TaskStatus, TenantId,
    Timestamp,
};
use godel_core::{Event, EventKind, OutputChunk, OutputStream, Session, SessionState};
use serde_json::json;
use tokio::task::JoinSet;

type Db = Arc<dyn Store>;

/// An arbitrary fixed "now" for every test.
const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);
const LEASE: Duration = Duration::from_secs(30);

fn at(millis: i64) -> Timestamp {
    Timestamp::from_millis(millis)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn agent() -> AgentId {
    AgentId::new("agent-1").unwrap()
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn claimer(tenant: &TenantId, agent: &str, limit: usize) -> ClaimRequest {
    ClaimRequest {
        tenant: tenant.clone(),
        agent: AgentId::new(agent).unwrap(),
        capabilities: Vec::new(),
        limit,
        lease_for: LEASE,
    }
}

async fn enqueue(store: &Db, tenant: &TenantId, task: NewTask) -> Task {
    store.enqueue(tenant, task, T0).await.unwrap().task
}

async fn claim_one(store: &Db, tenant: &TenantId, now: Timestamp) -> Claim {
    let mut claims = store.claim(&claimer(tenant, "agent-1", 1), now).await.unwrap();
    assert_eq!(claims.len(), 1, "expected one claimable task at {now}");
    claims.pop().unwrap()
}

fn prompt_of(task: &Task) -> &str {
    task.payload.prompt.as_deref().unwrap()
}

fn retry_in(delay: Duration) -> Failure {
    Failure { error: TaskError::new(TaskErrorKind::Error, "exit code 1"), retry: Retry::After(delay) }
}

fn is_lease_lost<T>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::LeaseLost(_)))
}

async fn all_tasks(store: &Db, tenant: &TenantId) -> Vec<Task> {
    let query = TaskQuery { limit: 1_000, ..TaskQuery::default() };
    store.list(tenant, &query).await.unwrap().items
}

/// Rule 1: 8 concurrent claimers draining 10,000 tasks get each exactly once.
pub(crate) async fn claim_is_exclusive(store: Db) {
    let t = tenant("acme");
    let tasks: Vec<NewTask> = (0..10_000).map(|i| NewTask::prompt(format!("task {i}"))).collect();
    for chunk in tasks.chunks(1_000) {
        store.enqueue_batch(&t, chunk.to_vec(), T0).await.unwrap();
    }
    let mut claimers = JoinSet::new();
    for w in 0..8usize {
        let store = store.clone();
        let t = t.clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            // Mixed batch sizes exercise both single and batched claims.
            let request = claimer(&t, &format!("agent-{w}"), [1, 7, 25, 100][w % 4]);
            loop {
                let claims = store.claim(&request, T0).await.unwrap();
                if claims.is_empty() {
                    break;
                }
                let completions: Vec<Completion> =
                    claims.iter().map(|c| Completion { lease: c.lease.clone(), result: json!({"by": w}) }).collect();
                let done = store.complete_batch(&completions, T0).await.unwrap();
                assert!(done.lease_lost.is_empty(), "a fresh lease was reported lost");
                assert_eq!(done.completed.len(), claims.len());
                mine.extend(claims.iter().map(|c| (c.task.id, c.lease.attempt)));
            }
            mine
        });
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    while let Some(mine) = claimers.join_next().await {
        for (id, attempt) in mine.unwrap() {
            assert_eq!(attempt, 1, "task {id} was claimed more than once");
            assert!(seen.insert(id), "task {id} was claimed twice");
            total += 1;
        }
    }
    assert_eq!(total, 10_000);
    let counts = store.counts(&t, T0).await.unwrap();
    assert_eq!(counts.status(TaskStatus::Completed), 10_000);
    assert_eq!(counts.status(TaskStatus::Pending), 0);
    assert_eq!(store.depth(&t, T0).await.unwrap().total(), 0);
}

/// Rule 2: all ready critical before any high, FIFO within a priority.
pub(crate) async fn strict_priority_order(store: Db) {
    let t = tenant("acme");
    // Interleave submissions so that submission order alone would be wrong.
    for i in 0..20 {
        enqueue(&store, &t, NewTask::prompt(format!("medium {i}")).priority(Priority::Medium)).await;
        if i < 10 {
            enqueue(&store, &t, NewTask::prompt(format!("high {i}")).priority(Priority::High)).await;
        }
        if i < 5 {
            enqueue(&store, &t, NewTask::prompt(format!("critical {i}")).priority(Priority::Critical)).await;
        }
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(prompt_of(&claim_one(&store, &t, T0).await.task).to_owned());
    }
    let expected: Vec<String> =
        (0..5).map(|i| format!("critical {i}")).chain((0..5).map(|i| format!("high {i}"))).collect();
    assert_eq!(got, expected);

    // A batch claim returns the same order: the rest of high, then medium.
    let batch = store.claim(&claimer(&t, "agent-2", 8), T0).await.unwrap();
    let got: Vec<&str> = batch.iter().map(|c| prompt_of(&c.task)).collect();
    assert_eq!(got, ["high 5", "high 6", "high 7", "high 8", "high 9", "medium 0", "medium 1", "medium 2"]);

    // Within a priority, an earlier run_at goes first even if submitted later.
    let late = NewTask::prompt("low late").priority(Priority::Low);
    let early =
        NewTask::prompt("low early").priority(Priority::Low).run_at(Timestamp::from_millis(T0.as_millis() - 1_000));
    enqueue(&store, &t, late).await;
    enqueue(&store, &t, early).await;
    let rest = store.claim(&claimer(&t, "agent-3", 100), T0).await.unwrap();
    let lows: Vec<&str> = rest.iter().map(|c| prompt_of(&c.task)).filter(|p| p.starts_with("low")).collect();
    assert_eq!(lows, ["low early", "low late"]);
    assert_eq!(prompt_of(&rest.last().unwrap().task), "low late");
}

/// Claims only hand a task to a claimer that has every capability it needs.
pub(crate) async fn claim_respects_capabilities(store: Db) {
    let t = tenant("acme");
    let rust = enqueue(&store, &t, NewTask::prompt("build").priority(Priority::Critical).capability("rust")).await;
    let both = enqueue(&store, &t, NewTask::prompt("both").capability("rust").capability("gpu")).await;
    let any = enqueue(&store, &t, NewTask::prompt("anything").priority(Priority::Low)).await;

    let mut plain = claimer(&t, "plain", 10);
    let claims = store.claim(&plain, T0).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.task.id).collect::<Vec<_>>(), [any.id]);

    plain.capabilities = vec!["python".into(), "rust".into()];
    let claims = store.claim(&plain, T0).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.task.id).collect::<Vec<_>>(), [rust.id]);

    plain.capabilities = vec!["gpu".into(), "rust".into(), "x".into()];
    let claims = store.claim(&plain, T0).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.task.id).collect::<Vec<_>>(), [both.id]);
}

/// Rule 2: a task is invisible to claims and depth until its run_at.
pub(crate) async fn scheduled_tasks_wait_for_run_at(store: Db) {
    let t = tenant("acme");
    let at = T0 + secs(60);
    let scheduled = enqueue(&store, &t, NewTask::prompt("later").priority(Priority::Critical).run_at(at)).await;
    assert_eq!(scheduled.run_at, at);
    assert!(store.claim(&claimer(&t, "a", 10), T0).await.unwrap().is_empty());
    assert_eq!(store.depth(&t, T0).await.unwrap().total(), 0);
    assert_eq!(store.counts(&t, T0).await.unwrap().scheduled, 1);

    // A scheduled critical task does not hold back a ready low one.
    let low = enqueue(&store, &t, NewTask::prompt("now").priority(Priority::Low)).await;
    assert_eq!(claim_one(&store, &t, T0).await.task.id, low.id);

    let just_before = Timestamp::from_millis(at.as_millis() - 1);
    assert!(store.claim(&claimer(&t, "a", 10), just_before).await.unwrap().is_empty());
    assert_eq!(store.depth(&t, at).await.unwrap().get(Priority::Critical), 1);
    assert_eq!(claim_one(&store, &t, at).await.task.id, scheduled.id);
}

/// Rule 3: a stale lease gets `LeaseLost` and changes nothing, also after a
/// reclaim handed the task to someone else.
pub(crate) async fn stale_leases_are_fenced(store: Db) {
    let t = tenant("acme");
    let task = enqueue(&store, &t, NewTask::prompt("work")).await;
    let a = claim_one(&store, &t, T0).await;
    store.start(&a.lease, &agent(), T0).await.unwrap();
    assert_eq!(a.lease.attempt, 1);

    // A's lease lapses and B gets the task.
    let later = T0 + LEASE + secs(1);
    let reclaimed = store.reclaim_expired(later, 100).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    let b = claim_one(&store, &t, later).await;
    assert_eq!(b.task.id, task.id);
    assert_eq!(b.lease.attempt, 2);
    assert_ne!(b.lease.token, a.lease.token);
    let before = store.get(&t, task.id).await.unwrap();

    // Every write by the zombie A is refused.
    let zombie = &a.lease;
    assert!(is_lease_lost(store.start(zombie, &agent(), later).await));
    assert!(is_lease_lost(store.heartbeat(zombie, LEASE, later).await));
    let chunk = OutputChunk { stream: OutputStream::Stdout, data: "zombie".into() };
    assert!(is_lease_lost(store.append_output(zombie, &[chunk], later).await));
    assert!(is_lease_lost(store.append_output(zombie, &[], later).await));
    assert!(is_lease_lost(store.complete(zombie, json!("zombie"), later).await));
    assert!(is_lease_lost(store.fail(zombie, &retry_in(secs(1)), later).await));
    assert!(is_lease_lost(store.release(zombie, later).await));
    assert!(is_lease_lost(store.confirm_cancel(zombie, later).await));
    let batch = store.complete_batch(&[Completion { lease: zombie.clone(), result: json!(1) }], later).await.unwrap();
    assert_eq!(batch.lease_lost, [task.id]);
    assert!(batch.completed.is_empty());

    // Forged leases fail too: right token with the wrong attempt, a random
    // token, and B's lease presented under another tenant.
    let wrong_attempt = Lease { attempt: 1, ..b.lease.clone() };
    assert!(is_lease_lost(store.heartbeat(&wrong_attempt, LEASE, later).await));
    let random = Lease { token: LeaseToken::random(), ..b.lease.clone() };
    assert!(is_lease_lost(store.complete(&random, json!(1), later).await));
    let other_tenant = Lease { tenant: tenant("intruder"), ..b.lease.clone() };
    assert!(is_lease_lost(store.complete(&other_tenant, json!(1), later).await));

    assert_eq!(store.get(&t, task.id).await.unwrap(), before, "a stale lease changed the task");
    assert!(store.output(&t, task.id).await.unwrap().is_empty());

    // The rightful holder is unaffected, and its lease is spent once used.
    store.complete(&b.lease, json!({"ok": true}), later).await.unwrap();
    let done = store.get(&t, task.id).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert!(is_lease_lost(store.complete(&b.lease, json!("again"), later).await));
    assert!(is_lease_lost(store.heartbeat(&b.lease, LEASE, later).await));
}

/// Rule 4: a lapsed lease brings the task back (attempt counted) or
/// dead-letters it when attempts are spent; heartbeats keep it alive.
pub(crate) async fn expired_leases_are_reclaimed(store: Db) {
    let t = tenant("acme");
    let task = enqueue(&store, &t, NewTask::prompt("fragile").max_attempts(2)).await;
    let first = claim_one(&store, &t, T0).await;
    store.start(&first.lease, &agent(), T0).await.unwrap();

    // A heartbeat at +20 s moves the expiry to +50 s.
    let status = store.heartbeat(&first.lease, LEASE, T0 + secs(20)).await.unwrap();
    assert_eq!(status.expires_at, T0 + secs(50));
    assert!(!status.cancel_requested);
    assert!(store.reclaim_expired(T0 + secs(31), 100).await.unwrap().is_empty());
    assert_eq!(store.counts(&t, T0 + secs(49)).await.unwrap().expired_leases, 0);
    assert_eq!(store.counts(&t, T0 + secs(50)).await.unwrap().expired_leases, 1);

    let reclaimed = store.reclaim_expired(T0 + secs(50), 100).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!((reclaimed[0].task, reclaimed[0].attempt, reclaimed[0].status), (task.id, 1, TaskStatus::Pending));
    assert_eq!(reclaimed[0].tenant, t);
    let back = store.get(&t, task.id).await.unwrap();
    assert_eq!((back.status, back.attempt), (TaskStatus::Pending, 1));
    assert_eq!(back.error.as_ref().map(|e| e.kind), Some(TaskErrorKind::LeaseExpired));
    assert_eq!(back.lease_expires_at, None);
    assert_eq!(store.depth(&t, T0 + secs(50)).await.unwrap().total(), 1);
    assert!(store.reclaim_expired(T0 + secs(50), 100).await.unwrap().is_empty(), "reclaimed twice");

    // The second and last attempt lapses too: dead letter.
    let now = T0 + secs(60);
    let second = claim_one(&store, &t, now).await;
    assert_eq!(second.lease.attempt, 2);
    let reclaimed = store.reclaim_expired(now + LEASE, 100).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!((reclaimed[0].attempt, reclaimed[0].status), (2, TaskStatus::DeadLetter));
    let dead = store.get(&t, task.id).await.unwrap();
    assert_eq!(dead.status, TaskStatus::DeadLetter);
    assert_eq!(dead.dead_lettered_at, Some(now + LEASE));
    assert_eq!(store.depth(&t, now + LEASE).await.unwrap().total(), 0);

    // The sweep honours its limit.
    for i in 0..5 {
        enqueue(&store, &t, NewTask::prompt(format!("batch {i}"))).await;
    }
    let claimed = store.claim(&claimer(&t, "a", 5), now).await.unwrap();
    assert_eq!(claimed.len(), 5);
    assert_eq!(store.reclaim_expired(now + LEASE, 3).await.unwrap().len(), 3);
    assert_eq!(store.reclaim_expired(now + LEASE, 3).await.unwrap().len(), 2);
}

/// Failed attempts come back after the backoff the engine chose, then
/// dead-letter; a non-retryable failure is final at once.
pub(crate) async fn failures_back_off_then_dead_letter(store: Db) {
    let t = tenant("acme");
    let backoff = Backoff { initial: secs(1), multiplier: 2.0, max: secs(30), jitter: 0.0 };
    let task = enqueue(&store, &t, NewTask::prompt("flaky").max_attempts(4)).await;
    let mut now = T0;
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let claim = claim_one(&store, &t, now).await;
        assert_eq!(claim.lease.attempt, attempt);
        let delay = backoff.delay(attempt, &mut rand::rng());
        delays.push(delay);
        let outcome = store.fail(&claim.lease, &retry_in(delay), now).await.unwrap();
        assert_eq!(outcome, FailOutcome::Retrying { run_at: now + delay });
        let pending = store.get(&t, task.id).await.unwrap();
        assert_eq!((pending.status, pending.run_at), (TaskStatus::Pending, now + delay));
        assert_eq!(pending.error.as_ref().map(|e| e.message.as_str()), Some("exit code 1"));
        let too_early = Timestamp::from_millis((now + delay).as_millis() - 1);
        assert!(store.claim(&claimer(&t, "a", 1), too_early).await.unwrap().is_empty(), "claimed during backoff");
        now = now + delay;
    }
    assert_eq!(delays, [secs(1), secs(2), secs(4)]);
    let last = claim_one(&store, &t, now).await;
    assert_eq!(last.lease.attempt, 4);
    assert_eq!(store.fail(&last.lease, &retry_in(secs(8)), now).await.unwrap(), FailOutcome::DeadLettered);
    let dead = store.get(&t, task.id).await.unwrap();
    assert_eq!((dead.status, dead.attempt), (TaskStatus::DeadLetter, 4));
    assert!(dead.dead_lettered_at.is_some() && dead.completed_at.is_some());

    let fatal = enqueue(&store, &t, NewTask::prompt("bad config").max_attempts(5)).await;
    let claim = claim_one(&store, &t, now).await;
    assert_eq!(claim.task.id, fatal.id);
    let failure = Failure { error: TaskError::new(TaskErrorKind::Error, "no such file"), retry: Retry::Never };
    assert_eq!(store.fail(&claim.lease, &failure, now).await.unwrap(), FailOutcome::Failed);
    let failed = store.get(&t, fatal.id).await.unwrap();
    assert_eq!((failed.status, failed.attempt), (TaskStatus::Failed, 1));
    assert_eq!(failed.error, Some(failure.error));
    assert_eq!(failed.dead_lettered_at, None);
}

/// Rule 5: pending tasks cancel at once; leased ones by a flag the holder sees.
pub(crate) async fn cancel_pending_and_running(store: Db) {
    let t = tenant("acme");
    let pending = enqueue(&store, &t, NewTask::prompt("never mind")).await;
    assert_eq!(store.cancel(&t, pending.id, T0).await.unwrap(), CancelOutcome::Cancelled);
    let cancelled = store.get(&t, pending.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(cancelled.completed_at, Some(T0));
    assert_eq!(store.depth(&t, T0).await.unwrap().total(), 0);
    assert!(store.claim(&claimer(&t, "a", 10), T0).await.unwrap().is_empty());
    assert!(matches!(
        store.cancel(&t, pending.id, T0).await,
        Err(StoreError::InvalidTransition { from: TaskStatus::Cancelled, action: "cancel", .. })
    ));
    assert!(matches!(store.cancel(&t, TaskId::new(), T0).await, Err(StoreError::NotFound(_))));

    // Running: the flag, seen on heartbeat, then the holder confirms.
    let running = enqueue(&store, &t, NewTask::prompt("long job")).await;
    let claim = claim_one(&store, &t, T0).await;
    assert!(!store.start(&claim.lease, &agent(), T0).await.unwrap().cancel_requested);
    assert_eq!(store.cancel(&t, running.id, T0 + secs(1)).await.unwrap(), CancelOutcome::Requested);
    assert_eq!(store.cancel(&t, running.id, T0 + secs(1)).await.unwrap(), CancelOutcome::Requested, "idempotent");
    let flagged = store.get(&t, running.id).await.unwrap();
    assert_eq!((flagged.status, flagged.cancel_requested), (TaskStatus::Running, true));
    assert!(store.heartbeat(&claim.lease, LEASE, T0 + secs(2)).await.unwrap().cancel_requested);
    store.confirm_cancel(&claim.lease, T0 + secs(3)).await.unwrap();
    let done = store.get(&t, running.id).await.unwrap();
    assert_eq!((done.status, done.completed_at), (TaskStatus::Cancelled, Some(T0 + secs(3))));

    // A failure after a cancel request does not retry: it cancels.
    enqueue(&store, &t, NewTask::prompt("fails after cancel")).await;
    let claim = claim_one(&store, &t, T0).await;
    store.cancel(&t, claim.task.id, T0).await.unwrap();
    assert_eq!(store.fail(&claim.lease, &retry_in(secs(1)), T0).await.unwrap(), FailOutcome::Cancelled);
    assert_eq!(store.get(&t, claim.task.id).await.unwrap().status, TaskStatus::Cancelled);

    // An assigned task whose holder died: the reclaim finishes the cancel.
    enqueue(&store, &t, NewTask::prompt("holder dies")).await;
    let claim = claim_one(&store, &t, T0).await;
    assert!(store.start(&claim.lease, &agent(), T0).await.is_ok());
    store.cancel(&t, claim.task.id, T0).await.unwrap();
    let reclaimed = store.reclaim_expired(T0 + LEASE, 10).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].status, TaskStatus::Cancelled);

    // Releasing a cancel-requested task cancels it rather than requeueing it.
    enqueue(&store, &t, NewTask::prompt("released")).await;
    let claim = claim_one(&store, &t, T0).await;
    store.cancel(&t, claim.task.id, T0).await.unwrap();
    assert_eq!(store.release(&claim.lease, T0).await.unwrap(), TaskStatus::Cancelled);

    // Terminal tasks refuse.
    enqueue(&store, &t, NewTask::prompt("finished")).await;
    let claim = claim_one(&store, &t, T0).await;
    store.complete(&claim.lease, json!(null), T0).await.unwrap();
    assert!(matches!(
        store.cancel(&t, claim.task.id, T0).await,
        Err(StoreError::InvalidTransition { from: TaskStatus::Completed, .. })
    ));
    assert_eq!(store.depth(&t, T0).await.unwrap().total(), 0);
}

/// Purge deletes terminal tasks and their output, and refuses live ones.
pub(crate) async fn purge_refuses_live_tasks(store: Db) {
    let t = tenant("acme");
    let pending = enqueue(&store, &t, NewTask::prompt("pending")).await;
    assert!(matches!(
        store.purge(&t, pending.id).await,
        Err(StoreError::InvalidTransition { from: TaskStatus::Pending, action: "purge", .. })
    ));
    let claim = claim_one(&store, &t, T0).await;
    store.start(&claim.lease, &agent(), T0).await.unwrap();
    assert!(matches!(
        store.purge(&t, pending.id).await,
        Err(StoreError::InvalidTransition { from: TaskStatus::Running, .. })
    ));
    assert_eq!(store.get(&t, pending.id).await.unwrap().status, TaskStatus::Running, "refused purge changed the task");
    let chunk = OutputChunk { stream: OutputStream::Stdout, data: "hello".into() };
    store.append_output(&claim.lease, &[chunk], T0).await.unwrap();
    store.complete(&claim.lease, json!(1), T0).await.unwrap();

    store.purge(&t, pending.id).await.unwrap();
    assert!(matches!(store.get(&t, pending.id).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.output(&t, pending.id).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.purge(&t, pending.id).await, Err(StoreError::NotFound(_))));

    // Bulk purge by age and status.
    let mut finished = Vec::new();
    for (i, at) in [T0, T0 + secs(10), T0 + secs(20)].into_iter().enumerate() {
        let task = enqueue(&store, &t, NewTask::prompt(format!("old {i}"))).await;
        let claim = claim_one(&store, &t, at).await;
        store.complete(&claim.lease, json!(i), at).await.unwrap();
        finished.push(task.id);
    }
    let cancelled = enqueue(&store, &t, NewTask::prompt("cancelled")).await;
    store.cancel(&t, cancelled.id, T0).await.unwrap();
    let live = enqueue(&store, &t, NewTask::prompt("live")).await;

    let bad = TaskFilter { statuses: vec![TaskStatus::Pending], ..TaskFilter::default() };
    assert!(matches!(store.purge_finished(&t, &bad, T0 + secs(100)).await, Err(StoreError::InvalidInput(_))));
    let completed_only = TaskFilter { statuses: vec![TaskStatus::Completed], ..TaskFilter::default() };
    assert_eq!(store.purge_finished(&t, &completed_only, T0 + secs(15)).await.unwrap(), 2);
    assert!(store.get(&t, finished[2]).await.is_ok());
    assert!(store.get(&t, cancelled.id).await.is_ok());
    assert_eq!(store.purge_finished(&t, &TaskFilter::default(), T0 + secs(100)).await.unwrap(), 2);
    let left: Vec<TaskId> = all_tasks(&store, &t).await.iter().map(|t| t.id).collect();
    assert_eq!(left, [live.id]);
}

/// Text holding a NUL byte is refused on every backend alike (PostgreSQL
/// could store none of it), and nothing of the refused batch is stored.
pub(crate) async fn text_with_nul_is_refused(store: Db) {
    let t = tenant("acme");
    let refused = |r: Result<(), StoreError>, field: &str| match r {
        Err(StoreError::InvalidInput(e)) => assert_eq!(e.field, field),
        other => panic!("expected {field} to be refused, got {other:?}"),
    };
    let one = |task: NewTask| {
        let store = store.clone();
        let t = t.clone();
        async move { store.enqueue(&t, task, T0).await.map(|_| ()) }
    };
    refused(one(NewTask::prompt("p").idempotency_key("k\0")).await, "idempotency_key");
    refused(one(NewTask::prompt("p").affinity_key("k\0")).await, "affinity_key");
    refused(one(NewTask::command(["echo", "\0"])).await, "command");
    let batch = vec![NewTask::prompt("fine"), NewTask::prompt("a\0b")];
    refused(store.enqueue_batch(&t, batch, T0).await.map(|_| ()), "prompt");
    assert!(all_tasks(&store, &t).await.is_empty());
}

/// Rule 7: one task per (tenant, idempotency key).
pub(crate) async fn idempotency_keys_return_the_first_task(store: Db) {
    let t = tenant("acme");
    let first = store.enqueue(&t, NewTask::prompt("first").idempotency_key("order-42"), T0).await.unwrap();
    assert!(first.created);
    let second = store.enqueue(&t, NewTask::prompt("second").idempotency_key("order-42"), T0 + secs(1)).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.task, first.task);
    assert_eq!(all_tasks(&store, &t).await.len(), 1);

    // Another tenant has its own key space.
    let other =
        store.enqueue(&tenant("globex"), NewTask::prompt("theirs").idempotency_key("order-42"), T0).await.unwrap();
    assert!(other.created);
    assert_ne!(other.task.id, first.task.id);

    // In a batch: an existing key and a key repeated within the batch.
    let batch = vec![
        NewTask::prompt("dup of first").idempotency_key("order-42"),
        NewTask::prompt("new").idempotency_key("order-43"),
        NewTask::prompt("dup of new").idempotency_key("order-43"),
        NewTask::prompt("no key"),
    ];
    let out = store.enqueue_batch(&t, batch, T0).await.unwrap();
    assert_eq!(out.iter().map(|e| e.created).collect::<Vec<_>>(), [false, true, false, true]);
    assert_eq!(out[0].task.id, first.task.id);
    assert_eq!(out[2].task.id, out[1].task.id);
    assert_eq!(all_tasks(&store, &t).await.len(), 3);

    // The key still holds once the task has finished.
    let claim = claim_one(&store, &t, T0).await;
    store.complete(&claim.lease, json!(null), T0).await.unwrap();
    let again = store.enqueue(&t, NewTask::prompt("late retry").idempotency_key("order-42"), T0).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.task.status, TaskStatus::Completed);
}

/// Checks depth against an independent count of ready tasks from a listing.
async fn assert_depth_exact(store: &Db, t: &TenantId, now: Timestamp) -> u64 {
    let depth = store.depth(t, now).await.unwrap();
    let tasks = all_tasks(store, t).await;
    for p in Priority::ALL {
        let ready = tasks.iter().filter(|task| task.priority == p && task.is_ready(now)).count() as u64;
        assert_eq!(depth.get(p), ready, "depth of {p} at {now}");
    }
    let counts = store.counts(t, now).await.unwrap();
    assert_eq!(counts.ready, depth.total());
    depth.total()
}

/// Rule 8: depth equals the number of ready tasks after every kind of transition.
pub(crate) async fn depth_is_exact_after_every_transition(store: Db) {
    let t = tenant("acme");
    for (p, n) in [(Priority::Critical, 3), (Priority::High, 2), (Priority::Medium, 1), (Priority::Low, 4)] {
        for i in 0..n {
            enqueue(&store, &t, NewTask::prompt(format!("{p} {i}")).priority(p).max_attempts(2)).await;
        }
    }
    enqueue(&store, &t, NewTask::prompt("scheduled").priority(Priority::High).run_at(T0 + secs(5))).await;
    assert_eq!(assert_depth_exact(&store, &t, T0).await, 10);
    assert_eq!(assert_depth_exact(&store, &t, T0 + secs(5)).await, 11);

    // Claims take from the head.
    let claims = store.claim(&claimer(&t, "a", 4), T0).await.unwrap();
    assert_eq!(assert_depth_exact(&store, &t, T0).await, 6);
    assert_eq!(store.depth(&t, T0).await.unwrap().get(Priority::Critical), 0);

    // Retry with backoff: not ready until its run_at.
    let outcome = store.fail(&claims[0].lease, &retry_in(secs(3)), T0).await.unwrap();
    assert_eq!(outcome, FailOutcome::Retrying { run_at: T0 + secs(3) });
    assert_eq!(assert_depth_exact(&store, &t, T0).await, 6);
    assert_eq!(assert_depth_exact(&store, &t, T0 + secs(3)).await, 7);

    // Complete, release, cancel (pending and running), reclaim.
    store.complete(&claims[1].lease, json!(1), T0).await.unwrap();
    assert_eq!(assert_depth_exact(&store, &t, T0).await, 6);
    store.release(&claims[2].lease, T0).await.unwrap();
    assert_eq!(assert_depth_exact(&store, &t, T0).await, 7);
    let pending = all_tasks(&store, &t).await.into_iter().find(|task| task.priority == Priority::Low).unwrap();
    store.cancel(&t, pending.id, T0).await.unwrap();
    assert_eq!(assert_depth_exact(&store, &t, T0).await, 6);
    store.cancel(&t, claims[3].task.id, T0).await.unwrap();
    assert_eq!(assert_depth_exact(&store, &t, T0).await, 6);
    let reclaimed = store.reclaim_expired(T0 + LEASE, 100).await.unwrap();
    assert_eq!(reclaimed.len(), 1, "only the cancel-requested claim was still leased");
    assert_eq!(assert_depth_exact(&store, &t, T0 + LEASE).await, 8);

    // The released task kept its place ahead of the retried one (same
    // priority, earlier run_at). Dead-letter the retried one, then replay it.
    let now = T0 + LEASE;
    let two = store.claim(&claimer(&t, "a", 2), now).await.unwrap();
    assert_eq!(two.iter().map(|c| c.task.id).collect::<Vec<_>>(), [claims[2].task.id, claims[0].task.id]);
    assert_eq!(assert_depth_exact(&store, &t, now).await, 6);
    assert_eq!(store.fail(&two[1].lease, &retry_in(secs(1)), now).await.unwrap(), FailOutcome::DeadLettered);
    assert_eq!(assert_depth_exact(&store, &t, now).await, 6);
    store.replay(&t, two[1].task.id, now).await.unwrap();
    assert_eq!(assert_depth_exact(&store, &t, now).await, 7);
    assert_eq!(store.depth(&t, now).await.unwrap().get(Priority::Critical), 1);
}

/// Rule 9: one tenant cannot get, list, cancel, replay, purge or claim
/// another's tasks, nor see them in depth or counts.
pub(crate) async fn tenants_are_walls(store: Db) {
    let acme = tenant("acme");
    let globex = tenant("globex");
    let pending = enqueue(&store, &acme, NewTask::prompt("acme pending").idempotency_key("k")).await;
    let dead = enqueue(&store, &acme, NewTask::prompt("acme dead").max_attempts(1)).await;
    let done = enqueue(&store, &acme, NewTask::prompt("acme done")).await;
    let claims = store.claim(&claimer(&acme, "a", 3), T0).await.unwrap();
    let lease_of = |id: TaskId| claims.iter().find(|c| c.task.id == id).unwrap().lease.clone();
    store.fail(&lease_of(dead.id), &retry_in(secs(1)), T0).await.unwrap();
    store.complete(&lease_of(done.id), json!(1), T0).await.unwrap();
    store.release(&lease_of(pending.id), T0).await.unwrap();
    let snapshot = all_tasks(&store, &acme).await;

    for id in [pending.id, dead.id, done.id] {
        assert!(matches!(store.get(&globex, id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.output(&globex, id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.cancel(&globex, id, T0).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.replay(&globex, id, T0).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.purge(&globex, id).await, Err(StoreError::NotFound(_))));
    }
    assert!(all_tasks(&store, &globex).await.is_empty());
    assert!(store.claim(&claimer(&globex, "g", 10), T0).await.unwrap().is_empty());
    assert_eq!(store.depth(&globex, T0).await.unwrap().total(), 0);
    let counts = store.counts(&globex, T0).await.unwrap();
    assert!(TaskStatus::ALL.iter().all(|s| counts.status(*s) == 0));
    assert_eq!(store.replay_dead_letters(&globex, &TaskFilter::default(), T0).await.unwrap(), 0);
    assert_eq!(store.purge_finished(&globex, &TaskFilter::default(), T0 + secs(100)).await.unwrap(), 0);
    let theirs = store.enqueue(&globex, NewTask::prompt("same key").idempotency_key("k"), T0).await.unwrap();
    assert!(theirs.created);

    assert_eq!(all_tasks(&store, &acme).await, snapshot, "another tenant changed acme's tasks");
    assert_eq!(store.depth(&acme, T0).await.unwrap().total(), 1);
}

/// Pages keyed on the insertion sequence never skip or repeat, even while
/// tasks are inserted between and during page fetches.
pub(crate) async fn pagination_neither_skips_nor_repeats(store: Db) {
    let t = tenant("acme");
    let mut initial = Vec::new();
    for i in 0..100 {
        initial.push(enqueue(&store, &t, NewTask::prompt(format!("initial {i}"))).await.id);
    }
    let inserter = {
        let store = store.clone();
        let t = t.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                store.enqueue(&t, NewTask::prompt(format!("concurrent {i}")), T0).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut ascending = Vec::new();
    let mut descending = Vec::new();
    for (order, out) in [(SortOrder::Ascending, &mut ascending), (SortOrder::Descending, &mut descending)] {
        let mut cursor = None;
        loop {
            let query = TaskQuery { order, limit: 7, cursor: cursor.take(), ..TaskQuery::default() };
            let page = store.list(&t, &query).await.unwrap();
            assert!(page.items.len() <= 7);
            out.extend(page.items.iter().map(|task| task.id));
            enqueue(&store, &t, NewTask::prompt("between pages")).await;
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
            assert!(out.len() < 10_000, "pagination does not terminate");
        }
    }
    inserter.await.unwrap();

    let everything: Vec<TaskId> = all_tasks(&store, &t).await.iter().map(|task| task.id).collect();
    for (name, seen) in [("ascending", &ascending), ("descending", &descending)] {
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{name} listing repeated a task");
        assert!(initial.iter().all(|id| unique.contains(id)), "{name} listing skipped a task");
    }
    // Ascending pages are a prefix of the final order, in order.
    assert_eq!(&everything[..ascending.len()], &ascending[..]);
    // Descending pages are contiguous in the final order, reversed.
    let start = everything.iter().position(|id| *id == *descending.last().unwrap()).unwrap();
    let mut window = everything[start..start + descending.len()].to_vec();
    window.reverse();
    assert_eq!(window, descending);

    // Filters and cursors compose.
    let filter = TaskFilter { statuses: vec![TaskStatus::Pending], ..TaskFilter::default() };
    let first = store.list(&t, &TaskQuery { filter: filter.clone(), limit: 3, ..TaskQuery::default() }).await.unwrap();
    let second = store
        .list(&t, &TaskQuery { filter, limit: 3, cursor: first.next_cursor.clone(), ..TaskQuery::default() })
        .await
        .unwrap();
    assert_eq!(first.items.iter().chain(&second.items).map(|task| task.id).collect::<Vec<_>>(), everything[..6]);
}

/// Bad limits and cursors are `InvalidInput`, not errors from the backend.
pub(crate) async fn bad_listing_input_is_rejected(store: Db) {
    let t = tenant("acme");
    for i in 0..3 {
        enqueue(&store, &t, NewTask::prompt(format!("t{i}"))).await;
    }
    let zero = TaskQuery { limit: 0, ..TaskQuery::default() };
    assert!(matches!(store.list(&t, &zero).await, Err(StoreError::InvalidInput(e)) if e.field == "limit"));
    let huge = TaskQuery { limit: 1_000_000, ..TaskQuery::default() };
    assert!(matches!(store.list(&t, &huge).await, Err(StoreError::InvalidInput(e)) if e.field == "limit"));
    assert!("not-a-cursor".parse::<Cursor>().is_err());
    let page = store.list(&t, &TaskQuery { limit: 1, ..TaskQuery::default() }).await.unwrap();
    let wrong_order =
        TaskQuery { order: SortOrder::Descending, limit: 1, cursor: page.next_cursor, ..TaskQuery::default() };
    assert!(matches!(store.list(&t, &wrong_order).await, Err(StoreError::InvalidInput(e)) if e.field == "cursor"));

    // Invalid tasks are refused with the field named, and nothing is stored.
    let bad = store.enqueue(&t, NewTask::prompt("x").max_attempts(0), T0).await;
    assert!(matches!(bad, Err(StoreError::InvalidInput(e)) if e.field == "max_attempts"));
    assert_eq!(all_tasks(&store, &t).await.len(), 3);
}

/// Dead letters can be listed, replayed one by one and in bulk by filter.
pub(crate) async fn dead_letters_replay_one_and_in_bulk(store: Db) {
    let t = tenant("acme");
    for (i, p) in [Priority::High, Priority::High, Priority::High, Priority::Low, Priority::Low].into_iter().enumerate()
    {
        enqueue(&store, &t, NewTask::prompt(format!("doomed {i}")).priority(p).max_attempts(1)).await;
    }
    let survivor = enqueue(&store, &t, NewTask::prompt("survivor").priority(Priority::Low)).await;
    for claim in store.claim(&claimer(&t, "a", 5), T0).await.unwrap() {
        assert_eq!(store.fail(&claim.lease, &retry_in(secs(1)), T0).await.unwrap(), FailOutcome::DeadLettered);
    }
    let dead_filter = TaskFilter { statuses: vec![TaskStatus::DeadLetter], ..TaskFilter::default() };
    let dead = store.list(&t, &TaskQuery { filter: dead_filter.clone(), ..TaskQuery::default() }).await.unwrap().items;
    assert_eq!(dead.len(), 5);
    assert_eq!(store.counts(&t, T0).await.unwrap().status(TaskStatus::DeadLetter), 5);

    // One.
    let now = T0 + secs(10);
    let replayed = store.replay(&t, dead[0].id, now).await.unwrap();
    assert_eq!((replayed.status, replayed.attempt, replayed.run_at), (TaskStatus::Pending, 0, now));
    assert_eq!(replayed.dead_lettered_at, None);
    assert!(matches!(
        store.replay(&t, survivor.id, now).await,
        Err(StoreError::InvalidTransition { from: TaskStatus::Pending, action: "replay", .. })
    ));

    // In bulk, by priority: the two remaining high ones.
    let bad = TaskFilter { statuses: vec![TaskStatus::Failed], ..TaskFilter::default() };
    assert!(matches!(store.replay_dead_letters(&t, &bad, now).await, Err(StoreError::InvalidInput(_))));
    let high = TaskFilter { priorities: vec![Priority::High], ..TaskFilter::default() };
    assert_eq!(store.replay_dead_letters(&t, &high, now).await.unwrap(), 2);
    assert_eq!(store.replay_dead_letters(&t, &high, now).await.unwrap(), 0);
    let left = store.list(&t, &TaskQuery { filter: dead_filter, ..TaskQuery::default() }).await.unwrap().items;
    assert!(left.iter().all(|task| task.priority == Priority::Low));
    assert_eq!(left.len(), 2);
    assert_eq!(store.depth(&t, now).await.unwrap().get(Priority::High), 3);

    // A replayed task runs again with fresh attempts.
    let claim = claim_one(&store, &t, now).await;
    assert_eq!(claim.task.id, dead[0].id);
    assert_eq!(claim.lease.attempt, 1);
    store.complete(&claim.lease, json!("second life"), now).await.unwrap();
    assert!(matches!(
        store.replay(&t, dead[0].id, now).await,
        Err(StoreError::InvalidTransition { from: TaskStatus::Completed, .. })
    ));
}

/// A conditional replay checks the status and replays in one step: a task in
/// a status it does not allow is refused with `InvalidTransition` and left
/// exactly as it was (status, attempts, history), and the allowed statuses
/// must be replayable ones.
pub(crate) async fn replay_if_refuses_other_statuses(store: Db) {
    let t = tenant("acme");
    let dead = enqueue(&store, &t, NewTask::prompt("doomed").max_attempts(1)).await;
    let claim = claim_one(&store, &t, T0).await;
    assert_eq!(store.fail(&claim.lease, &retry_in(secs(1)), T0).await.unwrap(), FailOutcome::DeadLettered);
    let cancelled = enqueue(&store, &t, NewTask::prompt("cancelled")).await;
    store.cancel(&t, cancelled.id, T0).await.unwrap();
    let pending = enqueue(&store, &t, NewTask::prompt("pending")).await;

    let now = T0 + secs(10);
    for (task, only_from, from) in [
        (dead.id, vec![TaskStatus::Cancelled, TaskStatus::Failed], TaskStatus::DeadLetter),
        (cancelled.id, vec![TaskStatus::DeadLetter], TaskStatus::Cancelled),
        (pending.id, vec![TaskStatus::DeadLetter, TaskStatus::Failed, TaskStatus::Cancelled], TaskStatus::Pending),
    ] {
        let before = (store.get(&t, task).await.unwrap(), store.history(&t, task).await.unwrap());
        let refused = store.replay_if(&t, task, &only_from, now).await;
        assert!(
            matches!(refused, Err(StoreError::InvalidTransition { task: id, from: f, action: "replay" }) if id == task && f == from),
            "{refused:?}"
        );
        assert_eq!((store.get(&t, task).await.unwrap(), store.history(&t, task).await.unwrap()), before);
    }
    assert_eq!(store.depth(&t, now).await.unwrap().total(), 1);

    // Statuses a task cannot be replayed from are bad input, not a refusal.
    for only_from in [vec![], vec![TaskStatus::Completed], vec![TaskStatus::DeadLetter, TaskStatus::Pending]] {
        let bad = store.replay_if(&t, dead.id, &only_from, now).await;
        assert!(matches!(bad, Err(StoreError::InvalidInput(e)) if e.field == "only_from"), "{only_from:?}");
    }
    let missing = TaskId::new();
    assert!(
        matches!(store.replay_if(&t, missing, &[TaskStatus::DeadLetter], now).await, Err(StoreError::NotFound(id)) if id == missing)
    );
    assert!(matches!(
        store.replay_if(&tenant("globex"), dead.id, &[TaskStatus::DeadLetter], now).await,
        Err(StoreError::NotFound(_))
    ));

    // An allowed status replays, once.
    let replayed = store.replay_if(&t, dead.id, &[TaskStatus::DeadLetter], now).await.unwrap();
    assert_eq!((replayed.status, replayed.attempt, replayed.run_at), (TaskStatus::Pending, 0, now));
    assert_eq!(replayed.dead_lettered_at, None);
    assert!(matches!(
        store.replay_if(&t, dead.id, &[TaskStatus::DeadLetter], now).await,
        Err(StoreError::InvalidTransition { from: TaskStatus::Pending, .. })
    ));
    let replayed = store.replay_if(&t, cancelled.id, &[TaskStatus::Cancelled, TaskStatus::Failed], now).await.unwrap();
    assert_eq!(replayed.status, TaskStatus::Pending);
    assert_eq!(store.depth(&t, now).await.unwrap().total(), 3);
}

/// Output is kept per attempt, in order, and only the lease holder may add it.
pub(crate) async fn output_is_recorded_per_attempt(store: Db) {
    let t = tenant("acme");
    let task = enqueue(&store, &t, NewTask::command(["make", "test"])).await;
    let first = claim_one(&store, &t, T0).await;
    let chunks = [
        OutputChunk { stream: OutputStream::Stdout, data: "compiling\n".into() },
        OutputChunk { stream: OutputStream::Stderr, data: "warning: ✗ \"quoted\"\n".into() },
    ];
    store.append_output(&first.lease, &chunks, T0).await.unwrap();
    store.fail(&first.lease, &retry_in(secs(1)), T0).await.unwrap();
    let second = claim_one(&store, &t, T0 + secs(1)).await;
    let system = OutputChunk { stream: OutputStream::System, data: "output truncated".into() };
    store.append_output(&second.lease, std::slice::from_ref(&system), T0 + secs(2)).await.unwrap();
    assert!(is_lease_lost(store.append_output(&first.lease, &chunks, T0 + secs(2)).await));

    let output = store.output(&t, task.id).await.unwrap();
    let got: Vec<(u32, OutputStream, &str)> = output.iter().map(|o| (o.attempt, o.stream, o.data.as_str())).collect();
    assert_eq!(
        got,
        [
            (1, OutputStream::Stdout, "compiling\n"),
            (1, OutputStream::Stderr, "warning: ✗ \"quoted\"\n"),
            (2, OutputStream::System, "output truncated"),
        ]
    );
    assert_eq!(output[2].at, T0 + secs(2));
}

/// Release gives a task back without spending an attempt, in its old place.
pub(crate) async fn release_keeps_the_attempt_and_the_place(store: Db) {
    let t = tenant("acme");
    let a = enqueue(&store, &t, NewTask::prompt("a")).await;
    let b = enqueue(&store, &t, NewTask::prompt("b")).await;
    let claim = claim_one(&store, &t, T0).await;
    assert_eq!(claim.task.id, a.id);
    store.start(&claim.lease, &agent(), T0).await.unwrap();
    assert_eq!(store.release(&claim.lease, T0 + secs(1)).await.unwrap(), TaskStatus::Pending);
    let released = store.get(&t, a.id).await.unwrap();
    assert_eq!((released.status, released.attempt, released.lease_expires_at), (TaskStatus::Pending, 0, None));
    assert!(is_lease_lost(store.release(&claim.lease, T0 + secs(1)).await));
    let again = store.claim(&claimer(&t, "a", 2), T0 + secs(1)).await.unwrap();
    assert_eq!(again.iter().map(|c| (c.task.id, c.lease.attempt)).collect::<Vec<_>>(), [(a.id, 1), (b.id, 1)]);
}

/// A batch enqueue is all or nothing; a batch completion is fenced per task.
pub(crate) async fn batches_are_atomic_and_fenced_per_task(store: Db) {
    let t = tenant("acme");
    let batch = vec![NewTask::prompt("ok"), NewTask::command(Vec::<String>::new()), NewTask::prompt("ok too")];
    assert!(
        matches!(store.enqueue_batch(&t, batch, T0).await, Err(StoreError::InvalidInput(e)) if e.field == "command")
    );
    assert!(all_tasks(&store, &t).await.is_empty(), "a rejected batch left tasks behind");

    let out = store.enqueue_batch(&t, (0..4).map(|i| NewTask::prompt(format!("t{i}"))).collect(), T0).await.unwrap();
    assert_eq!(out.iter().map(|e| prompt_of(&e.task)).collect::<Vec<_>>(), ["t0", "t1", "t2", "t3"]);
    let claims = store.claim(&claimer(&t, "a", 4), T0).await.unwrap();
    assert_eq!(claims.len(), 4);
    store.complete(&claims[1].lease, json!("early"), T0).await.unwrap();
    let completions: Vec<Completion> =
        claims.iter().map(|c| Completion { lease: c.lease.clone(), result: json!(prompt_of(&c.task)) }).collect();
    let done = store.complete_batch(&completions, T0).await.unwrap();
    assert_eq!(done.completed, [claims[0].task.id, claims[2].task.id, claims[3].task.id]);
    assert_eq!(done.lease_lost, [claims[1].task.id]);
    assert_eq!(store.get(&t, claims[1].task.id).await.unwrap().result, Some(json!("early")));
    assert_eq!(store.get(&t, claims[3].task.id).await.unwrap().result, Some(json!("t3")));
    assert!(store.claim(&claimer(&t, "a", 0), T0).await.unwrap().is_empty());
}

fn start_of(lease: &Lease, agent: &AgentId) -> LeaseWrite {
    LeaseWrite::Start { lease: lease.clone(), agent: agent.clone() }
}

fn completion_of(lease: &Lease, result: serde_json::Value) -> LeaseWrite {
    LeaseWrite::Complete(Completion { lease: lease.clone(), result })
}

/// A batch write acts like one `start` or `complete` per entry: fenced per
/// entry, reporting cancel requests to starters, outcomes in input order.
pub(crate) async fn write_batch_is_fenced_per_entry(store: Db) {
    use WriteOutcome::*;
    let t = tenant("acme");
    store.enqueue_batch(&t, (0..5).map(|i| NewTask::prompt(format!("t{i}"))).collect(), T0).await.unwrap();
    let claims = store.claim(&claimer(&t, "claimer", 5), T0).await.unwrap();
    assert_eq!(claims.len(), 5);
    // claims[1] is already finished, claims[2] has a cancel request, claims[4] runs already.
    store.complete(&claims[1].lease, json!("early"), T0).await.unwrap();
    store.cancel(&t, claims[2].task.id, T0).await.unwrap();
    store.start(&claims[4].lease, &agent(), T0).await.unwrap();
    let runner = AgentId::new("runner").unwrap();
    let now = T0 + secs(1);
    let writes = [
        start_of(&claims[0].lease, &runner),
        start_of(&claims[1].lease, &runner),
        start_of(&claims[2].lease, &runner),
        completion_of(&claims[4].lease, json!({"n": 4})),
        start_of(&claims[3].lease, &runner),
        // Forged: a random token, and a real lease presented under another tenant.
        completion_of(&Lease { token: LeaseToken::random(), ..claims[3].lease.clone() }, json!("forged")),
        start_of(&Lease { tenant: tenant("intruder"), ..claims[0].lease.clone() }, &agent()),
    ];
    let outcomes = store.write_batch(&writes, now).await.unwrap();
    assert_eq!(
        outcomes,
        [
            Started { cancel_requested: false },
            LeaseLost,
            Started { cancel_requested: true },
            Completed,
            Started { cancel_requested: false },
            LeaseLost,
            LeaseLost,
        ]
    );
    for i in [0, 2, 3] {
        let task = store.get(&t, claims[i].task.id).await.unwrap();
        assert_eq!(
            (task.status, task.started_at, task.agent.clone()),
            (TaskStatus::Running, Some(now), Some(runner.clone()))
        );
        assert_eq!(task.lease_expires_at, Some(T0 + LEASE), "a start keeps the lease");
        let last = store.history(&t, task.id).await.unwrap().pop().unwrap();
        assert_eq!((last.status, last.at, last.agent), (TaskStatus::Running, now, Some(runner.clone())));
    }
    let finished = store.get(&t, claims[1].task.id).await.unwrap();
    assert_eq!((finished.status, finished.result), (TaskStatus::Completed, Some(json!("early"))));
    let done = store.get(&t, claims[4].task.id).await.unwrap();
    assert_eq!(
        (done.status, done.result.clone(), done.completed_at),
        (TaskStatus::Completed, Some(json!({"n": 4})), Some(now))
    );
    assert_eq!((done.started_at, done.agent, done.lease_expires_at), (Some(T0), Some(agent()), None));
    assert!(is_lease_lost(store.heartbeat(&claims[4].lease, LEASE, now).await), "a completion spends the lease");

    // A batch in which every lease holds and nothing is cancelled: starting
    // again is harmless (the first start time stays), then complete.
    let later = now + secs(1);
    let writes = [start_of(&claims[0].lease, &agent()), completion_of(&claims[3].lease, json!(3))];
    assert_eq!(store.write_batch(&writes, later).await.unwrap(), [Started { cancel_requested: false }, Completed]);
    let task = store.get(&t, claims[0].task.id).await.unwrap();
    assert_eq!((task.status, task.started_at, task.agent), (TaskStatus::Running, Some(now), Some(agent())));
    assert_eq!(store.get(&t, claims[3].task.id).await.unwrap().result, Some(json!(3)));
    assert!(store.write_batch(&[], later).await.unwrap().is_empty());
}

/// Entries of one batch that name the same task act one after the other, in
/// input order, as if written one by one.
pub(crate) async fn repeated_batch_entries_act_in_turn(store: Db) {
    let t = tenant("acme");
    let task = enqueue(&store, &t, NewTask::prompt("once")).await;
    let first = claim_one(&store, &t, T0).await;
    let later = T0 + LEASE + secs(1);
    store.reclaim_expired(later, 10).await.unwrap();
    let second = claim_one(&store, &t, later).await;
    assert_eq!(second.task.id, task.id);
    // A stale lease, then the fresh one twice: the stale one loses, starting
    // twice is harmless; a start then a completion of one lease both apply.
    let writes = [
        start_of(&first.lease, &agent()),
        start_of(&second.lease, &agent()),
        start_of(&second.lease, &agent()),
        completion_of(&second.lease, json!("winner")),
        completion_of(&second.lease, json!("too late")),
    ];
    let outcomes = store.write_batch(&writes, later).await.unwrap();
    let (started, done, lost) =
        (WriteOutcome::Started { cancel_requested: false }, WriteOutcome::Completed, WriteOutcome::LeaseLost);
    assert_eq!(outcomes, [lost, started, started, done, lost]);
    assert_eq!(store.get(&t, task.id).await.unwrap().result, Some(json!("winner")));

    // The same with a second task through complete_batch.
    let task = enqueue(&store, &t, NewTask::prompt("twice")).await;
    let first = claim_one(&store, &t, later).await;
    let later = later + LEASE + secs(1);
    store.reclaim_expired(later, 10).await.unwrap();
    let second = claim_one(&store, &t, later).await;
    store.start(&second.lease, &agent(), later).await.unwrap();

    // The stale lease, then the fresh one twice with different results: only the first fresh one completes.
    let completions = [
        Completion { lease: first.lease.clone(), result: json!("zombie") },
        Completion { lease: second.lease.clone(), result: json!("winner") },
        Completion { lease: second.lease.clone(), result: json!("too late") },
    ];
    let done = store.complete_batch(&completions, later).await.unwrap();
    assert_eq!(done.completed, [task.id]);
    assert_eq!(done.lease_lost, [task.id, task.id]);
    let task = store.get(&t, task.id).await.unwrap();
    assert_eq!((task.status, task.result, task.attempt), (TaskStatus::Completed, Some(json!("winner")), 2));
    let statuses: Vec<TaskStatus> = store.history(&t, task.id).await.unwrap().iter().map(|h| h.status).collect();
    use TaskStatus::*;
    assert_eq!(statuses, [Pending, Assigned, Pending, Assigned, Running, Completed]);
}

/// Batches far larger than a backend's statement size behave like small
/// ones: all or nothing, in order, idempotency keys kept across the batch.
pub(crate) async fn large_batches_keep_order_and_keys(store: Db) {
    let t = tenant("acme");
    let existing = enqueue(&store, &t, NewTask::prompt("existing").idempotency_key("key-0")).await;
    let n = 2_500;
    let batch: Vec<NewTask> = (0..n)
        .map(|i| {
            let task = NewTask::prompt(format!("t{i}"));
            // Keys repeat every 1,200 tasks, so repeats span any chunking by
            // 1,000 or less; key-0 exists already.
            if i % 3 == 0 { task.idempotency_key(format!("key-{}", i % 1_200)) } else { task }
        })
        .collect();
    let out = store.enqueue_batch(&t, batch, T0).await.unwrap();
    assert_eq!(out.len(), n);
    let mut created = 0;
    for (i, e) in out.iter().enumerate() {
        if i % 3 == 0 && (i >= 1_200 || i == 0) {
            assert!(!e.created, "task {i} reused a key");
            let first = if i % 1_200 == 0 { existing.id } else { out[i % 1_200].task.id };
            assert_eq!(e.task.id, first, "task {i} returned the first task holding its key");
        } else {
            assert!(e.created, "task {i}");
            assert_eq!(prompt_of(&e.task), format!("t{i}"));
            created += 1;
        }
    }
    let listed = store.list(&t, &TaskQuery { limit: 1_000, ..TaskQuery::default() }).await.unwrap();
    assert_eq!(listed.items[0].id, existing.id);
    assert_eq!(listed.items[1].id, out[1].task.id, "submission order is kept");
    assert_eq!(store.depth(&t, T0).await.unwrap().total(), created + 1);

    let claims = store.claim(&claimer(&t, "a", n), T0).await.unwrap();
    assert_eq!(claims.len() as u64, created + 1);
    // Starts for every other task, with completions for the rest: mixed in one batch.
    let writes: Vec<LeaseWrite> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| if i % 2 == 0 { start_of(&c.lease, &agent()) } else { completion_of(&c.lease, json!(i)) })
        .collect();
    let outcomes = store.write_batch(&writes, T0).await.unwrap();
    assert_eq!(outcomes.len(), claims.len());
    for (i, outcome) in outcomes.iter().enumerate() {
        let expected =
            if i % 2 == 0 { WriteOutcome::Started { cancel_requested: false } } else { WriteOutcome::Completed };
        assert_eq!(*outcome, expected, "outcomes follow the input");
    }
    let counts = store.counts(&t, T0).await.unwrap();
    assert_eq!(
        (counts.status(TaskStatus::Running), counts.status(TaskStatus::Completed)),
        (claims.len().div_ceil(2) as u64, claims.len() as u64 / 2)
    );
    let claims: Vec<&Claim> = claims.iter().step_by(2).collect();
    let completions: Vec<Completion> =
        claims.iter().map(|c| Completion { lease: c.lease.clone(), result: json!(prompt_of(&c.task)) }).collect();
    let done = store.complete_batch(&completions, T0).await.unwrap();
    assert_eq!((done.completed.len(), done.lease_lost.len()), (claims.len(), 0));
    assert_eq!(done.completed, claims.iter().map(|c| c.task.id).collect::<Vec<_>>());
    let counts = store.counts(&t, T0).await.unwrap();
    assert_eq!(counts.status(TaskStatus::Completed), created + 1);
    assert_eq!(counts.status(TaskStatus::Running), 0);
    let last = claims.last().unwrap();
    assert_eq!(store.get(&t, last.task.id).await.unwrap().result, Some(json!(prompt_of(&last.task))));
}

/// Counts for health agree with what happened.
pub(crate) async fn counts_for_health_are_exact(store: Db) {
    let t = tenant("acme");
    let first = enqueue(&store, &t, NewTask::prompt("oldest")).await;
    store.enqueue(&t, NewTask::prompt("newer"), T0 + secs(5)).await.unwrap();
    enqueue(&store, &t, NewTask::prompt("later").run_at(T0 + secs(60))).await;
    for i in 0..3 {
        enqueue(&store, &t, NewTask::prompt(format!("to run {i}")).priority(Priority::Critical)).await;
    }
    let claims = store.claim(&claimer(&t, "a", 3), T0 + secs(5)).await.unwrap();
    store.start(&claims[0].lease, &agent(), T0 + secs(5)).await.unwrap();
    store.complete(&claims[1].lease, json!(1), T0 + secs(5)).await.unwrap();

    let now = T0 + secs(10);
    let counts = store.counts(&t, now).await.unwrap();
    assert_eq!(counts.status(TaskStatus::Pending), 3);
    assert_eq!(counts.status(TaskStatus::Running), 1);
    assert_eq!(counts.status(TaskStatus::Assigned), 1);
    assert_eq!(counts.status(TaskStatus::Completed), 1);
    assert_eq!((counts.ready, counts.scheduled, counts.expired_leases), (2, 1, 0));
    assert_eq!(counts.oldest_ready, Some(first.run_at));
    assert_eq!(store.counts(&t, T0 + secs(5) + LEASE).await.unwrap().expired_leases, 2);
    store.ping().await.unwrap();
}

/// Every field of a task survives the store unchanged.
pub(crate) async fn task_fields_round_trip(store: Db) {
    let t = tenant("acme");
    let parent = enqueue(&store, &t, NewTask::prompt("parent")).await;
    let mut payload = NewTask::prompt("line 1\nit's \"$(rm -rf /)\" ✓").payload;
    payload.command = Some(vec!["claude".into(), "-p".into(), "{prompt}".into()]);
    payload.extra.insert("model".into(), json!({"name": "opus", "temperature": 0.2}));
    let mut new = NewTask::with_payload(payload)
        .priority(Priority::Low)
        .capability("rust")
        .capability("git")
        .affinity_key("repo-1")
        .idempotency_key("key-1")
        .parent(parent.id)
        .max_attempts(7)
        .timeout(Duration::from_millis(90_500))
        .run_at(T0 + secs(1));
    let task = enqueue(&store, &t, new.clone()).await;
    new.validate().unwrap();
    assert_eq!(
        (&task.payload, &task.capabilities, task.priority, task.max_attempts, task.timeout),
        (&new.payload, &new.capabilities, Priority::Low, 7, Some(Duration::from_millis(90_500)))
    );
    assert_eq!((task.parent, task.run_at, task.created_at, task.updated_at), (Some(parent.id), T0 + secs(1), T0, T0));
    assert_eq!(
        (task.attempt, task.status, task.agent.clone(), task.result.clone()),
        (0, TaskStatus::Pending, None, None)
    );
    assert_eq!(store.get(&t, task.id).await.unwrap(), task);
    // A batch returns its tasks exactly as they read back, too.
    let mut odd = new.clone().idempotency_key("key-2").timeout(Duration::from_micros(1_500_700));
    odd.payload.extra.insert("float".into(), json!([0.1, 1e-7, 123456.789012345, -0.0]));
    let batch = vec![odd, NewTask::prompt("plain").priority(Priority::Critical)];
    for e in store.enqueue_batch(&t, batch, T0).await.unwrap() {
        assert!(e.created);
        assert_eq!(store.get(&t, e.task.id).await.unwrap(), e.task);
        store.cancel(&t, e.task.id, T0).await.unwrap();
    }

    let mut request = claimer(&t, "host:agent-9", 10);
    request.capabilities = vec!["rust".into(), "git".into()];
    let claim = store.claim(&request, T0 + secs(1)).await.unwrap().pop().unwrap();
    assert_eq!(claim.task.agent, Some(AgentId::new("host:agent-9").unwrap()));
    assert_eq!(claim.task.lease_expires_at, Some(T0 + secs(1) + LEASE));
    assert_eq!(claim.task.status, TaskStatus::Assigned);
    assert_eq!(store.get(&t, task.id).await.unwrap(), claim.task);
    // The agent that runs the task may differ from the claimer; start records it.
    let runner = AgentId::new("host:agent-7").unwrap();
    store.start(&claim.lease, &runner, T0 + secs(2)).await.unwrap();
    let running = store.get(&t, task.id).await.unwrap();
    assert_eq!((running.status, running.started_at), (TaskStatus::Running, Some(T0 + secs(2))));
    assert_eq!(running.agent, Some(runner));
    let result = json!({"text": "done", "tokens": {"in": 10, "out": 20}, "list": [1, 2.5, null]});
    store.complete(&claim.lease, result.clone(), T0 + secs(3)).await.unwrap();
    let done = store.get(&t, task.id).await.unwrap();
    assert_eq!((done.result, done.completed_at, done.lease_expires_at), (Some(result), Some(T0 + secs(3)), None));
}

/// Sessions are kept with their latest state, listed newest first, scoped by
/// tenant, and abandoned in bulk when their engine restarts.
pub(crate) async fn sessions_are_saved_and_scoped(store: Db) {
    let t = tenant("acme");
    let agent = agent();
    let mut first = Session::new(t.clone(), agent.clone(), T0);
    let mut second = Session::new(t.clone(), AgentId::new("agent-2").unwrap(), T0 + secs(1));
    store.save_sessions(&[first.clone(), second.clone()]).await.unwrap();
    first.transition(SessionState::Initializing, T0 + secs(2)).unwrap();
    first.transition(SessionState::Ready, T0 + secs(2)).unwrap();
    first.task = Some(TaskId::new());
    // Listed twice in one call, a session ends in its later state.
    let stale = second.clone();
    second.transition(SessionState::Cancelled, T0 + secs(3)).unwrap();
    store.save_sessions(&[first.clone(), stale, second.clone()]).await.unwrap();
    assert_eq!(store.get_session(&t, first.id).await.unwrap(), first);
    assert_eq!(store.get_session(&t, second.id).await.unwrap(), second);

    let all = store.list_sessions(&t, &SessionQuery::default()).await.unwrap();
    assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), [second.id, first.id]);
    let live = SessionQuery { states: vec![SessionState::Ready], ..SessionQuery::default() };
    assert_eq!(store.list_sessions(&t, &live).await.unwrap(), [first.clone()]);
    let by_task = SessionQuery { task: first.task, ..SessionQuery::default() };
    assert_eq!(store.list_sessions(&t, &by_task).await.unwrap().len(), 1);
    let zero = SessionQuery { limit: 0, ..SessionQuery::default() };
    assert!(matches!(store.list_sessions(&t, &zero).await, Err(StoreError::InvalidInput(_))));

    // Walls: another tenant sees nothing and cannot overwrite.
    let globex = tenant("globex");
    assert!(matches!(store.get_session(&globex, first.id).await, Err(StoreError::SessionNotFound(_))));
    assert!(store.list_sessions(&globex, &SessionQuery::default()).await.unwrap().is_empty());
    assert_eq!(store.abandon_sessions(&globex, std::slice::from_ref(&agent), "restart", T0).await.unwrap(), 0);

    // Only live sessions of the named agents are abandoned.
    assert_eq!(
        store.abandon_sessions(&t, std::slice::from_ref(&agent), "engine restarted", T0 + secs(9)).await.unwrap(),
        1
    );
    let abandoned = store.get_session(&t, first.id).await.unwrap();
    assert_eq!((abandoned.state, abandoned.error.as_deref()), (SessionState::Error, Some("engine restarted")));
    assert_eq!(store.get_session(&t, second.id).await.unwrap().state, SessionState::Cancelled);
}

/// The history records every change of status, attempt and cancel flag,
/// and nothing else.
pub(crate) async fn history_records_every_transition(store: Db) {
    let t = tenant("acme");
    let task = enqueue(&store, &t, NewTask::prompt("story").max_attempts(3)).await;
    let first = claim_one(&store, &t, T0 + secs(1)).await;
    store.start(&first.lease, &agent(), T0 + secs(2)).await.unwrap();
    store.heartbeat(&first.lease, LEASE, T0 + secs(3)).await.unwrap();
    store.start(&first.lease, &agent(), T0 + secs(3)).await.unwrap(); // no change: no entry
    store.fail(&first.lease, &retry_in(secs(1)), T0 + secs(4)).await.unwrap();
    let second = claim_one(&store, &t, T0 + secs(5)).await;
    store.start(&second.lease, &agent(), T0 + secs(5)).await.unwrap();
    store.cancel(&t, task.id, T0 + secs(6)).await.unwrap();
    store.confirm_cancel(&second.lease, T0 + secs(7)).await.unwrap();
    store.replay(&t, task.id, T0 + secs(8)).await.unwrap();

    let history = store.history(&t, task.id).await.unwrap();
    let got: Vec<(i64, u32, TaskStatus, bool)> = history
        .iter()
        .map(|h| ((h.at.as_millis() - T0.as_millis()) / 1000, h.attempt, h.status, h.cancel_requested))
        .collect();
    use TaskStatus::*;
    assert_eq!(
        got,
        [
            (0, 0, Pending, false),
            (1, 1, Assigned, false),
            (2, 1, Running, false),
            (4, 1, Pending, false),
            (5, 2, Assigned, false),
            (5, 2, Running, false),
            (6, 2, Running, true),
            (7, 2, Cancelled, true),
            (8, 0, Pending, false),
        ]
    );
    assert_eq!(history[3].error.as_ref().map(|e| e.message.as_str()), Some("exit code 1"));
    assert_eq!(history[2].agent, Some(agent()));
    assert!(matches!(store.history(&tenant("globex"), task.id).await, Err(StoreError::NotFound(_))));

    let claim = claim_one(&store, &t, T0 + secs(9)).await;
    store.complete(&claim.lease, json!(1), T0 + secs(9)).await.unwrap();
    store.purge(&t, task.id).await.unwrap();
    assert!(matches!(store.history(&t, task.id).await, Err(StoreError::NotFound(_))));
}

pub(crate) async fn registry_members_expire_and_are_scoped(store: Db) {
    let acme = tenant("acme");
    let globex = tenant("globex");
    let member = |tenant: &TenantId, kind: MemberKind, id: &str, expires: i64| Member {
        tenant: tenant.clone(),
        kind,
        id: id.to_owned(),
        node: "node-a".to_owned(),
        doc: json!({"id": id, "capabilities": ["rust"]}),
        updated_at: at(0),
        expires_at: at(expires),
    };
    store.put_member(&member(&acme, MemberKind::Agent, "b-agent", 10_000)).await.unwrap();
    store.put_member(&member(&acme, MemberKind::Agent, "a-agent", 5_000)).await.unwrap();
    store.put_member(&member(&acme, MemberKind::Instance, "gw-1", 10_000)).await.unwrap();
    store.put_member(&member(&globex, MemberKind::Agent, "g-agent", 10_000)).await.unwrap();

    let agents = store.members(&acme, MemberKind::Agent, at(1)).await.unwrap();
    assert_eq!(agents.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["a-agent", "b-agent"], "sorted by id");
    assert_eq!(agents[1], member(&acme, MemberKind::Agent, "b-agent", 10_000), "round trip");
    assert_eq!(store.members(&acme, MemberKind::Instance, at(1)).await.unwrap().len(), 1);
    assert_eq!(store.members(&globex, MemberKind::Agent, at(1)).await.unwrap().len(), 1, "tenant wall");

    // Expiry, then renewal by replacing the row.
    assert_eq!(store.members(&acme, MemberKind::Agent, at(5_000)).await.unwrap().len(), 1, "expires_at is exclusive");
    let mut renewed = member(&acme, MemberKind::Agent, "a-agent", 20_000);
    renewed.node = "node-b".to_owned();
    renewed.updated_at = at(6_000);
    store.put_member(&renewed).await.unwrap();
    let agents = store.members(&acme, MemberKind::Agent, at(12_000)).await.unwrap();
    assert_eq!(agents, vec![renewed], "replaced, and b-agent expired");

    assert!(store.remove_member(&acme, MemberKind::Agent, "a-agent").await.unwrap());
    assert!(!store.remove_member(&acme, MemberKind::Agent, "a-agent").await.unwrap(), "second remove finds nothing");
    assert!(!store.remove_member(&acme, MemberKind::Agent, "g-agent").await.unwrap(), "other tenant's row untouched");
    assert_eq!(store.members(&globex, MemberKind::Agent, at(1)).await.unwrap().len(), 1);

    let mut bad = member(&acme, MemberKind::Agent, "", 1);
    assert!(matches!(store.put_member(&bad).await, Err(StoreError::InvalidInput(_))));
    bad.id = "x".repeat(257);
    assert!(matches!(store.put_member(&bad).await, Err(StoreError::InvalidInput(_))));
}

pub(crate) async fn spend_adds_up_per_tenant_and_period(store: Db) {
    let acme = tenant("acme");
    let globex = tenant("globex");
    assert_eq!(store.spend(&acme, "2026-11").await.unwrap(), 0);
    assert_eq!(store.add_spend(&acme, "2026-11", 1_500).await.unwrap(), 1_500);
    assert_eq!(store.add_spend(&acme, "2026-11", 250).await.unwrap(), 1_750);
    assert_eq!(store.add_spend(&acme, "2026-12", 7).await.unwrap(), 7);
    assert_eq!(store.add_spend(&globex, "2026-11", 1).await.unwrap(), 1);
    assert_eq!(store.spend(&acme, "2026-11").await.unwrap(), 1_750);

    // Concurrent adds from many callers lose nothing.
    let mut adders = JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        let acme = acme.clone();
        adders.spawn(async move {
            for _ in 0..25 {
                store.add_spend(&acme, "2026-11", 10).await.unwrap();
            }
        });
    }
    adders.join_all().await;
    assert_eq!(store.spend(&acme, "2026-11").await.unwrap(), 1_750 + 8 * 25 * 10);
    assert_eq!(store.spend(&globex, "2026-11").await.unwrap(), 1);
}

/// Multi-node backends carry messages to every other handle and never echo
/// a handle's own; single-node backends have no channel and accept broadcasts.
pub(crate) async fn cluster_messages_reach_other_nodes_only(store: Db, peer: Option<Db>) {
    let acme = tenant("acme");
    let Some(peer) = peer else {
        assert!(store.cluster_messages().is_none(), "{} is single-node", store.backend());
        store.broadcast(&ClusterMessage::Wake { tenant: acme }).await.unwrap();
        return;
    };
    let mut mine = store.cluster_messages().expect("a multi-node backend has a channel");
    let mut theirs = peer.cluster_messages().expect("a multi-node backend has a channel");
    let event = Event {
        tenant: acme.clone(),
        at: at(42),
        kind: EventKind::TaskOutput {
            task: TaskId::new(),
            attempt: 1,
            stream: OutputStream::Stdout,
            // Bigger than a PostgreSQL NOTIFY payload: the backend must carry it anyway.
            data: "é".repeat(6_000),
        },
    };
    let sent = ClusterMessage::Events { events: vec![event] };
    store.broadcast(&sent).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), theirs.recv()).await.expect("delivered").unwrap();
    assert_eq!(got, sent);

    // An enqueue on one node wakes the other.
    enqueue(&store, &acme, NewTask::prompt("wake up")).await;
    let got = tokio::time::timeout(Duration::from_secs(5), theirs.recv()).await.expect("woken").unwrap();
    assert_eq!(got, ClusterMessage::Wake { tenant: acme.clone() });

    // Nothing of its own comes back to the sender.
    peer.broadcast(&ClusterMessage::Wake { tenant: tenant("from-peer") }).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), mine.recv()).await.expect("delivered").unwrap();
    assert_eq!(got, ClusterMessage::Wake { tenant: tenant("from-peer") }, "no echo of its own broadcast or wake");
}
