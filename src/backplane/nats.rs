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
//!
//! Shared history (`rooms.history` on): a JetStream stream numbers and
//! keeps every room's messages ([`Stream`]). A node publishes a message
//! for it on the room's *stored* subject (`<prefix>.in.<room's>`), which
//! the stream captures; the stream republishes each message it stored on
//! the room's *heard* subject (`<prefix>.out.<room's>`), which nodes
//! subscribe to, with its sequence and the sequence of the subject's
//! previous message in headers. The sequence is the message's position:
//! one sequence for all rooms, so a room's positions are not contiguous,
//! and the previous one is how a node sees that it missed one. The stream
//! is created at connect if absent; its creation time is the epoch (a
//! stream lost with the server's data, and made anew, has another).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::client::PublishErrorKind;
use async_nats::connection::State;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind as StorePublishErrorKind;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, DiscardPolicy, Republish};
use async_nats::jetstream::{self as js, context::PublishAckFuture};
use async_nats::{Client, ConnectOptions, Event, Subscriber};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_stream::{StreamExt, StreamMap};
use tracing::warn;

use super::inbound::Inbound;
use super::{LinkError, Outgoing, RawPage, SharedSettings, envelope};

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
    /// With shared history: the stream, and the newest sequence heard on
    /// each subscribed subject (one going back means the stream was made
    /// anew under this connection).
    history: Option<(Arc<Stream>, HashMap<String, u64>)>,
}

/// The JetStream stream that numbers and keeps rooms' messages.
pub struct Stream {
    context: js::Context,
    name: String,
    prefix: String,
    /// The stream's creation time, in hex nanoseconds.
    epoch: Arc<str>,
    /// Notified when a read finds the stream made anew since the link
    /// opened it: the link starts again, to number in the new epoch.
    replaced: Arc<Notify>,
    /// Most messages one read takes: a room's whole history.
    max_entries: usize,
}

/// Why the stream could not be used.
fn stream_error(name: &str, e: impl std::fmt::Display) -> LinkError {
    LinkError::Nats(format!("JetStream stream `{name}`: {e}"))
}

