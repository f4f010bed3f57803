//! `godel worker`: how a remote worker registers and runs tasks.

use std::path::PathBuf;

use argh::FromArgs;

/// Run a remote worker: register with a server as an agent, run the tasks it
/// pushes here, stream their output back. A command template after `--`
/// ({prompt}, {task_id}, {attempt}, {workdir}) runs each task; without one,
/// tasks run their own command. SIGTERM or Ctrl-C drains: the tasks in hand
/// finish, nothing new is taken, then it exits 0; a second one exits at once.
#[derive(FromArgs)]
#[argh(subcommand, name = "worker")]
pub(crate) struct Worker {
    /// server URL (else the global --server, GODEL_SERVER, ./godel.toml)
    #[argh(option)]
    pub(crate) server: Option<String>,
    /// a worker (or admin) API key (else the global --api-key, GODEL_API_KEY,
    /// `godel login`, or a local server's admin.key)
    #[argh(option)]
    pub(crate) api_key: Option<String>,
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

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("server", &self.server)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
