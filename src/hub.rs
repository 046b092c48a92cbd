//! Membership and fan-out.
//!
//! The hub is the one place that knows who is connected. A message is
//! encoded once, as the complete server frame every subscriber will be sent
//! ([`Frame`]). Publishing clones that frame's handle into each
//! subscriber's bounded queue with `try_send`: the bytes are a
//! reference-counted `Bytes`, so a delivery costs a refcount bump and a
//! queue slot, never a copy or an encode, and the publisher never waits on
//! anyone's socket. A subscriber whose queue is full is evicted on
//! the spot: its sender is dropped, which wakes its connection task to close
//! it with 1008. Only that subscriber is affected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;

use bytes::{BufMut, Bytes, BytesMut};

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

    /// An empty ping, for keepalive.
    pub fn ping() -> Self {
        Self(Bytes::from_static(&[0x89, 0x00]))
    }

    /// A control frame (the keepalive ping), not a relayed message.
    pub fn is_control(&self) -> bool {
        self.0.first().is_some_and(|b| b & 0x08 != 0)
    }
}

/// Identifies one connected client for the lifetime of the process.
pub type ClientId = u64;

/// Everyone who hears published messages.
pub struct Hub {
    // Publishing takes the read lock, so publishers on different threads run
    // in parallel; joins and leaves are rare by comparison.
    subscribers: RwLock<HashMap<ClientId, Member>>,
    next_id: AtomicU64,
    queue_messages: usize,
}

/// The hub's end of one membership.
struct Member {
    queue: mpsc::Sender<Frame>,
    // Never sent on: dropping it (on eviction or leave) resolves the
    // client's `evicted` receiver, which wakes its task even while that task
    // is blocked on a socket that accepts nothing.
    _evict: oneshot::Sender<()>,
}

/// A client's end of its membership.
pub struct Subscription {
    pub id: ClientId,
    /// Messages published for this client, in order.
    pub queue: mpsc::Receiver<Frame>,
    /// Resolves when the hub drops this client: its queue was full, or the
    /// hub was cleared for shutdown.
    pub evicted: oneshot::Receiver<()>,
}

impl Hub {
    /// A hub whose subscribers may each have `queue_messages` messages waiting.
    pub fn new(queue_messages: usize) -> Self {
        Self {
            subscribers: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue_messages: queue_messages.max(1),
        }
    }

    /// Adds a subscriber; it hears every message published from now on.
    pub fn join(&self) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, queue) = mpsc::channel(self.queue_messages);
        let (evict, evicted) = oneshot::channel();
        let member = Member {
            queue: tx,
            _evict: evict,
        };
        self.subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, member);
        Subscription { id, queue, evicted }
    }

    /// Removes a subscriber. Idempotent.
    pub fn leave(&self, id: ClientId) {
        self.subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Queues `frame` for every subscriber and returns how many it was
    /// queued for. Subscribers whose queue is full are evicted.
    pub fn publish(&self, frame: &Frame) -> usize {
        let mut delivered = 0;
        let mut full: Vec<ClientId> = Vec::new();
        {
            let subscribers = self
                .subscribers
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (&id, member) in subscribers.iter() {
                match member.queue.try_send(frame.clone()) {
                    Ok(()) => delivered += 1,
                    Err(TrySendError::Full(_)) => full.push(id),
                    // Its connection is already on the way out.
                    Err(TrySendError::Closed(_)) => {}
                }
            }
        }
        if !full.is_empty() {
            let mut subscribers = self
                .subscribers
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for id in full {
                subscribers.remove(&id);
            }
        }
        delivered
    }

    /// Drops every membership at once, waking every client's task; used at
    /// shutdown, when each then sees the server's token and closes with 1001.
    pub fn clear(&self) {
        let members = std::mem::take(
            &mut *self
                .subscribers
                .write()
                .unwrap_or_else(PoisonError::into_inner),
        );
        drop(members);
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

    #[test]
    fn publish_reaches_every_subscriber_sharing_the_payload() {
        let hub = Hub::new(4);
        let mut a = hub.join();
        let mut b = hub.join();
        let frame = Frame::new(false, b"hello");
        assert_eq!(hub.publish(&frame), 2);
        let ra = a.queue.try_recv().unwrap();
        let rb = b.queue.try_recv().unwrap();
        // Same allocation: fan-out shares the encoded frame instead of copying it.
        assert_eq!(ra.wire().as_ptr(), rb.wire().as_ptr());
        assert_eq!(ra.payload(), b"hello");
        assert!(!ra.is_text());
    }

    #[test]
    fn full_queue_evicts_only_that_subscriber() {
        let hub = Hub::new(2);
        let mut slow = hub.join();
        let mut fast = hub.join();
        let msg = Frame::new(true, b"x");
        for _ in 0..2 {
            assert_eq!(hub.publish(&msg), 2);
            fast.queue.try_recv().unwrap();
        }
        // The slow queue is full: this publish evicts it and reaches the other.
        assert_eq!(hub.publish(&msg), 1);
        assert!(slow.queue.is_closed());
        assert!(slow.evicted.try_recv().is_err());
        assert!(!fast.queue.is_closed());
        assert_eq!(
            fast.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.publish(&msg), 1);
        let _ = slow.queue.try_recv();
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
    fn leave_is_idempotent() {
        let hub = Hub::new(1);
        let s = hub.join();
        hub.leave(s.id);
        hub.leave(s.id);
        assert!(hub.is_empty());
    }
}
