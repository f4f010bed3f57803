//! The event bus: every state change the engine makes is published here, and
//! subscribers pick what they want with patterns (`task.*`, `agent.status`).
//!
//! It is a broadcast channel with a bounded buffer. Each event gets a sequence
//! number, so a subscriber that falls behind learns exactly how many events it
//! missed ([`RecvError::Lagged`]) instead of missing them silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;

use crate::event::{Event, EventPattern};

/// An event with its place in the bus's sequence.
#[derive(Clone, PartialEq, Debug)]
pub struct Published {
    /// 1 for the first event published on this bus, then +1 each.
    pub seq: u64,
    /// The event.
    pub event: Event,
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

/// Publishes events to every subscriber.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Published>>,
    seq: Arc<AtomicU64>,
}

impl EventBus {
    /// A bus that buffers up to `capacity` events per slow subscriber.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender, seq: Arc::new(AtomicU64::new(0)) }
    }

    /// Publishes an event; returns its sequence number.
    pub fn publish(&self, event: Event) -> u64 {
        // The sequence is taken and sent under no lock, so two concurrent
        // publishers may deliver seq 8 before seq 7; subscribers see each
        // event exactly once either way.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // An error only means nobody is subscribed.
        let _ = self.sender.send(Arc::new(Published { seq, event }));
        seq
    }

    /// Subscribes to events matching any of `patterns` (all events if empty).
    pub fn subscribe(&self, patterns: Vec<EventPattern>) -> Subscription {
        Subscription { receiver: self.sender.subscribe(), patterns }
    }

    /// The sequence number of the last event published.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4_096)
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
        let bus = EventBus::new(16);
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
        let bus = EventBus::new(2);
        let mut slow = bus.subscribe(Vec::new());
        for _ in 0..5 {
            bus.publish(event(EventKind::TaskCancelled { task: TaskId::new(), priority: crate::Priority::High }));
        }
        assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(3));
        assert_eq!(slow.recv().await.unwrap().seq, 4);
    }
}
