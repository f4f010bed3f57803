//! The `/events` WebSocket.
//!
//! A client subscribes with `{"action":"subscribe","patterns":["task.*"]}`
//! (or `?patterns=task.*,agent.*` in the URL) and unsubscribes the same way.
//! Every event carries its sequence number; a client that reconnects with
//! `?since=<seq>` first gets the kept events it missed, then the live ones,
//! with nothing lost or repeated at the seam. If they are no longer kept it
//! gets a `replay_unavailable` message saying so, then the live stream; the
//! same happens when the `epoch` it passes (from the `welcome` message) names
//! an earlier run of the server, whose numbering does not carry over. The
//! server pings every 20 s and closes a connection that has not answered for
//! 60 s; at shutdown it closes every connection with code 1001.
//!
//! A connection sees only its tenant's events (the tenant of its credential,
//! or the one an admin named in `/api/v1/tenants/{tenant}/events`); sequence
//! numbers are the server's, so they may skip the numbers of other tenants'
//! events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use godel_core::bus::RecvError;
use godel_core::{EventPattern, Subscription, TenantId};
use godel_wire::events::Control;
use serde::Deserialize;
use serde_json::Value;
use warp::ws::{Message, WebSocket};

use crate::AppState;
use crate::wire::event_json;

const PING_EVERY: Duration = Duration::from_secs(20);
const PONG_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client may send.
#[derive(Deserialize, Debug)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Subscribe { patterns: Vec<String> },
    Unsubscribe { patterns: Vec<String> },
    Ping,
}

/// Parses the comma-separated `patterns` query value.
pub(crate) fn parse_patterns(list: &str) -> Result<Vec<EventPattern>, String> {
    list.split(',').filter(|p| !p.is_empty()).map(|p| EventPattern::new(p).map_err(|e| e.to_string())).collect()
}

/// Serves one connection until the client leaves or the server shuts down.
pub(crate) async fn serve(
    socket: WebSocket,
    state: Arc<AppState>,
    tenant: TenantId,
    resume: Resume,
    patterns: Vec<EventPattern>,
) {
    let (mut tx, mut rx) = socket.split();
    let bus = state.orchestrator.bus();
    let mut connection = Connection { tenant, since: None, subscription: None, last_sent: 0 };
    let welcome_seq = bus.last_seq();
    let welcome = control(Control::Welcome {
        seq: welcome_seq,
        epoch: state.epoch.clone(),
        replay_window: u64::try_from(state.replay_window).unwrap_or(u64::MAX),
    });
    if send(&mut tx, &welcome).await.is_err() {
        return;
    }
    match resume.epoch {
        // Sequence numbers belong to one server run; after a restart they
        // start over. What the old run published is gone; this run's events
        // are replayed from its start.
        Some(epoch) if epoch != state.epoch && resume.since.is_some() => {
            let gone = control(Control::ReplayUnavailable {
                since: resume.since,
                oldest: None,
                message: "the server restarted since that sequence number; events of its previous run are gone. \
                          Events of this run follow from its start"
                    .to_owned(),
            });
            if send(&mut tx, &gone).await.is_err() {
                return;
            }
            connection.since = Some(0);
        }
        // Without `since`, the stream starts at the welcome: nothing published
        // between the welcome and the first subscribe is lost.
        _ => connection.since = Some(resume.since.unwrap_or(welcome_seq)),
    }
    if !patterns.is_empty() {
        for message in connection.subscribe(&state, patterns) {
            if send(&mut tx, &message).await.is_err() {
                return;
            }
        }
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    loop {
        let outgoing: Vec<Value> = tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = tx.send(Message::close_with(1001u16, "server shutting down")).await;
                break;
            }
            incoming = rx.next() => match incoming {
                None | Some(Err(_)) => break,
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    if message.is_close() {
                        break;
                    }
                    if message.is_ping() || message.is_pong() {
                        continue;
                    }
                    match message.to_str() {
                        Ok(text) => connection.handle(&state, text),
                        Err(()) => vec![error("invalid_request", "send JSON text frames, not binary")],
                    }
                }
            },
            published = recv(&mut connection.subscription) => match published {
                Ok(p) if p.seq > connection.last_sent => {
                    connection.last_sent = p.seq;
                    if p.event.tenant == connection.tenant { vec![event_json(&p)] } else { Vec::new() }
                }
                Ok(_) => Vec::new(),
                Err(RecvError::Lagged(n)) => vec![control(Control::Lagged {
                    missed: n,
                    message: format!("this connection fell behind and missed {n} events; reconnect with since={} to resume", connection.last_sent),
                })],
                Err(RecvError::Closed) => break,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > PONG_TIMEOUT {
                    let _ = tx.send(Message::close_with(1001u16, "no pong")).await;
                    break;
                }
                if tx.send(Message::ping(Vec::new())).await.is_err() {
                    break;
                }
                Vec::new()
            }
        };
        for message in outgoing {
            if send(&mut tx, &message).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.close().await;
}

