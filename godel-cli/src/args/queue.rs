//! `godel queue depth` and `godel queue health`.

use argh::FromArgs;

/// Queue depth and health.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "queue")]
pub(crate) struct Queue {
    #[argh(subcommand)]
    pub(crate) command: QueueCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum QueueCommand {
    Depth(QueueDepth),
    Health(QueueHealth),
}

/// Ready tasks per priority.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "depth")]
pub(crate) struct QueueDepth {
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// The queue's health, with reasons.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "health")]
pub(crate) struct QueueHealth {
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}
