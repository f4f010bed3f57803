//! `godel instances`: list, register, deregister and check the OpenClaw
//! gateways the server connects to.

use godel_sdk::{Client, RegisterInstance};

use crate::args::{self, InstancesCommand};
use crate::exit::{CliResult, Failure};
use crate::output::{self, paint, table};

pub(crate) async fn run(client: &Client, a: args::Instances) -> CliResult {
    match a.command {
        InstancesCommand::List(a) => list(client, a.json).await,
        InstancesCommand::Register(a) => register(client, a).await,
        InstancesCommand::Deregister(a) => {
            client.deregister_instance(&a.name).await?;
            output::out(&format!("deregistered {}", a.name));
            Ok(())
        }
        InstancesCommand::Health(a) => health(client, a).await,
    }
}

async fn list(client: &Client, json: bool) -> CliResult {
    let instances = client.instances().await?;
    if json {
        output::json(&instances);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                paint(&g.state, state_colour(&g.state)),
                format!("{}/{}", g.current_sessions, g.max_sessions),
                g.region.clone().unwrap_or_else(|| "-".into()),
                if g.agents.is_empty() { "-".into() } else { g.agents.join(",") },
                g.url.clone(),
                g.source.clone(),
                g.node.clone(),
                g.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let headers = ["NAME", "STATE", "SESSIONS", "REGION", "AGENTS", "URL", "SOURCE", "NODE", "MESSAGE"];
    output::out(&table(&headers, &rows));
    Ok(())
}

async fn register(client: &Client, a: args::InstancesRegister) -> CliResult {
    let registration = RegisterInstance {
        name: a.name,
        url: a.url,
        token_env: a.token_env,
        token: None,
        password_env: a.password_env,
        agents: a.agents,
        capabilities: a.capabilities,
        max_sessions: a.max_sessions,
        region: a.region,
    };
    let g = client.register_instance(&registration).await?;
    output::out(&format!("registered {} ({}): {}", g.name, g.url, g.state));
    Ok(())
}

async fn health(client: &Client, a: args::InstancesHealth) -> CliResult {
    let h = client.instance_health(&a.name).await?;
    if a.json {
        output::json(&h);
    } else {
        output::out(&format!(
            "{}  {}  {}/{} sessions",
            h.name,
            paint(&h.state, state_colour(&h.state)),
            h.current_sessions,
            h.max_sessions
        ));
        if let Some(message) = &h.message {
            output::out(&format!("  {message}"));
        }
    }
    if h.ok { Ok(()) } else { Err(Failure::failed(format!("gateway {} is {}", h.name, h.state))) }
}

fn state_colour(state: &str) -> &'static str {
    match state {
        "ready" => "32",
        "connecting" | "degraded" => "33",
        _ => "31",
    }
}
