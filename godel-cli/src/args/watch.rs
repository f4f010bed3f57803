//! `godel watch`: event patterns and where to start and stop.

use argh::FromArgs;

/// Print live events (patterns like task.* or agent.status; default all).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "watch")]
pub(crate) struct Watch {
    /// event patterns
    #[argh(positional)]
    pub(crate) patterns: Vec<String>,
    /// resume after this sequence number
    #[argh(option)]
    pub(crate) since: Option<u64>,
    /// stop after this many events
    #[argh(option, short = 'n')]
    pub(crate) count: Option<usize>,
    /// print one JSON object per event
    #[argh(switch)]
    pub(crate) json: bool,
}
