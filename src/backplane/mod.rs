//! Clustering: several relays joined through Redis pub/sub or NATS.
//!
//! Each node keeps its own hub; the broker only carries messages between
//! hubs. A message published on a node (by a client or the HTTP API) is
//! appended to its room's log for the node's own subscribers at once and
//! handed to the cluster, the relay's `Remote`, which encodes it once
//! ([`envelope`]) and puts it in the outbox, a bounded FIFO the cluster
//! task drains to the broker in batches. Messages from the broker go
//! through bounded inbound queues (`inbound`) to fan-out workers, one
//! per CPU, and are delivered to local subscribers only, never published
//! again, so nothing loops; a node drops its own messages when the
//! broker echoes them (both do), which is also what keeps echo-off
//! publishers from hearing themselves through the cluster.
//!
//! It knows the relay (to deliver) and the hub's room names, never the
//! sessions, the server or the configuration file.
//!
//! Interest: the hub tells [`Interest`] when a room gains its first local
//! subscriber or loses its last, and the cluster task (un)subscribes that
//! room's channel, so a node only receives traffic it has listeners for.
//!
//! Broker trouble: the cluster task owns the connection. When it cannot
//! connect, or the connection breaks, local relay goes on untouched;
//! messages for the broker wait in the outbox (its bounds drop the oldest
//! and count them), and the task retries with capped exponential backoff,
//! re-subscribes every room of interest, and sends what waited. Order per
//! publisher holds: one outbox, one connection, one batch at a time.
//! Delivery across nodes is at most once: a batch in flight when the
//! connection breaks is counted as dropped, never sent twice. At shutdown
//! the task stops last and sends what its outbox holds first.
//!
//! Shared history (`rooms.history` on): the broker numbers every room's
//! messages for all nodes and keeps the room's history: Redis in a stream
//! per room, positions counted per room by a script (see `redis`); NATS
//! in one JetStream stream, positions its sequence, so a room's skip those
//! of the others and each message names the room's previous one (see
//! `nats`). A message published on a node then goes to the broker only,
//! and every node, its own included, appends it when it comes back
//! numbered, so all see one order; a node that finds a gap before a
//! position reads the missing messages from the broker first, and so
//! does a node asked to resume a client from a position its own log does
//! not hold (the relay's `SharedHistory`). While the broker is
//! unreachable a node relays among its own clients as before, numbering
//! their messages itself in an epoch of its own, and queues them marked
//! as delivered: when they reach the broker they are numbered and go to
//! the other nodes, and in this node's log the clients that had them skip
//! them.

// A build without a backend leaves parts of the link unused.
#![cfg_attr(
    not(all(feature = "redis", feature = "nats")),
    allow(unused_variables, dead_code)
)]

pub mod envelope;
mod fifo;
mod inbound;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::hub::{BrokerPage, Numbered, RoomInterest, RoomName};
use crate::metrics::{ClusterDropReason, ClusterMetrics};
use crate::relay::{BoxedRead, HistoryRead, Origin, Relay, Remote, SharedHistory};
use crate::wire::Frame;

use self::fifo::DropOldest;
use self::inbound::{Inbound, InboundLimits};
#[cfg(feature = "nats")]
use self::nats::NatsLink;
#[cfg(feature = "redis")]
use self::redis::RedisLink;

/// The broker a cluster is joined through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterBackend {
    /// A single relay.
    #[default]
    None,
    /// Redis pub/sub: one channel per room.
    Redis,
    /// NATS core: one subject per room.
    Nats,
}

/// Most messages sent to the broker in one batch (one Redis pipeline).
const BATCH: usize = 256;
/// Connecting, and each broker round trip, give up after this long.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect delays double from the first to the cap (each with jitter).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Why the broker connection could not be made or was lost.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[cfg(feature = "redis")]
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[cfg(feature = "nats")]
    #[error("nats: {0}")]
    Nats(String),
    #[error("timed out after {BROKER_TIMEOUT:?}")]
    Timeout,
    #[error("unexpected reply")]
    Reply,
    #[error("connection lost")]
    Lost,
    /// The broker answers, but cannot serve this node as configured.
    #[error("{0}")]
    Unusable(String),
}

