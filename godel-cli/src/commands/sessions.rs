//! `godel sessions`: agent sessions, newest first, with filters.

use godel_sdk::embed::SessionState;
use godel_sdk::{Client, ListSessions};

use crate::args;
use crate::commands::{age, list_of, task_id};
use crate::exit::CliResult;
use crate::output::{self, table};

pub(crate) async fn run(client: &Client, a: args::Sessions) -> CliResult {
    let query = ListSessions {
        state: list_of::<SessionState>("state", a.state.as_deref())?,
        agent_id: a.agent,
        task_id: a.task.as_deref().map(task_id).transpose()?,
        limit: a.limit,
    };
    let sessions = client.sessions(&query).await?;
    if a.json {
        output::json(&sessions);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.agent_id.clone(),
                s.task_id.map_or_else(|| "-".into(), |t| t.to_string()),
                s.state.to_string(),
                age(s.updated_at),
            ]
        })
        .collect();
    output::out(&table(&["ID", "AGENT", "TASK", "STATE", "UPDATED"], &rows));
    Ok(())
}
