//! The process adapter: one local process per task attempt.
//!
//! The argv comes from the task's own `command`, or from the agent's command
//! template (e.g. `["claude", "-p", "{prompt}"]`) with placeholders
//! substituted inside each element: never through a shell, so a prompt may
//! hold quotes, `$(…)` or newlines and arrives in argv exactly as written.
//! Each process leads its own process group, so an abort (and the cleanup
//! after the leader exits) reaches every child it started.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::InvalidInput;
use crate::adapter::reaper::{self, ProcessIdentity, Reaped, RunRecord};
use crate::adapter::{AbortMode, Adapter, AdapterError, AgentSession, Outcome, OutputSink};
use crate::output::OutputStream;
use crate::task::{Task, TaskError, TaskErrorKind};

/// Placeholders a command template may use.
pub const PLACEHOLDERS: [&str; 4] = ["prompt", "task_id", "attempt", "workdir"];

/// Where a task's process runs.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub enum WorkDir {
    /// The engine's own working directory.
    #[default]
    Inherit,
    /// This directory, shared by every task.
    Shared(PathBuf),
    /// A fresh directory `<base>/<task-id>` per task.
    PerTask {
        /// Parent of the per-task directories.
        base: PathBuf,
        /// When to delete a task's directory.
        cleanup: Cleanup,
    },
    /// A fresh git worktree `<repo>-godel-<task-id>` per task, detached at `HEAD`.
    GitWorktree {
        /// The repository to branch from.
        repo: PathBuf,
        /// When to remove the worktree.
        cleanup: Cleanup,
    },
}

/// When to delete a task's directory or worktree.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Cleanup {
    /// After every attempt.
    #[default]
    Always,
    /// Only after a successful attempt; failed ones are kept for inspection.
    OnSuccess,
    /// Never.
    Never,
}

/// How a process agent runs tasks.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ProcessConfig {
    /// argv template for prompt tasks; `None` runs only tasks that bring a `command`.
    pub command: Option<Vec<String>>,
    /// Where processes run.
    pub workdir: WorkDir,
    /// Extra environment variables (on top of the engine's environment,
    /// `GODEL_TASK_ID` and `GODEL_ATTEMPT`).
    pub env: Vec<(String, String)>,
    /// Where each live run is recorded (a small file per run), so that the
    /// next start reaps what a crash of this process left: its process
    /// groups and directories (see `adapter/reaper.rs`). `None` records nothing.
    pub runs: Option<PathBuf>,
}

/// Bytes of stderr kept for the failure message.
const STDERR_TAIL: usize = 2_048;

/// Runs tasks as local processes.
#[derive(Debug, Clone)]
pub struct ProcessAdapter {
    config: ProcessConfig,
}

impl ProcessAdapter {
    /// Checks the template (non-empty program, known placeholders) and builds the adapter.
    pub fn new(config: ProcessConfig) -> Result<Self, InvalidInput> {
        if let Some(template) = &config.command {
            if template.first().is_none_or(|p| p.is_empty()) {
                return Err(InvalidInput::new(
                    "command",
                    "expected a non-empty argv whose first element is the program",
                ));
            }
            let vars = Vars { prompt: "", task_id: "", attempt: "", workdir: "" };
            for arg in template {
                crate::task::validate_text("command", arg)?;
                substitute(arg, &vars).map_err(|reason| InvalidInput::new("command", reason))?;
            }
        }
        Ok(Self { config })
    }

    /// Records a session's directory before its process exists.
    async fn record(&self, task: &Task, prepared: Option<&Prepared>) -> RunRecord {
        let (dir, repo, cleanup) = match prepared {
            Some(Prepared::Dir { dir, cleanup }) => (Some(dir.clone()), None, *cleanup),
            Some(Prepared::Worktree { repo, dir, cleanup }) => (Some(dir.clone()), Some(repo.clone()), *cleanup),
            None => (None, None, Cleanup::Never),
        };
        let record = RunRecord {
            run: format!("{}-{}", task.id, task.attempt),
            // Without /proc nothing can be told apart; the record then names no live owner.
            owner: ProcessIdentity::this().unwrap_or(ProcessIdentity { pid: 0, start: 0 }),
            process: None,
            dir,
            repo,
            remove: cleanup == Cleanup::Always,
        };
        if let Some(runs) = &self.config.runs
            && let Err(e) = reaper::record(runs, &record).await
        {
            tracing::warn!(runs = %runs.display(), error = %e, "cannot record a run; a crash would leave it behind");
        }
        record
    }