#[cfg(feature = "nats")]
impl From<async_nats::ConnectError> for LinkError {
    fn from(e: async_nats::ConnectError) -> Self {
        Self::Nats(e.to_string())
    }
}

#[cfg(feature = "nats")]
impl From<async_nats::SubscribeError> for LinkError {
    fn from(e: async_nats::SubscribeError) -> Self {
        Self::Nats(e.to_string())
    }
}

#[cfg(feature = "nats")]
impl From<async_nats::PublishError> for LinkError {
    fn from(e: async_nats::PublishError) -> Self {
        Self::Nats(e.to_string())
    }
}

/// What a build without a backend's feature says when it is configured.
#[cfg(not(feature = "redis"))]
const MISSING_REDIS: &str = "this wsrelay was built without Redis support (cargo feature `redis`)";
#[cfg(not(feature = "nats"))]
const MISSING_NATS: &str = "this wsrelay was built without NATS support (cargo feature `nats`)";

/// Checks that this build can join a cluster through `backend`.
pub fn check_backend(backend: ClusterBackend) -> Result<(), String> {
    match backend {
        #[cfg(not(feature = "redis"))]
        ClusterBackend::Redis => Err(MISSING_REDIS.into()),
        #[cfg(not(feature = "nats"))]
        ClusterBackend::Nats => Err(MISSING_NATS.into()),
        _ => Ok(()),
    }
}

/// Checks that `url` is one `backend` can use (called when the config is
/// loaded, so a typo fails at start-up with the key and line).
pub fn check_url(backend: ClusterBackend, url: &str) -> Result<(), String> {
    match backend {
        ClusterBackend::None => Err(
            "set, but `backend` is none (and the URL's scheme names neither redis nor nats)".into(),
        ),
        #[cfg(feature = "redis")]
        ClusterBackend::Redis => ::redis::Client::open(url)
            .map(drop)
            .map_err(|e| format!("invalid Redis URL: {e}")),
        #[cfg(feature = "nats")]
        ClusterBackend::Nats => {
            // One list of schemes: the one the command line picks backends by.
            if backend_of(url) != ClusterBackend::Nats {
                return Err("a NATS URL starts with nats:// or tls://".into());
            }
            url.parse::<async_nats::ServerAddr>()
                .map(drop)
                .map_err(|e| e.to_string())
        }
        #[cfg(not(feature = "redis"))]
        ClusterBackend::Redis => Err(MISSING_REDIS.into()),
        #[cfg(not(feature = "nats"))]
        ClusterBackend::Nats => Err(MISSING_NATS.into()),
    }
}

/// The backend a broker URL's scheme names (`None` for an unknown one,
/// which [`check_url`] then refuses).
pub fn backend_of(url: &str) -> ClusterBackend {
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("redis" | "rediss" | "redis+unix" | "unix") => ClusterBackend::Redis,
        Some("nats" | "tls") => ClusterBackend::Nats,
        _ => ClusterBackend::None,
    }
}

/// The broker URL with any password or token hidden, for logs and
/// `check-config`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// This node's end of the cluster: what publishers hand messages to, and
/// the task that talks to the broker.
pub struct Cluster {
    backend: ClusterBackend,
    url: String,
    prefix: String,
    node_id: String,
    next_id: AtomicU64,
    /// Random per process: the upper half of its message ids.
    instance: u32,
    outbox: Outbox,
    inbound: Arc<Inbound>,
    /// How many messages the NATS client may hold per subject before it
    /// drops them as a slow consumer.
    subject_capacity: usize,
    interest: Arc<Interest>,
    metrics: ClusterMetrics,
    /// Shared history, if on.
    history: Option<SharedSettings>,
    /// Reads rooms' history while the broker connection is up.
    reader: Mutex<Option<HistoryReader>>,
}

