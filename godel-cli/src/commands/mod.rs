//! What each command does, one file per command or group of commands, and
//! the one place that picks the file for a parsed command line.
//!
//! Most commands talk to a server through one `Client` and stop with exit
//! 130 on Ctrl-C; `serve` runs the server in this process, and `worker`
//! handles its own signals (the first one drains).

mod agents;
mod credentials;
mod dlq;
mod doctor;
mod instances;
mod keys;
mod quarantine;
mod queue;
mod serve;
mod sessions;
mod submit;
mod tasks;
mod watch;
mod worker;

use std::process::ExitCode;
use std::time::Duration;

use godel_sdk::embed::{InvalidInput, TaskId, Timestamp};
use godel_sdk::{Client, ClientOptions, DEFAULT_SERVER, QuarantinedTask, TlsOptions};

use crate::args::Command;
use crate::exit::{CliResult, Exit, Failure};
use crate::output;

/// The global options every command that talks to a server uses.
pub(crate) struct Global {
    pub(crate) server: Option<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) tls: TlsOptions,
}

/// Runs a parsed command; `command_tail` is what followed `--`.
pub(crate) fn run(global: Global, command: Command, command_tail: Vec<String>) -> ExitCode {
    match command {
        Command::Serve(a) => serve::run(a),
        _ if !command_tail.is_empty() && !matches!(command, Command::Submit(_) | Command::Worker(_)) => {
            output::err("godel: only `submit` and `worker` take a command after `--`");
            Exit::Usage.into()
        }
        Command::Worker(a) => on_runtime(worker::run(global, a, command_tail)),
        Command::Login(a) => on_runtime(async move {
            keys::login(&server_address(a.server.clone().or(global.server)).0, &global.tls, a).await
        }),
        Command::Logout(a) => on_runtime(async move { keys::logout(&server_address(a.server.or(global.server)).0) }),
        Command::Submit(a) => remote(global, async |c| submit::submit(c, a, command_tail).await),
        Command::Do(a) => remote(global, async |c| submit::run_do(c, a).await),
        Command::List(a) => remote(global, async |c| tasks::list(c, a).await),
        Command::Show(a) => remote(global, async |c| tasks::show(c, a).await),
        Command::Logs(a) => remote(global, async |c| tasks::logs(c, a).await),
        Command::Cancel(a) => remote(global, async |c| tasks::stop(c, &a.id, false).await),
        Command::Kill(a) => remote(global, async |c| tasks::stop(c, &a.id, true).await),
        Command::Retry(a) => remote(global, async |c| tasks::retry(c, a).await),
        Command::Purge(a) => remote(global, async |c| tasks::purge(c, a).await),
        Command::Queue(a) => remote(global, async |c| queue::run(c, a).await),
        Command::Dlq(a) => remote(global, async |c| dlq::run(c, a).await),
        Command::Quarantine(a) => remote(global, async |c| quarantine::run(c, a).await),
        Command::Agents(a) => remote(global, async |c| agents::run(c, a).await),
        Command::Sessions(a) => remote(global, async |c| sessions::run(c, a).await),
        Command::Watch(a) => remote(global, async |c| watch::run(c, a).await),
        Command::Doctor(_) => remote(global, async |c| doctor::run(c, server_address(None).1).await),
        Command::Instances(a) => remote(global, async |c| instances::run(c, a).await),
        Command::Keys(a) => remote(global, async |c| keys::run(c, a).await),
        Command::Audit(a) => remote(global, async |c| keys::audit(c, a).await),
    }
}

/// Runs `command` with a client of the server, carrying the credential
/// [`credentials::lookup`] finds, on a fresh runtime; Ctrl-C stops it with
/// [`Exit::Interrupted`].
fn remote(global: Global, command: impl AsyncFnOnce(&Client) -> CliResult) -> ExitCode {
    on_runtime(async {
        tokio::select! {
            result = async {
                let (url, _) = server_address(global.server);
                let credential = credentials::lookup(global.api_key, &url);
                let mut client = Client::with_tls(&url, ClientOptions::default(), &global.tls)?;
                if let Some(credential) = &credential {
                    client = client.with_api_key(&credential.key)?;
                }
                command(&client).await.map_err(|failure| explain_refusal(failure, &url, credential.as_ref()))
            } => result,
            _ = tokio::signal::ctrl_c() => Err(Failure::new(Exit::Interrupted, "interrupted")),
        }
    })
}

