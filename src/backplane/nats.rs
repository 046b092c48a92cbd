//! NATS as the broker: a subject per room (with shared history, through a
//! JetStream stream).
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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::client::PublishErrorKind;
use async_nats::connection::State;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind as StorePublishErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{
    self, DiscardPolicy, LastRawMessageError, LastRawMessageErrorKind, Republish,
};
use async_nats::jetstream::{self as js, context::PublishAckFuture};
use async_nats::{Client, ConnectOptions, Event, Subscriber};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_stream::{StreamExt, StreamMap};
use tracing::{info, warn};

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
    /// With shared history: the stream, and what was heard of it.
    history: Option<(Arc<Stream>, Heard)>,
}

/// The newest sequences a link heard of its stream: one on a subject not
/// above the subject's means the stream was made anew under the link.
struct Heard {
    /// Per subscribed subject: the newest heard on it (`true`), at first
    /// the newest the link knew of anywhere when it subscribed (`false`:
    /// whatever is republished on it later was stored after, so numbered
    /// higher).
    newest: HashMap<String, (u64, bool)>,
    /// The newest the link knows the stream had: its last at open, then
    /// the newest heard.
    known: u64,
    /// The task that checks every few seconds that the stream is the one
    /// opened (aborted with the link).
    watch: tokio::task::AbortHandle,
}

impl Drop for Heard {
    fn drop(&mut self) {
        self.watch.abort();
    }
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
    /// The stream's last sequence when the link opened it: every message
    /// republished on a subject subscribed later has a higher one.
    last_at_open: u64,
    /// Messages it keeps per room (`rooms.history.size`): most a read keeps.
    per_room: usize,
}

/// The subject of the message that marks a change of the stream's limits:
/// stored, but no room's (`room.<name>`, `all`).
fn limits_marker(prefix: &str) -> String {
    format!("{prefix}.in._limits")
}

/// How often a link checks that its stream is still the one it opened.
const WATCH: Duration = Duration::from_secs(5);

/// Whether nobody answered a JetStream request: the server has JetStream
/// off.
fn jetstream_off(e: &js::context::GetStreamError) -> bool {
    use js::context::{RequestError, RequestErrorKind};
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<RequestError>())
        .is_some_and(|r| r.kind() == RequestErrorKind::NoResponders)
}

/// Whether a JetStream request failed because the stream does not exist.
fn is_not_found(e: &js::context::GetStreamError) -> bool {
    matches!(e.kind(), js::context::GetStreamErrorKind::JetStream(j) if j.code() == 404)
}

/// Why the stream could not be used.
fn stream_error(name: &str, e: impl std::fmt::Display) -> LinkError {
    LinkError::Nats(format!("JetStream stream `{name}`: {e}"))
}

impl Stream {
    /// Why a request about the stream failed.
    fn error(&self, e: impl std::fmt::Display) -> LinkError {
        stream_error(&self.name, e)
    }

