//! The `/events` WebSocket as a [`Stream`] that survives disconnects.
//!
//! The stream connects when it is first polled (or when
//! [`EventStream::subscribed`] is awaited). From the server's `welcome` it
//! learns the server run (`epoch`) and the last sequence number, and from
//! then on it always knows where to resume: after the last event it
//! delivered, or after the welcome's sequence number if it delivered none.
//! After a drop it reconnects with exponential backoff (100 ms to 10 s) and
//! asks for everything after that point (`since`, plus the `epoch`); the
//! server replays what it still keeps, and the stream drops anything it
//! already delivered, so nothing is repeated or reordered.
//!
//! What cannot be replayed is reported as an [`Error::EventsMissed`] item:
//! events the server's replay window no longer holds, and, after a server
//! restart (a new epoch, or numbering behind where the stream resumes), the
//! rest of the previous run. After a restart the stream reconnects with
//! `since=0` in the new run, so the new run's events are replayed from its
//! start rather than lost. When the server says this connection fell behind
//! (`lagged`), the stream reconnects at once so that the replay fills the
//! gap. Failed connection attempts are reported as [`Error::Unreachable`]
//! items, and the stream keeps trying.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{SinkExt, Stream, StreamExt};
use godel_wire::{ClientFrame, Control, Event, ServerMessage};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;

use crate::error::{Error, Result};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The shortest and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Live events from a server; see [`crate::Client::events`] for its guarantees.
///
/// Each item is an event, or an error the stream recovers from by itself
/// ([`Error::Unreachable`] while the server is down, [`Error::EventsMissed`]
/// when events could not be recovered). The stream ends only after an
/// [`Error::Protocol`] item (the server refused the subscription, for
/// example an invalid pattern) or an [`Error::Api`] item (the server refused
/// the credential, `unauthorized` or `forbidden`): asking again would not help.
pub struct EventStream {
    inner: BoxStream<'static, Signal>,
    /// The server's `/events` URL, for errors.
    url: String,
    /// Items read by [`EventStream::subscribed`] before the confirmation.
    early: VecDeque<Result<Event>>,
    /// The server has confirmed the subscription once.
    confirmed: bool,
}

