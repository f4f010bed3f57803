//! The event stream: live delivery in sequence order, patterns, replay with
//! `events_since`, and what happens when the connection drops (a proxy is
//! cut), when the server restarts on the same port and store, and when the
//! server says the connection fell behind (a scripted fake server, since a
//! real one only lags under a flood).

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use godel_sdk::embed::{TaskId, TaskStatus};
use godel_sdk::{Client, Error, Event, EventStream, SubmitTask};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::support::{DEADLINE, Proxy, TestServer, events_until, next_event, next_item, wait_for};

/// The lifecycle of a task that runs once and completes, as the stream shows it.
const COMPLETED_ONCE: [&str; 4] = ["task.created", "task.assigned", "task.started", "task.completed"];

fn kinds_of(events: &[Event], task: TaskId) -> Vec<&str> {
    events.iter().filter(|e| e.task_id() == Some(task) && e.kind != "task.output").map(|e| e.kind.as_str()).collect()
}

fn assert_increasing(events: &[Event]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers strictly increase: {seqs:?}");
}

#[tokio::test]
async fn task_events_arrive_live_in_sequence_order() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let mut events = client.events(&["task.*"]);
    events.subscribed().await?;
    events.subscribed().await?; // once confirmed, at once

    let task = client.submit(&SubmitTask::command(["sh", "-c", "echo out"])).await?;
    let seen = events_until(&mut events, task.id, "task.completed").await?;
    assert_increasing(&seen);
    assert!(seen.iter().all(|e| e.kind.starts_with("task.")), "only task events match task.*");
    assert_eq!(kinds_of(&seen, task.id), COMPLETED_ONCE);
    let output: String =
        seen.iter().filter(|e| e.kind == "task.output").filter_map(|e| e.data["data"].as_str()).collect();
    assert_eq!(output, "out\n");
    let created = &seen[0];
    assert_eq!((created.kind.as_str(), created.task_id()), ("task.created", Some(task.id)));
    assert_eq!(created.data["priority"], json!("medium"));
    let completed = seen.last().expect("events");
    assert_eq!(completed.data["attempt"], json!(1));
    server.stop().await
}

#[tokio::test]
async fn patterns_select_events_and_none_means_all() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let mut completions = client.events(&["task.completed"]);
    let mut everything = client.events(&[]);
    completions.subscribed().await?;
    everything.subscribed().await?;

    let task = client.submit(&SubmitTask::command(["true"])).await?;
    let completed = next_event(&mut completions).await?;
    assert_eq!((completed.kind.as_str(), completed.task_id()), ("task.completed", Some(task.id)));

    let seen = events_until(&mut everything, task.id, "task.completed").await?;
    assert_increasing(&seen);
    let families: HashSet<&str> = seen.iter().filter_map(|e| e.kind.split('.').next()).collect();
    assert!(families.contains("task") && families.contains("session"), "{families:?}");
    let completed_everywhere: Vec<&Event> = seen.iter().filter(|e| e.kind == "task.completed").collect();
    assert_eq!(completed_everywhere, [&completed], "both streams see the same event, numbered the same");
    server.stop().await
}

#[tokio::test]
async fn an_invalid_pattern_ends_the_stream_with_a_protocol_error() -> Result<()> {
    let mut server = TestServer::start().await?;
    let mut events = server.client().events(&["Not A Pattern"]);
    let err = events.subscribed().await.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert!(events.next().await.is_none(), "the stream ends: asking again would not help");

    let mut events = server.client().events(&["task.*", "nope"]);
    assert!(matches!(next_item(&mut events).await?, Err(Error::Protocol { .. })));
    assert!(events.next().await.is_none());
    server.stop().await
}

#[tokio::test]
async fn events_since_replays_what_came_after_exactly_once() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let mut live = client.events(&["task.*"]);
    live.subscribed().await?;
    let first = client.submit(&SubmitTask::command(["sh", "-c", "echo one"])).await?;
    let before = events_until(&mut live, first.id, "task.completed").await?;
    assert!(before.len() >= 4);

    // From the middle of the first task's events: the rest of them, then live ones.
    let cut = before[1].seq;
    let mut resumed = client.events_since(&["task.*"], cut);
    resumed.subscribed().await?;
    let second = client.submit(&SubmitTask::command(["true"])).await?;
    let after = events_until(&mut resumed, second.id, "task.completed").await?;
    assert_eq!(after[..before.len() - 2], before[2..], "the replay is the events after {cut}, unchanged");
    assert_increasing(&after);
    assert_eq!(kinds_of(&after, second.id), COMPLETED_ONCE);
    assert!(after.iter().all(|e| e.seq > cut));

    // A pattern narrows the replay too; as a plain boxed stream it is the same.
    let completions = client.events_since(&["task.completed"], 0).into_inner();
    let replayed = tokio::time::timeout(DEADLINE, completions.take(2).collect::<Vec<_>>()).await?;
    let replayed = replayed.into_iter().collect::<Result<Vec<Event>, Error>>()?;
    assert_eq!(replayed.iter().map(Event::task_id).collect::<Vec<_>>(), [Some(first.id), Some(second.id)]);
    server.stop().await
}

