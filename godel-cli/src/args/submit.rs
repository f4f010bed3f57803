//! `godel submit` and `godel do`: the options of the two commands that
//! create a task.

use argh::FromArgs;

/// Submit a task: a prompt, or a command after `--` (godel submit -- make test).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "submit")]
pub(crate) struct Submit {
    /// the prompt (omit it and give a command after `--`)
    #[argh(positional)]
    pub(crate) prompt: Option<String>,
    /// critical, high, medium (default) or low
    #[argh(option, short = 'p')]
    pub(crate) priority: Option<String>,
    /// a capability the agent must have (repeatable)
    #[argh(option, short = 'c')]
    pub(crate) capability: Vec<String>,
    /// per-attempt timeout, e.g. 30s, 10m
    #[argh(option)]
    pub(crate) timeout: Option<String>,
    /// attempts before dead-lettering (default 3)
    #[argh(option)]
    pub(crate) max_attempts: Option<u32>,
    /// run at this time (RFC 3339, e.g. 2026-11-21T18:00:00Z)
    #[argh(option)]
    pub(crate) at: Option<String>,
    /// run after this delay, e.g. 10m
    #[argh(option, long = "in")]
    pub(crate) delay: Option<String>,
    /// submitting again with this key returns the first task
    #[argh(option)]
    pub(crate) idempotency_key: Option<String>,
    /// tasks with the same key prefer the same agent
    #[argh(option)]
    pub(crate) affinity: Option<String>,
    /// follow the task to its end; exit 0 only if it completed
    #[argh(switch, short = 'w')]
    pub(crate) wait: bool,
    /// print the task as JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Run a prompt on the best available agent and stream its output until it ends.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "do")]
pub(crate) struct Do {
    /// what to do
    #[argh(positional)]
    pub(crate) intent: String,
    /// critical, high (default), medium or low
    #[argh(option, short = 'p')]
    pub(crate) priority: Option<String>,
    /// a capability the agent must have (repeatable)
    #[argh(option, short = 'c')]
    pub(crate) capability: Vec<String>,
    /// per-attempt timeout, e.g. 30m
    #[argh(option)]
    pub(crate) timeout: Option<String>,
}
