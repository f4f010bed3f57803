//! The event bus: every state change the engine makes is published here, and
//! subscribers pick what they want with patterns (`task.*`, `agent.status`).
//!
//! It is a broadcast channel with a bounded buffer. Each event gets a sequence
//! number, so a subscriber that falls behind learns exactly how many events it
//! missed ([`RecvError::Lagged`]) instead of missing them silently.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use crate::event::{Event, EventPattern};

/// An event with its place in the bus's sequence.
#[derive(Clone, PartialEq, Debug)]
pub struct Published {
    /// 1 for the first event published on this bus, then +1 each.
    pub seq: u64,
    /// The event.
    pub event: Event,
    /// True if it was raised on another node sharing the store and relayed
    /// here (see [`EventBus::publish_relayed`]); such events are not relayed on.
    pub relayed: bool,
}

/// Why [`Subscription::recv`] returned no event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum RecvError {
    /// The subscriber fell behind and this many events were dropped for it.
    #[error("subscriber lagged behind and missed {0} events")]
    Lagged(u64),
    /// The bus is gone.
    #[error("event bus closed")]
    Closed,
}

/// The replay window is gone: events after `since` are no longer kept.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("events after {since} are no longer kept (the oldest kept is {oldest})")]
pub struct ReplayGone {
    /// What the subscriber asked for.
    pub since: u64,
    /// The oldest sequence number still kept.
    pub oldest: u64,
}

/// Publishes events to every subscriber and keeps the last `history` of them
/// so that a subscriber that reconnects can resume where it left off.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Published>>,
    state: Arc<Mutex<History>>,
}

#[derive(Debug)]
struct History {
    seq: u64,
    kept: VecDeque<Arc<Published>>,
    limit: usize,
}

impl EventBus {
    /// A bus that buffers up to `capacity` events per slow subscriber and
    /// keeps the last `history` events for replay.
    pub fn new(capacity: usize, history: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        let state = History { seq: 0, kept: VecDeque::with_capacity(history.min(65_536)), limit: history };
        Self { sender, state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes an event raised here; returns its sequence number.
    pub fn publish(&self, event: Event) -> u64 {
        self.push(event, false)
    }

    /// Publishes an event raised on another node sharing the store; returns
    /// its sequence number on this bus.
    pub fn publish_relayed(&self, event: Event) -> u64 {
        self.push(event, true)
    }

    fn push(&self, event: Event, relayed: bool) -> u64 {
        // Numbering, keeping and sending happen under one lock, so every
        // subscriber sees events in sequence order and a replay never misses
        // or repeats one at the seam with the live stream.
        let mut state = self.lock();
        state.seq += 1;
        let published = Arc::new(Published { seq: state.seq, event, relayed });
        if state.limit > 0 {
            if state.kept.len() == state.limit {
                state.kept.pop_front();
            }
            state.kept.push_back(published.clone());
        }
        // An error only means nobody is subscribed.
        let _ = self.sender.send(published);
        state.seq
    }

    /// Subscribes to events matching any of `patterns` (all events if empty).
    pub fn subscribe(&self, patterns: Vec<EventPattern>) -> Subscription {
        Subscription { receiver: self.sender.subscribe(), patterns }
    }

    /// Subscribes and returns the kept events after `since` that match, to be
    /// delivered before the live ones; fails if some of them are no longer kept.
    pub fn subscribe_since(
        &self,
        patterns: Vec<EventPattern>,
        since: u64,
    ) -> Result<(Vec<Arc<Published>>, Subscription), ReplayGone> {
        let state = self.lock();
        let oldest = state.kept.front().map_or(state.seq + 1, |p| p.seq);
        if since + 1 < oldest && since < state.seq {
            return Err(ReplayGone { since, oldest });
        }
        let subscription = Subscription { receiver: self.sender.subscribe(), patterns };
        let missed = state.kept.iter().filter(|p| p.seq > since && subscription.wants(p)).cloned().collect();
        Ok((missed, subscription))
    }

    /// The sequence number of the last event published.
    pub fn last_seq(&self) -> u64 {
        self.lock().seq
    }
}

impl Default for EventBus {
    /// 4,096 events of buffer per subscriber, 10,000 kept for replay.
    fn default() -> Self {
        Self::new(4_096, 10_000)
    }
}

/// A stream of matching events.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Published>>,
    patterns: Vec<EventPattern>,
}

impl Subscription {
    /// The next matching event.
    pub async fn recv(&mut self) -> Result<Arc<Published>, RecvError> {
        loop {
            match self.receiver.recv().await {
                Ok(published) if self.wants(&published) => return Ok(published),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(RecvError::Closed),
            }
        }
    }

    /// Replaces the patterns.
    pub fn set_patterns(&mut self, patterns: Vec<EventPattern>) {
        self.patterns = patterns;
    }

    /// The patterns in force.
    pub fn patterns(&self) -> &[EventPattern] {
        &self.patterns
    }

    fn wants(&self, published: &Published) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let name = published.event.kind.name();
        self.patterns.iter().any(|p| p.matches(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::ids::{TaskId, TenantId};
    use crate::time::Timestamp;

    fn event(kind: EventKind) -> Event {
        Event { tenant: TenantId::default_tenant(), at: Timestamp::EPOCH, kind }
    }

    #[tokio::test]
    async fn subscribers_get_matching_events_in_sequence() {
        let bus = EventBus::new(16, 16);
        let mut tasks = bus.subscribe(vec![EventPattern::new("task.*").unwrap()]);
        let mut all = bus.subscribe(Vec::new());
        bus.publish(event(EventKind::System { name: "started".into(), message: String::new() }));
        bus.publish(event(EventKind::TaskCancelled { task: TaskId::new(), priority: crate::Priority::High }));
        let got = tasks.recv().await.unwrap();
        assert_eq!((got.seq, got.event.kind.name()), (2, "task.cancelled".to_owned()));
        assert_eq!(all.recv().await.unwrap().seq, 1);
        assert_eq!(all.recv().await.unwrap().seq, 2);
    }

    #[tokio::test]
    async fn a_slow_subscriber_learns_how_much_it_missed() {
        let bus = EventBus::new(2, 0);
        let mut slow = bus.subscribe(Vec::new());
        for _ in 0..5 {
            bus.publish(event(EventKind::TaskCancelled { task: TaskId::new(), priority: crate::Priority::High }));
        }
        assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(3));
        assert_eq!(slow.recv().await.unwrap().seq, 4);
    }

    #[tokio::test]
    async fn a_subscriber_resumes_from_a_sequence_number() {
        let bus = EventBus::new(16, 3);
        for _ in 0..5 {
            bus.publish(event(EventKind::System { name: "tick".into(), message: String::new() }));
        }
        let (missed, mut live) = bus.subscribe_since(Vec::new(), 3).unwrap();
        assert_eq!(missed.iter().map(|p| p.seq).collect::<Vec<_>>(), [4, 5]);
        bus.publish(event(EventKind::System { name: "tick".into(), message: String::new() }));
        assert_eq!(live.recv().await.unwrap().seq, 6);
        assert_eq!(bus.subscribe_since(Vec::new(), 2).unwrap_err(), ReplayGone { since: 2, oldest: 4 });
        assert!(bus.subscribe_since(Vec::new(), 3).is_ok(), "3 is just before the oldest kept");
        assert!(bus.subscribe_since(Vec::new(), 6).unwrap().0.is_empty());
    }
}
