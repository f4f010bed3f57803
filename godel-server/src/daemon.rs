//! The daemon around [`crate::run`]: configuration from flags, file and
//! environment, logging, the PID file, and signals. Shared by the
//! `godel-server` binary and `godel serve`, so both behave the same.
//!
//! Exit codes: 0 after a programmatic stop, 130 after SIGINT, 143 after
//! SIGTERM, 1 on a fatal error (bad configuration, port in use, store
//! unreachable, a live PID file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{LogFormat, ServerConfig};

/// What the command line may override. Everything else comes from the
/// configuration file and `GODEL_*` variables.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// Configuration file (default `./godel.toml` if it exists, or `GODEL_CONFIG`).
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides `GODEL_BIND` and the file).
    pub bind: Option<String>,
    /// Store URL (overrides `GODEL_STORE` and the file).
    pub store: Option<String>,
    /// PID file written at start and removed at exit.
    pub pid_file: Option<PathBuf>,
    /// Log format (overrides `GODEL_LOG_FORMAT` and the file).
    pub log_format: Option<String>,
}

/// Runs the daemon to completion on its own runtime and returns the exit code.
pub fn main(options: DaemonOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fatal(&anyhow::anyhow!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve(options)) {
        Ok(code) => code,
        Err(e) => fatal(&e),
    }
}

fn fatal(e: &anyhow::Error) -> ExitCode {
    tracing::error!(error = %format!("{e:#}"), "godel-server failed");
    #[allow(clippy::print_stderr, reason = "the daemon's last word when it cannot run")]
    {
        eprintln!("godel-server: {e:#}");
    }
    ExitCode::from(1)
}

async fn serve(options: DaemonOptions) -> anyhow::Result<ExitCode> {
    let env = |key: &str| -> Option<String> {
        let flag = match key {
            "GODEL_BIND" => options.bind.clone(),
            "GODEL_STORE" => options.store.clone(),
            "GODEL_LOG_FORMAT" => options.log_format.clone(),
            _ => None,
        };
        flag.or_else(|| std::env::var(key).ok())
    };
    let config = ServerConfig::load(options.config.as_deref(), &env)?;
    init_logging(config.log_format);
    let _pid = options.pid_file.as_deref().map(PidFile::create).transpose()?;

    let shutdown = CancellationToken::new();
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let server = crate::run(config, shutdown.clone(), None);
    tokio::pin!(server);
    let code = tokio::select! {
        result = &mut server => {
            result?;
            return Ok(ExitCode::SUCCESS);
        }
        _ = sigint.recv() => 130,
        _ = sigterm.recv() => 143,
    };
    tracing::info!(
        signal = if code == 130 { "SIGINT" } else { "SIGTERM" },
        "signal received; shutting down gracefully"
    );
    shutdown.cancel();
    server.await?;
    Ok(ExitCode::from(code))
}

/// Logs to stdout, human-readable or as JSON lines, filtered by `GODEL_LOG`
/// (default `info`); shared with `godel worker`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GODEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,warp=warn,hyper=warn,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout).with_ansi(ansi);
    // A second initialisation (e.g. in tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

/// A PID file that exists exactly as long as this process runs.
struct PidFile(PathBuf);

impl PidFile {
    /// Writes our PID, refusing if the file names a process that is alive.
    /// The file is created exclusively, so of two servers starting at once
    /// only one gets it.
    fn create(path: &Path) -> anyhow::Result<Self> {
        use std::io::Write;
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    file.write_all(format!("{}\n", std::process::id()).as_bytes())
                        .with_context(|| format!("cannot write the PID file {}", path.display()))?;
                    return Ok(Self(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(path).unwrap_or_default();
                    if let Ok(pid) = text.trim().parse::<i32>()
                        && pid > 0
                        && is_running(pid)
                    {
                        bail!(
                            "{} says process {pid} is running; stop it first, or remove the file if it is stale",
                            path.display()
                        );
                    }
                    tracing::warn!(path = %path.display(), "removing a stale PID file");
                    std::fs::remove_file(path)
                        .with_context(|| format!("cannot remove the stale PID file {}", path.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create the PID file {}", path.display())),
            }
        }
        bail!("{} keeps reappearing; is another server starting?", path.display())
    }
}

/// True if process `pid` runs. One that has exited but that its parent has
/// not reaped yet (a zombie, e.g. a server killed a moment ago under a
/// supervisor that has not waited for it) still answers `kill(pid, 0)`, so
/// where `/proc` exists its state decides: `Z` (zombie) and `X` (dead) do
/// not run.
fn is_running(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(process_state(&stat), Some('Z' | 'X')),
        // Gone since the signal check, on a system that has /proc.
        Err(_) if Path::new("/proc/self/stat").exists() => false,
        Err(_) => true,
    }
}

/// The state letter of a `/proc/<pid>/stat` line, `<pid> (<comm>) <state> …`;
/// the command name may itself hold parentheses, so the state follows the last `)`.
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the PID file");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_state_follows_the_last_parenthesis() {
        assert_eq!(process_state("42 (godel-server) S 1 42 42 0"), Some('S'));
        assert_eq!(process_state("42 (a) b) Z 1 42 42 0"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
    }

    #[test]
    fn a_live_process_keeps_its_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("godel.pid");
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        assert!(PidFile::create(&path).is_err());
    }

    #[test]
    fn a_killed_unreaped_process_does_not_hold_the_pid_file() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.kill().unwrap();
        // Not waited for: the child stays a zombie until the end of the test.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| process_state(&s)) != Some('Z') {
            assert!(Instant::now() < deadline, "process {pid} never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("godel.pid");
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        let pid_file = PidFile::create(&path).expect("a zombie does not hold the PID file");
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), std::process::id().to_string());
        drop(pid_file);
        child.wait().unwrap();
    }
}