/// Where a reconnecting client left off.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    /// The last sequence number it saw.
    pub(crate) since: Option<u64>,
    /// The server run that numbered it.
    pub(crate) epoch: Option<String>,
}

struct Connection {
    /// Whose events this connection sees.
    tenant: TenantId,
    since: Option<u64>,
    subscription: Option<Subscription>,
    last_sent: u64,
}

impl Connection {
    fn handle(&mut self, state: &AppState, text: &str) -> Vec<Value> {
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return vec![error(
                    "invalid_request",
                    &format!(
                        "{e}; expected {{\"action\":\"subscribe\",\"patterns\":[\"task.*\"]}}, unsubscribe or ping"
                    ),
                )];
            }
        };
        let parse = |patterns: Vec<String>| -> Result<Vec<EventPattern>, String> {
            patterns.iter().map(|p| EventPattern::new(p).map_err(|e| e.to_string())).collect()
        };
        match message {
            ClientMessage::Ping => vec![control(Control::Pong { seq: state.orchestrator.bus().last_seq() })],
            ClientMessage::Subscribe { patterns } => match parse(patterns) {
                Ok(patterns) if patterns.is_empty() => vec![error("invalid_request", "patterns must not be empty")],
                Ok(patterns) => self.subscribe(state, patterns),
                Err(e) => vec![error("invalid_request", &e)],
            },
            ClientMessage::Unsubscribe { patterns } => match parse(patterns) {
                Ok(patterns) => {
                    if let Some(sub) = &mut self.subscription {
                        let kept: Vec<EventPattern> =
                            sub.patterns().iter().filter(|p| !patterns.contains(p)).cloned().collect();
                        if kept.is_empty() {
                            self.subscription = None;
                        } else {
                            sub.set_patterns(kept);
                        }
                    }
                    vec![self.subscribed()]
                }
                Err(e) => vec![error("invalid_request", &e)],
            },
        }
    }

    /// Adds patterns; the first subscription replays what `since` asked for.
    fn subscribe(&mut self, state: &AppState, patterns: Vec<EventPattern>) -> Vec<Value> {
        let mut out = Vec::new();
        match &mut self.subscription {
            Some(sub) => {
                let mut all = sub.patterns().to_vec();
                all.extend(patterns.into_iter().filter(|p| !sub.patterns().contains(p)));
                sub.set_patterns(all);
                out.push(self.subscribed());
            }
            None => {
                let bus = state.orchestrator.bus();
                let since = self.since.take();
                let subscription = match since {
                    Some(since) => match bus.subscribe_since(patterns.clone(), since) {
                        Ok((missed, subscription)) => {
                            self.subscription = Some(subscription);
                            out.push(self.subscribed());
                            for p in missed {
                                self.last_sent = p.seq;
                                if p.event.tenant == self.tenant {
                                    out.push(event_json(&p));
                                }
                            }
                            return out;
                        }
                        Err(gone) => {
                            out.push(control(Control::ReplayUnavailable {
                                since: Some(gone.since),
                                oldest: Some(gone.oldest),
                                message: format!(
                                    "{gone}; fetch current state from the REST API, then follow the live stream"
                                ),
                            }));
                            bus.subscribe(patterns)
                        }
                    },
                    None => bus.subscribe(patterns),
                };
                self.subscription = Some(subscription);
                out.insert(0, self.subscribed());
            }
        }
        out
    }

    fn subscribed(&self) -> Value {
        let patterns: Vec<String> = self
            .subscription
            .as_ref()
            .map(|s| s.patterns().iter().map(|p| p.as_str().to_owned()).collect())
            .unwrap_or_default();
        control(Control::Subscribed { patterns })
    }
}

/// The next event, or never while unsubscribed.
async fn recv(subscription: &mut Option<Subscription>) -> Result<Arc<godel_core::Published>, RecvError> {
    match subscription {
        Some(sub) => sub.recv().await,
        None => std::future::pending().await,
    }
}

fn error(code: &str, message: &str) -> Value {
    control(Control::Error { code: code.to_owned(), message: message.to_owned() })
}

/// A control frame as JSON, beside the events' JSON in one outgoing queue.
fn control(frame: Control) -> Value {
    serde_json::to_value(frame).expect("control frames serialize")
}

async fn send<S>(tx: &mut S, value: &Value) -> Result<(), ()>
where
    S: futures::Sink<Message> + Unpin,
{
    tx.send(Message::text(value.to_string())).await.map_err(|_| ())
}