/// How the broker keeps rooms' history for all nodes.
#[derive(Debug, Clone, Copy)]
pub struct SharedSettings {
    /// Messages per room (Redis: at least; `MAXLEN ~` trims whole nodes
    /// of a room's stream).
    pub size: usize,
    /// How long a room's history outlives its newest message (Redis; NATS
    /// keeps each message this long: JetStream's `max_age`).
    pub ttl: Duration,
    /// Payload bytes of all rooms' history (NATS: the stream's bound; it
    /// has none per room).
    pub total_bytes: usize,
}

/// What reads rooms' history from the broker.
#[derive(Clone)]
enum HistoryReader {
    #[cfg(feature = "redis")]
    Redis(self::redis::HistoryReader),
    #[cfg(feature = "nats")]
    Nats(Arc<self::nats::Stream>),
    /// With neither backend built in there is no reader (see `Link`).
    #[cfg(not(any(feature = "redis", feature = "nats")))]
    #[allow(dead_code)]
    None(std::convert::Infallible),
}

impl HistoryReader {
    /// See [`SharedHistory::read`]; `channel` is the room's.
    async fn read(
        &self,
        channel: &str,
        after: u64,
        epoch: Option<&str>,
        create: bool,
    ) -> Result<RawPage, LinkError> {
        match self {
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.read(channel, after, epoch, create).await,
            #[cfg(feature = "nats")]
            Self::Nats(s) => s.read(channel, after, epoch, create).await,
            #[cfg(not(any(feature = "redis", feature = "nats")))]
            Self::None(never) => match *never {},
        }
    }
}

/// A room's history as the broker answers it: the epoch, the newest
/// position, and each message (numbered) after the position asked for.
pub(crate) struct RawPage {
    pub epoch: String,
    pub top: u64,
    pub messages: Vec<Bytes>,
}

impl SharedSettings {
    /// A room's epoch and newest position are kept at least a day, even if
    /// its history expires sooner: clients of a quiet room stay in the
    /// same epoch.
    const META_TTL_MIN: Duration = Duration::from_secs(24 * 3600);

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn meta_ttl_ms(&self) -> u64 {
        let meta = self.ttl.max(Self::META_TTL_MIN);
        u64::try_from(meta.as_millis()).unwrap_or(u64::MAX)
    }
}

/// This node's part in a cluster (the server builds it from `cluster` and
/// `limits.max_message_size`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub backend: ClusterBackend,
    /// The broker; empty means the backend's default port on 127.0.0.1.
    pub url: String,
    /// Starts every channel or subject.
    pub prefix: String,
    /// Empty means a random one.
    pub node_id: String,
    /// What may wait for the broker, in messages and bytes.
    pub buffer_messages: usize,
    pub buffer_bytes: usize,
    /// What may wait, from the broker, for each fan-out worker.
    pub inbound_messages: usize,
    pub inbound_bytes: usize,
    /// Larger messages from the broker are refused, as from a client.
    pub max_message_size: usize,
    /// With history on: rooms' history kept by the broker.
    pub history: Option<SharedSettings>,
}

impl Cluster {
    /// This node's end of the cluster `config` describes (whose backend
    /// is not `none`).
    pub fn new(config: &ClusterSettings, metrics: ClusterMetrics) -> Self {
        let url = match (config.backend, config.url.as_str()) {
            (_, url) if !url.is_empty() => url.to_owned(),
            (ClusterBackend::Redis, _) => "redis://127.0.0.1:6379".to_owned(),
            (ClusterBackend::Nats, _) => "nats://127.0.0.1:4222".to_owned(),
            (ClusterBackend::None, _) => String::new(),
        };
        let node_id = match config.node_id.as_str() {
            "" => format!("{:016x}", fastrand::u64(..)),
            id => id.to_owned(),
        };
        // One fan-out worker per CPU the relay may use (the runtime has
        // as many threads).
        let history = config.history;
        // Message ids start at a random point: their upper half tells this
        // process's messages from those of an earlier one of the same node.
        let instance = fastrand::u32(..);
        let inbound = InboundLimits {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            instance,
            numbered: history.is_some(),
            max_messages: config.inbound_messages,
            max_bytes: config.inbound_bytes,
            max_message_size: config.max_message_size,
        };
        Self {
            backend: config.backend,
            url,
            prefix: config.prefix.clone(),
            inbound: Arc::new(Inbound::new(&node_id, inbound, metrics.clone())),
            subject_capacity: config.inbound_messages,
            node_id,
            next_id: AtomicU64::new(1),
            instance,
            outbox: Outbox::new(config.buffer_messages, config.buffer_bytes),
            interest: Arc::new(Interest::default()),
            metrics,
            history,
            reader: Mutex::default(),
        }
    }

