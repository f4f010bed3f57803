//! An orchestrator killed mid-run loses nothing and finishes nothing twice:
//! `godel-engine-child` submits a batch of short commands to a SQLite store
//! and runs them on local process agents; the test kills it with SIGKILL
//! while tasks are running, looks at what the dead run still held, restarts
//! the child on the same file and lets it finish. Every task must end
//! completed, every completion must be reported once, and the tasks the dead
//! run held must come back through their lapsed leases (rule 4 of the store
//! contract) and complete in a later attempt.
//!
//! Unlike the durability test this one runs in real time: the engine owns a
//! system clock, so the restart waits out the child's short lease
//! (`engine_child::LEASE`). The processes of the tasks running at the kill
//! are orphaned; their commands sleep for at most 80 ms, so they end on their
//! own long before the restart reclaims their tasks, and they cannot write to
//! the store or to the child's stdout. What a killed run leaves that does not
//! end on its own, the restart reaps: the second test kills the child while
//! its tasks sleep, and checks that the restart kills their process groups
//! and removes their directories, but leaves alone a process that got a
//! recorded pid.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use godel_core::store::{MAX_PAGE_SIZE, SessionQuery, SessionStore, SqliteStore, TaskFilter, TaskQuery, TaskStore};
use godel_core::{SessionState, TaskErrorKind, TaskId, TaskStatus, Timestamp};
use godel_e2e::engine_child::{self, AGENTS, CAPACITY, MAX_ATTEMPTS, Report};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How many tasks the first run submits.
const TASKS: usize = 200;

/// How many completions the first run reports before it is killed: enough
/// that the engine is in full swing, few enough that most work is left.
const COMPLETIONS_BEFORE_KILL: usize = 40;

/// Generous, so that a slow machine passes; it only exists so that a hung
/// child fails the test instead of hanging it.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_restarted_orchestrator_finishes_a_killed_ones_tasks_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("godel.db");
    let first = run_and_kill(&path, &dir.path().join("first.stderr")).await?;
    let submitted: HashSet<TaskId> = first.submitted().collect();
    assert_eq!(submitted.len(), TASKS, "the first run reports each submitted task once");
    let held = held_by_the_dead_run(&path, &first).await?;

    let second = run_to_the_end(&path, &dir.path().join("second.stderr")).await?;
    assert_eq!(second.submitted().count(), 0, "the restart submits nothing");

    let store = SqliteStore::open(&path).await.context("reopen the store after the restart")?;
    assert_all_completed_once(&store, &submitted, &first, &second).await?;
    assert_recovered(&store, &held, &second).await?;
    assert_sessions_closed(&store).await?;
    store.close().await;
    assert_eq!(recorded_runs(&engine_child::runs_dir(&path))?, Vec::<serde_json::Value>::new(), "runs left recorded");
    Ok(())
}

