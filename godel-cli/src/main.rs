//! The `godel` binary: hands the process arguments to `godel_cli::run`,
//! which does everything else.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    godel_cli::run(&argv)
}
