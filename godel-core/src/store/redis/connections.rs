//! The connections every call shares.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool_redis::Pool;
use deadpool_redis::redis::RedisError;
use deadpool_redis::redis::aio::MultiplexedConnection;

use crate::store::Result;
use crate::store::redis::{pool_err, redis_err};

/// Multiplexed connections shared by every call. Each is taken out of the
/// pool once and reused until it breaks: the pool's own hand-out checks every
/// connection with a round trip (`UNWATCH` and `PING`), which would double
/// the round trips of a store whose calls are each one script.
pub(super) struct Connections {
    pub(super) pool: Pool,
    pub(super) slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    pub(super) next: AtomicUsize,
}

impl Connections {
    /// A connection (and its slot), round-robin over the slots; a new one from the pool if the slot is empty.
    pub(super) async fn get(&self) -> Result<(usize, MultiplexedConnection)> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Some(conn) = self.lock(slot).clone() {
            return Ok((slot, conn));
        }
        let conn = deadpool_redis::Connection::take(self.pool.get().await.map_err(pool_err)?);
        *self.lock(slot) = Some(conn.clone());
        Ok((slot, conn))
    }

    /// The reply of a call on `slot`'s connection; forgets the connection if
    /// it broke or timed out, so that the next call on the slot opens a new one.
    pub(super) fn settle<T>(&self, slot: usize, reply: Result<Result<T, RedisError>>) -> Result<T> {
        match reply {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    *self.lock(slot) = None;
                }
                Err(redis_err(e))
            }
            Err(timeout) => {
                *self.lock(slot) = None;
                Err(timeout)
            }
        }
    }

    fn lock(&self, slot: usize) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        // A slot holds a cloneable handle; a panic cannot leave it half-written.
        self.slots[slot].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