#[tokio::test]
async fn a_dropped_connection_resumes_without_loss_or_repeats() -> Result<()> {
    let mut server = TestServer::start().await?;
    let direct = server.client().clone();
    let proxy = Proxy::start(server.addr()).await?;
    let client = server.client_at(&proxy.url())?;
    let mut events = client.events(&["task.*"]);
    events.subscribed().await?;
    let first = direct.submit(&SubmitTask::command(["true"])).await?;
    let mut seen = events_until(&mut events, first.id, "task.completed").await?;

    // While the network is gone a task runs from start to end.
    proxy.cut();
    let err = next_item(&mut events).await?.expect_err("no event while cut off");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let second = direct.submit(&SubmitTask::command(["sh", "-c", "echo missed"])).await?;
    wait_for(&direct, second.id, TaskStatus::Completed).await?;
    proxy.heal();

    // Connection attempts may still fail until the proxy accepts again.
    loop {
        match next_item(&mut events).await? {
            Err(Error::Unreachable { .. }) => continue,
            Err(other) => bail!("nothing is missed, yet got {other:?}"),
            Ok(event) => {
                let done = event.task_id() == Some(second.id) && event.kind == "task.completed";
                seen.push(event);
                if done {
                    break;
                }
            }
        }
    }
    assert_increasing(&seen);
    assert_eq!(kinds_of(&seen, second.id), COMPLETED_ONCE, "replayed after the reconnect, once each");
    let output: String = seen
        .iter()
        .filter(|e| e.task_id() == Some(second.id) && e.kind == "task.output")
        .filter_map(|e| e.data["data"].as_str())
        .collect();
    assert_eq!(output, "missed\n");
    server.stop().await
}

#[tokio::test]
async fn a_stream_that_saw_no_event_yet_still_resumes_where_it_went_live() -> Result<()> {
    let mut server = TestServer::start().await?;
    let direct = server.client().clone();
    let proxy = Proxy::start(server.addr()).await?;
    let mut events = server.client_at(&proxy.url())?.events(&["task.*"]);
    events.subscribed().await?;

    proxy.cut();
    let task = direct.submit(&SubmitTask::command(["true"])).await?;
    wait_for(&direct, task.id, TaskStatus::Completed).await?;
    proxy.heal();
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Event| e.kind == "task.completed") {
        match next_item(&mut events).await? {
            Err(Error::Unreachable { .. }) => {}
            item => seen.push(item.context("nothing is missed")?),
        }
    }
    assert_eq!(kinds_of(&seen, task.id), COMPLETED_ONCE);
    server.stop().await
}

#[tokio::test]
async fn a_restarted_server_is_reported_and_its_new_run_replayed_from_the_start() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client().clone();
    let mut events = client.events(&["task.*"]);
    events.subscribed().await?;
    let first = client.submit(&SubmitTask::command(["true"])).await?;
    let before = events_until(&mut events, first.id, "task.completed").await?;
    let last_seq = before.last().expect("events").seq;

    server.stop().await?;
    match next_item(&mut events).await? {
        Err(Error::Unreachable { url, .. }) => {
            let resume = format!("ws://{}/events?since={last_seq}&epoch=", server.addr());
            assert!(url.starts_with(&resume), "reconnects asking for what followed: {url}");
        }
        other => bail!("expected Unreachable while the server is down, got {other:?}"),
    }

    // The new run does work before the stream is polled again.
    server.restart().await?;
    let early = client.submit(&SubmitTask::command(["true"])).await?;
    wait_for(&client, early.id, TaskStatus::Completed).await?;

    let missed = loop {
        match next_item(&mut events).await? {
            Err(Error::Unreachable { .. }) => continue,
            Err(e @ Error::EventsMissed { .. }) => break e,
            other => bail!("expected EventsMissed after the restart, got {other:?}"),
        }
    };
    assert!(matches!(missed, Error::EventsMissed { missed: 0, .. }), "how many is unknown: {missed:?}");

    // The new run's events come from its start, then live ones, with no further errors.
    let replayed = events_until(&mut events, early.id, "task.completed").await?;
    assert_eq!(kinds_of(&replayed, early.id), COMPLETED_ONCE);
    assert!(replayed[0].seq < last_seq, "the new run numbers from 1 again");
    let late = client.submit(&SubmitTask::command(["true"])).await?;
    let live = events_until(&mut events, late.id, "task.completed").await?;
    assert_eq!(kinds_of(&live, late.id), COMPLETED_ONCE);
    assert_increasing(&[replayed, live].concat());
    server.stop().await
}

