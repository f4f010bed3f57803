//! The `godel-server` binary: parses flags and hands over to the daemon in
//! the library (`godel_server::daemon`), which `godel serve` shares.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use godel_server::daemon::{self, DaemonOptions};

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
    daemon::main(DaemonOptions {
        config: args.config,
        bind: args.bind,
        store: args.store,
        pid_file: args.pid_file,
        log_format: args.log_format,
    })
}