    fn argv(&self, task: &Task, dir: &Path) -> Result<Vec<String>, AdapterError> {
        if let Some(command) = &task.payload.command {
            return Ok(command.clone());
        }
        let (Some(template), Some(prompt)) = (&self.config.command, &task.payload.prompt) else {
            return Err(AdapterError::permanent(
                "the task has no command and this agent has no command template for prompts \
                 (give the agent one in godel.toml, e.g. command = [\"claude\", \"-p\", \"{prompt}\"])",
            ));
        };
        let vars = Vars {
            prompt,
            task_id: &task.id.to_string(),
            attempt: &task.attempt.to_string(),
            workdir: &dir.to_string_lossy(),
        };
        template.iter().map(|arg| substitute(arg, &vars).map_err(AdapterError::permanent)).collect()
    }

    async fn prepare_dir(&self, task: &Task) -> Result<(PathBuf, Option<Prepared>), AdapterError> {
        match &self.config.workdir {
            WorkDir::Inherit => {
                let dir = std::env::current_dir()
                    .map_err(|e| AdapterError::permanent(format!("no working directory: {e}")))?;
                Ok((dir, None))
            }
            WorkDir::Shared(dir) => Ok((dir.clone(), None)),
            WorkDir::PerTask { base, cleanup } => {
                let dir = base.join(task.id.to_string());
                // A previous attempt may have left its directory behind; start clean.
                if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                }
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|e| AdapterError::transient(format!("cannot create {}: {e}", dir.display())))?;
                Ok((dir.clone(), Some(Prepared::Dir { dir, cleanup: *cleanup })))
            }
            WorkDir::GitWorktree { repo, cleanup } => {
                let dir = worktree_path(repo, task);
                if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                    remove_worktree(repo, &dir).await;
                }
                let path = dir.to_string_lossy().into_owned();
                git(repo, &["worktree", "add", "--detach", &path]).await?;
                Ok((dir.clone(), Some(Prepared::Worktree { repo: repo.clone(), dir, cleanup: *cleanup })))
            }
        }
    }
}

#[async_trait]
impl Adapter for ProcessAdapter {
    async fn open_session(&self, task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        let (dir, prepared) = self.prepare_dir(task).await?;
        let argv = match self.argv(task, &dir) {
            Ok(argv) => argv,
            Err(e) => {
                if let Some(prepared) = &prepared {
                    prepared.remove().await;
                }
                return Err(e);
            }
        };
        let record = match &self.config.runs {
            Some(runs) => Some((runs.clone(), self.record(task, prepared.as_ref()).await)),
            None => None,
        };
        Ok(Box::new(ProcessSession {
            argv,
            dir,
            env: self.config.env.clone(),
            prepared,
            record,
            group: Mutex::new(None),
        }))
    }

    async fn reap(&self) -> Vec<Reaped> {
        match &self.config.runs {
            Some(runs) => reaper::reap(runs).await,
            None => Vec::new(),
        }
    }

    async fn health(&self) -> Result<(), AdapterError> {
        match &self.config.workdir {
            WorkDir::Shared(dir) | WorkDir::GitWorktree { repo: dir, .. } if !dir.is_dir() => {
                Err(AdapterError::permanent(format!("{} is not a directory", dir.display())))
            }
            _ => Ok(()),
        }
    }
}

/// A directory the session created and may have to remove.
#[derive(Debug)]
enum Prepared {
    Dir { dir: PathBuf, cleanup: Cleanup },
    Worktree { repo: PathBuf, dir: PathBuf, cleanup: Cleanup },
}

impl Prepared {
    fn cleanup(&self) -> Cleanup {
        match self {
            Prepared::Dir { cleanup, .. } | Prepared::Worktree { cleanup, .. } => *cleanup,
        }
    }

    async fn remove(&self) {
        match self {
            Prepared::Dir { dir, .. } => remove_dir(dir).await,
            Prepared::Worktree { repo, dir, .. } => remove_worktree(repo, dir).await,
        }
    }
}