    /// Whether the broker numbers messages and keeps rooms' history.
    pub fn shares_history(&self) -> bool {
        self.history.is_some()
    }

    /// Reads rooms' history while connected, if shared.
    fn set_reader(&self, link: Option<&Link>) {
        let reader = match link {
            #[cfg(feature = "redis")]
            Some(Link::Redis(l)) => l.reader().map(HistoryReader::Redis),
            #[cfg(feature = "nats")]
            Some(Link::Nats(l)) => l.stream().map(HistoryReader::Nats),
            _ => None,
        };
        *self.reader.lock().unwrap_or_else(PoisonError::into_inner) = reader;
    }

    /// Where the hub reports rooms gaining or losing local subscribers.
    pub fn interest(&self) -> Arc<Interest> {
        self.interest.clone()
    }

    /// The Redis channel or NATS subject of `room` (`""` with rooms off).
    /// A room name's dots are escaped so each room is exactly one NATS token.
    fn channel(&self, room: &str) -> String {
        match room {
            "" => format!("{}.all", self.prefix),
            room => format!("{}.room.{}", self.prefix, room.replace('.', "%2E")),
        }
    }

    /// The name this node's messages carry.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The kind of broker this node joins through.
    pub fn backend(&self) -> ClusterBackend {
        self.backend
    }

    /// Messages waiting for the broker now.
    pub fn waiting(&self) -> usize {
        self.outbox.len()
    }

