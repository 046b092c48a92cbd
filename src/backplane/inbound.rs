//! Messages from the broker on their way to this node's subscribers.
//!
//! The broker client hands over each message as it reads it (Redis: its
//! connection driver calls [`Inbound::accept`] through a push callback;
//! NATS: the cluster task drains the client's subscriptions into it).
//! Accepting only checks the envelope and queues the message, so reading
//! never waits on fan-out and the clients' own buffers stay short.
//!
//! Fan-out runs on one worker task per CPU the relay may use. Each room
//! belongs to one worker, chosen by hashing its name, so a room's messages
//! keep their order while different rooms fan out in parallel. Each
//! worker's queue holds up to `cluster.inbound_messages` and
//! `cluster.inbound_bytes` (each worker the whole bound, so one hot room
//! gets all of it; the node at most the bound times its workers, plus the
//! batch each is fanning out); past that the oldest waiting message is
//! dropped and counted (`inbound_overflow`): a node that cannot keep up
//! loses messages it counts, rather than memory and latency it cannot see.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tracing::{debug, warn};

use super::envelope;
use super::fifo::DropOldest;
use crate::hub::{SenderTag, Sequenced};
use crate::metrics::{ClusterDropReason, ClusterMetrics};
use crate::relay::Relay;
use crate::wire::Frame;

/// Messages a worker delivers before it lets other tasks on its thread
/// run. Each is one append to its room's log, whatever the room's size,
/// and a wake-up for each member waiting for it.
const MESSAGES_PER_TURN: usize = 1024;

/// What the broker brought, queued per worker.
pub(super) struct Inbound {
    node_id: String,
    /// This process's messages: the upper half of their message ids (a
    /// node restarted under the same id is another process).
    instance: u32,
    /// The broker numbers messages (shared history).
    numbered: bool,
    /// Larger messages from the broker are refused, as from a client.
    max_message_size: usize,
    /// One queue per worker.
    workers: Box<[DropOldest<Bytes>]>,
    /// Picks a room's worker.
    hasher: RandomState,
    metrics: ClusterMetrics,
    /// Whether a malformed message has been logged (the rest are counted).
    warned_malformed: AtomicBool,
}

/// How many workers, and the bounds each worker's queue keeps.
pub(super) struct InboundLimits {
    pub workers: usize,
    pub instance: u32,
    pub numbered: bool,
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_message_size: usize,
}

impl Inbound {
    pub fn new(node_id: &str, limits: InboundLimits, metrics: ClusterMetrics) -> Self {
        let workers = limits.workers.max(1);
        let worker = || DropOldest::new(limits.max_messages.max(1), limits.max_bytes);
        Self {
            node_id: node_id.to_owned(),
            instance: limits.instance,
            numbered: limits.numbered,
            max_message_size: limits.max_message_size,
            workers: (0..workers).map(|_| worker()).collect(),
            hasher: RandomState::new(),
            metrics,
            warned_malformed: AtomicBool::new(false),
        }
    }

    /// How many workers [`Inbound::fan_out`] expects, numbered from 0.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Queues one broker message for its room's worker. Never waits: this
    /// runs where the broker client reads.
    pub fn accept(&self, message: Bytes) {
        let worker = match envelope::decode(&message) {
            // The broker sends a node its own messages back; they were
            // delivered here when they were published (unless the broker
            // numbers them: then they are delivered here as they come back).
            Ok(m) if m.node == self.node_id && m.sequence.is_none() => return,
            // Unnumbered, it has no place in logs the broker numbers.
            Ok(m) if self.numbered && m.sequence.is_none() => {
                return self.malformed(
                    &"not numbered by the broker (from a node without shared history?)",
                );
            }
            Ok(m) if m.payload.len() > self.max_message_size => {
                return self.malformed(&"larger than limits.max_message_size");
            }
            Ok(m) => self.hasher.hash_one(m.room) as usize % self.workers.len(),
            Err(e) => return self.malformed(&e),
        };
        let (dropped, _) = self.workers[worker].push(message);
        if dropped > 0 {
            self.overflowed(dropped as u64);
        }
    }

    /// Whether this process published `m` (its sender and delivery mark
    /// name this process's clients and deeds).
    pub fn is_own(&self, m: &envelope::Envelope<'_>) -> bool {
        m.node == self.node_id && (m.id >> 32) as u32 == self.instance
    }

    /// What a numbered message is to this node: its publisher here, if a
    /// member that does not want it back, and whether this node's clients
    /// had it already (delivered here while the broker was unreachable).
    pub fn here(&self, m: &envelope::Envelope<'_>) -> (Option<SenderTag>, bool) {
        let own = self.is_own(m);
        let sender = SenderTag {
            id: m.sender.id,
            key: m.sender.key as usize,
        };
        (
            (own && sender.id != 0).then_some(sender),
            own && m.delivered,
        )
    }

