//! The relay's core: a message published into a room reaches this node's
//! subscribers (through the [`Hub`]) and, in a cluster, the other nodes
//! (through a [`Remote`]); a message from another node reaches this node's
//! subscribers only. Client sessions, the HTTP API and the cluster all
//! publish and deliver through here, and it counts what happened.
//!
//! In a cluster with history, the broker numbers every room's messages
//! for all nodes ([`SharedHistory`]): a message published here then goes
//! to the broker only and reaches this node's subscribers when it comes
//! back numbered, and what this node's log lacks (a client resuming from
//! a position it never held, messages it missed) is read from the
//! broker, once per room and range however many clients need it.
//!
//! It knows the hub and the metrics; nothing of sockets, configuration or
//! brokers (the cluster is a [`Remote`] and a [`SharedHistory`] to it).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use crate::hub::{
    Backlog, BrokerPage, Delivered, HistoryPage, Hub, Placed, Published, ReadPlan, Room, RoomName,
    SenderTag, Sequenced, Start, Subscription,
};
use crate::metrics::{DropReason, Metrics};
use crate::wire::Frame;

/// Where messages published here go besides this node: the other nodes
/// of a cluster. Must not wait.
pub trait Remote: Send + Sync {
    fn publish(&self, room: &str, frame: &Frame, origin: Origin);
}

/// How a message handed to the [`Remote`] was published.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    /// The member that published it, if it does not want it back.
    pub sender: Option<SenderTag>,
    /// For the broker to number (shared history).
    pub sequence: bool,
    /// This node delivered it to its own members already.
    pub delivered: bool,
}

/// A cluster's broker that numbers rooms' messages and keeps their
/// history for every node.
pub trait SharedHistory: Send + Sync {
    /// `room`'s epoch, newest position and messages after position
    /// `after` (`u64::MAX`: none, only the epoch and position; none either
    /// if its epoch is not `epoch`, when given). A room the broker has no
    /// epoch for gets one if `create`, else `None`; `None` too if the
    /// broker cannot be read.
    fn read<'a>(&'a self, read: HistoryRead<'a>) -> BoxedRead<'a>;
}

/// What [`SharedHistory::read`] is asked.
#[derive(Debug, Clone, Copy)]
pub struct HistoryRead<'a> {
    pub room: &'a str,
    pub after: u64,
    pub epoch: Option<&'a str>,
    pub create: bool,
}

/// What [`SharedHistory::read`] answers, later.
pub type BoxedRead<'a> = Pin<Box<dyn Future<Output = Option<BrokerPage>> + Send + 'a>>;

/// Rooms, their members and where their messages go.
pub struct Relay {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    remote: Option<Arc<dyn Remote>>,
    shared: Option<Arc<dyn SharedHistory>>,
    /// One read from the broker at a time per room: clients that need the
    /// same range wait for the first one's read, then find it here.
    reads: Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Relay {
    /// A relay over `hub`; with a `remote`, what is published here also
    /// goes there.
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, remote: Option<Arc<dyn Remote>>) -> Self {
        Self {
            hub,
            metrics,
            remote,
            shared: None,
            reads: Mutex::default(),
        }
    }

    /// Positions and history come from `shared` (whose hub was made
    /// [`Hub::with_shared_history`]).
    pub fn with_shared_history(self, shared: Arc<dyn SharedHistory>) -> Self {
        Self {
            shared: Some(shared),
            ..self
        }
    }

    /// Whether a message published now goes to the broker only, to come
    /// back numbered.
    fn sequenced(&self) -> Option<&Arc<dyn Remote>> {
        match (&self.remote, &self.shared) {
            (Some(remote), Some(_)) if self.hub.sequenced_by_broker() => Some(remote),
            _ => None,
        }
    }

    /// How a message delivered here at once goes to the remote.
    fn delivered_here(&self) -> Origin {
        Origin {
            sender: None,
            sequence: self.shared.is_some(),
            delivered: true,
        }
    }

    /// Publishes a member's message into its `room`: to this node's
    /// members (but `skip`'s, a sender that receives but does not want its
    /// own messages back) and to the remote, if any. Members the
    /// publish found past their limits while their writers had not run go
    /// into `backlog`, for the publisher to wait for.
    pub fn publish_from(
        &self,
        room: &Arc<Room>,
        frame: &Frame,
        skip: Option<&Subscription>,
        backlog: Option<&mut Backlog>,
    ) -> Published {
        if let Some(remote) = self.sequenced() {
            let origin = Origin {
                sender: skip.map(Subscription::tag),
                sequence: true,
                delivered: false,
            };
            remote.publish(room.name(), frame, origin);
            return Published::default();
        }
        let published = self.hub.publish_to(room, frame, skip, backlog);
        self.count(room.name(), &published);
        if let Some(remote) = &self.remote {
            remote.publish(room.name(), frame, self.delivered_here());
        }
        published
    }

    /// Publishes a message from outside the room (the HTTP API) into
    /// `room`, here and on the other nodes. When the broker numbers it,
    /// nothing is appended yet: `queued` counts who here will get it.
    pub fn publish(&self, room: &str, frame: &Frame) -> Published {
        if let Some(remote) = self.sequenced() {
            remote.publish(room, frame, Origin::default_sequenced());
            return Published {
                queued: self.hub.receivers(room),
                ..Published::default()
            };
        }
        let published = self.deliver(room, frame);
        if let Some(remote) = &self.remote {
            remote.publish(room, frame, self.delivered_here());
        }
        published
    }

    /// Publishes a message into `room` on this node only: messages from
    /// other nodes come in here.
    pub fn deliver(&self, room: &str, frame: &Frame) -> Published {
        let published = self.hub.publish(room, frame);
        self.count(room, &published);
        published
    }

