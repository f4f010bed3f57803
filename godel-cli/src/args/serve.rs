//! `godel serve`'s options: the server's own flags.

use std::path::PathBuf;

use argh::FromArgs;

/// Run the Godel server (same as the godel-server binary).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub(crate) struct Serve {
    /// configuration file (default: ./godel.toml if it exists; GODEL_CONFIG)
    #[argh(option)]
    pub(crate) config: Option<PathBuf>,
    /// address to listen on (default 127.0.0.1:7373; GODEL_BIND)
    #[argh(option)]
    pub(crate) bind: Option<String>,
    /// store URL, e.g. sqlite://.godel/godel.db or memory:// (GODEL_STORE)
    #[argh(option)]
    pub(crate) store: Option<String>,
    /// write the process id here at start and remove it at exit
    #[argh(option)]
    pub(crate) pid_file: Option<PathBuf>,
    /// log format: human (default) or json (GODEL_LOG_FORMAT)
    #[argh(option)]
    pub(crate) log_format: Option<String>,
}