#[tokio::test]
async fn a_restarted_orchestrator_reaps_what_a_killed_one_left_running() -> Result<()> {
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("godel.db");
    let runs = engine_child::runs_dir(&path);
    let (mut child, _stdout) = spawn_child(&path, &dir.path().join("first.stderr"), &["--sleepers", "2"])?;
    let sleepers = tokio::time::timeout(CHILD_DEADLINE, async {
        loop {
            let records = recorded_runs(&runs)?;
            if records.len() == 2 && records.iter().all(|r| r["process"].is_object()) {
                return anyhow::Ok(records);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the sleepers' processes were never recorded")??;
    child.kill().await.context("kill the first run")?;
    assert_killed(child.wait().await?);
    let groups: Vec<i32> = sleepers.iter().map(|r| as_i32(&r["process"]["pid"])).collect();
    for &group in &groups {
        assert_eq!(live_members(group).len(), 2, "the sleeper's shell and sleep outlive their engine");
    }

    // A stranger that got a recorded pid: started at another time than recorded.
    let mut stranger = std::process::Command::new("sleep").arg("1000").process_group(0).spawn()?;
    let pid = i32::try_from(stranger.id())?;
    let mut forged = sleepers[0].clone();
    forged["run"] = "stranger".into();
    forged["process"]["pid"] = pid.into();
    forged["process"]["start"] = (start_time(pid).context("the stranger runs")? + 1).into();
    forged["dir"] = serde_json::Value::Null;
    std::fs::write(runs.join("stranger.json"), serde_json::to_vec(&forged)?)?;

    let second = run_to_the_end(&path, &dir.path().join("second.stderr")).await?;
    let stranger_alive = start_time(pid).is_some();
    stranger.kill()?;
    stranger.wait()?;
    assert!(stranger_alive, "the process that got a recorded pid was killed");
    for (record, group) in sleepers.iter().zip(groups) {
        assert_eq!(live_members(group), Vec::<i32>::new(), "the sleeper's process group outlived the restart");
        let dir = Path::new(record["dir"].as_str().context("a per-task directory")?);
        assert!(!dir.exists(), "{} outlived the restart", dir.display());
    }
    // Their lapsed leases spent their one attempt.
    let dead: Vec<_> = second.0.iter().filter(|r| matches!(r, Report::DeadLettered { .. })).collect();
    assert_eq!(dead.len(), 2, "{:?}", second.0);
    assert_eq!(recorded_runs(&runs)?, Vec::<serde_json::Value>::new(), "runs left recorded");
    Ok(())
}

/// The run records in `runs`, as JSON.
fn recorded_runs(runs: &Path) -> Result<Vec<serde_json::Value>> {
    let mut records = Vec::new();
    let Ok(entries) = std::fs::read_dir(runs) else { return Ok(records) };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            records.push(serde_json::from_slice(&std::fs::read(&path)?)?);
        }
    }
    Ok(records)
}

fn as_i32(value: &serde_json::Value) -> i32 {
    value.as_i64().and_then(|v| i32::try_from(v).ok()).expect("a pid")
}

/// Fields of `/proc/<pid>/stat` after the command name, from field 3 (state) on.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().map(str::to_owned).collect())
}

/// When `pid` started (field 22), if it runs.
fn start_time(pid: i32) -> Option<u64> {
    stat_fields(&pid.to_string())?.get(22 - 3)?.parse().ok()
}

/// The processes of process group `group` that are not zombies, once the
/// group has had a few seconds to die: a SIGKILL is delivered at once, but
/// the kernel takes a moment to tear a process down.
fn live_members(group: i32) -> Vec<i32> {
    let scan = || {
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(fields) = stat_fields(&name) else { continue };
            // Field 3 is the state, field 5 the process group.
            if fields.first().is_some_and(|s| s != "Z") && fields.get(2) == Some(&group.to_string()) {
                members.extend(name.parse::<i32>().ok());
            }
        }
        members
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let members = scan();
        if members.is_empty() || std::time::Instant::now() > deadline {
            return members;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one run of the child reported, in the order it reported it.
#[derive(Debug, Default)]
struct Reports(Vec<Report>);

impl Reports {
    fn submitted(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.0.iter().filter_map(|r| match *r {
            Report::Submitted(task) => Some(task),
            _ => None,
        })
    }

    fn completed(&self) -> impl Iterator<Item = (TaskId, u32)> + '_ {
        self.0.iter().filter_map(|r| match *r {
            Report::Completed { task, attempt } => Some((task, attempt)),
            _ => None,
        })
    }

    fn started(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.0.iter().filter_map(|r| match *r {
            Report::Started { task, .. } => Some(task),
            _ => None,
        })
    }

    /// Lines that say a task ended other than completed, which no task here is designed to do.
    fn unfinished(&self) -> Vec<Report> {
        let bad = |r: &&Report| matches!(r, Report::Failed { .. } | Report::DeadLettered { .. } | Report::Cancelled(_));
        self.0.iter().filter(bad).copied().collect()
    }
}

/// The child on `path`, submitting `submit` tasks first if given, with its
/// stderr going to `stderr` so that it never blocks on a full pipe.
fn spawn_child(path: &Path, stderr: &Path, args: &[&str]) -> Result<(Child, BufReader<ChildStdout>)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_godel-engine-child"));
    command.arg(path).args(args);
    let stderr = std::fs::File::create(stderr).with_context(|| format!("create {}", stderr.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        // Whatever fails below, dropping the handle still kills the child.
        .kill_on_drop(true)
        .spawn()
        .context("spawn godel-engine-child")?;
    let stdout = BufReader::new(child.stdout.take().context("the child's stdout is piped")?);
    Ok((child, stdout))
}

/// Runs the child with a batch to submit, reads its reports until it has
/// completed [`COMPLETIONS_BEFORE_KILL`] tasks, kills it with SIGKILL, and
/// returns every report it managed to write before it died.
async fn run_and_kill(path: &Path, stderr: &Path) -> Result<Reports> {
    let (mut child, mut stdout) = spawn_child(path, stderr, &["--submit", &TASKS.to_string()])?;
    let mut reports = Reports::default();
    let mut completions = 0;

    let reading = async {
        while completions < COMPLETIONS_BEFORE_KILL {
            let Some(line) = next_line(&mut stdout).await? else { return Ok(false) };
            let report: Report = line.parse()?;
            completions += usize::from(matches!(report, Report::Completed { .. }));
            reports.0.push(report);
        }
        anyhow::Ok(true)
    };
    match tokio::time::timeout(CHILD_DEADLINE, reading).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            bail!("the first run stopped after {completions} completions: {}", exit_report(&mut child, stderr).await)
        }
        Ok(Err(e)) => {
            let _ = child.start_kill();
            return Err(e.context(exit_report(&mut child, stderr).await));
        }
        Err(_) => {
            let _ = child.start_kill();
            bail!(
                "the first run completed {completions} of {COMPLETIONS_BEFORE_KILL} tasks within {CHILD_DEADLINE:?}: {}",
                exit_report(&mut child, stderr).await
            )
        }
    }

    // The child must die of the kill, in the middle of its work, not of anything else.
    if child.try_wait()?.is_some() {
        bail!("the first run exited before it was killed: {}", exit_report(&mut child, stderr).await);
    }
    child.kill().await.context("kill the first run")?;
    assert_killed(child.wait().await?);

    // Lines written before the kill are reports too. The orphaned task
    // processes never had the child's stdout, so it closes at once.
    let draining = async {
        while let Some(line) = next_line(&mut stdout).await? {
            reports.0.push(line.parse()?);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CHILD_DEADLINE, draining).await.context("the child's stdout stayed open after the kill")??;
    Ok(reports)
}

/// Runs the child without a batch until it exits by itself, which it does
/// once no task is left to run, and returns its reports.
async fn run_to_the_end(path: &Path, stderr: &Path) -> Result<Reports> {
    let (mut child, mut stdout) = spawn_child(path, stderr, &[])?;
    let mut reports = Reports::default();
    let running = async {
        while let Some(line) = next_line(&mut stdout).await? {
            reports.0.push(line.parse()?);
        }
        anyhow::Ok(child.wait().await?)
    };
    let status = match tokio::time::timeout(CHILD_DEADLINE, running).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            let _ = child.start_kill();
            return Err(e.context(exit_report(&mut child, stderr).await));
        }
        Err(_) => {
            let _ = child.start_kill();
            bail!("the restart did not finish within {CHILD_DEADLINE:?}: {}", exit_report(&mut child, stderr).await)
        }
    };
    if !status.success() {
        bail!("the restart failed: {}", exit_report(&mut child, stderr).await);
    }
    Ok(reports)
}

