//! `godel queue depth` and `godel queue health`.

use std::time::Duration;

use godel_sdk::Client;

use crate::args::{self, QueueCommand};
use crate::exit::CliResult;
use crate::output::{self, paint, table};

pub(crate) async fn run(client: &Client, a: args::Queue) -> CliResult {
    match a.command {
        QueueCommand::Depth(a) => depth(client, a.json).await,
        QueueCommand::Health(a) => health(client, a.json).await,
    }
}

async fn depth(client: &Client, json: bool) -> CliResult {
    let depth = client.queue_depth().await?;
    if json {
        output::json(&depth);
        return Ok(());
    }
    let rows = vec![
        vec!["critical".into(), depth.critical.to_string()],
        vec!["high".into(), depth.high.to_string()],
        vec!["medium".into(), depth.medium.to_string()],
        vec!["low".into(), depth.low.to_string()],
        vec![paint("total", "1"), depth.total.to_string()],
    ];
    output::out(&table(&["PRIORITY", "READY"], &rows));
    Ok(())
}

async fn health(client: &Client, json: bool) -> CliResult {
    let h = client.queue_health().await?;
    if json {
        output::json(&h);
        return Ok(());
    }
    let colour = match h.status.as_str() {
        "healthy" => "32",
        "degraded" => "33",
        _ => "31",
    };
    output::out(&format!("status   {}", paint(&h.status, colour)));
    for reason in &h.reasons {
        output::out(&format!("         - {reason}"));
    }
    output::out(&format!(
        "tasks    {} ready, {} scheduled, {} running, {} dead-lettered, {} stale leases, {} quarantined",
        h.ready,
        h.scheduled,
        h.running + h.assigned,
        h.dead_letters,
        h.stale_leases,
        h.quarantined
    ));
    if let Some(ms) = h.oldest_pending_age_ms {
        output::out(&format!(
            "oldest   waiting {}",
            humantime::format_duration(Duration::from_millis(ms / 1000 * 1000))
        ));
    }
    output::out(&format!(
        "agents   {} of {} online, {} free slots",
        h.agents.online, h.agents.total, h.agents.free_slots
    ));
    output::out(&format!("rate     {} completed in the last minute", h.completed_last_minute));
    Ok(())
}