    /// Talks to the broker until `stop`: connects, reconnects with backoff,
    /// and relays in both directions while connected. At `stop` it sends
    /// what waits in the outbox if it is connected (the server cancels it
    /// once every client is gone, so a node leaving in a rolling restart
    /// still delivers its clients' last messages to the other nodes).
    pub async fn run(self: Arc<Self>, relay: Arc<Relay>, stop: CancellationToken) {
        // The fan-out workers live as long as this task (dropping the set
        // aborts them).
        let mut workers = JoinSet::new();
        for worker in 0..self.inbound.workers() {
            let (inbound, relay) = (self.inbound.clone(), relay.clone());
            workers.spawn(async move { inbound.fan_out(worker, &relay).await });
        }
        let broker = redact(&self.url);
        let mut failures: u32 = 0;
        loop {
            let connect = Link::connect(&self);
            let attempt = tokio::select! {
                link = connect => link,
                () = stop.cancelled() => return,
            };
            match attempt {
                Ok(link) => {
                    info!(broker = %broker, node = %self.node_id, "cluster broker connected");
                    failures = 0;
                    self.metrics.connected.set(1);
                    let ended = self.session(link, &relay, &stop).await;
                    // Before the gauge says so, for whoever watches it.
                    relay.hub.hearing_others(false);
                    self.set_reader(None);
                    self.metrics.connected.set(0);
                    self.metrics.subscriptions.set(0);
                    match ended {
                        Ok(()) => return,
                        Err(e) => warn!(
                            broker = %broker, error = %e,
                            "cluster broker connection lost; relaying locally until it is back"
                        ),
                    }
                }
                // The first failure of an outage, then every tenth: enough
                // to see it is still down without a line every few seconds.
                Err(e @ LinkError::Unusable(_)) if failures.is_multiple_of(10) => error!(
                    broker = %broker, error = %e, attempts = failures + 1,
                    "the cluster broker cannot serve this node; relaying locally and retrying"
                ),
                Err(e) if failures.is_multiple_of(10) => warn!(
                    broker = %broker, error = %e, attempts = failures + 1,
                    "cannot reach the cluster broker; relaying locally and retrying"
                ),
                Err(e) => debug!(broker = %broker, error = %e, "cluster broker still unreachable"),
            }
            let delay = backoff(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// One connection's life: subscribe to every room of interest, then
    /// relay until the connection fails (`Err`) or `stop` (`Ok`, after
    /// sending what waits).
    async fn session(
        &self,
        mut link: Link,
        relay: &Arc<Relay>,
        stop: &CancellationToken,
    ) -> Result<(), LinkError> {
        let mut subscribed: HashSet<RoomName> = self.interest.resync().into_iter().collect();
        let channels: Vec<String> = subscribed.iter().map(|r| self.channel(r)).collect();
        if !channels.is_empty() {
            link.subscribe(&channels).await?;
        }
        link.confirm().await?;
        self.set_reader(Some(&link));
        // From here on this node hears the others' messages for its rooms
        // (before the gauge says the rooms are subscribed).
        relay.hub.hearing_others(true);
        self.sync(relay, subscribed.iter().cloned().collect());
        self.metrics.subscriptions.set(subscribed.len() as i64);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Checked first on every turn, so a stop that came while a
            // batch was in flight is seen before anything else.
            if stop.is_cancelled() {
                while self.send_batch(&mut link, &mut batch).await? > 0 {}
                return link.flush().await;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = self.interest.changed.notified() => {
                    let (mut add, mut drop, mut added) = (Vec::new(), Vec::new(), Vec::new());
                    for (room, wanted) in self.interest.take_changes() {
                        if wanted && !subscribed.contains(&room) {
                            add.push(self.channel(&room));
                            added.push(room.clone());
                            subscribed.insert(room);
                        } else if !wanted && subscribed.remove(&room) {
                            drop.push(self.channel(&room));
                        }
                    }
                    // One command each way, however many rooms changed.
                    if !add.is_empty() {
                        link.subscribe(&add).await?;
                    }
                    if !drop.is_empty() {
                        link.unsubscribe(&drop).await?;
                    }
                    link.confirm().await?;
                    self.sync(relay, added);
                    self.metrics.subscriptions.set(subscribed.len() as i64);
                }
                incoming = link.next() => match incoming {
                    Some(message) => self.inbound.accept(message),
                    None => return Err(LinkError::Lost),
                },
                () = self.outbox.ready() => {
                    self.send_batch(&mut link, &mut batch).await?;
                }
            }
        }
    }

    /// With shared history: reads, for each of `rooms` just subscribed,
    /// what was published before the subscription took effect (in a task
    /// of its own, so the link goes on meanwhile).
    fn sync(&self, relay: &Arc<Relay>, rooms: Vec<RoomName>) {
        if self.history.is_none() || rooms.is_empty() {
            return;
        }
        let relay = relay.clone();
        tokio::spawn(async move {
            for room in rooms {
                relay.sync(&room).await;
            }
        });
    }

    /// Takes up to [`BATCH`] messages from the outbox and publishes them,
    /// counting what was sent and what was lost; returns how many it took.
    async fn send_batch(
        &self,
        link: &mut Link,
        batch: &mut Vec<Outgoing>,
    ) -> Result<usize, LinkError> {
        batch.clear();
        let waiting = self.outbox.take(batch, BATCH);
        self.metrics.buffered.set(waiting as i64);
        if batch.is_empty() {
            return Ok(0);
        }
        let mut refused = 0;
        let sent = link.publish(batch, &mut refused).await;
        let lost = if sent.is_ok() { refused } else { batch.len() };
        if lost > 0 {
            self.metrics
                .dropped(ClusterDropReason::BrokerError, lost as u64);
        }
        self.metrics.published.inc_by((batch.len() - lost) as u64);
        sent.map(|()| batch.len())
    }
}

/// The cluster is where a node's messages go besides its own clients.
impl Remote for Cluster {
    /// Queues a message published on this node for the other nodes (and,
    /// for the broker to number, for this one). Never waits: if the outbox
    /// is full the oldest message in it is dropped.
    fn publish(&self, room: &str, frame: &Frame, origin: Origin) {
        // The lower half counts (wrapping within it); the upper names this
        // process.
        let count = self.next_id.fetch_add(1, Ordering::Relaxed) as u32;
        let id = (u64::from(self.instance) << 32) | u64::from(count);
        let sequence = origin.sequence && self.history.is_some();
        let header = envelope::Header {
            text: frame.is_text(),
            id,
            sender: origin
                .sender
                .map_or_else(Default::default, |s| envelope::Sender {
                    id: s.id,
                    key: u32::try_from(s.key).unwrap_or(u32::MAX),
                }),
            sequenced: sequence,
            delivered: origin.delivered,
        };
        let message = envelope::encode(&self.node_id, room, header, frame.payload());
        let outgoing = Outgoing {
            channel: self.channel(room),
            split: sequence.then(|| envelope::split(&self.node_id, room)),
            message,
        };
        let (dropped, waiting) = self.outbox.push(outgoing);
        if dropped > 0 {
            self.metrics
                .dropped(ClusterDropReason::BufferFull, dropped as u64);
        }
        self.metrics.buffered.set(waiting as i64);
    }
}

/// The broker keeps rooms' history for every node.
impl SharedHistory for Cluster {
    fn read<'a>(&'a self, read: HistoryRead<'a>) -> BoxedRead<'a> {
        Box::pin(async move {
            let HistoryRead {
                room,
                after,
                epoch,
                create,
            } = read;
            let reader = self
                .reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let reader = reader?;
            self.metrics.history_reads.inc();
            let channel = self.channel(room);
            match bounded(reader.read(&channel, after, epoch, create)).await {
                Ok(raw) if raw.epoch.is_empty() => None,
                Ok(raw) => Some(self.page(room, after, raw)),
                Err(e) => {
                    self.metrics.history_read_errors.inc();
                    debug!(room, error = %e, "reading a room's history from the broker failed");
                    None
                }
            }
        })
    }
}

impl Cluster {
    /// A room's history as read from the broker, each message as this
    /// node's log keeps it; messages that are not the room's own numbered
    /// ones are left out.
    fn page(&self, room: &str, after: u64, raw: RawPage) -> BrokerPage {
        let mut messages = Vec::with_capacity(raw.messages.len());
        for bytes in &raw.messages {
            let Ok(m) = envelope::decode(bytes) else {
                self.metrics.malformed.inc();
                continue;
            };
            let Some(sequence) = m
                .sequence
                .filter(|s| m.room == room && s.epoch == raw.epoch)
            else {
                continue;
            };
            let (sender, placeholder) = self.inbound.here(&m);
            messages.push(Numbered {
                position: sequence.position,
                previous: sequence.previous,
                frame: Frame::new(m.text, m.payload),
                sender,
                placeholder,
            });
        }
        BrokerPage {
            epoch: raw.epoch,
            top: raw.top,
            after,
            messages,
        }
    }
}

/// The delay before reconnect attempt `failures + 1`: doubling from
/// [`BACKOFF_FIRST`] up to [`BACKOFF_CAP`], each picked at random from its
/// upper half so that nodes that lost the broker together do not all come
/// back in the same instant.
fn backoff(failures: u32) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1 << failures.min(16))
        .min(BACKOFF_CAP);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The rooms this node wants to hear from the broker: those with at least
/// one local subscriber. The hub updates it under its own lock, so the two
/// never disagree; the cluster task applies the changes.
#[derive(Default)]
pub struct Interest {
    state: Mutex<InterestState>,
    changed: Notify,
}

#[derive(Default)]
struct InterestState {
    wanted: HashSet<RoomName>,
    /// Changes not yet applied on the broker, latest per room.
    pending: HashMap<RoomName, bool>,
}

impl Interest {
    fn lock(&self) -> std::sync::MutexGuard<'_, InterestState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The changes since the last call.
    fn take_changes(&self) -> Vec<(RoomName, bool)> {
        self.lock().pending.drain().collect()
    }

