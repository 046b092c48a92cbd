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
//!
//! It knows queues and frames; nothing of sockets, the cluster (only the
//! [`RoomInterest`] it reports to) or the configuration file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

use crate::queue::{Ending, Push, Queue, QueueLimits};
use crate::wire::Frame;
use prometheus_client::metrics::gauge::Gauge;

/// Identifies one connected client for the lifetime of the process.
pub type ClientId = u64;

/// A room's name; with rooms off, every client is in the room "".
pub type RoomName = Arc<str>;

/// Whether `name` may name a room, wherever it comes from (a client's
/// path, the HTTP API, a broker message): 1 to 128 characters of
/// `A-Za-z0-9._:-`.
pub fn is_room_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// What a member may do, chosen with `?role=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives only; a message from it gets close 1008.
    Subscriber,
    /// Sends only; it hears nothing.
    Publisher,
    Both,
}

impl Role {
    pub fn receives(self) -> bool {
        self != Role::Publisher
    }

    pub fn sends(self) -> bool {
        self != Role::Subscriber
    }
}

/// Everyone who hears published messages, room by room.
pub struct Hub {
    // Publishing takes the read lock, so publishers on different threads run
    // in parallel; joins and leaves are rare by comparison.
    rooms: RwLock<Rooms>,
    next_id: AtomicU64,
    limits: QueueLimits,
    /// Most rooms at once (0: no cap).
    max_rooms: usize,
    /// Rooms that exist now, as exported (`wsrelay_rooms_active`).
    rooms_active: Gauge,
    /// Told when a room gains its first receiving member or loses its
    /// last (in a cluster: which rooms to hear from the broker).
    interest: Option<Arc<dyn RoomInterest>>,
}

/// Who wants to know which rooms have anyone receiving: the cluster, to
/// hear from the broker only what someone here listens to. Called under
/// the hub's own lock, so the calls come in the order the changes happened
/// and the two never disagree; they must be quick and must not call back
/// into the hub.
pub trait RoomInterest: Send + Sync {
    /// `room` gained its first receiving member.
    fn add(&self, room: &RoomName);
    /// `room` lost its last receiving member.
    fn remove(&self, room: &str);
}

#[derive(Default)]
struct Rooms {
    by_name: HashMap<RoomName, Room>,
    /// Set once shutdown has begun: a client joining later gets a queue
    /// that is already closed.
    draining: bool,
}

/// A room exists while it has members.
#[derive(Default)]
struct Room {
    members: HashMap<ClientId, Member>,
    /// Members that receive (not publish-only).
    receivers: usize,
}

/// The hub's end of one membership.
struct Member {
    queue: Arc<Queue>,
    /// False for a publish-only client: it is in the room but hears nothing.
    receives: bool,
}

/// A client's end of its membership.
pub struct Subscription {
    pub id: ClientId,
    pub room: RoomName,
    /// Messages published for this client, in order; closed when the hub
    /// drops the client (evicted as a slow consumer, or shutdown).
    pub queue: Arc<Queue>,
}

/// The queues one publisher waits for before it publishes more: filled
/// past their limits by its last publish while their writers had not yet
/// run. See [`Queue::is_backlogged`].
#[derive(Default)]
pub struct Backlog {
    queues: Vec<Arc<Queue>>,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}