#[tokio::test]
async fn events_since_a_number_from_an_earlier_run_reports_the_gap() -> Result<()> {
    let mut server = TestServer::start().await?;
    let client = server.client();
    let task = client.submit(&SubmitTask::command(["true"])).await?;
    wait_for(client, task.id, TaskStatus::Completed).await?;

    // As if kept from a run that had got much further.
    let mut events = client.events_since(&["task.*"], 1_000_000);
    events.subscribed().await?;
    let err = next_item(&mut events).await?.expect_err("the gap is reported first");
    assert!(matches!(err, Error::EventsMissed { .. }), "{err:?}");
    let seen = events_until(&mut events, task.id, "task.completed").await?;
    assert_eq!(kinds_of(&seen, task.id), COMPLETED_ONCE, "then this run from its start");
    server.stop().await
}

/// A fake `/events` endpoint: accepts one connection and returns the
/// request's path and query with the socket.
async fn accept(listener: &TcpListener) -> Result<(String, WebSocketStream<TcpStream>)> {
    let (tcp, _) = listener.accept().await?;
    let mut uri = String::new();
    #[allow(clippy::result_large_err, reason = "tungstenite's callback type fixes the error type")]
    let socket = tokio_tungstenite::accept_hdr_async(tcp, |request: &Request, response: Response| {
        uri = request.uri().to_string();
        Ok(response)
    })
    .await?;
    Ok((uri, socket))
}

async fn send(socket: &mut WebSocketStream<TcpStream>, value: Value) -> Result<()> {
    socket.send(Message::text(value.to_string())).await?;
    Ok(())
}

fn event(seq: u64) -> Value {
    json!({"seq": seq, "type": "task.output", "at": "2026-01-01T00:00:00.000Z", "data": {"data": seq.to_string()}})
}

#[tokio::test]
async fn a_lagged_connection_is_replaced_and_the_gap_replayed() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let client = Client::new(&format!("http://{}", listener.local_addr()?))?;
    let mut events: EventStream = client.events(&["task.*"]);

    let server = async {
        let (uri, mut socket) = accept(&listener).await?;
        assert_eq!(uri, "/events");
        let subscribe: Value = serde_json::from_str(socket.next().await.context("subscribe")??.to_text()?)?;
        assert_eq!(subscribe, json!({"action": "subscribe", "patterns": ["task.*"]}));
        send(&mut socket, json!({"type": "welcome", "seq": 10, "epoch": "run-1", "replay_window": 100})).await?;
        send(&mut socket, json!({"type": "subscribed", "patterns": ["task.*"]})).await?;
        send(&mut socket, event(11)).await?;
        send(&mut socket, json!({"type": "lagged", "missed": 5, "message": "fell behind"})).await?;
        // After the gap, and never to be delivered before 12..16. The client
        // may already have hung up, so a failed send is fine.
        let _ = send(&mut socket, event(17)).await;

        let (uri, mut socket) = accept(&listener).await?;
        assert_eq!(uri, "/events?since=11&epoch=run-1", "resumes after the last event delivered");
        socket.next().await.context("subscribe")??;
        send(&mut socket, json!({"type": "welcome", "seq": 18, "epoch": "run-1", "replay_window": 100})).await?;
        send(&mut socket, json!({"type": "subscribed", "patterns": ["task.*"]})).await?;
        for seq in 12..=18 {
            send(&mut socket, event(seq)).await?;
        }
        anyhow::Ok(socket)
    };
    let reader = async {
        let mut seqs = Vec::new();
        while seqs.len() < 8 {
            seqs.push(next_event(&mut events).await?.seq);
        }
        anyhow::Ok(seqs)
    };
    // The first to fail fails the test; the reader's own reads time out.
    let (_socket, seqs) = tokio::try_join!(server, reader)?;
    assert_eq!(seqs, (11..=18).collect::<Vec<_>>(), "no error item: the replay filled the gap");
    Ok(())
}