/// The next whole line, without its newline; `None` at the end of the
/// stream. A tail cut short by the kill has no newline and is not a report.
async fn next_line(out: &mut BufReader<ChildStdout>) -> Result<Option<String>> {
    let mut line = String::new();
    out.read_line(&mut line).await.context("read the child's stdout")?;
    Ok(line.strip_suffix('\n').map(str::to_owned))
}

/// How the child ended and what it wrote to stderr, for failure messages.
/// Call only once the child has exited or been sent a kill.
async fn exit_report(child: &mut Child, stderr: &Path) -> String {
    // Best effort: this only decorates a failure that is already being reported.
    let status = match child.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => format!("wait failed ({e})"),
    };
    let stderr = std::fs::read_to_string(stderr).unwrap_or_else(|e| format!("<unreadable: {e}>"));
    format!("{status}; stderr: {stderr:?}")
}

#[cfg(unix)]
fn assert_killed(status: ExitStatus) {
    use std::os::unix::process::ExitStatusExt;

    const SIGKILL: i32 = 9;
    assert_eq!(status.signal(), Some(SIGKILL), "the first run should have died of SIGKILL, but it ended with {status}");
}

#[cfg(not(unix))]
fn assert_killed(status: ExitStatus) {
    assert!(!status.success(), "the first run should have been killed, but it ended with {status}");
}

/// Opens the store the first run was killed over and returns the attempt of
/// every task it still held (assigned or running under a lease): the work
/// the restart must recover.
async fn held_by_the_dead_run(path: &Path, first: &Reports) -> Result<HashMap<TaskId, u32>> {
    let store = SqliteStore::open(path).await.context("open the store the first run was killed over")?;
    let tenant = engine_child::tenant();
    let counts = store.counts(&tenant, Timestamp::now()).await?;
    let total: u64 = TaskStatus::ALL.iter().map(|&s| counts.status(s)).sum();
    assert_eq!(total, TASKS as u64, "the store holds every submitted task");

    let query = TaskQuery {
        filter: TaskFilter { statuses: vec![TaskStatus::Assigned, TaskStatus::Running], ..TaskFilter::default() },
        limit: MAX_PAGE_SIZE,
        ..TaskQuery::default()
    };
    let page = store.list(&tenant, &query).await?;
    assert!(page.next_cursor.is_none(), "more than a page of leased tasks");
    store.close().await;

    let slots = AGENTS * CAPACITY as usize;
    let held: HashMap<TaskId, u32> = page.items.iter().map(|t| (t.id, t.attempt)).collect();
    // A kill in full swing always catches some work in flight; without it
    // this test would prove nothing about recovery.
    assert!(!held.is_empty(), "the first run was killed with no task leased");
    assert!(held.len() <= slots, "the first run held {} tasks with {slots} slots", held.len());
    let completed: HashSet<TaskId> = first.completed().map(|(task, _)| task).collect();
    for task in &page.items {
        assert!(task.lease_expires_at.is_some(), "held task {} has no lease", task.id);
        assert!(!completed.contains(&task.id), "task {} was reported completed but is still leased", task.id);
    }
    Ok(held)
}

