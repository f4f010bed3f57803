//! Durability across a crash: `godel-store-child` writes to a SQLite store and
//! reports every acknowledged write on stdout; the test kills it with SIGKILL
//! in the middle of its stream, reopens the file, and checks that every
//! acknowledged task is there and that the dead process's running tasks come
//! back once their leases lapse (rule 4 of the store contract).
//!
//! Time is an argument: the child and the test use the same fixed `NOW`, and
//! the test moves past the lease by passing a later instant, never by sleeping.

use std::collections::HashSet;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use godel_core::store::{ClaimRequest, Completion, SqliteStore, TaskStore};
use godel_core::{AgentId, TaskErrorKind, TaskId, TaskStatus, TenantId, Timestamp};
use godel_e2e::store_child::{self, CLAIMS, LEASE, Report};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// The instant the child works at and the test starts from; any fixed value will do.
const NOW: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// How many enqueues the child must acknowledge before it is killed.
const ACKS_BEFORE_KILL: usize = 300;

/// Generous, so that a slow machine passes; it only exists so that a hung
/// child fails the test instead of hanging it.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

/// More than the child could have leased, so a reclaim that moved too much would show.
const RECLAIM_LIMIT: usize = 1_000;

#[tokio::test]
async fn sqlite_keeps_acknowledged_tasks_and_reclaims_leases_after_sigkill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("godel.db");
    let reports = run_and_kill_child(&path).await?;

    let acked: HashSet<TaskId> = reports.acked.iter().copied().collect();
    let claimed: HashSet<TaskId> = reports.claimed.iter().copied().collect();
    assert!(acked.len() >= ACKS_BEFORE_KILL, "read {} acks, wanted {ACKS_BEFORE_KILL}", acked.len());
    assert_eq!(acked.len(), reports.acked.len(), "the child acknowledged some task id twice");
    assert_eq!((claimed.len(), reports.claimed.len()), (CLAIMS, CLAIMS), "the child reports each claim once");
    assert!(acked.is_disjoint(&claimed), "a task was reported both claimed and acked");

    let store = SqliteStore::open(&path).await.context("reopen the store the child was killed over")?;
    let tenant = store_child::tenant();
    let total = assert_survivors(&store, &tenant, &acked, &claimed).await?;
    assert_leases_come_back(&store, &tenant, &claimed, total).await?;
    store.close().await;
    Ok(())
}

/// What the child reported, in the order it reported it.
#[derive(Debug, Default)]
struct Reports {
    claimed: Vec<TaskId>,
    acked: Vec<TaskId>,
}

impl Reports {
    fn record(&mut self, line: &str) -> Result<()> {
        match line.parse()? {
            Report::Claimed(id) => self.claimed.push(id),
            Report::Acked(id) => self.acked.push(id),
        }
        Ok(())
    }
}

/// Spawns the child on `path`, reads its reports until it has acknowledged
/// [`ACKS_BEFORE_KILL`] tasks, kills it with SIGKILL, and returns every
/// report it managed to write before it died.
async fn run_and_kill_child(path: &Path) -> Result<Reports> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_godel-store-child"))
        .arg(path)
        .arg(NOW.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Whatever fails before the kill below, dropping the handle still kills the child.
        .kill_on_drop(true)
        .spawn()
        .context("spawn godel-store-child")?;
    let mut stdout = BufReader::new(child.stdout.take().context("the child's stdout is piped")?);
    let mut reports = Reports::default();

    let reading = async {
        while reports.acked.len() < ACKS_BEFORE_KILL {
            let Some(line) = next_line(&mut stdout).await? else { return Ok(false) };
            reports.record(&line)?;
        }
        anyhow::Ok(true)
    };
    match tokio::time::timeout(CHILD_DEADLINE, reading).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            bail!("the child stopped after {} acks: {}", reports.acked.len(), exit_report(&mut child).await)
        }
        Ok(Err(e)) => {
            stop(&mut child);
            return Err(e.context(exit_report(&mut child).await));
        }
        Err(_) => {
            stop(&mut child);
            bail!(
                "the child acknowledged {} of {ACKS_BEFORE_KILL} tasks within {CHILD_DEADLINE:?}: {}",
                reports.acked.len(),
                exit_report(&mut child).await
            )
        }
    }

    // The child must die of the kill, in the middle of its stream, not of anything else.
    if child.try_wait()?.is_some() {
        bail!("the child exited before it was killed: {}", exit_report(&mut child).await);
    }
    child.kill().await.context("kill the child")?;
    assert_killed(child.wait().await?);

    // Lines the child wrote before it died are acknowledgements too; read
    // them all, so the count check below is exact.
    let draining = async {
        while let Some(line) = next_line(&mut stdout).await? {
            reports.record(&line)?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CHILD_DEADLINE, draining).await.context("the child's stdout stayed open after the kill")??;
    Ok(reports)
}

/// The next whole line, without its newline; `None` at the end of the
/// stream. A tail cut short by the kill has no newline and is not a report.
async fn next_line(out: &mut BufReader<ChildStdout>) -> Result<Option<String>> {
    let mut line = String::new();
    out.read_line(&mut line).await.context("read the child's stdout")?;
    Ok(line.strip_suffix('\n').map(str::to_owned))
}

/// Sends the child SIGKILL on a path that is already failing. An error here
/// means the child has exited by itself, which [`exit_report`] then shows.
fn stop(child: &mut Child) {
    let _ = child.start_kill();
}