    /// The epoch `info` names; a new one tells the link to start again.
    fn epoch_checked(&self, info: &stream::Info) -> String {
        let epoch = epoch_of(info);
        if *epoch != *self.epoch {
            self.replaced.notify_one();
        }
        epoch
    }

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
        let info = match context.get_stream(&name).await {
            Ok(stream) => stream.cached_info().clone(),
            Err(e) if is_not_found(&e) => {
                let created = context
                    .create_stream(wanted.clone())
                    .await
                    .map_err(|e| stream_error(&name, e))?;
                let info = created.cached_info().clone();
                info!(stream = %name, epoch = %epoch_of(&info), "created the JetStream stream for rooms' history: a new epoch");
                info
            }
            Err(e) if jetstream_off(&e) => {
                return Err(LinkError::Unusable(format!(
                    "the NATS server has JetStream off, and shared history needs it: start it with `nats-server -js` ({e})"
                )));
            }
            Err(e) => return Err(stream_error(&name, e)),
        };
        // One made by hand must still feed the rooms' subjects.
        if info.config.subjects != wanted.subjects || info.config.republish != wanted.republish {
            return Err(LinkError::Unusable(format!(
                "JetStream stream `{name}` exists with other subjects or republishing than wsrelay's \
                 ({prefix}.in.> republished to {prefix}.out.>): delete it, or change cluster.prefix"
            )));
        }
        // Its limits follow `rooms.history` (its storage and replicas stay
        // as they are).
        let config = stream::Config {
            max_messages_per_subject: wanted.max_messages_per_subject,
            max_age: wanted.max_age,
            max_bytes: wanted.max_bytes,
            discard: wanted.discard,
            allow_direct: wanted.allow_direct,
            ..info.config.clone()
        };
        let info = match config == info.config {
            true => info,
            false => {
                let updated = context.update_stream(&config).await.map_err(|e| {
                    LinkError::Unusable(format!(
                        "JetStream stream `{name}`: cannot set its limits to rooms.history's: {e}"
                    ))
                })?;
                // Marked in the stream: a room under its new limit may have
                // lost messages to the old one (`Stream::dropped_none_after`).
                let ack = context
                    .publish(limits_marker(prefix), Bytes::new())
                    .await
                    .map_err(|e| LinkError::Nats(e.to_string()))?;
                ack.await.map_err(|e| LinkError::Nats(e.to_string()))?;
                info!(stream = %name, "set the JetStream stream's limits to rooms.history's");
                updated
            }
        };
        Ok(Self {
            epoch: epoch_of(&info).into(),
            last_at_open: info.state.last_sequence,
            replaced: Arc::new(Notify::new()),
            context,
            name,
            prefix: prefix.to_owned(),
            per_room: settings.size.max(1),
        })
    }

    /// Tells the link to start again if the stream was made anew (or is
    /// gone); every few seconds, as long as the link lives.
    async fn watch(self: Arc<Self>) {
        let mut every = tokio::time::interval(WATCH);
        every.tick().await;
        loop {
            every.tick().await;
            match self.context.get_stream(&self.name).await {
                Ok(stream) => drop(self.epoch_checked(stream.cached_info())),
                Err(e) if is_not_found(&e) => self.replaced.notify_one(),
                // Unreachable: the link notices that itself.
                Err(_) => {}
            }
        }
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
    /// stream's epoch is not `epoch`, when given), numbered, at most the
    /// newest `size`. A room with no message stored answers an empty epoch
    /// unless `create`: it does not exist.
    ///
    /// Each message is chained to the one before it in the page if the
    /// stream still holds the page's first once read (it drops a room's
    /// oldest first, so none after it went meanwhile); the first to
    /// `after` only if, besides, nothing of the room after `after` can have
    /// been dropped: the stream still holds the room's message at `after`,
    /// or it never dropped anything after `after` (its first sequence) and
    /// the room is under its per-room limit. Otherwise a message is chained
    /// to the position before it, which no other message of the room has:
    /// a resume across it is then refused.
    pub async fn read(
        &self,
        channel: &str,
        after: u64,
        epoch: Option<&str>,
        create: bool,
    ) -> Result<RawPage, LinkError> {
        // Asked each time: the stream may have been made anew since.
        let stream = self
            .context
            .get_stream(&self.name)
            .await
            .map_err(|e| self.error(e))?;
        let current = self.epoch_checked(stream.cached_info());
        let subject = self.stored(channel);
        let top = match self.last_of(&stream, &subject).await? {
            Some(top) if top > envelope::MAX_POSITION => return Err(LinkError::Reply),
            Some(top) => top,
            None => 0,
        };
        if top == 0 && !create {
            return Ok(RawPage {
                epoch: String::new(),
                top,
                messages: Vec::new(),
            });
        }
        let mut kept: VecDeque<(u64, Bytes)> = VecDeque::new();
        let mut dropped_older = false;
        if after < top && epoch.is_none_or(|e| e == current) {
            let consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: subject.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    },
                    ack_policy: AckPolicy::None,
                    memory_storage: true,
                    // Deleted below; this only for a read cut short.
                    inactive_threshold: Duration::from_secs(10),
                    ..Default::default()
                })
                .await
                .map_err(|e| self.error(e))?;
            let fetched = self
                .fetch_newest(&consumer, top, &mut kept, &mut dropped_older)
                .await;
            let name = consumer.cached_info().name.clone();
            // It would go by itself once inactive; gone now, it costs nothing.
            let _ = stream.delete_consumer(&name).await;
            fetched?;
        }
        // Asked once read, so what the stream dropped meanwhile counts too.
        // The page is a chain if the stream still holds its first message:
        // it drops a room's oldest first, so nothing after it went.
        let whole = match kept.front() {
            Some((first, _)) => self.holds(&stream, &subject, *first).await?,
            None => true,
        };
        // Its first follows `after` if nothing of the room after `after`
        // can have gone either.
        let chained = whole
            && !dropped_older
            && !kept.is_empty()
            && ((after > 0 && self.holds(&stream, &subject, after).await?)
                || self.dropped_none_after(&stream, &subject, after).await?);
        let mut messages = Vec::with_capacity(kept.len());
        let mut last = None;
        for (sequence, payload) in kept {
            let previous = match last {
                Some(last) if whole => last,
                None if chained => after,
                _ => sequence.saturating_sub(1),
            };
            last = Some(sequence);
            // One the envelope refuses stays as it is, and is counted as
            // malformed when read.
            let numbered = envelope::number(&payload, &current, sequence, previous);
            messages.push(numbered.unwrap_or(payload));
        }
        Ok(RawPage {
            epoch: current,
            top,
            messages,
        })
    }

    /// Takes the messages `consumer` delivers up to `top` into `kept`, the
    /// newest `size` of them (`dropped_older` if it let older ones go: a
    /// stream whose per-room limit is larger than `size` may hold more), in
    /// batches bounded in messages and bytes.
    async fn fetch_newest(
        &self,
        consumer: &js::consumer::Consumer<pull::Config>,
        top: u64,
        kept: &mut VecDeque<(u64, Bytes)>,
        dropped_older: &mut bool,
    ) -> Result<(), LinkError> {
        let (mut done, mut scanned, mut capped) = (false, 0, true);
        while !done && scanned < READ_SCAN_MAX {
            let fetch = match capped {
                true => consumer
                    .fetch()
                    .max_messages(self.per_room.min(READ_BATCH))
                    .max_bytes(READ_BATCH_BYTES),
                false => consumer.fetch().max_messages(1),
            };
            let mut batch = fetch.messages().await.map_err(|e| self.error(e))?;
            let (mut got, mut cut) = (0, false);
            while let Some(m) = batch.next().await {
                let m = match m {
                    Ok(m) => m,
                    // The byte bound reached (the server ends the batch with
                    // an error status): fetch on.
                    Err(_) if capped => {
                        cut = true;
                        break;
                    }
                    Err(e) => return Err(self.error(e)),
                };
                let (sequence, pending) = match m.info() {
                    Ok(info) => (info.stream_sequence, info.pending),
                    Err(e) => return Err(self.error(e)),
                };
                got += 1;
                if kept.len() == self.per_room {
                    kept.pop_front();
                    *dropped_older = true;
                }
                kept.push_back((sequence, m.payload.clone()));
                if sequence >= top || pending == 0 {
                    done = true;
                    break;
                }
            }
            scanned += got;
            // Cut before its first message: that one alone is larger than
            // the bound, and comes alone, unbounded (the server's
            // max_payload bounds it).
            capped = !(cut && got == 0);
            done |= got == 0 && !cut;
        }
        Ok(())
    }

    /// Whether the stream holds the room's message at `sequence`. Asked
    /// of the stream's leader (a direct get may be answered by a replica
    /// that has not yet dropped what the leader did).
    async fn holds(
        &self,
        stream: &js::stream::Stream,
        subject: &str,
        sequence: u64,
    ) -> Result<bool, LinkError> {
        let found = self.found(stream.get_raw_message(sequence).await)?;
        Ok(found.is_some_and(|m| m.subject.as_str() == subject))
    }

    /// The sequence of the newest message on `subject`, if any (from the
    /// stream's leader).
    async fn last_of(
        &self,
        stream: &js::stream::Stream,
        subject: &str,
    ) -> Result<Option<u64>, LinkError> {
        let found = self.found(stream.get_last_raw_message_by_subject(subject).await)?;
        Ok(found.map(|m| m.sequence))
    }

    /// A leader get's message, if there is one.
    fn found(
        &self,
        got: Result<StreamMessage, LastRawMessageError>,
    ) -> Result<Option<StreamMessage>, LinkError> {
        match got {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Whether the stream cannot have dropped any of the room's messages
    /// after `after`: it dropped none of any room's past it (its oldest is
    /// at most the next), its limits have not changed since `after` (the
    /// newest marker of a change is not past it; one that aged out went
    /// with everything before it), and the room is under its per-room
    /// limit (so that limit never dropped one: once reached, only age or
    /// the byte bound, which drop the stream's oldest, bring a room under
    /// it).
    async fn dropped_none_after(
        &self,
        stream: &js::stream::Stream,
        subject: &str,
        after: u64,
    ) -> Result<bool, LinkError> {
        let mut info = stream
            .info_with_subjects(subject)
            .await
            .map_err(|e| self.error(e))?;
        let first = info.info.state.first_sequence;
        let limit = info.info.config.max_messages_per_subject;
        let mut count = 0;
        while let Some(entry) = info.next().await {
            let (name, n) = entry.map_err(|e| self.error(e))?;
            if name == subject {
                count = n;
            }
        }
        // Since its limits last changed: before, a lower one may have
        // dropped what the room is now under the limit without.
        let marker = limits_marker(&self.prefix);
        let changed = self.last_of(stream, &marker).await?.unwrap_or(0);
        Ok(first <= after.saturating_add(1)
            && after >= changed
            && (limit < 0 || (count as i64) < limit))
    }
}

/// Messages (and bytes) one fetch of a read asks for, and the most
/// messages a read looks at.
const READ_BATCH: usize = 1024;
const READ_BATCH_BYTES: usize = 16 << 20;
const READ_SCAN_MAX: usize = 16 * READ_BATCH;

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
                let stream = Arc::new(Stream::open(&client, prefix, &settings, timeout).await?);
                let heard = Heard {
                    newest: HashMap::new(),
                    known: stream.last_at_open,
                    watch: tokio::spawn(stream.clone().watch()).abort_handle(),
                };
                Some((stream, heard))
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
            if let Some((_, heard)) = &mut self.history {
                heard.newest.insert(subject.clone(), (heard.known, false));
            }
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
            if let Some((_, heard)) = &mut self.history {
                heard.newest.remove(&subject);
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
                    let Some((stream, heard)) = &mut self.history else {
                        return Some(message.payload);
                    };
                    let header = |name| Some(message.headers.as_ref()?.get(name)?.as_str());
                    let number = |name| header(name)?.parse::<u64>().ok();
                    let from_stream = header("Nats-Stream") == Some(stream.name.as_str());
                    let numbered = match (from_stream, number("Nats-Sequence"), number("Nats-Last-Sequence")) {
                        (true, Some(sequence), Some(previous)) => envelope::number(&message.payload, &stream.epoch, sequence, previous).ok().map(|m| (sequence, m)),
                        _ => None,
                    };
                    // Not from the stream, or not numbered: refused as unnumbered.
                    let Some((sequence, numbered)) = numbered else {
                        return Some(message.payload);
                    };
                    let (newest, was_heard) = heard.newest.entry(subject).or_insert((heard.known, false));
                    match sequence.cmp(newest) {
                        std::cmp::Ordering::Greater => {}
                        // Heard already: nothing new.
                        std::cmp::Ordering::Equal if *was_heard => continue,
                        _ => {
                            warn!(stream = %stream.name, "the JetStream stream's sequence went back: it was made anew; reconnecting");
                            return None;
                        }
                    }
                    (*newest, *was_heard) = (sequence, true);
                    heard.known = heard.known.max(sequence);
                    return Some(numbered);
                }
            }
        }
    }
}
