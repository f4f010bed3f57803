//! `godel agents`.

use argh::FromArgs;

/// List agents with their load and status.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "agents")]
pub(crate) struct Agents {
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}
