//! `godel worker`: a remote worker that registers with a server as an agent
//! and runs the tasks it pushes here. It handles its own signals: the first
//! drains, a second exits at once.

use godel_sdk::embed::{CancellationToken, ProcessConfig, WorkDir};
use godel_sdk::worker::{Worker, WorkerOptions};
use godel_server::config::LogFormat;
use tokio::signal::unix::{SignalKind, signal};

use crate::args;
use crate::commands::{Global, credentials, server_address};
use crate::exit::{CliResult, Exit, Failure};

/// `godel worker`: runs until drained (by the server, or by the first
/// SIGTERM/SIGINT); a second signal exits at once with 130.
pub(crate) async fn run(global: Global, a: args::Worker, template: Vec<String>) -> CliResult {
    let format = match a.log_format.as_deref().map(str::parse::<LogFormat>).transpose() {
        Ok(format) => format.unwrap_or_default(),
        Err(e) => return Err(Failure::usage(format!("invalid --log-format: {e}"))),
    };
    godel_server::daemon::init_logging(format);
    let (server, _) = server_address(a.server.or(global.server));
    let api_key = credentials::lookup(a.api_key.or(global.api_key), &server).map(|c| c.key);
    let name = match a.name {
        Some(name) => name,
        None => format!("worker-{}", hostname()),
    };
    let process = ProcessConfig {
        command: (!template.is_empty()).then_some(template),
        workdir: a.workdir.map_or(WorkDir::Inherit, WorkDir::Shared),
        env: Vec::new(),
        runs: None,
    };
    let options = WorkerOptions {
        server,
        tls: global.tls,
        name,
        capabilities: a.capabilities,
        concurrency: a.concurrency,
        region: a.region,
        process,
        // A key with the worker role (or admin).
        api_key,
    };
    let worker = Worker::new(options).map_err(|e| Failure::usage(e.to_string()))?;
    let drain = CancellationToken::new();
    let signals = async {
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| Failure::new(Exit::Internal, format!("cannot handle SIGTERM: {e}")))?;
        let next = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        next.await;
        drain.cancel();
        let again = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        again.await;
        Err::<(), _>(Failure::new(Exit::Interrupted, "interrupted while draining"))
    };
    tokio::select! {
        result = worker.run(drain.clone()) => {
            result?;
            Ok(())
        }
        Err(failure) = signals => Err(failure),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}
