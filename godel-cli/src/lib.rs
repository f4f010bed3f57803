//! `godel`: the command-line tool. It talks to a server through `godel-sdk`
//! (`godel serve` runs one), prints tables for people and `--json` for
//! scripts, and turns every failure into one line that says what to do, with
//! a distinct exit code (see [`exit::Exit`] and docs/cli.md).
//!
//! `main.rs` only collects the process arguments and calls [`run`]; the
//! command line lives in `args/`, each command's behaviour in `commands/`.

mod args;
mod commands;
mod exit;
mod output;

use std::process::ExitCode;

use argh::FromArgs;

use crate::args::Cli;
use crate::exit::Exit;

/// Runs `godel` with `argv` (the program name first, as from
/// `std::env::args`) and returns the process's exit code.
pub fn run(argv: &[String]) -> ExitCode {
    let (front, command_tail) = split_command(argv.get(1..).unwrap_or_default());
    let front: Vec<&str> = front.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["godel"], &front) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    output::out(&early.output);
                    Exit::Success.into()
                }
                Err(()) => {
                    output::err(&format!("{}Run `godel help` for usage.", early.output));
                    Exit::Usage.into()
                }
            };
        }
    };
    if cli.version {
        output::out(&format!("godel {}", env!("CARGO_PKG_VERSION")));
        return Exit::Success.into();
    }
    let Some(command) = cli.command else {
        output::err(
            "godel: no command given. Try `godel submit --wait -- echo hello`, or `godel help` for all commands.",
        );
        return Exit::Usage.into();
    };
    let tls =
        godel_sdk::TlsOptions { ca_file: cli.ca_file.or_else(|| std::env::var_os("GODEL_CA_FILE").map(Into::into)) };
    commands::run(commands::Global { server: cli.server, api_key: cli.api_key, tls }, command, command_tail)
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
