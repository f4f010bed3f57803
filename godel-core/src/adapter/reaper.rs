//! What local runs leave behind when the process that started them dies
//! without closing them (a SIGKILL, a crash, a power cut of the engine
//! alone), and how the next start reaps it.
//!
//! A process agent with a runs directory ([`ProcessConfig::runs`]) keeps one
//! small JSON file per live run there: written when the session opens (its
//! working directory or worktree), rewritten once the process is spawned
//! (its process group and the process's start time, field 22 of
//! `/proc/<pid>/stat`), removed when the session closes. Each file also
//! names its owner, the engine process, by pid and start time.
//!
//! [`reap`] handles the files whose owner is dead: it kills the run's process
//! group, but only if the group's leader is still the process that was
//! recorded (same start time; a pid reused by another program is left
//! alone) or, the leader being gone, if members of its group are left; it
//! removes the directory or worktree as a failed attempt's cleanup would;
//! and it deletes the file. Files whose owner lives (another engine sharing
//! the directory, or this very process) are not touched.
//!
//! The files live in the page cache the moment they are written, so they
//! survive the owner's death; they are not synced to disk, so a power cut
//! of the whole machine may lose some, and takes their processes with it.
//!
//! [`ProcessConfig::runs`]: crate::adapter::ProcessConfig::runs

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::adapter::process::{remove_dir, remove_worktree};

/// One run's file in the runs directory.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    /// The task (and attempt) the run is for, as `<task-id>-<attempt>`.
    pub(crate) run: String,
    /// The engine process that started the run.
    pub(crate) owner: ProcessIdentity,
    /// The process, which leads its own process group, once spawned.
    pub(crate) process: Option<ProcessIdentity>,
    /// The directory the session prepared, if any.
    pub(crate) dir: Option<PathBuf>,
    /// The repository whose worktree `dir` is, if it is one.
    pub(crate) repo: Option<PathBuf>,
    /// Whether a failed attempt's cleanup removes `dir`.
    pub(crate) remove: bool,
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct ProcessIdentity {
    pub(crate) pid: i32,
    /// Clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub(crate) start: u64,
}

impl ProcessIdentity {
    /// The process `pid` if it is alive, by its current start time.
    pub(crate) fn of(pid: i32) -> Option<Self> {
        start_time(pid).map(|start| Self { pid, start })
    }

    /// This process.
    pub(crate) fn this() -> Option<Self> {
        static THIS: OnceLock<Option<ProcessIdentity>> = OnceLock::new();
        *THIS.get_or_init(|| ProcessIdentity::of(i32::try_from(std::process::id()).ok()?))
    }

    /// Whether this very process is still alive.
    fn alive(self) -> bool {
        Self::of(self.pid) == Some(self)
    }
}

/// What [`reap`] did about one run left behind.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reaped {
    /// The run, as `<task-id>-<attempt>`.
    pub run: String,
    /// The process group killed, if one was left.
    pub killed: Option<i32>,
    /// The directory or worktree removed, if one was.
    pub removed: Option<PathBuf>,
}

impl fmt::Display for Reaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run {}", self.run)?;
        if let Some(group) = self.killed {
            write!(f, ": killed process group {group}")?;
        }
        if let Some(dir) = &self.removed {
            write!(f, "{} removed {}", if self.killed.is_some() { "," } else { ":" }, dir.display())?;
        }
        Ok(())
    }
}

/// Writes (or rewrites) a run's file, atomically.
pub(crate) async fn record(runs: &Path, record: &RunRecord) -> std::io::Result<()> {
    tokio::fs::create_dir_all(runs).await?;
    let path = runs.join(format!("{}.json", record.run));
    let tmp = runs.join(format!(".{}.tmp", record.run));
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    tokio::fs::write(&tmp, json).await?;
    tokio::fs::rename(&tmp, &path).await
}

/// Deletes a run's file.
pub(crate) async fn forget(runs: &Path, run: &str) {
    let path = runs.join(format!("{run}.json"));
    if let Err(e) = tokio::fs::remove_file(&path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot remove a run's record");
    }
}

/// Reaps the runs recorded in `runs` whose owner is dead (see the module
/// documentation) and says what it did about each.
pub async fn reap(runs: &Path) -> Vec<Reaped> {
    let mut reaped = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(runs).await else { return reaped };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let record: RunRecord = match tokio::fs::read(&path).await.map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(record)) => record,
            Ok(Err(e)) => {
                tracing::warn!(file = %path.display(), error = %e, "unreadable run record; removing it");
                let _ = tokio::fs::remove_file(&path).await;
                continue;
            }
            Err(_) => continue, // removed meanwhile
        };
        if record.owner.alive() {
            continue;
        }
        let killed = record.process.and_then(kill_if_ours);
        let removed = match (&record.dir, record.remove) {
            (Some(dir), true) if tokio::fs::try_exists(dir).await.unwrap_or(false) => {
                match &record.repo {
                    Some(repo) => remove_worktree(repo, dir).await,
                    None => remove_dir(dir).await,
                }
                Some(dir.clone())
            }
            _ => None,
        };
        forget(runs, &record.run).await;
        reaped.push(Reaped { run: record.run, killed, removed });
    }
    reaped
}

/// Kills the process group `process` leads, if it is still the recorded
/// process or, the leader gone, what is left of its group. A leader pid
/// cannot be reused while its group has members, so a group without its
/// leader is still the recorded one; a live leader with another start time
/// is a stranger that got the pid.
fn kill_if_ours(process: ProcessIdentity) -> Option<i32> {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    match ProcessIdentity::of(process.pid) {
        Some(now) if now != process => {
            tracing::info!(pid = process.pid, "a run's pid now belongs to another process; leaving it alone");
            None
        }
        _ => killpg(Pid::from_raw(process.pid), Signal::SIGKILL).ok().map(|()| process.pid),
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// after boot. `None` if there is no such process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything;
    // the fields after the last ')' start with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn this_process_has_a_start_time() {
        let this = ProcessIdentity::this().unwrap();
        assert!(this.alive());
        assert!(!ProcessIdentity { start: this.start + 1, ..this }.alive());
    }

    #[tokio::test]
    async fn a_reused_pid_is_left_alone_and_a_live_owners_runs_untouched() {
        let runs = tempfile::tempdir().unwrap();
        let mut stranger = std::process::Command::new("sleep").arg("60.5151").process_group(0).spawn().unwrap();
        let pid = i32::try_from(stranger.id()).unwrap();
        let real = ProcessIdentity::of(pid).unwrap();
        let dead_owner = ProcessIdentity { pid: real.pid, start: real.start + 1 };
        let left = RunRecord {
            run: "left".into(),
            owner: dead_owner,
            // The same pid, started at another time: not the recorded process.
            process: Some(ProcessIdentity { pid, start: real.start + 1 }),
            dir: None,
            repo: None,
            remove: true,
        };
        record(runs.path(), &left).await.unwrap();
        let live = RunRecord { run: "live".into(), owner: ProcessIdentity::this().unwrap(), ..left.clone() };
        record(runs.path(), &live).await.unwrap();

        let reaped = reap(runs.path()).await;
        assert_eq!(reaped, vec![Reaped { run: "left".into(), killed: None, removed: None }]);
        assert_eq!(ProcessIdentity::of(pid), Some(real), "the stranger was killed");
        assert!(runs.path().join("live.json").exists(), "a live owner's run was reaped");
        assert!(!runs.path().join("left.json").exists());
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }
}
