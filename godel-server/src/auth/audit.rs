//! The audit writer: requests hand their entry to a bounded channel and go
//! on; one task appends entries to the store in batches. When the channel
//! is full the entry is dropped, counted and logged, rather than slowing
//! every request down to the store's pace. At shutdown the task writes what
//! is left before it stops.

use std::sync::Arc;

use godel_core::{AuditEntry, Store};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Entries waiting to be written; past this, new ones are dropped.
const QUEUE: usize = 8_192;
/// Most entries in one append.
const BATCH: usize = 256;

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
