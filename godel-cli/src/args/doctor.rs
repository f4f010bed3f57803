//! `godel doctor`, which takes no options.

use argh::FromArgs;

/// Check the server, its store and its agents, and say what to fix.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "doctor")]
pub(crate) struct Doctor {}