/// Every submitted task ended completed, and each completion was reported
/// exactly once across both runs, for the attempt the store recorded.
async fn assert_all_completed_once(
    store: &SqliteStore,
    submitted: &HashSet<TaskId>,
    first: &Reports,
    second: &Reports,
) -> Result<()> {
    let tenant = engine_child::tenant();
    assert_eq!(first.unfinished(), Vec::new(), "the first run ended tasks other than completed");
    assert_eq!(second.unfinished(), Vec::new(), "the restart ended tasks other than completed");

    let counts = store.counts(&tenant, Timestamp::now()).await?;
    assert_eq!(counts.status(TaskStatus::Completed), TASKS as u64, "completed tasks");
    let open: u64 = TaskStatus::ALL.iter().filter(|s| !s.is_terminal()).map(|&s| counts.status(s)).sum();
    assert_eq!(open, 0, "tasks left pending, assigned or running");

    let mut reported: HashMap<TaskId, u32> = HashMap::new();
    for (task, attempt) in first.completed().chain(second.completed()) {
        let earlier = reported.insert(task, attempt);
        assert_eq!(earlier, None, "task {task} was reported completed twice, the second time in attempt {attempt}");
    }
    for &id in submitted {
        let task = store.get(&tenant, id).await.with_context(|| format!("submitted task {id}"))?;
        assert_eq!(task.status, TaskStatus::Completed, "task {id}");
        assert!((1..=MAX_ATTEMPTS).contains(&task.attempt), "task {id} ended in attempt {}", task.attempt);
        if let Some(&attempt) = reported.get(&id) {
            assert_eq!(attempt, task.attempt, "task {id} was reported completed in another attempt than stored");
        }
        let flaky = task.payload.command.as_ref().is_some_and(|argv| argv.iter().any(|a| a.contains("GODEL_ATTEMPT")));
        if flaky {
            assert!(task.attempt >= 2, "flaky task {id} completed in its first attempt");
        }
    }
    assert!(reported.keys().all(|id| submitted.contains(id)), "a completion was reported for an unknown task");

    // The kill may land between a completion's commit and its line, so a
    // few tasks may lack one; they completed in the first run, so the
    // restart never started them.
    let unreported: Vec<TaskId> = submitted.iter().copied().filter(|id| !reported.contains_key(id)).collect();
    let slots = AGENTS * CAPACITY as usize;
    assert!(unreported.len() <= slots, "{} completions were never reported: {unreported:?}", unreported.len());
    let restarted: HashSet<TaskId> = second.started().collect();
    for id in &unreported {
        assert!(!restarted.contains(id), "task {id} ran again after the restart but its completion was never reported");
    }
    Ok(())
}

/// The tasks the dead run held came back when their leases lapsed, and the
/// restart completed them in a later attempt.
async fn assert_recovered(store: &SqliteStore, held: &HashMap<TaskId, u32>, second: &Reports) -> Result<()> {
    let tenant = engine_child::tenant();
    let completed: HashMap<TaskId, u32> = second.completed().collect();
    for (&id, &attempt) in held {
        let lapsed = Report::Retrying { task: id, attempt, kind: TaskErrorKind::LeaseExpired };
        assert!(second.0.contains(&lapsed), "the restart never reported `{lapsed}` for held task {id}");
        let done = completed.get(&id).copied();
        assert!(done.is_some_and(|a| a > attempt), "held task {id} (attempt {attempt}) completed in {done:?}");
        let task = store.get(&tenant, id).await?;
        assert!(task.attempt > attempt, "held task {id} ended in attempt {}", task.attempt);
    }
    Ok(())
}

/// No agent session is left open: the restart closed the ones the dead run
/// had recorded, and closed its own before it exited.
async fn assert_sessions_closed(store: &SqliteStore) -> Result<()> {
    let states = SessionState::ALL.into_iter().filter(|s| !s.is_terminal()).collect();
    let query = SessionQuery { states, limit: MAX_PAGE_SIZE, ..SessionQuery::default() };
    let open = store.list_sessions(&engine_child::tenant(), &query).await?;
    let open: Vec<_> = open.iter().map(|s| (s.id, s.agent.clone(), s.task, s.state)).collect();
    assert_eq!(open, Vec::new(), "sessions left open after the restart");
    Ok(())
}
