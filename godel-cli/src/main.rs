//! `godel`: the command-line tool. It talks to a server through `godel-sdk`
//! (`godel serve` runs one), prints tables for people and `--json` for
//! scripts, and turns every failure into one line that says what to do, with
//! a distinct exit code:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | the task did not complete (`--wait`, `do`), or `doctor` found problems |
//! | 2 | bad command line |
//! | 3 | the server could not be reached |
//! | 4 | no such task, agent or session |
//! | 5 | the server refused the request (invalid, or conflicts with the task's state) |
//! | 6 | the server failed or answered something unexpected |
//! | 130 | interrupted |

mod args;
mod commands;
mod output;

use std::process::ExitCode;

use argh::FromArgs;
use godel_sdk::{Error as SdkError, ErrorCode};

use crate::args::{Cli, Command};

/// A failure, as the user sees it: one line and an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }

    pub(crate) fn task(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }

    pub(crate) fn io(what: &str, e: &std::io::Error) -> Self {
        Self { code: 6, message: format!("{what}: {e}") }
    }
}

impl From<SdkError> for Failure {
    fn from(e: SdkError) -> Self {
        match &e {
            SdkError::Unreachable { url, .. } => Failure {
                code: 3,
                message: format!(
                    "cannot reach the Godel server at {}; start one with `godel serve`, or point --server or GODEL_SERVER at it",
                    base_of(url)
                ),
            },
            SdkError::Timeout { url } => Failure {
                code: 3,
                message: format!("the Godel server at {} did not answer in time; is it overloaded?", base_of(url)),
            },
            SdkError::Api { code: ErrorCode::NotFound, message, .. } => Failure { code: 4, message: message.clone() },
            SdkError::Api { code: ErrorCode::InvalidRequest | ErrorCode::Conflict, message, .. } => {
                Failure { code: 5, message: message.clone() }
            }
            SdkError::InvalidUrl { .. } => Failure::usage(e.to_string()),
            _ => Failure { code: 6, message: e.to_string() },
        }
    }
}

pub(crate) type CliResult<T = ()> = Result<T, Failure>;

/// `http://host:port` of a request URL.
fn base_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let (front, command_tail) = split_command(&argv[1..]);
    let front: Vec<&str> = front.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["godel"], &front) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    output::out(&early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    output::err(&format!("{}Run `godel help` for usage.", early.output));
                    ExitCode::from(2)
                }
            };
        }
    };
    if cli.version {
        output::out(&format!("godel {}", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        output::err(
            "godel: no command given. Try `godel submit --wait -- echo hello`, or `godel help` for all commands.",
        );
        return ExitCode::from(2);
    };
    if let Command::Serve(serve) = command {
        return godel_server::daemon::main(godel_server::daemon::DaemonOptions {
            config: serve.config,
            bind: serve.bind,
            store: serve.store,
            pid_file: serve.pid_file,
            log_format: serve.log_format,
        });
    }
    if !command_tail.is_empty() && !matches!(command, Command::Submit(_) | Command::Worker(_)) {
        output::err("godel: only `submit` and `worker` take a command after `--`");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            output::err(&format!("godel: cannot start: {e}"));
            return ExitCode::from(6);
        }
    };
    let result = runtime.block_on(async {
        if let Command::Worker(worker) = command {
            // The worker handles signals itself: the first drains.
            return commands::worker(cli.server, worker, command_tail).await;
        }
        tokio::select! {
            result = commands::run(cli.server, command, command_tail) => result,
            _ = tokio::signal::ctrl_c() => Err(Failure { code: 130, message: "interrupted".into() }),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            output::err(&format!("godel: {}", failure.message));
            ExitCode::from(failure.code)
        }
    }
}

/// Splits `submit … -- argv…` into the options and the command to run.
fn split_command(args: &[String]) -> (Vec<String>, Vec<String>) {
    match args.iter().position(|a| a == "--") {
        Some(i) if args.iter().take(i).any(|a| a == "submit" || a == "worker") => {
            (args[..i].to_vec(), args[i + 1..].to_vec())
        }
        _ => (args.to_vec(), Vec::new()),
    }
}
