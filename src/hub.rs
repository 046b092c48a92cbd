//! Membership and fan-out.
//!
//! The hub is the one place that knows who is connected. A message is
//! encoded once, as the complete server frame every subscriber will be sent
//! ([`Frame`]). Publishing clones that frame's handle into each
//! subscriber's bounded [`Queue`]: the bytes are a reference-counted
//! `Bytes`, so a delivery costs a refcount bump and a queue slot, never a
//! copy or an encode, and the publisher never waits on anyone's socket. A
//! full queue gets the slow-consumer policy (`client.on_overflow`) for that
//! subscriber only; under `disconnect` the hub evicts it on the spot by
//! closing its queue, which wakes its task to close it with 1008.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::{BufMut, Bytes, BytesMut};

use crate::queue::{Push, Queue, QueueLimits};

/// A data message encoded once as the unmasked, final server frame that
/// goes on every subscriber's wire unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;

    /// Encodes a text (`text == true`) or binary message.
    pub fn new(text: bool, payload: &[u8]) -> Self {
        let mut b = Self::header(text, payload.len());
        b.extend_from_slice(payload);
        Self(b.freeze())
    }

    /// Encodes a message from a client frame's masked payload, unmasking it
    /// in the same pass as the copy that encoding needs anyway.
    pub fn from_masked(text: bool, masked: &[u8], mask: [u8; 4]) -> Self {
        let mut b = Self::header(text, masked.len());
        let start = b.len();
        b.extend_from_slice(masked);
        crate::protocol::unmask(&mut b[start..], mask);
        Self(b.freeze())
    }

    /// A buffer holding the frame header, with room for the payload.
    fn header(text: bool, n: usize) -> BytesMut {
        let opcode = if text { Self::TEXT } else { Self::BINARY };
        let mut b = BytesMut::with_capacity(n + 10);
        b.put_u8(0x80 | opcode);
        if n < 126 {
            b.put_u8(n as u8);
        } else if n <= 0xffff {
            b.put_u8(126);
            b.put_u16(n as u16);
        } else {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
        b
    }

    /// The whole frame, header included.
    pub fn wire(&self) -> &Bytes {
        &self.0
    }

    fn header_len(&self) -> usize {
        match self.0.get(1) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        }
    }

    /// The message's payload.
    pub fn payload(&self) -> &[u8] {
        &self.0[self.header_len()..]
    }

    pub fn is_text(&self) -> bool {
        self.0.first() == Some(&(0x80 | Self::TEXT))
    }
}

/// Identifies one connected client for the lifetime of the process.
pub type ClientId = u64;

/// Everyone who hears published messages.
pub struct Hub {
    // Publishing takes the read lock, so publishers on different threads run
    // in parallel; joins and leaves are rare by comparison.
    subscribers: RwLock<HashMap<ClientId, Arc<Queue>>>,
    /// Set (under the write lock) once shutdown has taken every member:
    /// a client joining later gets a queue that is already closed.
    draining: AtomicBool,
    next_id: AtomicU64,
    limits: QueueLimits,
}

/// A client's end of its membership.
pub struct Subscription {
    pub id: ClientId,
    /// Messages published for this client, in order; closed when the hub
    /// drops the client (evicted as a slow consumer, or shutdown).
    pub queue: Arc<Queue>,
}

/// What one publish did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Subscribers the message was queued for.
    pub queued: usize,
    /// Messages that will not be delivered because of it: the message
    /// itself for full queues, or older ones it pushed out.
    pub dropped: usize,
}

