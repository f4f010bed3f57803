//! Sending cluster messages on PostgreSQL: `pg_notify`, a batch of events
//! too big for one payload split over several in one statement, and only a
//! body too big on its own parked in a table (see `notify.rs` for the
//! receiving side).

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
        let mut pieces = Vec::new();
        self.payloads(message, &mut pieces)?;
        // Payloads go out in order: each run of inline ones in one statement,
        // each large one parked on its own.
        let mut pieces = pieces.into_iter().peekable();
        while let Some(piece) = pieces.next() {
            match piece {
                Payload::Inline(body) => {
                    let mut bodies = vec![body];
                    while let Some(Payload::Inline(body)) = pieces.next_if(|p| matches!(p, Payload::Inline(_))) {
                        bodies.push(body);
                    }
                    // unnest yields the array in order, and notices are delivered in the order sent.
                    sqlx::query("SELECT pg_notify($1, body) FROM unnest($2::text[]) AS body")
                        .bind(&self.inner.channel)
                        .bind(bodies)
                        .execute(&self.inner.pool)
                        .await
                        .map_err(db_err)?;
                }
                Payload::Large(body) => self.park(body).await?,
            }
        }
        Ok(())
    }
}

/// One NOTIFY's worth of a message.
enum Payload {
    /// Fits a payload.
    Inline(String),
    /// Too big even alone: parked in `cluster_messages`.
    Large(String),
}

impl PostgresStore {
    /// `message` as payloads that fit a NOTIFY: a batch of events too big for
    /// one is split, so that only a single event too big on its own takes the
    /// (fsynced) table.
    fn payloads(&self, message: &ClusterMessage, out: &mut Vec<Payload>) -> Result<()> {
        let body = serde_json::to_string(&Envelope { origin: self.inner.node, message: message.clone() })
            .map_err(backend_err)?;
        match message {
            _ if body.len() <= MAX_INLINE => out.push(Payload::Inline(body)),
            ClusterMessage::Events { events } if events.len() > 1 => {
                let (older, newer) = events.split_at(events.len() / 2);
                self.payloads(&ClusterMessage::Events { events: older.to_vec() }, out)?;
                self.payloads(&ClusterMessage::Events { events: newer.to_vec() }, out)?;
            }
            _ => out.push(Payload::Large(body)),
        }
        Ok(())
    }

    /// Parks a body too big for a payload, notifies its id, and drops what
    /// every receiver has long had, all in one statement.
    async fn park(&self, body: String) -> Result<()> {
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
