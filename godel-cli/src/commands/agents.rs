//! `godel agents`: the agents with their load and status.

use godel_sdk::Client;

use crate::args;
use crate::commands::age;
use crate::exit::CliResult;
use crate::output::{self, paint, table};

pub(crate) async fn run(client: &Client, a: args::Agents) -> CliResult {
    let agents = client.agents().await?;
    if a.json {
        output::json(&agents);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let status = a.status.to_string();
            let colour = match status.as_str() {
                "idle" => "32",
                "busy" => "33",
                _ => "31",
            };
            vec![
                a.id.clone(),
                format!("{:?}", a.kind).to_lowercase(),
                paint(&status, colour),
                format!("{}/{}", a.current_load, a.max_capacity),
                if a.capabilities.is_empty() { "-".into() } else { a.capabilities.join(",") },
                a.last_heartbeat.map_or_else(|| "-".into(), age),
                a.node.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::out(&table(&["ID", "KIND", "STATUS", "LOAD", "CAPABILITIES", "HEARTBEAT", "NODE"], &rows));
    Ok(())
}