    /// Delivers a message the broker numbered: appended at its position,
    /// after what this node missed before it, read from the broker (or
    /// given up if the broker no longer has it either).
    pub async fn deliver_sequenced(&self, room: &str, frame: &Frame, at: Sequenced<'_>) {
        let mut at = at;
        loop {
            match self.hub.deliver_sequenced(room, frame, &at) {
                // Counted where its clients had it.
                Delivered::Appended(_) if at.placeholder => return,
                Delivered::Appended(published) => return self.count(room, &published),
                Delivered::Placed(Placed::Gap { .. }) if !at.force => {
                    // Unread (the broker did not answer): it goes for now;
                    // the next message's gap, or the next sync, reads it.
                    if !self.read(room, |hub| hub.read_gap(room, &at)).await {
                        return;
                    }
                    // What the broker had is in the log now: the message
                    // goes after it, or is a stale epoch's and goes nowhere.
                    at.force = true;
                }
                Delivered::Placed(_) => return,
            }
        }
    }

    /// Before a client joins `room` at `start`: reads what this node's log
    /// lacks for it from the broker, if positions come from there.
    pub async fn prepare(&self, room: &str, start: &Start) {
        if self.shared.is_some() && self.hub.read_after(room, start).is_some() {
            self.read(room, |hub| hub.read_after(room, start)).await;
        }
    }

    /// Up to `limit` messages of `room`'s history after position `since`
    /// (see [`Hub::history`]); with positions from the broker, what this
    /// node lacks is read from there first, and a room this node does not
    /// have is answered from the broker alone (without creating it here,
    /// or there).
    pub async fn history(
        &self,
        room: &str,
        since: u64,
        epoch: Option<&str>,
        limit: usize,
    ) -> Option<HistoryPage> {
        if let Some(shared) = &self.shared
            && self.hub.room(room).is_none()
            && self.hub.sequenced_by_broker()
        {
            let read = HistoryRead {
                room,
                after: since,
                epoch,
                create: false,
            };
            let page = shared.read(read).await?;
            return Some(HistoryPage::from_broker(page, since, epoch, limit));
        }
        let start = Start::Since {
            epoch: epoch.unwrap_or_default().to_owned(),
            position: since,
        };
        self.prepare(room, &start).await;
        self.hub.history(room, since, epoch, limit)
    }

    /// After `room` was (re)subscribed on the broker: reads what was
    /// published before the subscription took effect and this node's log
    /// lacks.
    pub async fn sync(&self, room: &str) {
        self.read(room, |hub| hub.read_sync(room)).await;
    }

    /// Reads what `plan` says of `room`'s history from the broker (if it
    /// still says anything once this room's earlier read is done) into the
    /// log; false if the broker could not be read. A plan from an epoch the
    /// broker has left reads the broker's whole current one instead.
    async fn read(&self, room: &str, plan: impl Fn(&Hub) -> Option<ReadPlan>) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let turn = ReadTurn::new(&self.reads, room);
        let Some(gate) = turn.gate() else {
            return false;
        };
        let _turn = gate.lock().await;
        let Some(plan) = plan(&self.hub) else {
            return true;
        };
        fn read<'a>(room: &'a str, plan: &'a ReadPlan) -> HistoryRead<'a> {
            HistoryRead {
                room,
                after: plan.after,
                epoch: plan.epoch.as_deref(),
                create: true,
            }
        }
        let Some(mut page) = shared.read(read(room, &plan)).await else {
            return false;
        };
        let moved = plan.epoch.as_deref().is_some_and(|e| e != page.epoch);
        let ours = self.hub.room(room).map(|r| r.epoch());
        if moved && plan.after != u64::MAX && ours.as_deref() != Some(page.epoch.as_str()) {
            page = match shared.read(read(room, &ReadPlan::ALL)).await {
                Some(page) => page,
                None => return false,
            };
        }
        self.hub.fill(room, page);
        true
    }

    /// Counts what a publish did: drops by the slow-consumer policy and,
    /// if enabled, per-room figures.
    fn count(&self, room: &str, published: &Published) {
        if published.dropped > 0 {
            self.metrics
                .dropped(DropReason::SlowConsumer, published.dropped);
        }
        self.metrics.room_published(room, published.queued);
    }
}

impl Origin {
    /// A message from outside any room, for the broker to number.
    fn default_sequenced() -> Self {
        Self {
            sequence: true,
            ..Self::default()
        }
    }
}

/// One caller's place in line for reading a room's history; the room's
/// gate goes from the map with its last user, even one whose read was
/// cancelled (a client that left while its join waited).
struct ReadTurn<'a> {
    reads: &'a Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
    room: &'a str,
    gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl<'a> ReadTurn<'a> {
    fn new(
        reads: &'a Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
        room: &'a str,
    ) -> Self {
        let mut map = reads.lock().unwrap_or_else(PoisonError::into_inner);
        let gate = match map.get(room) {
            Some(gate) => gate.clone(),
            None => map.entry(room.into()).or_default().clone(),
        };
        Self {
            reads,
            room,
            gate: Some(gate),
        }
    }

    /// The room's gate (held from `new` until dropped).
    fn gate(&self) -> Option<&tokio::sync::Mutex<()>> {
        self.gate.as_deref()
    }
}

impl Drop for ReadTurn<'_> {
    fn drop(&mut self) {
        let mut map = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        // Under the map's lock, as every clone is taken: one left is the map's.
        drop(self.gate.take());
        if map
            .get(self.room)
            .is_some_and(|g| Arc::strong_count(g) == 1)
        {
            map.remove(self.room);
        }
    }
}
