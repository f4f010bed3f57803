//! The commands on one task or on the task list: `list`, `show`, `logs`,
//! `cancel`, `kill`, `retry` and `purge`.

use argh::FromArgs;

/// List tasks.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub(crate) struct List {
    /// statuses, comma-separated (pending,running,…)
    #[argh(option, short = 's')]
    pub(crate) status: Option<String>,
    /// priorities, comma-separated
    #[argh(option, short = 'p')]
    pub(crate) priority: Option<String>,
    /// only tasks held or last held by this agent
    #[argh(option)]
    pub(crate) agent: Option<String>,
    /// how many (1 to 100, default 20)
    #[argh(option, short = 'n')]
    pub(crate) limit: Option<usize>,
    /// continue after this cursor (printed by the previous page)
    #[argh(option)]
    pub(crate) cursor: Option<String>,
    /// oldest first (default: newest first)
    #[argh(switch)]
    pub(crate) oldest: bool,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Show one task.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
pub(crate) struct Show {
    /// task id
    #[argh(positional)]
    pub(crate) id: String,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Print a task's output and lifecycle; -f follows it until it ends.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "logs")]
pub(crate) struct Logs {
    /// task id
    #[argh(positional)]
    pub(crate) id: String,
    /// keep following until the task ends
    #[argh(switch, short = 'f')]
    pub(crate) follow: bool,
    /// print every history entry as a JSON line
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Cancel a task (a running one gets a grace period).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cancel")]
pub(crate) struct Cancel {
    /// task id
    #[argh(positional)]
    pub(crate) id: String,
}

/// Stop a task at once, without a grace period.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "kill")]
pub(crate) struct Kill {
    /// task id
    #[argh(positional)]
    pub(crate) id: String,
}

/// Run a failed, cancelled or dead-lettered task again.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "retry")]
pub(crate) struct Retry {
    /// task id
    #[argh(positional)]
    pub(crate) id: String,
}

/// Delete a finished task and its history.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "purge")]
pub(crate) struct Purge {
    /// task id
    #[argh(positional)]
    pub(crate) id: String,
}
