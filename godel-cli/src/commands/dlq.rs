//! `godel dlq`: list, replay and export the dead-letter queue.

use godel_sdk::embed::Priority;
use godel_sdk::{Client, ListTasks};

use crate::args::{self, DlqCommand};
use crate::commands::{age, list_of, note_quarantined, task_id};
use crate::exit::{CliResult, Failure};
use crate::output::{self, clip, table};

pub(crate) async fn run(client: &Client, a: args::Dlq) -> CliResult {
    match a.command {
        DlqCommand::List(a) => list(client, a).await,
        DlqCommand::Replay(a) => replay(client, a).await,
        DlqCommand::Export(a) => export(client, a).await,
    }
}

async fn list(client: &Client, a: args::DlqList) -> CliResult {
    let query = ListTasks {
        limit: a.limit,
        priority: list_of("priority", a.priority.as_deref())?,
        newest_first: true,
        ..ListTasks::default()
    };
    let page = client.dead_letters(&query).await?;
    if a.json {
        output::json(&page);
        return Ok(());
    }
    note_quarantined(&page.quarantined);
    if page.items.is_empty() {
        output::err("the dead-letter queue is empty");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.priority.to_string(),
                t.attempt.to_string(),
                t.dead_lettered_at.map_or_else(|| "-".into(), age),
                clip(t.error.as_ref().map_or("", |e| &e.message), 60),
            ]
        })
        .collect();
    output::out(&table(&["ID", "PRIORITY", "ATTEMPTS", "DEAD", "ERROR"], &rows));
    Ok(())
}

async fn replay(client: &Client, a: args::DlqReplay) -> CliResult {
    match (a.id, a.all) {
        (Some(id), false) => {
            if a.priority.is_some() {
                return Err(Failure::usage("--priority goes with --all"));
            }
            let task = client.replay_dead_letter(task_id(&id)?).await?;
            output::out(&format!("task {} is pending again", task.id));
        }
        (None, true) => {
            let priorities: Vec<Priority> = list_of("priority", a.priority.as_deref())?;
            let n = client.replay_dead_letters(&priorities).await?;
            output::out(&format!("{n} dead-lettered task(s) replayed"));
        }
        _ => return Err(Failure::usage("give a task id, or --all to replay every dead-lettered task")),
    }
    Ok(())
}

async fn export(client: &Client, a: args::DlqExport) -> CliResult {
    let ndjson = client.export_dead_letters().await?;
    match a.output {
        Some(path) => {
            std::fs::write(&path, &ndjson).map_err(|e| Failure::io(&format!("cannot write {}", path.display()), &e))?;
            output::err(&format!("{} task(s) written to {}", ndjson.lines().count(), path.display()));
        }
        None => output::out_raw(&ndjson),
    }
    Ok(())
}
