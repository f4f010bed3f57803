//! Sending cluster messages on Redis: `PUBLISH` on the cluster channel (see
//! `listener.rs` for the receiving side).

use async_trait::async_trait;
use deadpool_redis::redis;
use tokio::sync::broadcast;

use crate::store::redis::RedisStore;
use crate::store::redis::listener::envelope;
use crate::store::{ClusterChannel, ClusterMessage, Result};

#[async_trait]
impl ClusterChannel for RedisStore {
    fn cluster_messages(&self) -> Option<broadcast::Receiver<ClusterMessage>> {
        Some(self.messages.subscribe())
    }

    async fn broadcast(&self, message: &ClusterMessage) -> Result<()> {
        let payload = envelope(self.node, message.clone())?;
        let _: i64 = self.query(redis::cmd("PUBLISH").arg(&self.channel).arg(payload)).await?;
        Ok(())
    }
}
