//! `godel quarantine`: list, show and purge task rows that did not decode.

use argh::FromArgs;

/// Task rows that did not decode (something other than Godel wrote them),
/// held out of the queue so that they block nothing.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "quarantine")]
pub(crate) struct Quarantine {
    #[argh(subcommand)]
    pub(crate) command: QuarantineCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum QuarantineCommand {
    List(QuarantineList),
    Show(QuarantineShow),
    Purge(QuarantinePurge),
}

/// List quarantined rows, oldest task first, with why each did not decode.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub(crate) struct QuarantineList {
    /// how many (1 to 100, default 20)
    #[argh(option, short = 'n')]
    pub(crate) limit: Option<usize>,
    /// the cursor a previous page printed
    #[argh(option)]
    pub(crate) cursor: Option<String>,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Show one quarantined row: why it did not decode, and the row as stored.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
pub(crate) struct QuarantineShow {
    /// task id
    #[argh(positional)]
    pub(crate) id: String,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Delete one quarantined row, or all of them (--all).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "purge")]
pub(crate) struct QuarantinePurge {
    /// task id
    #[argh(positional)]
    pub(crate) id: Option<String>,
    /// delete every quarantined row
    #[argh(switch)]
    pub(crate) all: bool,
}
