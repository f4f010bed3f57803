//! `godel instances`: list, register, deregister and check OpenClaw
//! gateways.

use argh::FromArgs;

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
