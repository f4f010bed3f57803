//! `godel watch`: live events matching patterns, one line (or one JSON
//! object) each, reconnecting when the stream drops.

use futures::StreamExt;
use godel_sdk::Client;
use godel_sdk::embed::EventPattern;
use serde_json::Value;

use crate::args;
use crate::exit::{CliResult, Failure};
use crate::output::{self, clip, paint};

pub(crate) async fn run(client: &Client, a: args::Watch) -> CliResult {
    for pattern in &a.patterns {
        EventPattern::new(pattern).map_err(|e| Failure::usage(e.to_string()))?;
    }
    let patterns: Vec<&str> =
        if a.patterns.is_empty() { vec!["*"] } else { a.patterns.iter().map(String::as_str).collect() };
    let mut events = match a.since {
        Some(since) => client.events_since(&patterns, since),
        None => client.events(&patterns),
    };
    let mut seen = 0;
    let mut failures = 0;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e @ godel_sdk::Error::Unreachable { .. }) => {
                failures += 1;
                if failures == 1 && seen == 0 {
                    return Err(e.into());
                }
                output::err(&paint(&format!("reconnecting: {e}"), "2"));
                continue;
            }
            // A refused credential: the stream has ended.
            Err(e @ godel_sdk::Error::Api { .. }) => return Err(e.into()),
            Err(e) => {
                output::err(&paint(&format!("warning: {e}"), "33"));
                continue;
            }
        };
        failures = 0;
        if a.json {
            output::out(&serde_json::to_string(&event).unwrap_or_default());
        } else {
            output::out(&format!("{:>6} {} {:<22} {}", event.seq, event.at, event.kind, summary(&event.data)));
        }
        seen += 1;
        if a.count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
    }
    Ok(())
}

fn summary(data: &Value) -> String {
    let Some(map) = data.as_object() else { return String::new() };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={}", clip(s, 60)),
            other => format!("{k}={}", clip(&other.to_string(), 60)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
