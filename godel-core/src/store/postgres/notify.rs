//! The cluster channel of the PostgreSQL store: `LISTEN/NOTIFY` on one
//! channel per schema (`godel_<schema>`).
//!
//! A NOTIFY payload is a JSON [`Envelope`] when it fits (PostgreSQL caps
//! payloads just under 8,000 bytes); a larger message waits in the
//! `cluster_messages` table and the payload carries only its origin and row
//! id (`{"origin": …, "ref": 42}`), which receivers read back. Wake-ups are
//! sent by the tasks table's triggers, in the writing transaction.
//!
//! The listening connection is a pool of its own (one connection), so it never
//! takes a connection from the store's calls. Its task is owned by the store
//! handle through [`ListenTask`], a drop guard; on any error it drops the
//! connection and listens again on a fresh one, backing off while the
//! database is down, so a restarted server is picked up on its own.
//! Notifications sent while no connection listened are lost: that costs
//! latency (dispatchers also poll), never correctness.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{ClusterMessage, Envelope, NodeId};

/// Largest payload sent inline; PostgreSQL refuses 8,000 bytes and more.
pub(crate) const MAX_INLINE: usize = 7_900;

/// How many large messages stay in `cluster_messages` for slow receivers.
pub(crate) const KEEP_LARGE: i64 = 1_000;

/// Owns the listening task: dropping it (with the last store handle) stops it.
#[derive(Debug)]
pub(crate) struct ListenTask {
    cancel: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl ListenTask {
    /// Starts listening on `channel` over a connection from `listen_pool`
    /// (LISTEN is done before this returns, so no message sent after it is
    /// missed), forwarding what other nodes send to `sender`. Large bodies are
    /// read through `pool`.
    pub(crate) async fn start(
        listen_pool: PgPool,
        pool: PgPool,
        channel: String,
        node: NodeId,
        sender: broadcast::Sender<ClusterMessage>,
    ) -> Result<Self, sqlx::Error> {
        let listener = listen_on(&listen_pool, &channel).await?;
        let cancel = CancellationToken::new();
        let job = Job { listen_pool, pool, channel, node, sender };
        let handle = tokio::spawn(job.run(listener, cancel.clone()));
        Ok(Self { cancel, handle: Some(handle) })
    }

    /// Stops the task and waits for it.
    pub(crate) async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for ListenTask {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// What the listening task needs.
struct Job {
    listen_pool: PgPool,
    pool: PgPool,
    channel: String,
    node: NodeId,
    sender: broadcast::Sender<ClusterMessage>,
}

impl Job {
    async fn run(self, listener: PgListener, cancel: CancellationToken) {
        let mut listener = Some(listener);
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(current) = listener.as_mut() else {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                match listen_on(&self.listen_pool, &self.channel).await {
                    Ok(fresh) => {
                        tracing::info!(channel = %self.channel, "PostgreSQL LISTEN connection restored");
                        listener = Some(fresh);
                        backoff = Duration::from_millis(50);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "PostgreSQL LISTEN reconnect failed; retrying");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            };
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                next = current.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => self.deliver(notification.payload()).await,
                // sqlx reconnected and listens again; what was sent meanwhile is lost.
                Ok(None) => tracing::warn!(channel = %self.channel, "PostgreSQL LISTEN connection was lost"),
                Err(e) => {
                    // Start over on a fresh connection: a connection that
                    // failed this way may never answer again.
                    tracing::warn!(error = %e, channel = %self.channel, "PostgreSQL LISTEN connection failed");
                    listener = None;
                }
            }
        }
    }

    /// Decodes one payload and passes it on unless this node sent it.
    async fn deliver(&self, payload: &str) {
        match self.decode(payload).await {
            Ok(Some(message)) => {
                // No receiver is fine: nobody subscribed yet.
                let _ = self.sender.send(message);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "dropped an unreadable cluster message"),
        }
    }

    async fn decode(&self, payload: &str) -> Result<Option<ClusterMessage>, String> {
        let value: Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        let origin = value.get("origin").and_then(Value::as_str).and_then(|s| s.parse::<uuid::Uuid>().ok());
        if origin == Some(self.node.0) {
            return Ok(None);
        }
        if let Some(id) = value.get("ref").and_then(Value::as_i64) {
            let body: Option<String> = sqlx::query_scalar("SELECT body FROM cluster_messages WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| e.to_string())?;
            let body = body.ok_or_else(|| format!("large message {id} is gone (receiver too far behind)"))?;
            let envelope: Envelope = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            return Ok(Some(envelope.message));
        }
        serde_json::from_value(value).map(Some).map_err(|e| e.to_string())
    }
}

async fn listen_on(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}
