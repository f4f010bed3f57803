//! `godel quarantine`: list, show and purge task rows that did not decode.

use godel_sdk::Client;

use crate::args::{self, QuarantineCommand};
use crate::commands::task_id;
use crate::exit::{CliResult, Failure};
use crate::output::{self, clip, table};

pub(crate) async fn run(client: &Client, a: args::Quarantine) -> CliResult {
    match a.command {
        QuarantineCommand::List(a) => list(client, a).await,
        QuarantineCommand::Show(a) => show(client, a).await,
        QuarantineCommand::Purge(a) => purge(client, a).await,
    }
}

async fn list(client: &Client, a: args::QuarantineList) -> CliResult {
    let page = client.quarantine(a.limit, a.cursor.as_deref()).await?;
    if a.json {
        output::json(&page);
        return Ok(());
    }
    if page.items.is_empty() {
        output::err("the quarantine is empty");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page.items.iter().map(|q| vec![q.id.clone(), clip(&q.error, 80)]).collect();
    output::out(&table(&["ID", "ERROR"], &rows));
    if let Some(cursor) = page.next_cursor {
        output::err(&format!("more: godel quarantine list --cursor {cursor}"));
    }
    Ok(())
}

async fn show(client: &Client, a: args::QuarantineShow) -> CliResult {
    let row = client.quarantined(task_id(&a.id)?).await?;
    if a.json {
        output::json(&row);
        return Ok(());
    }
    output::out(&format!("id     {}", row.id));
    output::out(&format!("error  {}", row.error));
    // The row is a JSON object of text values; pretty-print it when it parses.
    let raw = serde_json::from_str::<serde_json::Value>(&row.raw)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(row.raw);
    output::out(&format!("row    {raw}"));
    Ok(())
}

async fn purge(client: &Client, a: args::QuarantinePurge) -> CliResult {
    match (a.id, a.all) {
        (Some(id), false) => {
            client.drop_quarantined(task_id(&id)?).await?;
            output::out(&format!("quarantined row {id} deleted"));
        }
        (None, true) => {
            let purged = client.purge_quarantine().await?;
            output::out(&format!("{purged} quarantined rows deleted"));
        }
        _ => return Err(Failure::usage("give a task id or --all")),
    }
    Ok(())
}
