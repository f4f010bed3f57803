//! The contract between the engine crash test and `godel-engine-child`, the
//! orchestrator it kills with SIGKILL and then restarts: the tenant, the
//! agents and timings the child runs with, the tasks it submits, and the lines
//! it prints on stdout.
//!
//! The child prints a line only after the engine has published the event it
//! reports, and the engine publishes a task event only after the store has
//! acknowledged the change, so every line is a promise the store must keep
//! after the crash.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use godel_core::{TaskErrorKind, TaskId, TenantId};

/// How long a claim's lease lasts without a heartbeat. Short, so that the
/// restart gets the dead run's tasks back within seconds.
pub const LEASE: Duration = Duration::from_secs(2);

/// How many agents the child runs, and how many tasks each runs at once.
pub const AGENTS: usize = 3;

/// Slots per agent.
pub const CAPACITY: u32 = 2;

/// Attempts every task may use. The flaky ones fail once, and a task running
/// when the child is killed loses one more attempt to its lapsed lease, so
/// any task can finish well within this; none is meant to be dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;

/// Every `FLAKY_EVERY`th task fails its first attempt, so retries happen
/// across the crash too.
pub const FLAKY_EVERY: usize = 7;

/// The tenant the child's orchestrator serves.
pub fn tenant() -> TenantId {
    TenantId::new("engine-crash").expect("a valid tenant name")
}

/// The argv of task number `i`: a short sleep (10 to 80 ms), failing its
/// first attempt if it is one of the flaky ones.
///
/// The sleeps are kept short on purpose: when the child is killed, the
/// processes of its running tasks lead their own process groups and are
/// orphaned, and they must finish quickly without anyone reaping them.
pub fn command(i: usize) -> Vec<String> {
    let sleep = format!("sleep 0.0{}", 1 + i % 8);
    let script = if i.is_multiple_of(FLAKY_EVERY) {
        // The engine sets GODEL_ATTEMPT to the attempt being run, from 1.
        format!("{sleep}; [ \"$GODEL_ATTEMPT\" -gt 1 ]")
    } else {
        sleep
    };
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// The argv of a sleeper task: a shell waiting on a long sleep in its
/// process group, which only a kill ends.
pub fn sleeper() -> Vec<String> {
    ["sh", "-c", "sleep 1000; true"].map(str::to_owned).to_vec()
}

/// Where the child's agents record their live runs: beside the store file.
pub fn runs_dir(store: &Path) -> PathBuf {
    store.with_file_name("runs")
}

/// Where the child's agents make a directory per task: beside the store file.
pub fn work_dir(store: &Path) -> PathBuf {
    store.with_file_name("work")
}

/// One line of the child's stdout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Report {
    /// `submit_batch` returned with this task in it: it is pending.
    Submitted(TaskId),
    /// `task.started`: this attempt is running in this child.
    Started { task: TaskId, attempt: u32 },
    /// `task.completed`: the store recorded this attempt's success.
    Completed { task: TaskId, attempt: u32 },
    /// `task.retrying`: this attempt failed (or its lease lapsed, for
    /// [`TaskErrorKind::LeaseExpired`]) and the task is pending again.
    Retrying { task: TaskId, attempt: u32, kind: TaskErrorKind },
    /// `task.failed`: failed for good.
    Failed { task: TaskId, attempt: u32 },
    /// `task.dead_lettered`: out of attempts.
    DeadLettered { task: TaskId, attempts: u32 },
    /// `task.cancelled`.
    Cancelled(TaskId),
}

impl Report {
    /// The task the line is about.
    pub fn task(&self) -> TaskId {
        match *self {
            Report::Submitted(task)
            | Report::Cancelled(task)
            | Report::Started { task, .. }
            | Report::Completed { task, .. }
            | Report::Retrying { task, .. }
            | Report::Failed { task, .. }
            | Report::DeadLettered { task, .. } => task,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Submitted(task) => write!(f, "submitted {task}"),
            Report::Started { task, attempt } => write!(f, "started {task} {attempt}"),
            Report::Completed { task, attempt } => write!(f, "completed {task} {attempt}"),
            Report::Retrying { task, attempt, kind } => write!(f, "retrying {task} {attempt} {}", kind_name(*kind)),
            Report::Failed { task, attempt } => write!(f, "failed {task} {attempt}"),
            Report::DeadLettered { task, attempts } => write!(f, "dead_lettered {task} {attempts}"),
            Report::Cancelled(task) => write!(f, "cancelled {task}"),
        }
    }
}

impl FromStr for Report {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> anyhow::Result<Self> {
        let mut words = line.split(' ');
        let (Some(word), Some(task)) = (words.next(), words.next()) else {
            bail!("expected `<word> <task id> ...`, got {line:?}");
        };
        let task: TaskId = task.parse().with_context(|| format!("bad task id in {line:?}"))?;
        let mut number = || -> anyhow::Result<u32> {
            let word = words.next().with_context(|| format!("missing attempt number in {line:?}"))?;
            word.parse().with_context(|| format!("bad attempt number {word:?} in {line:?}"))
        };
        let report = match word {
            "submitted" => Report::Submitted(task),
            "started" => Report::Started { task, attempt: number()? },
            "completed" => Report::Completed { task, attempt: number()? },
            "retrying" => {
                let attempt = number()?;
                let kind = words.next().with_context(|| format!("missing error kind in {line:?}"))?;
                Report::Retrying { task, attempt, kind: parse_kind(kind).with_context(|| format!("in {line:?}"))? }
            }
            "failed" => Report::Failed { task, attempt: number()? },
            "dead_lettered" => Report::DeadLettered { task, attempts: number()? },
            "cancelled" => Report::Cancelled(task),
            _ => bail!("unknown report {word:?} in {line:?}"),
        };
        if words.next().is_some() {
            bail!("trailing words in {line:?}");
        }
        Ok(report)
    }
}

/// The snake_case name the store uses for an error kind.
fn kind_name(kind: TaskErrorKind) -> &'static str {
    match kind {
        TaskErrorKind::Error => "error",
        TaskErrorKind::Timeout => "timeout",
        TaskErrorKind::LeaseExpired => "lease_expired",
        TaskErrorKind::Aborted => "aborted",
    }
}

fn parse_kind(name: &str) -> anyhow::Result<TaskErrorKind> {
    [TaskErrorKind::Error, TaskErrorKind::Timeout, TaskErrorKind::LeaseExpired, TaskErrorKind::Aborted]
        .into_iter()
        .find(|&k| kind_name(k) == name)
        .with_context(|| format!("expected error, timeout, lease_expired or aborted; got {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let task = TaskId::new();
        let reports = [
            Report::Submitted(task),
            Report::Started { task, attempt: 1 },
            Report::Completed { task, attempt: 2 },
            Report::Retrying { task, attempt: 1, kind: TaskErrorKind::LeaseExpired },
            Report::Failed { task, attempt: 3 },
            Report::DeadLettered { task, attempts: 5 },
            Report::Cancelled(task),
        ];
        for report in reports {
            assert_eq!(report.to_string().parse::<Report>().unwrap(), report);
        }
        assert!("completed".parse::<Report>().is_err());
        assert!(format!("completed {task}").parse::<Report>().is_err());
        assert!(format!("completed {task} 1 2").parse::<Report>().is_err());
        assert!(format!("retrying {task} 1 sideways").parse::<Report>().is_err());
    }
}
