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
                        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
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

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the PID file");
        }
    }
}