struct ProcessSession {
    argv: Vec<String>,
    dir: PathBuf,
    env: Vec<(String, String)>,
    prepared: Option<Prepared>,
    /// The runs directory and this run's record in it.
    record: Option<(PathBuf, RunRecord)>,
    /// The process group id while the process runs.
    group: Mutex<Option<i32>>,
}

#[async_trait]
impl AgentSession for ProcessSession {
    async fn run(&self, task: &Task, output: OutputSink) -> Outcome {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("GODEL_TASK_ID", task.id.to_string())
            .env("GODEL_ATTEMPT", task.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let message = format!("cannot start {:?} in {}: {e}", self.argv[0], self.dir.display());
                return Outcome::Failed { error: TaskError::new(TaskErrorKind::Error, message), retryable: false };
            }
        };
        let group = child.id().and_then(|pid| i32::try_from(pid).ok());
        *self.group.lock().unwrap_or_else(|e| e.into_inner()) = group;
        if let (Some((runs, record)), Some(process)) = (&self.record, group.and_then(ProcessIdentity::of)) {
            let record = RunRecord { process: Some(process), ..record.clone() };
            if let Err(e) = reaper::record(runs, &record).await {
                tracing::warn!(runs = %runs.display(), error = %e, "cannot record a run; a crash would leave it behind");
            }
        }
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let wait = async {
            let status = child.wait().await;
            // The leader is gone; stop whatever it left in its group so the
            // pipes close and nothing outlives the task.
            if let Some(group) = group {
                signal_group(group, AbortMode::Force);
            }
            *self.group.lock().unwrap_or_else(|e| e.into_inner()) = None;
            status
        };
        let (status, _, tail) = tokio::join!(
            wait,
            pump(stdout, OutputStream::Stdout, &output, 0),
            pump(stderr, OutputStream::Stderr, &output, STDERR_TAIL),
        );
        match status {
            Ok(status) if status.success() => Outcome::Completed { result: json!({ "exit_code": 0 }) },
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                let how = match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit code {code}"),
                    (None, Some(signal)) => format!("killed by signal {signal}"),
                    (None, None) => format!("ended with {status}"),
                };
                let tail = String::from_utf8_lossy(&tail);
                let message = if tail.trim().is_empty() { how } else { format!("{how}: {}", tail.trim_end()) };
                Outcome::Failed { error: TaskError::new(TaskErrorKind::Error, message), retryable: true }
            }
            Err(e) => Outcome::Failed {
                error: TaskError::new(TaskErrorKind::Error, format!("lost track of the process: {e}")),
                retryable: true,
            },
        }
    }

    async fn abort(&self, mode: AbortMode) {
        let group = *self.group.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = group {
            signal_group(group, mode);
        }
    }

    async fn close(&self, outcome: &Outcome) {
        if let Some(prepared) = &self.prepared {
            let remove = match prepared.cleanup() {
                Cleanup::Always => true,
                Cleanup::OnSuccess => outcome.is_success(),
                Cleanup::Never => false,
            };
            if remove {
                prepared.remove().await;
            }
        }
        if let Some((runs, record)) = &self.record {
            reaper::forget(runs, &record.run).await;
        }
    }
}

/// The worktree path for a task: `<repo>-godel-<task-id>`, beside the repo.
pub fn worktree_path(repo: &Path, task: &Task) -> PathBuf {
    let name = repo.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "repo".to_owned());
    repo.with_file_name(format!("{name}-godel-{}", task.id))
}

async fn git(repo: &Path, args: &[&str]) -> Result<(), AdapterError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| AdapterError::permanent(format!("cannot run git: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AdapterError::permanent(format!(
            "git {} in {} failed: {}",
            args.join(" "),
            repo.display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        )))
    }
}

pub(crate) async fn remove_dir(dir: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(dir).await {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove task directory");
    }
}

pub(crate) async fn remove_worktree(repo: &Path, dir: &Path) {
    let path = dir.to_string_lossy();
    if let Err(e) = git(repo, &["worktree", "remove", "--force", &path]).await {
        tracing::warn!(worktree = %dir.display(), error = %e, "cannot remove worktree");
    }
}