/// `rooms.max_rooms` rooms exist and the client asked for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomsFull;

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
    /// A hub whose subscribers' queues are bounded by `limits`, with at
    /// most `max_rooms` rooms (0: no cap), counting its rooms in `rooms_active`.
    pub fn new(limits: QueueLimits, max_rooms: usize, rooms_active: Gauge) -> Self {
        Self {
            rooms: RwLock::new(Rooms::default()),
            next_id: AtomicU64::new(1),
            limits: QueueLimits {
                messages: limits.messages.max(1),
                ..limits
            },
            max_rooms,
            rooms_active,
            interest: None,
        }
    }

    /// Reports rooms gaining their first or losing their last receiving
    /// member to `interest`.
    pub fn with_interest(self, interest: Arc<dyn RoomInterest>) -> Self {
        Self {
            interest: Some(interest),
            ..self
        }
    }

    /// `room` no longer has anyone receiving.
    fn lost_interest(&self, room: &str) {
        if let Some(i) = &self.interest {
            i.remove(room);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rooms> {
        self.rooms.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rooms> {
        self.rooms.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a client to `room`, creating the room if needed; it hears every
    /// message published there from now on (unless `receives` is false).
    /// Once the hub is draining, the subscription comes closed.
    pub fn join(&self, room: RoomName, receives: bool) -> Result<Subscription, RoomsFull> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::default());
        let mut rooms = self.write();
        if rooms.draining {
            queue.close(Ending::Shutdown);
        } else {
            if self.max_rooms > 0
                && rooms.by_name.len() >= self.max_rooms
                && !rooms.by_name.contains_key(&room)
            {
                return Err(RoomsFull);
            }
            let member = Member {
                queue: queue.clone(),
                receives,
            };
            let r = rooms.by_name.entry(room.clone()).or_insert_with(|| {
                self.rooms_active.inc();
                Room::default()
            });
            r.members.insert(id, member);
            if receives {
                r.receivers += 1;
                if let (1, Some(i)) = (r.receivers, &self.interest) {
                    i.add(&room);
                }
            }
        }
        Ok(Subscription { id, room, queue })
    }

    /// Removes a client from its room (the room goes when it empties) and
    /// closes its queue. Idempotent.
    pub fn leave(&self, room: &str, id: ClientId) {
        self.remove(room, id, Ending::Left);
    }

    fn remove(&self, room: &str, id: ClientId, ending: Ending) {
        let removed = {
            let mut rooms = self.write();
            let Some(r) = rooms.by_name.get_mut(room) else {
                return;
            };
            let removed = r.members.remove(&id);
            if removed.as_ref().is_some_and(|m| m.receives) {
                r.receivers -= 1;
                if r.receivers == 0 {
                    self.lost_interest(room);
                }
            }
            if r.members.is_empty() {
                rooms.by_name.remove(room);
                self.rooms_active.dec();
            }
            removed
        };
        if let Some(member) = removed {
            member.queue.close(ending);
        }
    }

    /// Queues `frame` for everyone in `room` who receives, except `skip`
    /// (the sender, when it does not want its own messages back), under the
    /// overflow policy. Members that overflow under `disconnect` are
    /// evicted: their queue is closed, which wakes their task to close them
    /// with 1008. Queues filled past their limits by a writer that has not
    /// had its turn yet go into `backlog`, for a publisher that can wait.
    pub fn publish(
        &self,
        room: &str,
        frame: &Frame,
        skip: Option<ClientId>,
        mut backlog: Option<&mut Backlog>,
    ) -> Published {
        let mut published = Published::default();
        let mut overflowed: Vec<ClientId> = Vec::new();
        {
            let rooms = self.read();
            let Some(r) = rooms.by_name.get(room) else {
                return published;
            };
            for (&id, member) in &r.members {
                if !member.receives || Some(id) == skip {
                    continue;
                }
                match member.queue.push(frame, &self.limits) {
                    Push::Queued { dropped } => {
                        published.queued += 1;
                        published.dropped += dropped;
                    }
                    Push::Backlogged => {
                        published.queued += 1;
                        if let Some(b) = backlog.as_deref_mut() {
                            b.queues.push(member.queue.clone());
                        }
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
            self.remove(room, id, Ending::Evicted);
        }
        published
    }

    /// Drops from `backlog` the queues whose writers have caught up (or
    /// turned out slow, or left); true when none is left to wait for.
    pub fn caught_up(&self, backlog: &mut Backlog) -> bool {
        backlog.queues.retain(|q| q.is_backlogged(&self.limits));
        if backlog.queues.is_empty() && backlog.queues.capacity() > 16 {
            backlog.queues = Vec::new();
        }
        backlog.queues.is_empty()
    }

    /// Removes every member of `room` and closes each with `farewell`
    /// (a Close frame); returns how many there were.
    pub fn close_room(&self, room: &str, farewell: &Bytes) -> usize {
        let removed = {
            let mut rooms = self.write();
            let removed = rooms.by_name.remove(room);
            if let Some(r) = &removed {
                self.rooms_active.dec();
                if r.receivers > 0 {
                    self.lost_interest(room);
                }
            }
            removed
        };
        let Some(r) = removed else { return 0 };
        for member in r.members.values() {
            member.queue.close(Ending::Closed(farewell.clone()));
        }
        r.members.len()
    }

    /// Asks every client's task to send a keepalive ping.
    pub fn ping_all(&self) {
        for room in self.read().by_name.values() {
            room.members.values().for_each(|m| m.queue.ping());
        }
    }

    /// Begins shutdown: hands back every member's queue, for the server to
    /// close in batches (each close wakes that client's task to say goodbye
    /// with 1001, and it leaves then). Members stay in their rooms until
    /// then, hearing and being heard as before. Clients joining from now on
    /// get a closed queue at once.
    pub fn drain(&self) -> Vec<Arc<Queue>> {
        let mut rooms = self.write();
        rooms.draining = true;
        rooms
            .by_name
            .values()
            .flat_map(|r| r.members.values().map(|m| m.queue.clone()))
            .collect()
    }

    /// Clients connected now, in every room.
    pub fn len(&self) -> usize {
        self.read().by_name.values().map(|r| r.members.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rooms that exist now.
    pub fn room_count(&self) -> usize {
        self.read().by_name.len()
    }

    /// Every room with its number of receiving members, by name.
    pub fn rooms(&self) -> Vec<(RoomName, usize)> {
        let mut list: Vec<(RoomName, usize)> = self
            .read()
            .by_name
            .iter()
            .map(|(name, r)| (name.clone(), r.receivers))
            .collect();
        list.sort();
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Next;
    use crate::queue::OnOverflow;
    use std::task::{Context, Poll, Waker};

    fn hub(messages: usize, on_overflow: OnOverflow) -> Hub {
        let limits = QueueLimits {
            messages,
            bytes: 1 << 20,
            on_overflow,
        };
        Hub::new(limits, 0, Gauge::default())
    }

    /// A member of the one room used when rooms are off.
    fn join(hub: &Hub) -> Subscription {
        hub.join("".into(), true).unwrap()
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
        let a = join(&hub);
        let b = join(&hub);
        let frame = Frame::new(false, b"hello");
        let published = hub.publish("", &frame, None, None);
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
        let slow = join(&hub);
        slow.queue.set_socket_full(true);
        let fast = join(&hub);
        let msg = Frame::new(true, b"x");
        for _ in 0..2 {
            assert_eq!(hub.publish("", &msg, None, None).queued, 2);
            assert_eq!(take(&fast).len(), 1);
        }
        // The slow queue is full: this publish evicts it and reaches the other.
        assert_eq!(
            hub.publish("", &msg, None, None),
            Published {
                queued: 1,
                dropped: 1
            }
        );
        assert_eq!(slow.queue.ending(), Some(Ending::Evicted));
        assert!(!fast.queue.is_closed());
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.publish("", &msg, None, None).queued, 1);
        assert_eq!(slow.queue.discard(), 2);
    }

    #[test]
    fn drop_policies_keep_the_subscriber() {
        for policy in [OnOverflow::DropOldest, OnOverflow::DropNewest] {
            let hub = hub(1, policy);
            let slow = join(&hub);
            slow.queue.set_socket_full(true);
            hub.publish("", &Frame::new(true, b"1"), None, None);
            assert_eq!(
                hub.publish("", &Frame::new(true, b"2"), None, None),
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
    fn a_publisher_learns_which_writers_it_got_ahead_of() {
        let hub = hub(2, OnOverflow::Disconnect);
        let behind = join(&hub);
        let ahead = join(&hub);
        let mut backlog = Backlog::default();
        let msg = Frame::new(true, b"x");
        for _ in 0..2 {
            hub.publish("", &msg, None, Some(&mut backlog));
            assert!(backlog.is_empty());
        }
        take(&ahead);
        // `behind` is full but its writer has not run: queued all the same.
        assert_eq!(hub.publish("", &msg, None, Some(&mut backlog)).queued, 2);
        assert!(!backlog.is_empty());
        assert!(!hub.caught_up(&mut backlog));
        assert_eq!(take(&behind).len(), 3);
        assert!(hub.caught_up(&mut backlog));
        assert_eq!(hub.len(), 2);
    }

    #[test]
    fn pings_and_drain_reach_every_queue() {
        let hub = hub(1, OnOverflow::Disconnect);
        let (a, b) = (join(&hub), join(&hub));
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
        assert_eq!(drained.len(), 2);
        // Draining hands the queues over; closing them is the server's turn,
        // and until then the members still hear what is published.
        assert!(!a.queue.is_closed());
        assert_eq!(
            hub.publish("", &Frame::new(true, b"x"), None, None).queued,
            2
        );
        drained.iter().for_each(|q| q.close(Ending::Shutdown));
        assert!(a.queue.is_closed() && b.queue.is_closed());
        assert_eq!(a.queue.ending(), Some(Ending::Shutdown));
        assert_eq!(join(&hub).queue.ending(), Some(Ending::Shutdown));
        hub.leave("", a.id);
        hub.leave("", b.id);
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
        let s = join(&hub);
        hub.leave("", s.id);
        hub.leave("", s.id);
        assert!(hub.is_empty());
        assert!(s.queue.is_closed());
    }

    #[test]
    fn rooms_are_isolated_and_go_when_empty() {
        let rooms_active = Gauge::default();
        let limits = QueueLimits {
            messages: 8,
            bytes: 1 << 20,
            on_overflow: OnOverflow::Disconnect,
        };
        let hub = Hub::new(limits, 2, rooms_active.clone());
        let a1 = hub.join("a".into(), true).unwrap();
        let a2 = hub.join("a".into(), true).unwrap();
        let b = hub.join("b".into(), true).unwrap();
        assert_eq!(rooms_active.get(), 2);
        // A third room is refused; joining an existing one is not.
        assert_eq!(hub.join("c".into(), true).err(), Some(RoomsFull));
        let a3 = hub.join("a".into(), false).unwrap();

        let m = Frame::new(true, b"to a");
        // Publish-only members hear nothing; the sender can be skipped.
        assert_eq!(hub.publish("a", &m, Some(a1.id), None).queued, 1);
        assert_eq!(take(&a2).len(), 1);
        assert!(take(&a1).is_empty() && take(&b).is_empty() && take(&a3).is_empty());
        assert_eq!(hub.publish("nowhere", &m, None, None), Published::default());
        assert_eq!(
            hub.rooms(),
            vec![(RoomName::from("a"), 2), (RoomName::from("b"), 1)]
        );

        hub.leave("b", b.id);
        assert_eq!(rooms_active.get(), 1);
        assert!(hub.join("c".into(), true).is_ok());
        assert_eq!(hub.room_count(), 2);
        hub.drain();
        // Rooms go as their members leave, not at the drain.
        assert_eq!(rooms_active.get(), 2);
        for s in [a1, a2, a3] {
            hub.leave("a", s.id);
        }
        assert_eq!(rooms_active.get(), 1);
    }
}