    /// Every room of interest now, for a fresh connection; pending changes
    /// are part of it.
    fn resync(&self) -> Vec<RoomName> {
        let mut s = self.lock();
        s.pending.clear();
        s.wanted.iter().cloned().collect()
    }
}

impl RoomInterest for Interest {
    /// `room` gained its first local subscriber.
    fn add(&self, room: &RoomName) {
        let mut s = self.lock();
        s.wanted.insert(room.clone());
        s.pending.insert(room.clone(), true);
        drop(s);
        self.changed.notify_one();
    }

    /// `room` lost its last local subscriber.
    fn remove(&self, room: &str) {
        let mut s = self.lock();
        if let Some(room) = s.wanted.take(room) {
            s.pending.insert(room, false);
            drop(s);
            self.changed.notify_one();
        }
    }
}

/// A message for the broker, with its channel.
pub(crate) struct Outgoing {
    pub channel: String,
    pub message: Bytes,
    /// For the broker to number: where the sequence goes in `message`.
    pub split: Option<usize>,
}

impl fifo::Payload for Outgoing {
    fn size(&self) -> usize {
        self.message.len()
    }
}

/// Messages waiting for the broker.
type Outbox = DropOldest<Outgoing>;

/// A live connection to the broker.
enum Link {
    #[cfg(feature = "redis")]
    Redis(RedisLink),
    #[cfg(feature = "nats")]
    Nats(NatsLink),
    /// With neither backend built in there is no link (config refuses
    /// both); this keeps the matches below whole.
    #[cfg(not(any(feature = "redis", feature = "nats")))]
    #[allow(dead_code)]
    None(std::convert::Infallible),
}

impl Link {
    /// Connects to `cluster`'s broker; what the broker sends goes to the
    /// cluster's inbound queues.
    async fn connect(cluster: &Cluster) -> Result<Self, LinkError> {
        let url = &cluster.url;
        let inbound = cluster.inbound.clone();
        match cluster.backend {
            #[cfg(feature = "redis")]
            ClusterBackend::Redis => Ok(Self::Redis(
                RedisLink::connect(url, BROKER_TIMEOUT, cluster.history, inbound).await?,
            )),
            #[cfg(feature = "nats")]
            ClusterBackend::Nats => {
                let (node, capacity) = (&cluster.node_id, cluster.subject_capacity);
                let history = cluster.history.map(|h| (cluster.prefix.as_str(), h));
                let link = NatsLink::connect(url, node, BROKER_TIMEOUT, capacity, inbound, history)
                    .await?;
                Ok(Self::Nats(link))
            }
            #[allow(unreachable_patterns)]
            _ => Err(LinkError::Lost),
        }
    }

