//! `godel sessions` and its filters.

use argh::FromArgs;

/// List agent sessions, newest first.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "sessions")]
pub(crate) struct Sessions {
    /// states, comma-separated (running,completed,…)
    #[argh(option, short = 's')]
    pub(crate) state: Option<String>,
    /// only this agent's
    #[argh(option)]
    pub(crate) agent: Option<String>,
    /// only this task's
    #[argh(option)]
    pub(crate) task: Option<String>,
    /// how many (1 to 100, default 20)
    #[argh(option, short = 'n')]
    pub(crate) limit: Option<usize>,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}
