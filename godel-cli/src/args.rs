//! The command line, as argh structs. Help texts here are what `--help` prints.

use std::path::PathBuf;

use argh::FromArgs;

/// Godel: a control plane for fleets of AI agent sessions.
///
/// The server address comes from --server, then GODEL_SERVER, then the `bind`
/// key of ./godel.toml, then http://127.0.0.1:7373.
#[derive(FromArgs, Debug)]
pub(crate) struct Cli {
    /// server URL, e.g. http://127.0.0.1:7373
    #[argh(option)]
    pub(crate) server: Option<String>,
    /// print the version and exit
    #[argh(switch, short = 'V')]
    pub(crate) version: bool,
    #[argh(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum Command {
    Serve(Serve),
    Submit(Submit),
    Do(Do),
    List(List),
    Show(Show),
    Logs(Logs),
    Cancel(Cancel),
    Kill(Kill),
    Retry(Retry),
    Purge(Purge),
    Queue(Queue),
    Dlq(Dlq),
    Agents(Agents),
    Sessions(Sessions),
    Watch(Watch),
    Doctor(Doctor),
    Worker(Worker),
    Instances(Instances),
}

/// Run the Godel server (same as the godel-server binary).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub(crate) struct Serve {
    /// configuration file (default: ./godel.toml if it exists; GODEL_CONFIG)
    #[argh(option)]
    pub(crate) config: Option<PathBuf>,
    /// address to listen on (default 127.0.0.1:7373; GODEL_BIND)
    #[argh(option)]
    pub(crate) bind: Option<String>,
    /// store URL, e.g. sqlite://.godel/godel.db or memory:// (GODEL_STORE)
    #[argh(option)]
    pub(crate) store: Option<String>,
    /// write the process id here at start and remove it at exit
    #[argh(option)]
    pub(crate) pid_file: Option<PathBuf>,
    /// log format: human (default) or json (GODEL_LOG_FORMAT)
    #[argh(option)]
    pub(crate) log_format: Option<String>,
}

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

/// List agents with their load and status.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "agents")]
pub(crate) struct Agents {
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

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

/// Check the server, its store and its agents, and say what to fix.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "doctor")]
pub(crate) struct Doctor {}

/// Run a remote worker: register with a server as an agent, run the tasks it
/// pushes here, stream their output back. A command template after `--`
/// ({prompt}, {task_id}, {attempt}, {workdir}) runs each task; without one,
/// tasks run their own command. SIGTERM or Ctrl-C drains: the tasks in hand
/// finish, nothing new is taken, then it exits 0; a second one exits at once.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "worker")]
pub(crate) struct Worker {
    /// server URL (else the global --server, GODEL_SERVER, ./godel.toml)
    #[argh(option)]
    pub(crate) server: Option<String>,
    /// agent id on the server (default: worker-<hostname>)
    #[argh(option)]
    pub(crate) name: Option<String>,
    /// a capability this worker has (repeat for several)
    #[argh(option, long = "capability")]
    pub(crate) capabilities: Vec<String>,
    /// how many tasks run at once, 1 to 1024 (default 1)
    #[argh(option, default = "1")]
    pub(crate) concurrency: u32,
    /// region, for region-aware routing
    #[argh(option)]
    pub(crate) region: Option<String>,
    /// working directory for tasks (default: the current one)
    #[argh(option)]
    pub(crate) workdir: Option<PathBuf>,
    /// log format: human (default) or json
    #[argh(option)]
    pub(crate) log_format: Option<String>,
}

/// OpenClaw gateways: list, register, deregister, health.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "instances")]
pub(crate) struct Instances {
    #[argh(subcommand)]
    pub(crate) command: InstancesCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub(crate) enum InstancesCommand {
    List(InstancesList),
    Register(InstancesRegister),
    Deregister(InstancesDeregister),
    Health(InstancesHealth),
}

/// List the gateways with their state and sessions.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub(crate) struct InstancesList {
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}

/// Register a gateway; every server sharing the store connects to it.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "register")]
pub(crate) struct InstancesRegister {
    /// a unique name
    #[argh(positional)]
    pub(crate) name: String,
    /// the gateway, ws://host:port
    #[argh(positional)]
    pub(crate) url: String,
    /// an agent id the gateway hosts (repeat for several)
    #[argh(option, long = "agent")]
    pub(crate) agents: Vec<String>,
    /// an extra capability (repeat for several)
    #[argh(option, long = "capability")]
    pub(crate) capabilities: Vec<String>,
    /// the gateway's session limit (default 10; Godel fills 90%)
    #[argh(option)]
    pub(crate) max_sessions: Option<u32>,
    /// region
    #[argh(option)]
    pub(crate) region: Option<String>,
    /// environment variable holding the token on the server nodes
    #[argh(option)]
    pub(crate) token_env: Option<String>,
    /// environment variable holding the password on the server nodes
    #[argh(option)]
    pub(crate) password_env: Option<String>,
}

/// Deregister a gateway registered through the API.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "deregister")]
pub(crate) struct InstancesDeregister {
    /// its name
    #[argh(positional)]
    pub(crate) name: String,
}

/// A gateway's health as the server sees it (exit 1 if it takes no work).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "health")]
pub(crate) struct InstancesHealth {
    /// its name
    #[argh(positional)]
    pub(crate) name: String,
    /// print JSON
    #[argh(switch)]
    pub(crate) json: bool,
}
