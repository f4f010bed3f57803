//! `godel doctor`: checks the server, its store, its agents and its queue,
//! and says what to fix; exits 1 when it found a problem.

use godel_sdk::Client;
use godel_sdk::embed::AgentStatus;

use crate::exit::{CliResult, Failure};
use crate::output::{self, paint};

/// `source` says where the server address came from.
pub(crate) async fn run(client: &Client, source: &str) -> CliResult {
    let url = client.base_url().to_owned();
    let mut problems = 0;
    let mut check = |ok: bool, line: String| {
        if ok {
            output::out(&format!("{} {line}", paint("✓", "32")));
        } else {
            problems += 1;
            output::out(&format!("{} {line}", paint("✗", "31")));
        }
    };
    let warn = |line: String| output::out(&format!("{} {line}", paint("!", "33")));
    let health = match client.health().await {
        Ok(health) => {
            check(true, format!("server {url} answers (address from {source}), version {}", health.version));
            health
        }
        Err(e) => {
            check(false, format!("server {url} (address from {source}): {}", Failure::from(e).message));
            return Err(Failure::failed(format!("{problems} problem(s) found")));
        }
    };
    let store = &health.store;
    check(
        store.ok,
        match &store.error {
            None => format!("store {} answers in {:.1} ms", store.backend, store.latency_ms),
            Some(e) => {
                format!("store {} fails: {e}; check the store URL and that the database is running", store.backend)
            }
        },
    );
    match client.ready().await {
        Ok(()) => check(true, "the server is ready for work".into()),
        Err(e) => check(false, format!("the server is not ready: {}", Failure::from(e).message)),
    }
    match client.agents().await {
        Ok(agents) => {
            let online = agents.iter().filter(|a| matches!(a.status, AgentStatus::Idle | AgentStatus::Busy)).count();
            check(
                online > 0,
                if online > 0 {
                    format!("{online} of {} agents online", agents.len())
                } else {
                    format!(
                        "no agent online ({} configured); add [[agents]] to godel.toml or register one",
                        agents.len()
                    )
                },
            );
            for agent in agents.iter().filter(|a| matches!(a.status, AgentStatus::Offline | AgentStatus::Error)) {
                check(false, format!("agent {} is {}; check its runtime", agent.id, agent.status));
            }
        }
        Err(e) => check(false, format!("cannot list agents: {}", Failure::from(e).message)),
    }
    if let Some(queue) = &health.queue {
        // A degraded queue (dead letters, a backlog) deserves a look but is not a broken setup.
        match queue.status.as_str() {
            "healthy" => check(true, "queue is healthy".into()),
            "degraded" => warn("queue is degraded".into()),
            other => check(false, format!("queue is {other}")),
        }
        for reason in &queue.reasons {
            output::out(&format!("    - {reason}"));
        }
        // Rows that do not decode mean something else wrote to the database: a problem, not a backlog.
        if queue.quarantined > 0 {
            check(
                false,
                format!(
                    "{} task rows do not decode and are quarantined; see `godel quarantine list`",
                    queue.quarantined
                ),
            );
        }
    }
    if problems > 0 {
        return Err(Failure::failed(format!("{problems} problem(s) found")));
    }
    output::out(&paint("no problems found", "32"));
    Ok(())
}