impl EventStream {
    pub(crate) fn new(
        base: &str,
        auth: Option<HeaderValue>,
        patterns: Vec<String>,
        since: Option<u64>,
        connector: tokio_tungstenite::Connector,
    ) -> Self {
        let ws_base = base.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        // The server wants at least one pattern; no pattern means every event.
        let patterns = if patterns.is_empty() { vec!["*".to_owned()] } else { patterns };
        let url = format!("{ws_base}/events");
        let state = State {
            base: ws_base,
            auth,
            patterns,
            last_seq: since,
            epoch: None,
            welcome_seq: 0,
            socket: None,
            failures: 0,
            finished: false,
            connector,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            if state.finished {
                return None;
            }
            let signal = state.next().await;
            Some((signal, state))
        });
        Self { inner: inner.boxed(), url, early: VecDeque::new(), confirmed: false }
    }

    /// Connects now, if the stream has not yet, and waits until the server
    /// confirms the subscription. Every matching event published after this
    /// returns is delivered, or reported as missed; without it, events
    /// published before the stream's first poll are not.
    ///
    /// Subscribe this way before submitting a task you then follow, or its
    /// first events may come and go before the stream listens. Events and
    /// [`Error::EventsMissed`] items that arrive meanwhile stay queued for
    /// the stream. Once the subscription is confirmed this returns at once.
    /// It returns the error if the server cannot be reached (call it again
    /// to keep trying) or refuses the subscription.
    ///
    /// ```no_run
    /// # async fn demo(client: godel_sdk::Client) -> godel_sdk::Result<()> {
    /// let mut events = client.events(&["task.*"]);
    /// events.subscribed().await?;
    /// // Submit now: every event of the new task will be delivered.
    /// # Ok(()) }
    /// ```
    pub async fn subscribed(&mut self) -> Result<()> {
        while !self.confirmed {
            match self.inner.next().await {
                Some(Signal::Subscribed) => self.confirmed = true,
                Some(Signal::Item(Err(
                    e @ (Error::Unreachable { .. } | Error::Protocol { .. } | Error::Api { .. }),
                ))) => {
                    return Err(e);
                }
                Some(Signal::Item(item)) => self.early.push_back(item),
                None => {
                    return Err(Error::Protocol {
                        url: self.url.clone(),
                        message: "the event stream has ended".to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The stream as a plain boxed stream, for APIs that want one.
    pub fn into_inner(self) -> BoxStream<'static, Result<Event>> {
        self.boxed()
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(item) = self.early.pop_front() {
            return Poll::Ready(Some(item));
        }
        loop {
            match self.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Signal::Item(item))) => return Poll::Ready(Some(item)),
                Poll::Ready(Some(Signal::Subscribed)) => self.confirmed = true,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").field("confirmed", &self.confirmed).finish_non_exhaustive()
    }
}

/// What the connection loop produces: items for the caller, and the
/// server's confirmation of a subscription, which only `subscribed` wants.
enum Signal {
    Item(Result<Event>),
    Subscribed,
}

/// The connection loop's state, owned by the stream's `unfold`.
struct State {
    base: String,
    /// `Bearer <key>` for the handshake, when the client has a key.
    auth: Option<HeaderValue>,
    patterns: Vec<String>,
    /// Where to resume: the last event delivered, or the point the stream went live.
    last_seq: Option<u64>,
    epoch: Option<String>,
    /// The sequence number the server had when it last welcomed us.
    welcome_seq: u64,
    socket: Option<Socket>,
    /// Connection attempts since the last welcome; drives the backoff.
    failures: u32,
    /// The server refused the subscription; nothing more will come.
    finished: bool,
    /// How `wss://` connections check the server.
    connector: tokio_tungstenite::Connector,
}

impl State {
    async fn next(&mut self) -> Signal {
        loop {
            let Some(socket) = self.socket.as_mut() else {
                if let Err(e) = self.connect().await {
                    return Signal::Item(Err(e));
                }
                continue;
            };
            let frame = match socket.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(_)) | None => {
                    self.disconnect();
                    continue;
                }
            };
            let text = match frame {
                Message::Text(text) => text,
                Message::Close(_) => {
                    self.disconnect();
                    continue;
                }
                _ => continue,
            };
            let message = match serde_json::from_str::<ServerMessage>(text.as_str()) {
                Ok(message) => message,
                // Not a frame at all (no `type`): nothing to act on.
                Err(_) if !has_type(text.as_str()) => continue,
                Err(e) => {
                    return Signal::Item(Err(Error::Protocol {
                        url: format!("{}/events", self.base),
                        message: format!("{e}: {text}"),
                    }));
                }
            };
            if let Some(signal) = self.handle(message) {
                return signal;
            }
        }
    }

    /// Forgets the connection. Counting it as a failure means a server that
    /// accepts and hangs up at once is retried with backoff, not in a loop.
    fn disconnect(&mut self) {
        self.socket = None;
        self.failures += 1;
    }

    /// Connects (after a backoff if the last attempt failed) and subscribes.
    async fn connect(&mut self) -> Result<()> {
        if self.failures > 0 {
            let exp = (self.failures - 1).min(7);
            tokio::time::sleep((BACKOFF_MIN * (1 << exp)).min(BACKOFF_MAX)).await;
        }
        let mut url = format!("{}/events", self.base);
        if let Some(since) = self.last_seq {
            url.push_str(&format!("?since={since}"));
            if let Some(epoch) = &self.epoch {
                url.push_str(&format!("&epoch={epoch}"));
            }
        }
        let mut request = match url.as_str().into_client_request() {
            Ok(request) => request,
            Err(e) => return Err(Error::InvalidUrl { url, message: e.to_string() }),
        };
        if let Some(auth) = &self.auth {
            request.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(self.connector.clone()));
        match connect.await {
            Ok((mut socket, _)) => {
                let subscribe = ClientFrame::Subscribe { patterns: self.patterns.clone() };
                let subscribe = serde_json::to_string(&subscribe).expect("client frames serialize");
                if socket.send(Message::text(subscribe)).await.is_err() {
                    self.failures += 1;
                    return Ok(());
                }
                self.socket = Some(socket);
                Ok(())
            }
            // A refused credential stays refused: say so, and stop.
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if matches!(response.status().as_u16(), 401 | 403) =>
            {
                self.finished = true;
                Err(refused(&response))
            }
            Err(e) => {
                self.failures += 1;
                tracing::debug!(url, error = %e, "cannot connect to the event stream; retrying");
                Err(Error::Unreachable { url, source: Box::new(e) })
            }
        }
    }

    /// One server message: an event to deliver, an error to report, a
    /// confirmation, or nothing.
    fn handle(&mut self, message: ServerMessage) -> Option<Signal> {
        let item = |item: Result<Event>| Some(Signal::Item(item));
        match message {
            ServerMessage::Control(Control::Welcome { seq, epoch, .. }) => {
                self.failures = 0;
                let epoch = Some(epoch);
                self.welcome_seq = seq;
                let restarted = self.epoch.is_some() && epoch != self.epoch;
                // Numbering behind where we resume: a run the epoch could not
                // tell apart (`events_since` with a number kept from before a
                // restart). Waiting for the numbers to pass it would drop
                // events silently.
                let behind = self.last_seq.is_some_and(|last| seq < last);
                self.epoch = epoch;
                if restarted || behind {
                    // The events of the earlier run after the last one
                    // delivered are gone; those of this run are not. Resume
                    // from the start of this run on a new connection (this
                    // one would only go live from now).
                    let after = self.last_seq.map_or_else(String::new, |last| format!(" after {last}"));
                    self.last_seq = Some(0);
                    self.socket = None;
                    return item(Err(Error::EventsMissed {
                        missed: 0,
                        message: format!(
                            "the server restarted: the events of its previous run{after} are gone; \
                             fetch current state from the REST API (this stream goes on with the new run from its start)"
                        ),
                    }));
                }
                // Resume from here at the latest, even if no event comes
                // before the next drop.
                self.last_seq.get_or_insert(seq);
                None
            }
            ServerMessage::Control(Control::Subscribed { .. }) => Some(Signal::Subscribed),
            ServerMessage::Control(Control::Pong { .. }) => None,
            ServerMessage::Control(Control::Lagged { missed, .. }) => {
                // The server skipped events on this connection; a new one
                // resumes after the last event delivered and gets them from
                // the replay window, or hears that they are gone.
                tracing::debug!(missed, "event stream lagged; reconnecting to resume");
                self.socket = None;
                None
            }
            ServerMessage::Control(Control::ReplayUnavailable { since, oldest, message }) => {
                let missed = match (since, oldest) {
                    (Some(since), Some(oldest)) if oldest > since + 1 => oldest - since - 1,
                    _ => 0,
                };
                // The server now streams live events; a later reconnect
                // resumes from where this connection went live.
                self.last_seq = Some(self.welcome_seq);
                item(Err(Error::EventsMissed { missed, message }))
            }
            ServerMessage::Control(Control::Error { message, .. }) => {
                self.finished = true;
                item(Err(Error::Protocol { url: format!("{}/events", self.base), message }))
            }
            ServerMessage::Event(event) => {
                if self.last_seq.is_some_and(|last| event.seq <= last) {
                    return None; // already delivered before a reconnect
                }
                self.last_seq = Some(event.seq);
                item(Ok(event))
            }
        }
    }
}

/// The API error of a handshake the server refused for its credential.
fn refused(response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>) -> Error {
    let status = response.status().as_u16();
    let envelope = response.body().as_deref().and_then(|b| serde_json::from_slice::<godel_wire::ErrorEnvelope>(b).ok());
    let (code, message) = match envelope {
        Some(e) => (crate::error::ErrorCode::parse(&e.error.code), e.error.message),
        None if status == 401 => (crate::error::ErrorCode::Unauthorized, "the server wants an API key".to_owned()),
        None => (crate::error::ErrorCode::Forbidden, "the credential may not subscribe to events".to_owned()),
    };
    Error::Api { status, code, message, retryable: false }
}

/// Whether `text` is a JSON object with a `type`, i.e. meant as a frame.
fn has_type(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v["type"].is_string())
}
