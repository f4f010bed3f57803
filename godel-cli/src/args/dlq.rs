//! `godel dlq`: list, replay and export the dead-letter queue.

use std::path::PathBuf;

use argh::FromArgs;

/// The dead-letter queue.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "dlq")]
pub(crate) struct Dlq {
    #[argh(subcommand)]
    pub(crate) command: DlqCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum DlqCommand {
    List(DlqList),
    Replay(DlqReplay),
    Export(DlqExport),
}

/// List dead-lettered tasks.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub(crate) struct DlqList {
    /// priorities, comma-separated
    #[argh(option, short = 'p')]
    pub(crate) priority: Option<String>,
    /// how many (1 to 100, default 20)
    #[argh(option, short = 'n')]
    pub(crate) limit: Option<usize>,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Replay one dead-lettered task, or all of them (--all, optionally by --priority).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "replay")]
pub(crate) struct DlqReplay {
    /// task id
    #[argh(positional)]
    pub(crate) id: Option<String>,
    /// replay every dead-lettered task
    #[argh(switch)]
    pub(crate) all: bool,
    /// with --all: only these priorities, comma-separated
    #[argh(option, short = 'p')]
    pub(crate) priority: Option<String>,
}

/// Export every dead-lettered task as NDJSON.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "export")]
pub(crate) struct DlqExport {
    /// write to this file instead of stdout
    #[argh(option, short = 'o')]
    pub(crate) output: Option<PathBuf>,
}