    /// Every broker round trip is bounded: a broker that keeps the
    /// connection open but answers nothing is as lost as a dead one.
    async fn subscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        bounded(async {
            match self {
                #[cfg(not(any(feature = "redis", feature = "nats")))]
                Self::None(never) => match *never {},
                #[cfg(feature = "redis")]
                Self::Redis(l) => l.subscribe(channels).await,
                #[cfg(feature = "nats")]
                Self::Nats(l) => l.subscribe(channels).await,
            }
        })
        .await
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        bounded(async {
            match self {
                #[cfg(not(any(feature = "redis", feature = "nats")))]
                Self::None(never) => match *never {},
                #[cfg(feature = "redis")]
                Self::Redis(l) => l.unsubscribe(channels).await,
                #[cfg(feature = "nats")]
                Self::Nats(l) => l.unsubscribe(channels).await,
            }
        })
        .await
    }

    /// Returns once everything published so far has left for the broker
    /// (Redis has answered each pipeline already; the NATS client buffers).
    async fn flush(&mut self) -> Result<(), LinkError> {
        match self {
            #[cfg(not(any(feature = "redis", feature = "nats")))]
            Self::None(never) => match *never {},
            #[cfg(feature = "redis")]
            Self::Redis(_) => Ok(()),
            #[cfg(feature = "nats")]
            Self::Nats(l) => bounded(l.flush()).await,
        }
    }