impl Stream {
    /// Finds or creates the stream for `prefix`'s subjects, with
    /// `settings`' limits per room.
    async fn open(
        client: &Client,
        prefix: &str,
        settings: &SharedSettings,
        timeout: Duration,
    ) -> Result<Self, LinkError> {
        let mut context = js::new(client.clone());
        context.set_timeout(timeout);
        // Letters, digits, `-` and `_` only: a stream name has no dots.
        let name: String = prefix
            .chars()
            .map(|c| match c.is_ascii_alphanumeric() || c == '-' {
                true => c,
                false => '_',
            })
            .chain("-history".chars())
            .collect();
        let wanted = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.in.>")],
            republish: Some(Republish {
                source: format!("{prefix}.in.>"),
                destination: format!("{prefix}.out.>"),
                headers_only: false,
            }),
            max_messages_per_subject: i64::try_from(settings.size).unwrap_or(i64::MAX),
            max_age: settings.ttl,
            max_bytes: i64::try_from(settings.total_bytes).unwrap_or(i64::MAX),
            discard: DiscardPolicy::Old,
            allow_direct: true,
            description: Some("wsrelay: rooms' shared history".into()),
            ..Default::default()
        };
        let stream = match context.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => stream,
            Err(e) if e.kind() == js::context::CreateStreamErrorKind::JetStreamUnavailable => {
                return Err(LinkError::Unusable(format!(
                    "the NATS server has JetStream off, and shared history needs it: start it with `nats-server -js` ({e})"
                )));
            }
            Err(e) => return Err(stream_error(&name, e)),
        };
        let info = stream.cached_info();
        // One made by hand must still feed the rooms' subjects.
        if info.config.subjects != wanted.subjects || info.config.republish != wanted.republish {
            return Err(LinkError::Unusable(format!(
                "JetStream stream `{name}` exists with other subjects or republishing than wsrelay's \
                 ({prefix}.in.> republished to {prefix}.out.>): delete it, or change cluster.prefix"
            )));
        }
        Ok(Self {
            epoch: epoch_of(info).into(),
            replaced: Arc::new(Notify::new()),
            context,
            name,
            prefix: prefix.to_owned(),
            max_entries: settings.size.saturating_add(1),
        })
    }

    /// Where a room's messages are published for the stream to keep
    /// (`channel` is the room's subject without history).
    fn stored(&self, channel: &str) -> String {
        self.subject(channel, "in")
    }

    /// Where the stream republishes a room's messages.
    fn heard(&self, channel: &str) -> String {
        self.subject(channel, "out")
    }

    fn subject(&self, channel: &str, kind: &str) -> String {
        let rest = channel
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(channel);
        format!("{}.{kind}{rest}", self.prefix)
    }

    /// `channel`'s room's epoch and newest position, and its messages
    /// after position `after` (`u64::MAX`: none; none either if the
    /// stream's epoch is not `epoch`, when given), numbered. A message is
    /// chained to the one before it in the page; the first to `after` if
    /// the stream still has that message, else to nothing in particular
    /// (the position before it, which no other message of the room has).
    pub async fn read(
        &self,
        channel: &str,
        after: u64,
        epoch: Option<&str>,
    ) -> Result<RawPage, LinkError> {
        let err = |e: &dyn std::fmt::Display| stream_error(&self.name, e);
        // Asked each time: the stream may have been made anew since.
        let stream = self
            .context
            .get_stream(&self.name)
            .await
            .map_err(|e| err(&e))?;
        let current = epoch_of(stream.cached_info());
        if *current != *self.epoch {
            self.replaced.notify_one();
        }
        let subject = self.stored(channel);
        let top = match stream.direct_get_last_for_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => 0,
            Err(e) => return Err(err(&e)),
        };
        let mut messages = Vec::new();
        if after < top && epoch.is_none_or(|e| e == current) {
            let consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: subject,
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: after.max(1),
                    },
                    ack_policy: AckPolicy::None,
                    memory_storage: true,
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(|e| err(&e))?;
            let mut batch = consumer
                .fetch()
                .max_messages(self.max_entries)
                .messages()
                .await
                .map_err(|e| err(&e))?;
            let mut last = None;
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| err(&e))?;
                let (sequence, pending) = match m.info() {
                    Ok(info) => (info.stream_sequence, info.pending),
                    Err(e) => return Err(err(&e)),
                };
                if sequence != after {
                    let previous = last.unwrap_or(sequence - 1);
                    // One the envelope refuses stays as it is, and is
                    // counted as malformed when read.
                    let numbered = envelope::number(&m.payload, &current, sequence, previous);
                    messages.push(numbered.unwrap_or_else(|_| m.payload.clone()));
                }
                last = Some(sequence);
                if sequence >= top || pending == 0 {
                    break;
                }
            }
            drop(batch);
            let name = consumer.cached_info().name.clone();
            // It would go by itself once inactive; gone now, it costs nothing.
            let _ = stream.delete_consumer(&name).await;
        }
        Ok(RawPage {
            epoch: current,
            top,
            messages,
        })
    }
}

/// Resolves when `replaced` is notified; never without it.
async fn stream_replaced(replaced: Option<&Notify>) {
    match replaced {
        Some(replaced) => replaced.notified().await,
        None => std::future::pending().await,
    }
}

