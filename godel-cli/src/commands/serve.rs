//! `godel serve`: runs the server in this process, exactly as the
//! godel-server binary does, with its own runtime and signal handling.

use std::process::ExitCode;

use godel_server::daemon::{self, DaemonOptions};

use crate::args;

pub(crate) fn run(a: args::Serve) -> ExitCode {
    daemon::main(DaemonOptions {
        config: a.config,
        bind: a.bind,
        store: a.store,
        pid_file: a.pid_file,
        log_format: a.log_format,
    })
}