/// How the child ended and what it said on stderr, for failure messages.
/// Call only once the child has exited or been sent a kill.
async fn exit_report(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        // Best effort: this only decorates a failure that is already being reported.
        let _ = pipe.read_to_string(&mut stderr).await;
    }
    match child.wait().await {
        Ok(status) => format!("{status}; stderr: {stderr:?}"),
        Err(e) => format!("wait failed ({e}); stderr: {stderr:?}"),
    }
}

#[cfg(unix)]
fn assert_killed(status: ExitStatus) {
    use std::os::unix::process::ExitStatusExt;

    const SIGKILL: i32 = 9;
    assert_eq!(status.signal(), Some(SIGKILL), "the child should have died of SIGKILL, but it ended with {status}");
}

#[cfg(not(unix))]
fn assert_killed(status: ExitStatus) {
    assert!(!status.success(), "the child should have been killed, but it ended with {status}");
}

/// Checks the reopened store against the child's reports and returns how many
/// tasks it holds.
async fn assert_survivors(
    store: &SqliteStore,
    tenant: &TenantId,
    acked: &HashSet<TaskId>,
    claimed: &HashSet<TaskId>,
) -> Result<u64> {
    for &id in acked {
        let task = store.get(tenant, id).await.with_context(|| format!("acknowledged task {id}"))?;
        assert_eq!((task.status, task.attempt), (TaskStatus::Pending, 0), "acknowledged task {id}");
    }
    for &id in claimed {
        let task = store.get(tenant, id).await.with_context(|| format!("claimed task {id}"))?;
        assert_eq!((task.status, task.attempt), (TaskStatus::Running, 1), "claimed task {id}");
        assert_eq!(task.agent, Some(store_child::agent()), "claimed task {id}");
        assert_eq!(task.lease_expires_at, Some(NOW + LEASE), "claimed task {id}");
    }

    let counts = store.counts(tenant, NOW).await?;
    let total: u64 = TaskStatus::ALL.iter().map(|&s| counts.status(s)).sum();
    let reported = (acked.len() + claimed.len()) as u64;
    // The kill may land between an enqueue's commit and its line, so the
    // store may hold one task the child never reported, but never fewer
    // than reported and never two more.
    assert!((reported..=reported + 1).contains(&total), "the store holds {total} tasks, the child reported {reported}");
    assert_eq!(counts.status(TaskStatus::Running), CLAIMS as u64);
    assert_eq!(counts.status(TaskStatus::Pending), total - CLAIMS as u64);
    assert_eq!(counts.expired_leases, 0, "no lease has lapsed at NOW");
    Ok(total)
}

/// The dead child's leases lapse at `NOW + LEASE`: before that nothing is
/// reclaimed; after it exactly its tasks come back, and a new claimer can
/// run them to completion.
async fn assert_leases_come_back(
    store: &SqliteStore,
    tenant: &TenantId,
    claimed: &HashSet<TaskId>,
    total: u64,
) -> Result<()> {
    let just_before = NOW + (LEASE - Duration::from_millis(1));
    assert_eq!(
        store.reclaim_expired(just_before, RECLAIM_LIMIT).await?,
        Vec::new(),
        "reclaimed before the lease lapsed"
    );

    let after = NOW + LEASE + Duration::from_secs(1);
    let reclaimed = store.reclaim_expired(after, RECLAIM_LIMIT).await?;
    assert_eq!(reclaimed.len(), CLAIMS, "reclaimed {reclaimed:?}");
    assert_eq!(reclaimed.iter().map(|r| r.task).collect::<HashSet<_>>(), *claimed);
    for r in &reclaimed {
        assert_eq!((&r.tenant, r.attempt, r.status), (tenant, 1, TaskStatus::Pending), "reclaimed {r:?}");
        let task = store.get(tenant, r.task).await?;
        assert_eq!(
            (task.status, task.attempt, task.lease_expires_at),
            (TaskStatus::Pending, 1, None),
            "task {}",
            r.task
        );
        assert_eq!(task.error.map(|e| e.kind), Some(TaskErrorKind::LeaseExpired), "task {}", r.task);
    }
    assert_eq!(store.reclaim_expired(after, RECLAIM_LIMIT).await?, Vec::new(), "a second sweep found more");

    // The child enqueued these at critical priority, so they head the queue
    // again however the backend orders the rest.
    let request = ClaimRequest {
        tenant: tenant.clone(),
        agent: AgentId::new("survivor")?,
        capabilities: Vec::new(),
        limit: CLAIMS,
        lease_for: LEASE,
    };
    let claims = store.claim(&request, after).await?;
    assert_eq!(claims.iter().map(|c| c.task.id).collect::<HashSet<_>>(), *claimed);
    for claim in &claims {
        assert_eq!((claim.lease.attempt, claim.task.attempt), (2, 2), "second claim of {}", claim.task.id);
    }
    let completions: Vec<Completion> = claims
        .iter()
        .map(|c| Completion { lease: c.lease.clone(), result: serde_json::json!({ "survived": "sigkill" }) })
        .collect();
    let done = store.complete_batch(&completions, after).await?;
    assert_eq!(done.lease_lost, Vec::new());
    assert_eq!(done.completed.iter().copied().collect::<HashSet<_>>(), *claimed);
    for &id in claimed {
        assert_eq!(store.get(tenant, id).await?.status, TaskStatus::Completed, "task {id}");
    }

    let counts = store.counts(tenant, after).await?;
    assert_eq!(counts.status(TaskStatus::Completed), CLAIMS as u64);
    assert_eq!(counts.status(TaskStatus::Pending), total - CLAIMS as u64);
    assert_eq!(counts.status(TaskStatus::Assigned) + counts.status(TaskStatus::Running), 0);
    assert_eq!(counts.expired_leases, 0);
    Ok(())
}
