//! Group commit for the writes every execution makes (`start`, `complete`).
//!
//! An execution hands its write to a [`Batcher`]. If no write is in flight,
//! it is told to write at once itself ([`Turn::Yours`]), so a lone write
//! costs one store call and no hand-off. While a write is in flight, later
//! ones queue up, and a flusher run by `Orchestrator::run` takes everything
//! queued as soon as the store is free and writes it in one batched call.
//! Under load that turns one store round trip per task into one per batch,
//! with no timer and no added latency when the engine is idle.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// Queued writes, each with the channel its answer goes back on.
pub(crate) type Batch<Req, Resp> = Vec<(Req, oneshot::Sender<Resp>)>;

/// Writes waiting for the next flush.
#[derive(Debug)]
pub(crate) struct Batcher<Req, Resp> {
    state: Mutex<Queue<Req, Resp>>,
    wake: Notify,
}

#[derive(Debug)]
struct Queue<Req, Resp> {
    waiting: Batch<Req, Resp>,
    /// A flusher runs; writes are only queued then.
    open: bool,
    /// A write (a batch, or a lone write by its caller) is in flight.
    busy: bool,
}

/// What a caller of [`Batcher::call`] does next.
#[derive(Debug)]
pub(crate) enum Turn<'a, Req, Resp> {
    /// The flusher wrote it; here is the answer.
    Done(Resp),
    /// Write it yourself, now. Hold the guard, if any, until the write is
    /// done: writes queued meanwhile wait for it, and go out together after.
    Yours(Req, Option<Busy<'a, Req, Resp>>),
    /// The flusher was torn down mid-write: whether it happened is unknown.
    Lost,
}

impl<Req, Resp> Batcher<Req, Resp> {
    pub(crate) fn new() -> Self {
        Self { state: Mutex::new(Queue { waiting: Vec::new(), open: false, busy: false }), wake: Notify::new() }
    }

    /// Hands `request` over: it is either written by the flusher with others,
    /// or given back to be written by the caller at once.
    pub(crate) async fn call(&self, request: Req) -> Turn<'_, Req, Resp> {
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.lock();
            if !state.open {
                return Turn::Yours(request, None);
            }
            if !state.busy && state.waiting.is_empty() {
                state.busy = true;
                return Turn::Yours(request, Some(Busy { batcher: self }));
            }
            state.waiting.push((request, reply));
        }
        self.wake.notify_one();
        match answer.await {
            Ok(answer) => Turn::Done(answer),
            Err(_) => Turn::Lost,
        }
    }

    /// Starts queueing writes, before the flusher loop runs.
    pub(crate) fn open(&self) {
        self.lock().open = true;
    }

    /// A guard for the flusher loop: it stops the queueing (and drops what
    /// is queued, which wakes the writers) when the loop ends, however it ends.
    pub(crate) fn closer(&self) -> Closer<'_, Req, Resp> {
        Closer { batcher: self }
    }

    /// Waits until writes are queued and nothing is in flight, then takes
    /// them all; hold the guard until they are written. Returns `None` once
    /// `stop` is cancelled and nothing is queued; from then on nothing is.
    pub(crate) async fn next_batch(&self, stop: &CancellationToken) -> Option<(Batch<Req, Resp>, Busy<'_, Req, Resp>)> {
        loop {
            // Register interest before looking, so a change in between still wakes us.
            let notified = self.wake.notified();
            {
                let mut state = self.lock();
                if !state.busy && !state.waiting.is_empty() {
                    state.busy = true;
                    return Some((std::mem::take(&mut state.waiting), Busy { batcher: self }));
                }
                if stop.is_cancelled() && state.waiting.is_empty() {
                    state.open = false;
                    return None;
                }
            }
            tokio::select! {
                () = notified => {}
                () = stop.cancelled() => {}
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<Req, Resp>> {
        // Every critical section is a flag flip, a push or a take; a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks a write in flight; dropping it lets the next one go, and wakes the
/// flusher if writes queued up meanwhile.
#[derive(Debug)]
pub(crate) struct Busy<'a, Req, Resp> {
    batcher: &'a Batcher<Req, Resp>,
}

impl<Req, Resp> Drop for Busy<'_, Req, Resp> {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.batcher.lock();
            state.busy = false;
            !state.waiting.is_empty()
        };
        if queued {
            self.batcher.wake.notify_one();
        }
    }
}