/// A stream's epoch: its creation time, which a stream made anew (its
/// server's data lost, or deleted by hand) does not share.
fn epoch_of(info: &stream::Info) -> String {
    format!("{:x}", info.created.unix_timestamp_nanos())
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
        history: Option<(&str, SharedSettings)>,
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
        let history = match history {
            Some((prefix, settings)) => {
                let stream = Stream::open(&client, prefix, &settings, timeout).await?;
                Some((Arc::new(stream), HashMap::new()))
            }
            None => None,
        };
        Ok(Self {
            client,
            subscriptions: StreamMap::new(),
            lost,
            state_check: tokio::time::interval(STATE_CHECK),
            timeout,
            history,
        })
    }

    /// What reads rooms' history, with shared history.
    pub fn stream(&self) -> Option<Arc<Stream>> {
        self.history.as_ref().map(|(stream, _)| stream.clone())
    }

    /// The subject `channel`'s room's messages are heard on.
    fn heard(&self, channel: &str) -> String {
        match &self.history {
            Some((stream, _)) => stream.heard(channel),
            None => channel.to_owned(),
        }
    }

    /// Subscribes to every subject (the client sends them without waiting;
    /// [`NatsLink::confirm`] is the round trip).
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        for channel in channels {
            let subject = self.heard(channel);
            let sub = self.client.subscribe(subject.clone()).await?;
            self.subscriptions.insert(subject, sub);
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

    pub async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        // Dropping a subscriber unsubscribes it on the server.
        for channel in channels {
            let subject = self.heard(channel);
            self.subscriptions.remove(&subject);
            if let Some((_, newest)) = &mut self.history {
                newest.remove(&subject);
            }
        }
        Ok(())
    }

    /// Hands a batch to the client in order. A message the server refuses
    /// to carry (over its `max_payload`) is skipped and counted in
    /// `refused`; any other failure ends the link. Messages for the stream
    /// to number are sent on without waiting, then their acks awaited: a
    /// message the stream did not take ends the link too.
    pub async fn publish(
        &mut self,
        batch: &[Outgoing],
        refused: &mut usize,
    ) -> Result<(), LinkError> {
        let mut acks: Vec<PublishAckFuture> = Vec::new();
        for m in batch {
            if let (Some((stream, _)), Some(_)) = (&self.history, m.split) {
                let subject = stream.stored(&m.channel);
                match stream.context.publish(subject, m.message.clone()).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) if e.kind() == StorePublishErrorKind::MaxPayloadExceeded => {
                        *refused += 1;
                    }
                    Err(e) => return Err(LinkError::Nats(e.to_string())),
                }
                continue;
            }
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
        for ack in acks {
            ack.await.map_err(|e| LinkError::Nats(e.to_string()))?;
        }
        Ok(())
    }

    /// The next message on a subscribed subject (with shared history,
    /// numbered from the headers the stream gave it); `None` once the
    /// connection is gone, or the stream was made anew under it.
    pub async fn next(&mut self) -> Option<Bytes> {
        let replaced = self.history.as_ref().map(|(s, _)| s.replaced.clone());
        loop {
            tokio::select! {
                biased;
                () = self.lost.notified() => return None,
                () = stream_replaced(replaced.as_deref()) => {
                    warn!("the JetStream stream was made anew; reconnecting to number in its epoch");
                    return None;
                }
                _ = self.state_check.tick() => {
                    if self.client.connection_state() == State::Disconnected {
                        return None;
                    }
                }
                // An empty map yields None at once: then only wait for loss.
                Some((subject, message)) = self.subscriptions.next(), if !self.subscriptions.is_empty() => {
                    let Some((stream, newest)) = &mut self.history else {
                        return Some(message.payload);
                    };
                    let header = |name| {
                        let value = message.headers.as_ref()?.get(name)?;
                        value.as_str().parse::<u64>().ok()
                    };
                    let (Some(sequence), Some(previous)) =
                        (header("Nats-Sequence"), header("Nats-Last-Sequence"))
                    else {
                        // Not from the stream: refused as unnumbered.
                        return Some(message.payload);
                    };
                    let heard = newest.entry(subject).or_default();
                    if sequence <= *heard {
                        warn!(stream = %stream.name, "the JetStream stream's sequence went back: it was made anew; reconnecting");
                        return None;
                    }
                    *heard = sequence;
                    let numbered = envelope::number(&message.payload, &stream.epoch, sequence, previous);
                    return Some(numbered.unwrap_or(message.payload));
                }
            }
        }
    }
}