    /// Waits until the broker has applied the (un)subscriptions sent so far
    /// (Redis confirms each one already).
    async fn confirm(&mut self) -> Result<(), LinkError> {
        match self {
            #[cfg(not(any(feature = "redis", feature = "nats")))]
            Self::None(never) => match *never {},
            #[cfg(feature = "redis")]
            Self::Redis(_) => Ok(()),
            #[cfg(feature = "nats")]
            Self::Nats(l) => l.confirm().await,
        }
    }

    /// Publishes a batch in order; messages the broker refused to carry
    /// are counted in `refused`.
    async fn publish(&mut self, batch: &[Outgoing], refused: &mut usize) -> Result<(), LinkError> {
        match self {
            #[cfg(not(any(feature = "redis", feature = "nats")))]
            Self::None(never) => match *never {},
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.publish(batch).await,
            #[cfg(feature = "nats")]
            Self::Nats(l) => l.publish(batch, refused).await,
        }
    }

    /// The next message from the broker for the cluster task to pass on
    /// (Redis hands its messages to the inbound queues itself, so this
    /// only waits for its connection to end); `None` once the link is lost.
    async fn next(&mut self) -> Option<Bytes> {
        match self {
            #[cfg(not(any(feature = "redis", feature = "nats")))]
            Self::None(never) => match *never {},
            #[cfg(feature = "redis")]
            Self::Redis(l) => {
                l.lost().await;
                None
            }
            #[cfg(feature = "nats")]
            Self::Nats(l) => l.next().await,
        }
    }
}

/// `op`, or [`LinkError::Timeout`] after [`BROKER_TIMEOUT`].
async fn bounded<T>(op: impl Future<Output = Result<T, LinkError>>) -> Result<T, LinkError> {
    tokio::time::timeout(BROKER_TIMEOUT, op)
        .await
        .unwrap_or(Err(LinkError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_keeps_the_latest_change_per_room() {
        let i = Interest::default();
        let lobby: RoomName = "lobby".into();
        i.add(&lobby);
        i.remove("lobby");
        i.add(&lobby);
        i.remove("other");
        assert_eq!(i.take_changes(), vec![(lobby.clone(), true)]);
        assert!(i.take_changes().is_empty());
        assert_eq!(i.resync(), vec![lobby]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        for failures in 0..40 {
            let d = backoff(failures);
            let full = BACKOFF_FIRST
                .saturating_mul(1 << failures.min(16))
                .min(BACKOFF_CAP);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
        }
        assert!(backoff(100) >= BACKOFF_CAP / 2);
    }

    #[test]
    fn urls_are_checked_against_the_backend() {
        assert!(check_url(ClusterBackend::Redis, "redis://user:pw@host:6379/0").is_ok());
        assert!(check_url(ClusterBackend::Redis, "rediss://host").is_ok());
        assert!(check_url(ClusterBackend::Redis, "nats://host").is_err());
        assert!(check_url(ClusterBackend::Nats, "nats://user:pw@host:4222").is_ok());
        assert!(check_url(ClusterBackend::Nats, "tls://host").is_ok());
        assert!(check_url(ClusterBackend::Nats, "redis://host").is_err());
        assert!(check_url(ClusterBackend::None, "redis://host").is_err());
        assert_eq!(backend_of("rediss://h"), ClusterBackend::Redis);
        assert_eq!(backend_of("tls://h"), ClusterBackend::Nats);
        assert_eq!(backend_of("http://h"), ClusterBackend::None);
        assert_eq!(redact("redis://user:pw@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact("nats://host:4222"), "nats://host:4222");
    }
}