/// Closes a [`Batcher`] when dropped; see [`Batcher::closer`].
#[derive(Debug)]
pub(crate) struct Closer<'a, Req, Resp> {
    batcher: &'a Batcher<Req, Resp>,
}

impl<Req, Resp> Drop for Closer<'_, Req, Resp> {
    fn drop(&mut self) {
        let mut state = self.batcher.lock();
        state.open = false;
        state.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn yours<Req, Resp>(turn: Turn<'_, Req, Resp>) -> (Req, bool) {
        match turn {
            Turn::Yours(request, busy) => (request, busy.is_some()),
            _ => panic!("expected to write it myself"),
        }
    }

    #[tokio::test]
    async fn a_lone_write_is_written_by_its_caller() {
        let batcher: Batcher<u32, u32> = Batcher::new();
        assert_eq!(yours(batcher.call(1).await), (1, false), "no flusher");
        batcher.open();
        assert_eq!(yours(batcher.call(2).await), (2, true), "idle flusher");
        assert_eq!(yours(batcher.call(3).await), (3, true), "the guard was dropped");
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(batcher.next_batch(&stop).await.is_none());
        assert_eq!(yours(batcher.call(4).await), (4, false), "stopped flusher");
    }

    #[tokio::test]
    async fn writes_queue_while_one_is_in_flight_and_leave_together() {
        let batcher = Arc::new(Batcher::<u32, u32>::new());
        batcher.open();
        let _closer = batcher.closer();
        let Turn::Yours(_, Some(busy)) = batcher.call(0).await else { panic!("expected to write it myself") };
        let mut callers = tokio::task::JoinSet::new();
        for write in 1..=3 {
            let batcher = batcher.clone();
            callers.spawn(async move {
                match batcher.call(write).await {
                    Turn::Done(answer) => answer,
                    _ => panic!("expected the flusher to write it"),
                }
            });
        }
        let flusher = {
            let batcher = batcher.clone();
            async move {
                let stop = CancellationToken::new();
                let (batch, _busy) = batcher.next_batch(&stop).await.unwrap();
                assert_eq!(batch.iter().map(|(w, _)| *w).collect::<Vec<_>>(), [1, 2, 3]);
                for (write, reply) in batch {
                    reply.send(write * 10).unwrap();
                }
            }
        };
        // Let the callers queue up, then end the write in flight.
        while batcher.lock().waiting.len() < 3 {
            tokio::task::yield_now().await;
        }
        drop(busy);
        flusher.await;
        let mut answers = Vec::new();
        while let Some(answer) = callers.join_next().await {
            answers.push(answer.unwrap());
        }
        answers.sort_unstable();
        assert_eq!(answers, [10, 20, 30]);
    }

    #[tokio::test]
    async fn a_flusher_torn_down_mid_write_leaves_the_outcome_unknown() {
        let batcher = Arc::new(Batcher::<u32, u32>::new());
        batcher.open();
        let Turn::Yours(_, Some(busy)) = batcher.call(0).await else { panic!("expected to write it myself") };
        let caller = tokio::spawn({
            let batcher = batcher.clone();
            async move { matches!(batcher.call(1).await, Turn::Lost) }
        });
        while batcher.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        drop(busy);
        let stop = CancellationToken::new();
        let closer = batcher.closer();
        let taken = batcher.next_batch(&stop).await.unwrap();
        drop(taken);
        drop(closer);
        assert!(caller.await.unwrap());
    }
}
