//! The `godel-server` binary: parses flags, sets up logging and signals,
//! writes the PID file, and runs the server library until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a programmatic stop, 130 after SIGINT, 143 after
//! SIGTERM, 1 on a fatal error (bad configuration, port in use, store
//! unreachable), 2 on bad flags.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use argh::FromArgs;
use godel_server::{LogFormat, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Run the Godel server: an HTTP/WebSocket API over a task orchestrator.
#[derive(FromArgs, Debug)]
struct Args {
    /// configuration file (default: ./godel.toml if it exists; GODEL_CONFIG)
    #[argh(option)]
    config: Option<PathBuf>,
    /// address to listen on (default 127.0.0.1:7373; GODEL_BIND)
    #[argh(option)]
    bind: Option<String>,
    /// store URL, e.g. sqlite://.godel/godel.db or memory:// (GODEL_STORE)
    #[argh(option)]
    store: Option<String>,
    /// write the process id here at start and remove it at exit
    #[argh(option)]
    pid_file: Option<PathBuf>,
    /// log format: human (default) or json (GODEL_LOG_FORMAT)
    #[argh(option)]
    log_format: Option<String>,
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.version {
        #[allow(clippy::print_stdout, reason = "the binary's output")]
        {
            println!("godel-server {}", env!("CARGO_PKG_VERSION"));
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fatal(&anyhow::anyhow!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve(args)) {
        Ok(code) => code,
        Err(e) => fatal(&e),
    }
}

fn fatal(e: &anyhow::Error) -> ExitCode {
    tracing::error!(error = %format!("{e:#}"), "godel-server failed");
    #[allow(clippy::print_stderr, reason = "the binary's error report")]
    {
        eprintln!("godel-server: {e:#}");
    }
    ExitCode::from(1)
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let env = |key: &str| -> Option<String> {
        match key {
            "GODEL_BIND" => args.bind.clone().or_else(|| std::env::var(key).ok()),
            "GODEL_STORE" => args.store.clone().or_else(|| std::env::var(key).ok()),
            "GODEL_LOG_FORMAT" => args.log_format.clone().or_else(|| std::env::var(key).ok()),
            _ => std::env::var(key).ok(),
        }
    };
    let config = ServerConfig::load(args.config.as_deref(), &env)?;
    init_logging(config.log_format);
    let _pid = match &args.pid_file {
        Some(path) => Some(PidFile::create(path)?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let server = godel_server::run(config, shutdown.clone(), None);
    tokio::pin!(server);
    let code = tokio::select! {
        result = &mut server => { result?; return Ok(ExitCode::SUCCESS); }
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GODEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,warp=warn,hyper=warn,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// A PID file that exists exactly as long as this process runs.
struct PidFile(PathBuf);

impl PidFile {
    /// Writes our PID, refusing if the file names a process that is alive.
    fn create(path: &Path) -> anyhow::Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                if pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
                    bail!(
                        "{} says process {pid} is running; stop it first or remove the file if it is stale",
                        path.display()
                    );
                }
            }
            tracing::warn!(path = %path.display(), "replacing a stale PID file");
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the PID file {}", path.display()))?;
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the PID file");
        }
    }
}
