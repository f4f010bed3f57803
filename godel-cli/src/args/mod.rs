//! The command line, as argh structs, one file per command or group of
//! commands. Help texts here are what `--help` prints.

mod agents;
mod dlq;
mod doctor;
mod instances;
mod keys;
mod quarantine;
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
pub(crate) use crate::args::keys::{Audit, Keys, KeysCommand, KeysCreate, KeysRotate, Login, Logout};
pub(crate) use crate::args::quarantine::{
    Quarantine, QuarantineCommand, QuarantineList, QuarantinePurge, QuarantineShow,
};
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
/// key of ./godel.toml, then http://127.0.0.1:7373. The API key comes from
/// --api-key, then GODEL_API_KEY, then `godel login`'s saved key for the
/// server, then the local server's .godel/admin.key (loopback servers only).
#[derive(FromArgs)]
pub(crate) struct Cli {
    /// server URL, e.g. http://127.0.0.1:7373
    #[argh(option)]
    pub(crate) server: Option<String>,
    /// API key (else GODEL_API_KEY, `godel login`, or a local server's admin.key)
    #[argh(option)]
    pub(crate) api_key: Option<String>,
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
    Quarantine(Quarantine),
    Agents(Agents),
    Sessions(Sessions),
    Watch(Watch),
    Doctor(Doctor),
    Worker(Worker),
    Instances(Instances),
    Keys(Keys),
    Audit(Audit),
    Login(Login),
    Logout(Logout),
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("server", &self.server)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("version", &self.version)
            .field("command", &self.command)
            .finish()
    }
}
