//! The engine's side of a cluster: several engines (one per server node)
//! sharing one store. The store is the only coordination point; this module
//! only shortens the waits and widens what each node can see:
//!
//! - **Wake-ups.** The backend announces newly ready tasks on its channel
//!   ([`ClusterMessage::Wake`]); every other node that serves the tenant
//!   claims at once instead of at its next poll.
//! - **Events.** Events raised here are relayed in small batches to the other
//!   nodes, whose buses publish those of the tenants they serve to their own
//!   subscribers as `relayed` (and never relay them on). Only while another
//!   node is there: every node says [`ClusterMessage::Present`] when it starts
//!   and every few seconds after, and any message from another node (a
//!   wake-up included) shows one listens. A node alone sends no events.
//! - **The registry** (agents, and entries such as the server's gateways)
//!   belongs to the configured tenant: agents serve every tenant, and the
//!   node's registry is the node's, not a caller's.
//! - **Agents.** Each node announces its agents in the store's registry with
//!   an expiry it keeps renewing, so every node can list every agent; a
//!   crashed node's agents vanish once their announcement lapses.
//!
//! Losing a message costs latency (the poll still claims) or an event on a
//! remote subscriber's stream; it never costs a task.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::agent::Agent;
use crate::bus::{RecvError, Subscription};
use crate::engine::{CancellationToken, Inner};
use crate::store::{ClusterMessage, Member, MemberKind, StoreError};

/// How often a node renews its agents' announcements.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// How long an announcement lives without renewal.
const ANNOUNCE_TTL: Duration = Duration::from_secs(10);
/// Most events in one relayed message.
const RELAY_BATCH: usize = 256;
/// How long another node counts as listening after its last message.
const PEER_TTL: Duration = ANNOUNCE_TTL;

/// The registry id of `agent` on `node`: agents on different nodes may share an id.
fn member_id(node: &str, agent: &str) -> String {
    format!("{node}/{agent}")
}

/// When another node was last heard from.
#[derive(Default, Debug)]
struct Peers {
    last: Mutex<Option<Instant>>,
}

impl Peers {
    fn seen(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Whether another node was heard from lately enough to be listening still.
    fn listening(&self) -> bool {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|at| at.elapsed() < PEER_TTL)
    }
}

/// An agent some node announced.
#[derive(Clone, PartialEq, Debug)]
pub struct ClusterAgent {
    /// The node that runs it.
    pub node: String,
    /// The agent as that node last announced it.
    pub agent: Agent,
}

impl Inner {
    /// Runs until `stop`: announces agents and, when the store has a channel,
    /// relays wake-ups and events both ways.
    pub(super) async fn run_cluster(self: Arc<Self>, stop: CancellationToken) {
        // Subscribed before anything else runs, so no local event is missed.
        let outbound = self.bus.subscribe(Vec::new());
        match self.store.cluster_messages() {
            Some(inbound) => {
                let peers = Peers::default();
                tokio::join!(
                    self.announce(&stop),
                    self.say_present(&stop),
                    self.relay_in(inbound, &peers, &stop),
                    self.relay_out(outbound, &peers, &stop)
                );
            }
            None => self.announce(&stop).await,
        }
    }

    /// Tells the other nodes this one listens: at once, then every few seconds.
    async fn say_present(&self, stop: &CancellationToken) {
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut new = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.store.broadcast(&ClusterMessage::Present { new }).await {
                tracing::debug!(error = %e, "could not tell the other nodes this one listens");
            }
            new = false;
        }
    }

    async fn announce(&self, stop: &CancellationToken) {
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut announced = HashSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
                () = self.agents_changed.notified() => {}
            }
            let now = self.clock.now();
            let agents: Vec<Agent> = {
                let scheduler = self.lock_scheduler();
                scheduler.agents.iter().map(|a| a.snapshot(&self.config.tenant)).collect()
            };
            let mut current = HashSet::new();
            for agent in agents {
                let id = member_id(&self.config.node, agent.id.as_str());
                let member = Member {
                    tenant: self.config.tenant.clone(),
                    kind: MemberKind::Agent,
                    id: id.clone(),
                    node: self.config.node.clone(),
                    doc: serde_json::to_value(&agent).expect("agents serialize"),
                    updated_at: now,
                    expires_at: now + ANNOUNCE_TTL,
                };
                if let Err(e) = self.store.put_member(&member).await {
                    tracing::warn!(error = %e, agent = %agent.id, "could not announce agent");
                }
                current.insert(id);
            }
            for gone in announced.difference(&current) {
                self.withdraw(gone).await;
            }
            announced = current;
        }
        for id in &announced {
            self.withdraw(id).await;
        }
    }

    async fn withdraw(&self, id: &str) {
        if let Err(e) = self.store.remove_member(&self.config.tenant, MemberKind::Agent, id).await {
            tracing::warn!(error = %e, member = id, "could not withdraw agent; it lapses on its own");
        }
    }

    async fn relay_in(
        &self,
        mut inbound: broadcast::Receiver<ClusterMessage>,
        peers: &Peers,
        stop: &CancellationToken,
    ) {
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = inbound.recv() => message,
            };
            // The channel drops this node's own messages: whatever comes is another node's.
            if message.is_ok() {
                peers.seen();
            }
            match message {
                Ok(ClusterMessage::Present { new }) => {
                    if new && let Err(e) = self.store.broadcast(&ClusterMessage::Present { new: false }).await {
                        tracing::debug!(error = %e, "could not answer a new node");
                    }
                }
                Ok(ClusterMessage::Wake { tenant }) => {
                    if self.serves(&tenant) {
                        self.wake.notify_one();
                    }
                }
                Ok(ClusterMessage::Events { events }) => {
                    for event in events.into_iter().filter(|e| self.serves(&e.tenant)) {
                        self.bus.publish_relayed(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "fell behind the cluster channel; dispatch relies on polling meanwhile");
                    self.wake.notify_one();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn relay_out(&self, mut outbound: Subscription, peers: &Peers, stop: &CancellationToken) {
        let mut batch = Vec::new();
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                first = outbound.recv() => first,
            };
            // Whatever else is already waiting goes in the same message.
            let mut next = Some(first);
            while let Some(received) = next.take() {
                match received {
                    Ok(published) if !published.relayed => batch.push(published.event.clone()),
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "events were raised faster than they could be relayed");
                    }
                    Err(RecvError::Closed) => return,
                }
                if batch.len() < RELAY_BATCH {
                    next = outbound.recv().now_or_never();
                }
            }
            if batch.is_empty() {
                continue;
            }
            if !peers.listening() {
                batch.clear();
                continue;
            }
            let message = ClusterMessage::Events { events: std::mem::take(&mut batch) };
            if let Err(e) = self.store.broadcast(&message).await {
                tracing::warn!(error = %e, "could not relay events to other nodes");
            }
        }
    }

    /// Every agent announced by the nodes sharing the store, this one included.
    pub(super) async fn cluster_agents(&self) -> Result<Vec<ClusterAgent>, StoreError> {
        let members = self.store.members(&self.config.tenant, MemberKind::Agent, self.clock.now()).await?;
        let mut agents = Vec::with_capacity(members.len());
        for member in members {
            match serde_json::from_value(member.doc) {
                Ok(agent) => agents.push(ClusterAgent { node: member.node, agent }),
                Err(e) => tracing::warn!(error = %e, member = member.id, "skipping an unreadable agent announcement"),
            }
        }
        Ok(agents)
    }
}