impl Hub {
    /// A hub whose subscribers' queues are bounded by `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            subscribers: RwLock::new(HashMap::new()),
            draining: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            limits: QueueLimits {
                messages: limits.messages.max(1),
                ..limits
            },
        }
    }

    /// Adds a subscriber; it hears every message published from now on.
    /// Once the hub is draining, the subscription comes closed.
    pub fn join(&self) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::default());
        let mut subscribers = self
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match self.draining.load(Ordering::Relaxed) {
            true => queue.close(),
            false => {
                subscribers.insert(id, queue.clone());
            }
        }
        Subscription { id, queue }
    }

    /// Removes a subscriber and closes its queue. Idempotent.
    pub fn leave(&self, id: ClientId) {
        let removed = self
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(queue) = removed {
            queue.close();
        }
    }

    /// Queues `frame` for every subscriber under the overflow policy.
    /// Subscribers that overflow under `disconnect` are evicted: their queue
    /// is closed, which wakes their task to close them with 1008.
    pub fn publish(&self, frame: &Frame) -> Published {
        let mut published = Published::default();
        let mut overflowed: Vec<ClientId> = Vec::new();
        {
            let subscribers = self
                .subscribers
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (&id, queue) in subscribers.iter() {
                match queue.push(frame, &self.limits) {
                    Push::Queued { dropped } => {
                        published.queued += 1;
                        published.dropped += dropped;
                    }
                    Push::Dropped => published.dropped += 1,
                    Push::Overflow => {
                        published.dropped += 1;
                        overflowed.push(id);
                    }
                    // Its connection is already on the way out.
                    Push::Closed => {}
                }
            }
        }
        for id in overflowed {
            self.leave(id);
        }
        published
    }

    /// Asks every subscriber's task to send a keepalive ping.
    pub fn ping_all(&self) {
        let subscribers = self
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for queue in subscribers.values() {
            queue.ping();
        }
    }

    /// Ends every membership for shutdown and hands back the members'
    /// queues, for the server to close (each close wakes that client's task
    /// to say goodbye with 1001). Clients joining from now on get a closed
    /// queue at once.
    pub fn drain(&self) -> Vec<Arc<Queue>> {
        let mut subscribers = self
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.draining.store(true, Ordering::Relaxed);
        std::mem::take(&mut *subscribers).into_values().collect()
    }

    /// Subscribers connected now.
    pub fn len(&self) -> usize {
        self.subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnOverflow;
    use crate::queue::Next;
    use std::task::{Context, Poll, Waker};

    fn hub(messages: usize, on_overflow: OnOverflow) -> Hub {
        Hub::new(QueueLimits {
            messages,
            bytes: 1 << 20,
            on_overflow,
        })
    }

    fn take(s: &Subscription) -> Vec<Frame> {
        let mut batch = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        let _ = s.queue.poll_next(&mut cx, &mut batch, 1000, usize::MAX);
        batch
    }

    #[test]
    fn publish_reaches_every_subscriber_sharing_the_payload() {
        let hub = hub(4, OnOverflow::Disconnect);
        let a = hub.join();
        let b = hub.join();
        let frame = Frame::new(false, b"hello");
        let published = hub.publish(&frame);
        assert_eq!(
            published,
            Published {
                queued: 2,
                dropped: 0
            }
        );
        let (ra, rb) = (take(&a), take(&b));
        // Same allocation: fan-out shares the encoded frame instead of copying it.
        assert_eq!(ra[0].wire().as_ptr(), rb[0].wire().as_ptr());
        assert_eq!(ra[0].payload(), b"hello");
        assert!(!ra[0].is_text());
    }

    #[test]
    fn full_queue_evicts_only_that_subscriber() {
        let hub = hub(2, OnOverflow::Disconnect);
        let slow = hub.join();
        let fast = hub.join();
        let msg = Frame::new(true, b"x");
        for _ in 0..2 {
            assert_eq!(hub.publish(&msg).queued, 2);
            assert_eq!(take(&fast).len(), 1);
        }
        // The slow queue is full: this publish evicts it and reaches the other.
        assert_eq!(
            hub.publish(&msg),
            Published {
                queued: 1,
                dropped: 1
            }
        );
        assert!(slow.queue.is_closed());
        assert!(!fast.queue.is_closed());
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.publish(&msg).queued, 1);
        assert_eq!(slow.queue.discard(), 2);
    }

    #[test]
    fn drop_policies_keep_the_subscriber() {
        for policy in [OnOverflow::DropOldest, OnOverflow::DropNewest] {
            let hub = hub(1, policy);
            let slow = hub.join();
            hub.publish(&Frame::new(true, b"1"));
            assert_eq!(
                hub.publish(&Frame::new(true, b"2")),
                Published {
                    queued: usize::from(policy == OnOverflow::DropOldest),
                    dropped: 1
                }
            );
            let kept = if policy == OnOverflow::DropOldest {
                b"2"
            } else {
                b"1"
            };
            assert_eq!(take(&slow)[0].payload(), kept);
            assert_eq!(hub.len(), 1);
        }
    }

    #[test]
    fn pings_and_drain_reach_every_queue() {
        let hub = hub(1, OnOverflow::Disconnect);
        let (a, b) = (hub.join(), hub.join());
        hub.ping_all();
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = Vec::new();
        for s in [&a, &b] {
            assert_eq!(
                s.queue.poll_next(&mut cx, &mut batch, 1, 1),
                Poll::Ready(Next::Ping)
            );
        }
        let drained = hub.drain();
        assert!(hub.is_empty());
        assert_eq!(drained.len(), 2);
        // Draining hands the queues over; closing them is the server's turn.
        assert!(!a.queue.is_closed());
        drained.iter().for_each(|q| q.close());
        assert!(a.queue.is_closed() && b.queue.is_closed());
        assert!(hub.join().queue.is_closed());
        assert!(hub.is_empty());
    }

    #[test]
    fn frames_use_the_shortest_length_encoding() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let payload = vec![b'a'; len];
            let f = Frame::new(true, &payload);
            assert_eq!(f.wire().len(), header + len, "payload {len}");
            assert_eq!(f.payload(), &payload[..]);
            assert_eq!(f.wire()[0], 0x81);
            assert!(f.is_text());
        }
        assert_eq!(&Frame::new(false, b"hi").wire()[..], &[0x82, 2, b'h', b'i']);
    }

    #[test]
    fn leave_is_idempotent_and_closes_the_queue() {
        let hub = hub(1, OnOverflow::Disconnect);
        let s = hub.join();
        hub.leave(s.id);
        hub.leave(s.id);
        assert!(hub.is_empty());
        assert!(s.queue.is_closed());
    }
}
