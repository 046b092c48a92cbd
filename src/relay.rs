//! The relay's core: a message published into a room reaches this node's
//! subscribers (through the [`Hub`]) and, in a cluster, the other nodes
//! (through a [`Remote`]); a message from another node reaches this node's
//! subscribers only. Client sessions, the HTTP API and the cluster all
//! publish and deliver through here, and it counts what happened.
//!
//! It knows the hub and the metrics; nothing of sockets, configuration or
//! brokers (the cluster is a [`Remote`] to it).

use std::sync::Arc;

use crate::hub::{Backlog, ClientId, Hub, Published};
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

    /// Publishes a message into `room`: to this node's subscribers
    /// (skipping `skip`, the sender that does not want it back) and to the
    /// remote, if any.
    pub fn publish(&self, room: &str, frame: &Frame, skip: Option<ClientId>) -> Published {
        self.publish_from(room, frame, skip, None)
    }

    /// [`Relay::publish`] for a publisher that can wait: queues its message
    /// filled past their limits go into `backlog`.
    pub fn publish_from(
        &self,
        room: &str,
        frame: &Frame,
        skip: Option<ClientId>,
        backlog: Option<&mut Backlog>,
    ) -> Published {
        let published = self.deliver_into(room, frame, skip, backlog);
        if let Some(remote) = &self.remote {
            remote.publish(room, frame);
        }
        published
    }

    /// Queues a message for this node's subscribers in `room` only, and
    /// counts what happened: drops by the slow-consumer policy and, if
    /// enabled, per-room figures. Messages from other nodes come in here.
    pub fn deliver(&self, room: &str, frame: &Frame, skip: Option<ClientId>) -> Published {
        self.deliver_into(room, frame, skip, None)
    }

    fn deliver_into(
        &self,
        room: &str,
        frame: &Frame,
        skip: Option<ClientId>,
        backlog: Option<&mut Backlog>,
    ) -> Published {
        let published = self.hub.publish(room, frame, skip, backlog);
        if published.dropped > 0 {
            self.metrics
                .dropped(DropReason::SlowConsumer, published.dropped as u64);
        }
        self.metrics.room_published(room, published.queued);
        published
    }
}
