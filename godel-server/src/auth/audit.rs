//! The audit writer: requests hand their entry to a bounded channel and go
//! on; one task appends entries to the store in batches. When the channel
//! is full the entry is dropped, counted and logged, rather than slowing
//! every request down to the store's pace. At shutdown the task writes what
//! is left before it stops.
//!
//! Retention ([`retain`]) deletes entries older than `audit.retention`, at
//! start and then hourly, a small batch per store call so that no sweep
//! holds a long transaction. Servers sharing a store each sweep; deleting
//! what another already deleted deletes nothing.

use std::sync::Arc;
use std::time::Duration;

use godel_core::{AuditEntry, Store, Timestamp};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Entries waiting to be written; past this, new ones are dropped.
const QUEUE: usize = 8_192;
/// Most entries in one append.
const BATCH: usize = 256;
/// Most entries one retention delete removes.
const PRUNE_BATCH: usize = 500;
/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The pause between two retention deletes, leaving the store to others.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);

/// The sending side, shared by every request.
#[derive(Debug)]
pub(crate) struct Audit {
    tx: mpsc::Sender<AuditEntry>,
    /// `godel_audit_dropped_total`.
    dropped: Counter,
}

impl Audit {
    /// Starts the writer. It stops, after writing what is queued, when `stop`
    /// is cancelled; await the handle to know it has.
    /// Drops are counted in `dropped`.
    pub(crate) fn start(store: Arc<dyn Store>, dropped: Counter, stop: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(write(store, rx, stop));
        (Self { tx, dropped }, handle)
    }

    /// Queues an entry without waiting.
    pub(crate) fn record(&self, entry: AuditEntry) {
        if self.tx.try_send(entry).is_err() {
            let dropped = self.dropped.inc() + 1;
            // The first drop and then one line per thousand: a full queue
            // must not also flood the log.
            if dropped == 1 || dropped.is_multiple_of(1_000) {
                tracing::warn!(dropped, "audit queue full: entries dropped");
            }
        }
    }
}

/// Until `stop`: deletes the entries older than `retention`, at once and
/// then every [`PRUNE_EVERY`].
pub(crate) async fn retain(store: Arc<dyn Store>, retention: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = Timestamp::from_millis(
            Timestamp::now().as_millis().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)),
        );
        let mut deleted = 0;
        loop {
            let n = match store.prune_audit(before, PRUNE_BATCH).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete audit entries past their retention; trying again later");
                    break;
                }
            };
            deleted += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PRUNE_PAUSE) => {}
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, before = %before, "deleted audit entries past their retention (audit.retention)");
        }
    }
}

async fn write(store: Arc<dyn Store>, mut rx: mpsc::Receiver<AuditEntry>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            received = rx.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    break;
                }
                append(&store, &mut batch).await;
            }
            () = stop.cancelled() => break,
        }
    }
    // Requests still finishing may queue a few more; take what is there.
    rx.close();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        append(&store, &mut batch).await;
    }
}

async fn append(store: &Arc<dyn Store>, batch: &mut Vec<AuditEntry>) {
    if let Err(e) = store.append_audit(batch).await {
        tracing::error!(error = %e, entries = batch.len(), "cannot write audit entries");
    }
    batch.clear();
}
