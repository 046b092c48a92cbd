//! The relay's core: a message published into a room reaches this node's
//! subscribers (through the [`Hub`]) and, in a cluster, the other nodes
//! (through a [`Remote`]); a message from another node reaches this node's
//! subscribers only. Client sessions, the HTTP API and the cluster all
//! publish and deliver through here, and it counts what happened.
//!
//! It knows the hub and the metrics; nothing of sockets, configuration or
//! brokers (the cluster is a [`Remote`] to it).

use std::sync::Arc;

use crate::hub::{Backlog, Hub, Published, Room, Subscription};
use crate::metrics::{DropReason, Metrics};
use crate::wire::Frame;

/// Where messages published here go besides this node: the other nodes
/// of a cluster. Must not wait.
pub trait Remote: Send + Sync {
    fn publish(&self, room: &str, frame: &Frame);
}

/// Rooms, their members and where their messages go.
pub struct Relay {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    remote: Option<Arc<dyn Remote>>,
}

impl Relay {
    /// A relay over `hub`; with a `remote`, what is published here also
    /// goes there.
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, remote: Option<Arc<dyn Remote>>) -> Self {
        Self {
            hub,
            metrics,
            remote,
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
        let published = self.hub.publish_to(room, frame, skip, backlog);
        self.count(room.name(), &published);
        if let Some(remote) = &self.remote {
            remote.publish(room.name(), frame);
        }
        published
    }

    /// Publishes a message from outside the room (the HTTP API) into
    /// `room`, here and on the other nodes.
    pub fn publish(&self, room: &str, frame: &Frame) -> Published {
        let published = self.deliver(room, frame);
        if let Some(remote) = &self.remote {
            remote.publish(room, frame);
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
