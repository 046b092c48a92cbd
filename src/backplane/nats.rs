//! NATS core as the broker: a subject per room.
//!
//! One client connection carries publishes and subscriptions. async-nats
//! would reconnect by itself, but the relay's own loop does that for both
//! backends (so backoff, buffering and re-subscribing behave the same):
//! the first disconnect ends the link, and the client is told to give up
//! after one attempt of its own so no orphaned reconnect loop outlives it.
//! The server sends this node its own messages back (NATS's `no_echo`
//! would also silence the probe [`NatsLink::confirm`] relies on); the
//! cluster drops them by node id, as it does for Redis.
//!
//! The client keeps up to `cluster.inbound_messages` per subject for the
//! cluster task, which moves them to the inbound queues as they come;
//! past that it drops the newest as a slow consumer, which is counted as
//! `inbound_overflow`. It reports drops and disconnects through one
//! bounded event channel that it lets overflow, so a flood of drops may be
//! undercounted and may crowd out the disconnect event: the link also
//! checks the client's connection state every second.

use std::sync::Arc;
use std::time::Duration;

use async_nats::client::PublishErrorKind;
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, Message, Subscriber};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_stream::{StreamExt, StreamMap};

use super::inbound::Inbound;
use super::{LinkError, Outgoing};

/// How often [`NatsLink::next`] looks at the connection state, in case the
/// disconnect event was lost.
const STATE_CHECK: Duration = Duration::from_secs(1);

/// A connected NATS client and its subscriptions, one per room.
pub struct NatsLink {
    client: Client,
    subscriptions: StreamMap<String, Subscriber>,
    /// Notified when the client loses its connection.
    lost: Arc<Notify>,
    state_check: tokio::time::Interval,
    timeout: Duration,
}

impl NatsLink {
    /// Connects; each subject may hold `capacity` messages for
    /// [`NatsLink::next`], and those dropped beyond it are counted on
    /// `inbound`.
    pub async fn connect(
        url: &str,
        node: &str,
        timeout: Duration,
        capacity: usize,
        inbound: Arc<Inbound>,
    ) -> Result<Self, LinkError> {
        let lost = Arc::new(Notify::new());
        let on_lost = lost.clone();
        let client = ConnectOptions::new()
            .name(format!("wsrelay {node}"))
            .connection_timeout(timeout)
            .max_reconnects(1)
            .subscription_capacity(capacity)
            .event_callback(move |event| {
                let (on_lost, inbound) = (on_lost.clone(), inbound.clone());
                async move {
                    match event {
                        Event::Disconnected | Event::Closed => on_lost.notify_one(),
                        Event::SlowConsumer(_) => inbound.overflowed(1),
                        _ => {}
                    }
                }
            })
            .connect(url)
            .await?;
        Ok(Self {
            client,
            subscriptions: StreamMap::new(),
            lost,
            state_check: tokio::time::interval(STATE_CHECK),
            timeout,
        })
    }

    /// Subscribes to every subject (the client sends them without waiting;
    /// [`NatsLink::confirm`] is the round trip).
    pub async fn subscribe(&mut self, subjects: &[String]) -> Result<(), LinkError> {
        for subject in subjects {
            let sub = self.client.subscribe(subject.clone()).await?;
            self.subscriptions.insert(subject.clone(), sub);
        }
        Ok(())
    }

    /// Returns once the server has processed every (un)subscribe sent so
    /// far, so a room counts as subscribed only when messages will flow:
    /// the server handles one connection's operations in order, so a probe
    /// message coming back on a fresh inbox proves the ones before it.
    pub async fn confirm(&mut self) -> Result<(), LinkError> {
        let inbox = self.client.new_inbox();
        let mut probe = self.client.subscribe(inbox.clone()).await?;
        self.client.publish(inbox, Bytes::new()).await?;
        match tokio::time::timeout(self.timeout, probe.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(LinkError::Lost),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// Returns once the client has written everything handed to it.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        self.client
            .flush()
            .await
            .map_err(|e| LinkError::Nats(e.to_string()))
    }

    pub async fn unsubscribe(&mut self, subjects: &[String]) -> Result<(), LinkError> {
        // Dropping a subscriber unsubscribes it on the server.
        for subject in subjects {
            self.subscriptions.remove(subject);
        }
        Ok(())
    }

    /// Hands a batch to the client in order. A message the server refuses
    /// to carry (over its `max_payload`) is skipped and counted in
    /// `refused`; any other failure ends the link.
    pub async fn publish(
        &mut self,
        batch: &[Outgoing],
        refused: &mut usize,
    ) -> Result<(), LinkError> {
        for m in batch {
            match self
                .client
                .publish(m.channel.clone(), m.message.clone())
                .await
            {
                Ok(()) => {}
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => *refused += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The next message on a subscribed subject; `None` once the
    /// connection is gone.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            tokio::select! {
                biased;
                () = self.lost.notified() => return None,
                _ = self.state_check.tick() => {
                    if self.client.connection_state() == State::Disconnected {
                        return None;
                    }
                }
                // An empty map yields None at once: then only wait for loss.
                Some((_, message)) = self.subscriptions.next(), if !self.subscriptions.is_empty() => {
                    return Some(message);
                }
            }
        }
    }
}