    /// Counts `n` messages from the broker this node had no room for.
    pub fn overflowed(&self, n: u64) {
        self.metrics.dropped(ClusterDropReason::InboundOverflow, n);
    }

    /// Worker `worker`'s loop: delivers its queue's messages to local
    /// subscribers, in order, until the task is dropped.
    pub async fn fan_out(&self, worker: usize, relay: &Relay) {
        let queue = &self.workers[worker];
        let mut batch = VecDeque::new();
        let mut delivered = 0;
        loop {
            queue.ready().await;
            queue.take(&mut batch, usize::MAX);
            for message in batch.drain(..) {
                // Checked when it was accepted; decoding again is a few
                // header bytes, and spares an allocation per message.
                let Ok(m) = envelope::decode(&message) else {
                    continue;
                };
                let frame = Frame::new(m.text, m.payload);
                let own = self.is_own(&m);
                if !own {
                    self.metrics.received.inc();
                }
                match m.sequence {
                    None => drop(relay.deliver(m.room, &frame)),
                    Some(sequence) => {
                        let (sender, placeholder) = self.here(&m);
                        let at = Sequenced {
                            epoch: sequence.epoch,
                            position: sequence.position,
                            previous: sequence.previous,
                            sender,
                            placeholder,
                            force: false,
                        };
                        // Waits only when messages before it must be read
                        // from the broker first.
                        relay.deliver_sequenced(m.room, &frame, at).await;
                    }
                }
                delivered += 1;
                if delivered >= MESSAGES_PER_TURN {
                    delivered = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// Counts a broker message that will not be relayed; logs the first.
    fn malformed(&self, why: &dyn std::fmt::Display) {
        self.metrics.malformed.inc();
        if self.warned_malformed.swap(true, Ordering::Relaxed) {
            debug!(error = %why, "malformed cluster message dropped");
        } else {
            warn!(
                error = %why,
                "malformed cluster message dropped (further ones are only counted, in wsrelay_cluster_malformed_messages_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(workers: usize, max_messages: usize, max_bytes: usize) -> Inbound {
        let limits = InboundLimits {
            workers,
            instance: 0,
            numbered: false,
            max_messages,
            max_bytes,
            max_message_size: 1000,
        };
        Inbound::new("me", limits, ClusterMetrics::default())
    }

    fn message(node: &str, room: &str, id: u64, len: usize) -> Bytes {
        let header = envelope::Header {
            id,
            ..envelope::Header::default()
        };
        envelope::encode(node, room, header, &vec![0; len])
    }

    fn queued(i: &Inbound) -> Vec<Vec<u64>> {
        i.workers
            .iter()
            .map(|w| {
                let waiting = w.snapshot();
                waiting
                    .iter()
                    .map(|m| envelope::decode(m).unwrap().id)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_room_stays_with_one_worker_in_order() {
        let i = inbound(4, 1000, 1 << 20);
        for id in 0..20 {
            i.accept(message("other", "lobby", id, 1));
        }
        let queues = queued(&i);
        let busy: Vec<&Vec<u64>> = queues.iter().filter(|q| !q.is_empty()).collect();
        assert_eq!(busy, [&(0..20).collect::<Vec<u64>>()]);
    }

    #[test]
    fn own_oversized_and_malformed_messages_are_not_queued() {
        let i = inbound(1, 1000, 1 << 20);
        i.accept(message("me", "lobby", 1, 1));
        i.accept(message("other", "lobby", 2, 1001));
        i.accept(Bytes::from_static(b"not a wsrelay message"));
        assert_eq!(queued(&i), [Vec::<u64>::new()]);
        assert_eq!(i.metrics.malformed.get(), 2);
    }

    #[test]
    fn the_oldest_are_dropped_beyond_the_bounds_and_counted() {
        // Each worker holds the whole bound: 2 here.
        let i = inbound(2, 2, 1 << 20);
        for id in 0..5 {
            i.accept(message("other", "lobby", id, 1));
        }
        assert!(queued(&i).contains(&vec![3, 4]));
        let overflow = i.metrics.dropped_count(ClusterDropReason::InboundOverflow);
        assert_eq!(overflow, 3);
        // Bytes: a message that does not fit beside the waiting one pushes
        // it out; one message always fits an empty queue.
        let i = inbound(1, 100, 60);
        i.accept(message("other", "lobby", 1, 10));
        i.accept(message("other", "lobby", 2, 40));
        assert_eq!(queued(&i), [vec![2]]);
        i.accept(message("other", "lobby", 3, 500));
        assert_eq!(queued(&i), [vec![3]]);
    }
}
