//! `godel`: the command-line tool. It will submit, list, follow and cancel
//! tasks on a server (through `godel-sdk`), run the server itself (`godel
//! serve`), and offer an embedded mode. Today it reports its version and the
//! defaults it will use, so the binary and its argument parsing exist from the
//! first commit.

use argh::FromArgs;

/// Godel: a control plane for fleets of AI agent sessions.
#[derive(FromArgs, Debug)]
struct Cli {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
}

fn main() {
    let cli: Cli = argh::from_env();
    let out = if cli.version {
        format!("godel {}", env!("CARGO_PKG_VERSION"))
    } else {
        format!(
            "godel {}: the CLI arrives with the server; for now see `cargo run -p godel-examples --example queue_tour`",
            env!("CARGO_PKG_VERSION")
        )
    };
    #[allow(clippy::print_stdout, reason = "a binary's output")]
    {
        println!("{out}");
    }
}
