//! The command line, as argh structs, one file per command or group of
//! commands. Help texts here are what `--help` prints.

mod agents;
mod dlq;
mod doctor;
mod instances;
mod queue;
mod serve;
mod sessions;
mod submit;
mod tasks;
mod watch;
mod worker;

use argh::FromArgs;

pub(crate) use crate::args::agents::Agents;
pub(crate) use crate::args::dlq::{Dlq, DlqCommand, DlqExport, DlqList, DlqReplay};
pub(crate) use crate::args::doctor::Doctor;
pub(crate) use crate::args::instances::{Instances, InstancesCommand, InstancesHealth, InstancesRegister};
pub(crate) use crate::args::queue::{Queue, QueueCommand};
pub(crate) use crate::args::serve::Serve;
pub(crate) use crate::args::sessions::Sessions;
pub(crate) use crate::args::submit::{Do, Submit};
pub(crate) use crate::args::tasks::{Cancel, Kill, List, Logs, Purge, Retry, Show};
pub(crate) use crate::args::watch::Watch;
pub(crate) use crate::args::worker::Worker;

/// Godel: a control plane for fleets of AI agent sessions.
///
/// The server address comes from --server, then GODEL_SERVER, then the `bind`
/// key of ./godel.toml, then http://127.0.0.1:7373.
#[derive(FromArgs, Debug)]
pub(crate) struct Cli {
    /// server URL, e.g. http://127.0.0.1:7373
    #[argh(option)]
    pub(crate) server: Option<String>,
    /// PEM file of the CA certificates an https:// server's certificate is
    /// checked against, instead of the web PKI roots (else GODEL_CA_FILE)
    #[argh(option)]
    pub(crate) ca_file: Option<std::path::PathBuf>,
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