/// Adds to a 401 where the credential came from and how to give one.
fn explain_refusal(failure: Failure, url: &str, credential: Option<&credentials::Credential>) -> Failure {
    if failure.exit != Exit::Unauthorized {
        return failure;
    }
    let hint = match credential {
        Some(c) => format!("the API key from {} was not accepted", c.source),
        None => "no API key was found".to_owned(),
    };
    Failure::new(
        Exit::Unauthorized,
        format!("{}: {hint}; pass --api-key, set GODEL_API_KEY, or run `godel login --server {url}`", failure.message),
    )
}

/// Runs `command` on a fresh runtime and reports how it ended: nothing on
/// success, else one line on stderr, and the failure's exit code.
fn on_runtime(command: impl Future<Output = CliResult>) -> ExitCode {
    let result = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => Err(Failure::new(Exit::Internal, format!("cannot start: {e}"))),
    };
    match result {
        Ok(()) => Exit::Success.into(),
        Err(failure) => {
            output::err(&format!("godel: {}", failure.message));
            failure.exit.into()
        }
    }
}

/// The server URL and where it came from: --server, GODEL_SERVER, the
/// `bind` of ./godel.toml (or GODEL_CONFIG), else the default.
fn server_address(flag: Option<String>) -> (String, &'static str) {
    if let Some(url) = flag {
        return (url, "--server");
    }
    if let Ok(url) = std::env::var("GODEL_SERVER") {
        return (url, "GODEL_SERVER");
    }
    let path = std::env::var("GODEL_CONFIG").unwrap_or_else(|_| "godel.toml".to_owned());
    let bind = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("bind").and_then(|b| b.as_str()).map(|b| (b.to_owned(), t.contains_key("tls"))));
    if let Some((bind, tls)) = bind {
        let bind = bind.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
        let scheme = if tls { "https" } else { "http" };
        return (format!("{scheme}://{bind}"), "godel.toml");
    }
    (DEFAULT_SERVER.to_owned(), "the default")
}

fn task_id(raw: &str) -> CliResult<TaskId> {
    raw.parse().map_err(|_| {
        Failure::usage(format!("{raw:?} is not a task id (expected a UUID such as those `godel list` prints)"))
    })
}

fn duration(flag: &str, value: &str) -> CliResult<Duration> {
    humantime::parse_duration(value)
        .map_err(|e| Failure::usage(format!("--{flag}: expected a duration like 30s or 10m, got {value:?} ({e})")))
}

fn list_of<T: std::str::FromStr<Err = InvalidInput>>(flag: &str, value: Option<&str>) -> CliResult<Vec<T>> {
    value.unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(|s| parsed(flag, s)).collect()
}

fn parsed<T: std::str::FromStr<Err = InvalidInput>>(flag: &str, value: &str) -> CliResult<T> {
    value.parse().map_err(|e: InvalidInput| Failure::usage(format!("--{flag}: {}", e.reason)))
}

/// How long ago `t` was, roughly: `42s ago`, `5m ago`, `3h ago`, `2d ago`.
fn age(t: Timestamp) -> String {
    let d = Timestamp::now().saturating_since(t);
    match d.as_secs() {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3_600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3_600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// Names, on stderr, the rows a listing met that did not decode (the server
/// moved them to the quarantine and listed the rest).
pub(crate) fn note_quarantined(rows: &[QuarantinedTask]) {
    for q in rows {
        output::err(&format!(
            "task {} does not decode and was quarantined ({}); see `godel quarantine show {}`",
            q.id, q.error, q.id
        ));
    }
}