/// Sends SIGTERM (graceful) or SIGKILL (force) to a whole process group.
fn signal_group(group: i32, mode: AbortMode) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let signal = match mode {
        AbortMode::Graceful => Signal::SIGTERM,
        AbortMode::Force => Signal::SIGKILL,
    };
    // ESRCH (the group is already gone) is the expected race; nothing to do.
    let _ = killpg(Pid::from_raw(group), signal);
}

/// Copies a pipe into the sink as UTF-8 text, never splitting a character
/// across chunks; returns the last `keep_tail` bytes read.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    stream: OutputStream,
    output: &OutputSink,
    keep_tail: usize,
) -> Vec<u8> {
    let mut buf = vec![0u8; 8_192];
    let mut pending: Vec<u8> = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut listening = true;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if keep_tail > 0 {
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > keep_tail {
                tail.drain(..tail.len() - keep_tail);
            }
        }
        if !listening {
            continue; // keep draining so the process never blocks on a full pipe
        }
        pending.extend_from_slice(&buf[..n]);
        let complete = utf8_prefix_len(&pending);
        if complete > 0 {
            let text = String::from_utf8_lossy(&pending[..complete]).into_owned();
            pending.drain(..complete);
            listening = output.send(stream, text).await;
        }
    }
    if listening && !pending.is_empty() {
        output.send(stream, String::from_utf8_lossy(&pending).into_owned()).await;
    }
    tail
}

/// How many leading bytes can be decoded now: everything but an incomplete
/// UTF-8 sequence at the very end (invalid bytes elsewhere are decoded lossily).
fn utf8_prefix_len(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

struct Vars<'a> {
    prompt: &'a str,
    task_id: &'a str,
    attempt: &'a str,
    workdir: &'a str,
}

/// Replaces `{name}` placeholders in one argv element in a single pass, so a
/// substituted value is never scanned again. `{{` and `}}` are literal braces.
fn substitute(template: &str, vars: &Vars<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if let Some(after) = tail.strip_prefix('{') {
            let end = after.find('}').ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
            let value = match &after[..end] {
                "prompt" => vars.prompt,
                "task_id" => vars.task_id,
                "attempt" => vars.attempt,
                "workdir" => vars.workdir,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} in {template:?} (known: {}; write {{{{ for a literal brace)",
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    ));
                }
            };
            out.push_str(value);
            rest = &after[end + 1..];
        } else {
            return Err(format!("unmatched '}}' in {template:?} (write }}}} for a literal brace)"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(prompt: &'a str) -> Vars<'a> {
        Vars { prompt, task_id: "T", attempt: "2", workdir: "/w" }
    }

    #[test]
    fn placeholders_are_substituted_once() {
        assert_eq!(substitute("-p={prompt}", &vars("{task_id} $(x)")).unwrap(), "-p={task_id} $(x)");
        assert_eq!(substitute("{task_id}/{attempt} in {workdir}", &vars("")).unwrap(), "T/2 in /w");
        assert_eq!(substitute("{{literal}}", &vars("")).unwrap(), "{literal}");
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert!(substitute("{nope}", &vars("")).unwrap_err().contains("unknown placeholder {nope}"));
        assert!(substitute("{prompt", &vars("")).unwrap_err().contains("unclosed"));
        assert!(substitute("x}", &vars("")).unwrap_err().contains("unmatched"));
        let config =
            ProcessConfig { command: Some(vec!["claude".into(), "{promt}".into()]), ..ProcessConfig::default() };
        assert_eq!(ProcessAdapter::new(config).unwrap_err().field, "command");
        let config = ProcessConfig { command: Some(vec![]), ..ProcessConfig::default() };
        assert!(ProcessAdapter::new(config).is_err());
    }

    #[test]
    fn utf8_is_never_split() {
        let snowman = "☃".as_bytes();
        assert_eq!(utf8_prefix_len(&snowman[..2]), 0);
        assert_eq!(utf8_prefix_len(&[b'a', snowman[0]]), 1);
        assert_eq!(utf8_prefix_len(snowman), 3);
        assert_eq!(utf8_prefix_len(&[0xff, b'a']), 2);
    }
}
