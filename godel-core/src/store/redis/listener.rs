//! The pub/sub listener: cluster messages from the other nodes, forwarded to
//! this handle's receivers, on a connection that reconnects on its own.

use std::time::Duration;

use deadpool_redis::redis;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::redis::{backend_err, redis_err};
use crate::store::{ClusterMessage, Envelope, NodeId, Result};

/// The pub/sub listener task, stopped and aborted when the store is dropped.
#[derive(Debug)]
pub(super) struct Listener {
    pub(super) _stop: DropGuard,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) async fn subscribe(client: &redis::Client, channel: &str) -> Result<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await.map_err(redis_err)?;
    pubsub.subscribe(channel).await.map_err(redis_err)?;
    Ok(pubsub)
}

/// Forwards messages from other nodes until `stop`; reconnects (with a
/// capped backoff) whenever the connection drops.
pub(super) async fn listen(
    client: redis::Client,
    channel: String,
    node: NodeId,
    messages: broadcast::Sender<ClusterMessage>,
    stop: CancellationToken,
    first: redis::aio::PubSub,
) {
    let mut next = Some(first);
    let mut delay = Duration::from_millis(50);
    loop {
        let pubsub = match next.take() {
            Some(pubsub) => pubsub,
            None => {
                let attempt = tokio::select! {
                    () = stop.cancelled() => return,
                    r = tokio::time::timeout(Duration::from_secs(5), subscribe(&client, &channel)) => r,
                };
                match attempt {
                    Ok(Ok(pubsub)) => {
                        tracing::info!(channel, "redis pub/sub reconnected");
                        delay = Duration::from_millis(50);
                        pubsub
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(channel, error = %e, "redis pub/sub reconnect failed");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    Err(_) => continue,
                }
            }
        };
        let mut stream = pubsub.into_on_message();
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                msg = stream.next() => msg,
            };
            let Some(msg) = msg else { break };
            let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
            match serde_json::from_slice::<Envelope>(&payload) {
                Ok(envelope) if envelope.origin != node => {
                    // No receiver is fine: nobody is listening yet.
                    let _ = messages.send(envelope.message);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(channel, error = %e, "ignoring a malformed cluster message"),
            }
        }
        tracing::warn!(channel, "redis pub/sub connection lost; reconnecting");
    }
}

pub(super) fn envelope(origin: NodeId, message: ClusterMessage) -> Result<String> {
    serde_json::to_string(&Envelope { origin, message }).map_err(backend_err)
}
