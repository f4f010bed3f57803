//! `godel keys`, `godel audit`, `godel login` and `godel logout`.

use std::io::BufRead;

use godel_sdk::embed::Timestamp;
use godel_sdk::{
    AuditOutcome, Client, ClientOptions, CreateKey, Error as SdkError, ErrorCode, KeyId, KeyView, ListAudit, Role,
    TlsOptions,
};

use crate::args::{self, KeysCommand};
use crate::commands::{age, credentials, duration, parsed};
use crate::exit::{CliResult, Exit, Failure};
use crate::output::{self, table};

pub(crate) async fn run(client: &Client, a: args::Keys) -> CliResult {
    match a.command {
        KeysCommand::Create(a) => create(client, a).await,
        KeysCommand::List(a) => {
            let keys = client.keys(a.tenant.as_deref()).await?;
            if a.json {
                output::json(&keys);
            } else {
                output::out(&key_table(&keys));
            }
            Ok(())
        }
        KeysCommand::Revoke(a) => {
            let key = client.revoke_key(key_id(&a.id)?).await?;
            if a.json {
                output::json(&key);
            } else {
                output::out(&format!("revoked {} ({})", key.id, key.name));
            }
            Ok(())
        }
        KeysCommand::Rotate(a) => rotate(client, a).await,
    }
}

async fn create(client: &Client, a: args::KeysCreate) -> CliResult {
    let request =
        CreateKey { name: a.name, role: parsed::<Role>("role", &a.role)?, tenant: a.tenant, expires_in: a.expires_in };
    let created = client.create_key(&request).await?;
    if a.json {
        output::json(&created);
        return Ok(());
    }
    output::err(&format!(
        "created key {} ({}, role {}, tenant {}); its secret is shown this once:",
        created.key.id, created.key.name, created.key.role, created.key.tenant
    ));
    output::out(&created.secret);
    Ok(())
}

async fn rotate(client: &Client, a: args::KeysRotate) -> CliResult {
    let grace = duration("grace", &a.grace)?;
    let rotated = client.rotate_key(key_id(&a.id)?, grace).await?;
    if a.json {
        output::json(&rotated);
        return Ok(());
    }
    let until = rotated.previous.expires_at.map_or_else(|| "now".to_owned(), |t| t.to_string());
    output::err(&format!(
        "new key {} replaces {} (which works until {until}); its secret is shown this once:",
        rotated.key.id, rotated.previous.id
    ));
    output::out(&rotated.secret);
    Ok(())
}

/// `godel audit`.
pub(crate) async fn audit(client: &Client, a: args::Audit) -> CliResult {
    let since = a.since.as_deref().map(since).transpose()?;
    let query = ListAudit {
        tenant: a.tenant,
        action: a.action,
        outcome: a.outcome.as_deref().map(|o| parsed::<AuditOutcome>("outcome", o)).transpose()?,
        credential: a.credential,
        since,
        until: None,
        limit: a.limit,
        cursor: a.cursor,
    };
    let page = client.audit(&query).await?;
    if a.json {
        output::json(&page);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|e| {
            vec![
                e.at.to_string(),
                e.action.clone(),
                e.outcome.as_str().to_owned(),
                e.status.to_string(),
                e.credential.clone().unwrap_or_else(|| "-".into()),
                e.tenant.clone(),
                e.target.clone().unwrap_or_else(|| "-".into()),
                e.source.clone(),
            ]
        })
        .collect();
    output::out(&table(&["AT", "ACTION", "OUTCOME", "STATUS", "CREDENTIAL", "TENANT", "TARGET", "SOURCE"], &rows));
    if let Some(cursor) = page.next_cursor {
        output::err(&format!("more: godel audit --cursor {cursor}"));
    }
    Ok(())
}

/// `godel login`: checks the key against `server` (trusting `tls`'s CA file
/// if one is given), then saves it.
pub(crate) async fn login(server: &str, tls: &TlsOptions, a: args::Login) -> CliResult {
    let key = match a.with_token {
        Some(key) => key,
        None => {
            output::err(&format!("paste an API key for {server} and press Enter:"));
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(|e| Failure::io("cannot read standard input", &e))?;
            line
        }
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(Failure::usage("no API key given (pipe it to standard input or pass --with-token)"));
    }
    let client = Client::with_tls(server, ClientOptions::default(), tls)?.with_api_key(key)?;
    // Any answer but 401 proves the key: a key whose role may not read the
    // queue (a worker key) is refused with 403, after authenticating.
    match client.queue_depth().await {
        Ok(_) | Err(SdkError::Api { code: ErrorCode::Forbidden, .. }) => {}
        Err(SdkError::Api { code: ErrorCode::Unauthorized, message, .. }) => {
            return Err(Failure::new(Exit::Refused, format!("{server} did not accept the key: {message}")));
        }
        Err(e) => return Err(e.into()),
    }
    let path = credentials::save(server, key)?;
    output::err(&format!("logged in to {server}; the key is saved in {}", path.display()));
    Ok(())
}

/// `godel logout`.
pub(crate) fn logout(server: &str) -> CliResult {
    if credentials::forget(server)? {
        output::err(&format!("logged out of {server}"));
    } else {
        output::err(&format!("no key was saved for {server}"));
    }
    Ok(())
}

fn key_table(keys: &[KeyView]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let state = if k.revoked_at.is_some() {
                "revoked".to_owned()
            } else if k.expires_at.is_some_and(|at| at <= Timestamp::now()) {
                "expired".to_owned()
            } else {
                "active".to_owned()
            };
            vec![
                k.id.to_string(),
                k.name.clone(),
                k.role.to_string(),
                k.tenant.clone(),
                k.prefix.clone(),
                state,
                k.expires_at.map_or_else(|| "-".into(), |t| t.to_string()),
                k.last_used_at.map_or_else(|| "never".into(), age),
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "TENANT", "PREFIX", "STATE", "EXPIRES", "LAST USED"], &rows)
}

fn key_id(raw: &str) -> CliResult<KeyId> {
    raw.parse()
        .map_err(|_| Failure::usage(format!("{raw:?} is not a key id (expected a UUID as `godel keys list` prints)")))
}

/// `--since`: an RFC 3339 time, or a duration meaning that long ago.
fn since(value: &str) -> CliResult<Timestamp> {
    if let Ok(t) = Timestamp::parse_rfc3339("since", value) {
        return Ok(t);
    }
    let ago = duration("since", value)?;
    let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    Ok(Timestamp::from_millis(Timestamp::now().as_millis().saturating_sub(ago)))
}
