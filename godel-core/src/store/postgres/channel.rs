//! Sending cluster messages on PostgreSQL: `pg_notify`, with bodies too big
//! for a payload parked in a table (see `notify.rs` for the receiving side).

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::store::postgres::notify::{KEEP_LARGE, MAX_INLINE};
use crate::store::postgres::{PostgresStore, backend_err, db_err};
use crate::store::{ClusterChannel, ClusterMessage, Envelope, Result};

#[async_trait]
impl ClusterChannel for PostgresStore {
    fn cluster_messages(&self) -> Option<broadcast::Receiver<ClusterMessage>> {
        self.inner.listen.as_ref().map(|_| self.inner.messages.subscribe())
    }

    async fn broadcast(&self, message: &ClusterMessage) -> Result<()> {
        let envelope = Envelope { origin: self.inner.node, message: message.clone() };
        let body = serde_json::to_string(&envelope).map_err(backend_err)?;
        if body.len() <= MAX_INLINE {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.inner.channel)
                .bind(body)
                .execute(&self.inner.pool)
                .await
                .map_err(db_err)?;
            return Ok(());
        }
        // Too big for a payload: park the body, notify its id, and drop what
        // every receiver has long had, all in one statement.
        sqlx::query(
            "WITH parked AS (INSERT INTO cluster_messages (body) VALUES ($2) RETURNING id), \
                  pruned AS (DELETE FROM cluster_messages WHERE id < (SELECT id FROM parked) - $4) \
             SELECT pg_notify($1, json_build_object('origin', $3::text, 'ref', parked.id)::text) FROM parked",
        )
        .bind(&self.inner.channel)
        .bind(body)
        .bind(self.inner.node.to_string())
        .bind(KEEP_LARGE)
        .execute(&self.inner.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
