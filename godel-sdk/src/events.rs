//! The `/events` WebSocket as a [`Stream`] that survives disconnects.
//!
//! After a drop the stream reconnects with exponential backoff (100 ms to
//! 10 s) and asks the server for everything after the last event it
//! delivered (`since`, plus the server's `epoch` so that a restarted server
//! is noticed). What the server can no longer replay is reported as an
//! [`Error::EventsMissed`] item; failed connection attempts are reported as
//! [`Error::Unreachable`] items, and the stream keeps trying.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::error::{Error, Result};
use crate::types::Event;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Live events from a server; see the module docs for its guarantees.
pub struct EventStream {
    inner: BoxStream<'static, Result<Event>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct State {
    base: String,
    patterns: Vec<String>,
    last_seq: Option<u64>,
    epoch: Option<String>,
    socket: Option<Socket>,
    failures: u32,
}

impl EventStream {
    pub(crate) fn new(base: &str, patterns: Vec<String>, since: Option<u64>) -> Self {
        let ws_base = base.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        let state = State { base: ws_base, patterns, last_seq: since, epoch: None, socket: None, failures: 0 };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await;
            Some((item, state))
        });
        Self { inner: inner.boxed() }
    }

    /// The sequence number to resume after, for callers that persist it.
    pub fn into_inner(self) -> BoxStream<'static, Result<Event>> {
        self.inner
    }
}

impl State {
    async fn next(&mut self) -> Result<Event> {
        loop {
            let Some(socket) = self.socket.as_mut() else {
                if let Err(e) = self.connect().await {
                    return Err(e);
                }
                continue;
            };
            let frame = match socket.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(_)) | None => {
                    self.socket = None;
                    continue;
                }
            };
            let text = match frame {
                Message::Text(text) => text,
                Message::Close(_) => {
                    self.socket = None;
                    continue;
                }
                _ => continue,
            };
            let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else { continue };
            if let Some(item) = self.handle(value) {
                return item;
            }
        }
    }

    /// Connects (after a backoff if the last attempt failed) and subscribes.
    async fn connect(&mut self) -> Result<()> {
        if self.failures > 0 {
            let exp = self.failures.min(7);
            let delay = Duration::from_millis(100 * (1 << exp)).min(Duration::from_secs(10));
            tokio::time::sleep(delay).await;
        }
        let mut url = format!("{}/events", self.base);
        if let Some(since) = self.last_seq {
            url.push_str(&format!("?since={since}"));
            if let Some(epoch) = &self.epoch {
                url.push_str(&format!("&epoch={epoch}"));
            }
        }
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut socket, _)) => {
                let subscribe = json!({"action": "subscribe", "patterns": self.patterns});
                if socket.send(Message::text(subscribe.to_string())).await.is_err() {
                    self.failures += 1;
                    return Ok(());
                }
                self.failures = 0;
                self.socket = Some(socket);
                Ok(())
            }
            Err(e) => {
                self.failures += 1;
                tracing::debug!(url, error = %e, "cannot connect to the event stream; retrying");
                Err(Error::Unreachable { url, source: Box::new(e) })
            }
        }
    }

    /// One server message: an event to deliver, an error to report, or nothing.
    fn handle(&mut self, value: Value) -> Option<Result<Event>> {
        match value["type"].as_str() {
            Some("welcome") => {
                let epoch = value["epoch"].as_str().map(str::to_owned);
                if self.epoch.is_some() && epoch != self.epoch {
                    // A different server instance: its sequence numbers start over.
                    self.last_seq = None;
                }
                self.epoch = epoch;
                None
            }
            Some("subscribed" | "pong") => None,
            Some("lagged") => Some(Err(Error::EventsMissed {
                missed: value["missed"].as_u64().unwrap_or(0),
                message: value["message"].as_str().unwrap_or("fell behind").to_owned(),
            })),
            Some("replay_unavailable") => {
                let missed = match (value["since"].as_u64(), value["oldest"].as_u64()) {
                    (Some(since), Some(oldest)) if oldest > since + 1 => oldest - since - 1,
                    _ => 0,
                };
                self.last_seq = None;
                Some(Err(Error::EventsMissed {
                    missed,
                    message: value["message"].as_str().unwrap_or("replay unavailable").to_owned(),
                }))
            }
            Some("error") => Some(Err(Error::Protocol {
                url: self.base.clone(),
                message: value["message"].as_str().unwrap_or("event stream error").to_owned(),
            })),
            Some(_) => {
                let event: Event = match serde_json::from_value(value) {
                    Ok(event) => event,
                    Err(e) => return Some(Err(Error::Protocol { url: self.base.clone(), message: e.to_string() })),
                };
                if self.last_seq.is_some_and(|last| event.seq <= last) {
                    return None; // already delivered before a reconnect
                }
                self.last_seq = Some(event.seq);
                Some(Ok(event))
            }
            None => None,
        }
    }
}
