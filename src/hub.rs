//! Rooms, their members and fan-out.
//!
//! A room is a [`Log`] and its members, behind the room's own lock; rooms
//! share no lock. The map from names to rooms is sharded, and a member holds
//! its room, so a client's publish never looks the room up; joins and
//! leaves take the room's lock (and its shard's only to create or remove
//! the room).
//!
//! Publishing appends the encoded frame to the room's log once, whatever
//! the number of members, and wakes only the members asleep waiting for
//! the next message; a member already awake finds it when it looks. Each
//! member's writer takes the frames from its cursor to the head in one go
//! ([`Subscription::poll_take`]). Nothing is written per delivery to memory
//! another member's writer writes.
//!
//! The slow-consumer policy is judged from lag ([`log`](crate::log)):
//! every quarter of the limits appended, the publisher looks at every
//! receiving member's cursor once. A member past the limits whose socket
//! refuses bytes gets the policy (`disconnect`: its membership closes,
//! which wakes its task to close it with 1008; `drop_oldest`: it is moved
//! forward; `drop_newest`: the oldest it had not taken are copied out for
//! it and it misses what follows until it has taken them); one whose
//! socket takes bytes has just not had its turn, and a publisher that can
//! wait is told to ([`Backlog`]). Past twice the limits the policy applies
//! whatever the socket. Then the log lets go of what nobody needs: it
//! holds at most twice the limits after a check, and a quarter more until
//! the next.
//!
//! With history on ([`History`]), a room's log also keeps its latest
//! messages for clients that join behind the head: a rewind, or a
//! recovery from a position the client names with the room's epoch
//! ([`Start`]). Such a client is a cursor placed in the log under the
//! room's lock, so there is no seam between what it replays and what is
//! published after; the replayed frames are the log's own, shared. A room
//! with history outlives its last member until its history expires, and
//! the relay-wide byte bound sheds the history of the rooms that have been
//! quiet longest first.
//!
//! In a cluster whose broker numbers messages ([`Hub::with_shared_history`])
//! a room's positions are the broker's: a message is appended when it comes
//! back numbered ([`Hub::deliver_sequenced`]), at its position; what the log
//! lacks is put in from a [`BrokerPage`] ([`Hub::fill`]); a new epoch starts
//! the log afresh and closes the members told positions ([`Ending::Moved`]).
//! Positions known lost (the broker no longer had them) move
//! `resume_floor`, so nobody resumes across them; a message this node's
//! clients had before the broker numbered it is skipped by the members
//! from before (`log::HAD_BEFORE`, by the log's generation).
//!
//! It knows logs and frames; nothing of sockets, brokers (only the numbers
//! and pages they hand it), the cluster (only the [`RoomInterest`] it
//! reports to) or the configuration file.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use thin_vec::ThinVec;

use crate::log::{
    ENTRY_BYTES, HAD_BEFORE, LagLimits, Log, Mark, Offset, OnOverflow, Retention, Sender,
};
use crate::wire::{Compressed, Frame, Window};

/// Identifies one connected client for the lifetime of the process (never 0).
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

/// Who wants to know which rooms have anyone receiving: the cluster, to
/// hear from the broker only what someone here listens to. Called under
/// the room's lock, so for each room the calls come in the order the
/// changes happened; they must be quick and must not call back into the hub.
pub trait RoomInterest: Send + Sync {
    /// `room` gained its first receiving member.
    fn add(&self, room: &RoomName);
    /// `room` lost its last receiving member.
    fn remove(&self, room: &str);
}

/// Why a membership ended, recorded when it does, so that what the client
/// is told does not depend on what happens after (a client evicted just
/// before a shutdown is still a slow consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Its lag passed the limits while its socket refused bytes, under
    /// `on_overflow: disconnect`.
    Evicted,
    /// The relay is shutting down.
    Shutdown,
    /// An operator closed it (the HTTP API), with this Close frame (boxed:
    /// every member has a place for an ending, few are closed this way).
    Closed(Box<Bytes>),
    /// In a cluster, the room's positions moved to another epoch (the
    /// broker's history was lost, or this node numbered messages itself
    /// while its broker was unreachable): a position-aware client must
    /// resume to learn where it stands.
    Moved,
    /// The client left by itself; nobody reads this.
    Left,
}

/// How long a room's log counts as current after a read from the broker
/// filled it, for clients joining without anyone in it yet.
const FRESH_MS: u64 = 1000;

/// Shards of the name-to-room map: rooms in different shards never meet
/// on a lock, even to be created.
const SHARDS: usize = 16;

/// Everyone who hears published messages, room by room.
pub struct Hub {
    shards: [RwLock<HashMap<RoomName, Arc<Room>>>; SHARDS],
    hasher: RandomState,
    next_id: AtomicU64,
    limits: LagLimits,
    /// Most rooms at once (0: no cap).
    max_rooms: usize,
    room_count: AtomicUsize,
    /// Rooms that exist now, as exported (`wsrelay_rooms_active`).
    rooms_active: Gauge,
    /// Told when a room gains its first receiving member or loses its last.
    interest: Option<Arc<dyn RoomInterest>>,
    /// In a cluster: whether this node hears the other nodes now (its
    /// broker connection is up). While it does not, nobody resumes here:
    /// what the others publish meanwhile is in no log of this node.
    hearing: AtomicBool,
    /// In a cluster with history: positions are the broker's, which
    /// numbers every room's messages for all nodes (see
    /// [`Hub::deliver_sequenced`]).
    shared: bool,
    /// Set once shutdown has begun: a client joining later gets a
    /// membership that is already closed.
    draining: AtomicBool,
    /// Messages of at least this many payload bytes are logged with room
    /// for their compressed frame, and who counts compressions done here;
    /// `None`: compression is off.
    compression: Option<(Compression, CompressionCount)>,
    /// `None`: rooms keep no history.
    history: Option<HistoryKeeping>,
    /// The origin of the publish times in the logs.
    clock: Instant,
}

/// How much history rooms keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Per room.
    pub retention: Retention,
    /// How long a room's history outlives its newest message.
    pub ttl: Duration,
    /// Payload bytes all rooms' logs may hold together; past it, the rooms
    /// quiet longest lose their history first.
    pub total_bytes: u64,
}

/// What rooms' logs hold, as exported: counted while history is on.
#[derive(Debug, Clone, Default)]
pub struct HistoryGauges {
    pub messages: Gauge,
    pub bytes: Gauge,
    /// Rooms nobody is in, kept for their history or epoch: each counts
    /// [`KEPT_ROOM_BYTES`] against the bound.
    pub kept_rooms: Gauge,
}

struct HistoryKeeping {
    settings: History,
    held: HistoryGauges,
    /// One shedding at a time.
    shedding: AtomicBool,
    /// What readers still needed at the last shedding (bytes, entries
    /// counted): history cannot free that, so it does not count against
    /// the bound, and publishes do not shed again until the logs hold
    /// more than the bound beyond it. Refreshed at every tidy tick too.
    readers_bytes: AtomicU64,
}

impl HistoryKeeping {
    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// What the logs hold, entries and rooms kept without members counted.
    fn held_bytes(&self) -> u64 {
        let (m, b) = (self.held.messages.get(), self.held.bytes.get());
        let kept = self.held.kept_rooms.get().max(0) as u64;
        (b.max(0) as u64)
            .saturating_add(m.max(0) as u64 * ENTRY_BYTES)
            .saturating_add(kept * KEPT_ROOM_BYTES)
    }
}

/// What a room nobody is in costs while it is kept for its history or
/// epoch, counted against the relay-wide history bound so that rooms
/// joined and left (or published to through the API) once each cannot
/// pile up uncounted: a room's state, map entry and name, about 880 bytes
/// of RSS each as measured with 20 000 such rooms, rounded up.
pub const KEPT_ROOM_BYTES: u64 = 1024;

/// Where a joining member starts in its room's log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Start {
    /// At the head: it hears what is published from now on.
    #[default]
    Live,
    /// Up to this many of the latest messages kept, then live.
    Last(u64),
    /// The kept messages at most this old, then live.
    Within(Duration),
    /// Every message after `position` (the position of the last message
    /// it had) if the room's epoch is still `epoch` and its history still
    /// holds them all; otherwise live, and told it did not recover.
    Since { epoch: String, position: u64 },
}

/// Messages of a room's history after a position.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub epoch: Arc<str>,
    /// The position of the room's newest message (0: none yet).
    pub position: u64,
    /// Nothing between the asked position and the first message given
    /// was lost: the history still held everything after it, in the asked
    /// epoch, and the position is one the room has had.
    pub complete: bool,
    /// Oldest first, with their positions.
    pub messages: Vec<(u64, Frame)>,
}

/// Where a member stood when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The room's epoch: positions are comparable only within one.
    pub epoch: Arc<str>,
    /// Its position: every message up to it counts as had (0: none).
    pub position: u64,
    /// Messages it starts behind the head (replayed before live ones).
    pub replay: u64,
    /// For [`Start::Since`]: whether everything after that position is
    /// coming.
    pub recovered: Option<bool>,
}

/// Told of each message compressed (by a publisher, see [`Hub::publish_to`]).
pub type CompressionCount = Box<dyn Fn(Compressed) + Send + Sync>;

/// Which messages get a compressed frame beside the plain one, and how hard
/// it is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zlib's level, 1 (fastest) to 9 (smallest).
    pub level: u8,
    /// Smaller payloads always go plain.
    pub min_size: usize,
}

/// One room: its log and its members.
pub struct Room {
    name: RoomName,
    state: Mutex<RoomState>,
    /// Receiving members that take messages compressed with the full
    /// window; changed under `state`'s lock, read before taking it.
    compressing: AtomicUsize,
}

struct RoomState {
    /// Short and random: positions start again only in a new room, which
    /// has a new epoch, so an epoch and a position name one message for
    /// ever. In a cluster with history, the broker's epoch for the room
    /// once `synced`.
    epoch: Arc<str>,
    /// In a cluster with history: the log's positions are the broker's, in
    /// `epoch` (not yet, or no longer: this node numbers them itself, in an
    /// epoch of its own).
    synced: bool,
    log: Log,
    members: Slab<Record>,
    /// Members that receive (not publish-only).
    receivers: usize,
    /// Keys of the members waiting for the next message (each record keeps
    /// its own waker, so a member that leaves takes its waker with it; a
    /// key left behind wakes nobody).
    sleepers: Vec<usize>,
    /// How many times the sleepers were woken: a record whose `slept`
    /// equals it is among them already.
    wakeups: u64,
    /// Appended since the last lag check.
    unchecked: Unchecked,
    /// Members the last lag check found past their limits while their
    /// writers had not yet run, each with the offset it must reach: every
    /// client that publishes here waits for them, not only the one whose
    /// publish ran the check, so several senders bursting at once do not
    /// take a reader to the hard bound between checks.
    behind: Vec<Waited>,
    /// Taken out of the hub's map (emptied, or closed by an operator):
    /// whoever finds it so looks again.
    removed: bool,
    /// History before this offset was shed (the relay-wide bound), or is
    /// incomplete (see `resume_floor`).
    history_floor: Offset,
    /// A client may resume only from this offset on: in a cluster, messages
    /// before it were lost (the broker no longer had them when this node
    /// missed them).
    resume_floor: Offset,
    /// When a member last left (hub milliseconds): a room with history on
    /// keeps its epoch for `ttl` after that, so a lone client that comes
    /// back resumes even if nothing was published.
    left_ms: u64,
    /// The log's messages and payload bytes last added to the hub's
    /// history gauges.
    counted: (u64, u64),
    /// Whether it is counted among the hub's kept rooms.
    counted_kept: bool,
    /// Its history was shed by the relay-wide bound: with nobody in it, it
    /// goes at once instead of keeping its epoch for the ttl.
    shed: bool,
    /// When its log was last filled from the broker (hub milliseconds; 0:
    /// never): for a moment after, the log is as current as the broker's,
    /// so clients joining together cost one read.
    filled_ms: u64,
    /// The position that fill's read asked for what followed (`u64::MAX`:
    /// nothing): a client behind the log but not before it finds there
    /// all the broker had, and needs no read of its own.
    filled_after: u64,
    /// The broker's epoch and the newest position in it when this node
    /// began to number the room's messages itself (its broker
    /// unreachable): where to read from once it is back.
    last_broker: Option<(Arc<str>, u64)>,
    /// How many times its log started afresh (a new epoch).
    generation: u32,
}

impl RoomState {
    /// What its readers still need of its log, entries counted as the
    /// relay-wide bound counts them.
    fn readers_bytes(&self, readers_from: Offset) -> u64 {
        let (m, b) = self.log.span(readers_from, self.log.head());
        b + m * ENTRY_BYTES
    }

    /// Since when nothing happened in it (hub milliseconds): its newest
    /// message, or its last member leaving. Quietest first is the order
    /// kept rooms give way in.
    fn quiet_since(&self) -> u64 {
        self.log.newest_ms().unwrap_or(0).max(self.left_ms)
    }
}

/// Messages and payload bytes appended since the last lag check.
#[derive(Default)]
struct Unchecked {
    messages: u64,
    bytes: u64,
}

/// The room's record of one member, changed only under the room's lock.
struct Record {
    member: Arc<Member>,
    /// Where a lag check moved it (the messages skipped were counted then),
    /// or past its own message when it skips its own; 0 when nowhere (a
    /// position is never below its cursor anyway).
    skip_to: Offset,
    /// `drop_newest`: the oldest messages it had not taken when it fell
    /// past its limits, within them; taken before anything else. Copied
    /// out of the log so that a stalled member never holds the room's log.
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every member's record, not a queue's three words"
    )]
    held: Option<Box<VecDeque<(Frame, Mark)>>>,
    /// `drop_newest`: until it has taken what is held, every message
    /// published is dropped for it.
    dropping: bool,
    /// It has published messages it skips: counting what is due to it must
    /// leave them out (everyone else's count is a subtraction).
    skips_own: bool,
    /// Its room's log's generation when it joined.
    generation: u32,
    /// `wakeups` when it joined the sleepers.
    slept: u64,
    /// The head when it joined behind it (a rewind or a recovery): what it
    /// replays does not count towards its lag, and needs the history.
    replay_to: Offset,
    /// Its task, while it is among the sleepers.
    waker: Option<Waker>,
}

impl Record {
    /// Where it stands in the log: its cursor, or where a check moved it.
    fn position(&self, cursor: Offset, log: &Log) -> Offset {
        cursor.max(self.skip_to).max(log.first())
    }

    /// The sender whose messages it skips, if it skips any: its own id.
    fn skipping(&self) -> Option<Sender> {
        self.skips_own.then_some(self.member.id)
    }

    /// Everything from where it stands (at `cursor`) to the head is dropped
    /// for it (`drop_newest`): moves it to the head and returns how many
    /// messages it would have been sent.
    fn drop_to_head(&mut self, cursor: Offset, log: &Log) -> u64 {
        let dropped = log.count_for(self.position(cursor, log), log.head(), self.skipping());
        self.skip_to = log.head();
        dropped
    }
}

/// What a member's task and the hub share about it.
#[derive(Debug)]
pub struct Member {
    pub id: ClientId,
    receives: bool,
    /// The offset of the next message it takes; written by its task only
    /// (under the room's lock), read by lag checks and waiting publishers.
    cursor: AtomicU64,
    /// Its writer is waiting for its socket to take more bytes. Written
    /// only when it changes, by its own task.
    socket_full: AtomicBool,
    /// Mirrors `signals.closed`, so the task checks it without a lock.
    closed: AtomicBool,
    /// It is told positions (`wsrelay.v1`): a move to another epoch closes it.
    positioned: AtomicBool,
    /// A keepalive ping is due; mirrors `signals.ping`.
    ping_due: AtomicBool,
    /// Counted in its room's `compressing` ([`Hub::compresses`]).
    compresses: AtomicBool,
    signals: Mutex<Signals>,
}

#[derive(Debug, Default)]
struct Signals {
    ping: bool,
    closed: bool,
    ending: Option<Ending>,
    /// The member's task, woken for a ping or the end of its membership
    /// (messages wake it through the room's sleepers).
    task: Option<Waker>,
}

/// A client's end of its membership.
pub struct Subscription {
    pub id: ClientId,
    pub room: Arc<Room>,
    pub member: Arc<Member>,
    key: usize,
    /// The offset of the next message to take (the task's own copy).
    cursor: Offset,
}

/// What [`Subscription::poll_take`] took.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// `messages` frames (`bytes` of payload) went to the sink, and
    /// `dropped` messages were skipped by the `drop_newest` policy.
    Frames {
        messages: usize,
        bytes: usize,
        dropped: u64,
    },
    /// A keepalive ping is due.
    Ping,
    /// The membership ended: see [`Member::ending`].
    Closed,
}

/// The members one publisher waits for before it publishes more: past
/// their limits after its last publish while their writers had not yet
/// run, each with the offset it must reach (half the limits behind).
///
/// A thin vector (one pointer; empty takes no allocation), since every
/// client carries one and few ever wait.
#[derive(Default)]
pub struct Backlog {
    members: ThinVec<Waited>,
}

/// A member a publisher waits for, and the offset it must reach (offsets
/// only grow, a new epoch's log included).
type Waited = (Arc<Member>, Offset);

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether a publisher still waits for `member` to reach `target`: not
    /// if it did, left, or turned out slow (its socket refuses bytes).
    fn waits_for((member, target): &Waited) -> bool {
        !member.is_closed()
            && !member.socket_full.load(Ordering::Relaxed)
            && member.cursor.load(Ordering::Acquire) < *target
    }
}

/// `rooms.max_rooms` rooms exist and the client asked for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomsFull;

/// What one publish did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Receiving members the message was appended for (a `drop_newest`
    /// member still taking its kept window will drop it, and say so).
    pub queued: usize,
    /// Messages that will not be delivered, found by this publish's lag
    /// check: skipped by `drop_oldest` or `drop_newest`, or due to members
    /// it evicted.
    pub dropped: u64,
    /// The message's position in its room (0: not appended), and, from
    /// [`Hub::publish`], the room's epoch then.
    pub position: u64,
    pub epoch: Option<Arc<str>>,
}

/// A member, as a message's publisher: its client id and its key in its
/// room (a cluster's broker carries both, so the message can leave the
/// member out when it comes back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderTag {
    pub id: ClientId,
    pub key: usize,
}

/// A message the cluster's broker numbered (see [`Hub::deliver_sequenced`]).
#[derive(Debug, Clone, Copy)]
pub struct Sequenced<'a> {
    pub epoch: &'a str,
    /// 1 or more.
    pub position: u64,
    /// The position of the room's message before it (0: none): with Redis
    /// one less; with NATS JetStream, whose positions are one sequence for
    /// all rooms, the room's previous message's.
    pub previous: u64,
    /// Its publisher, if on this node and not wanting it back.
    pub sender: Option<SenderTag>,
    /// This node delivered it before the broker numbered it: the members
    /// from before the log's present generation had it and skip it.
    pub placeholder: bool,
    /// Missing positions before it are given up rather than reported.
    pub force: bool,
}

/// Where a sequenced message went in its room's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Appended.
    Here,
    /// The log has it already (or nobody here has the room).
    Duplicate,
    /// Messages after `after`, up to it, are missing.
    Gap { after: u64 },
}

/// What [`Hub::deliver_sequenced`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Appended(Published),
    Placed(Placed),
}

/// What the source of a room's positions (a cluster's broker) holds for
/// it: its epoch, its newest position, and messages after the position
/// asked for, oldest first.
#[derive(Debug, Clone, Default)]
pub struct BrokerPage {
    pub epoch: String,
    pub top: u64,
    /// The position the messages follow (as asked).
    pub after: u64,
    pub messages: Vec<Numbered>,
}

/// What of a room's history to read from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// The messages after this position (`u64::MAX`: none, only the
    /// room's epoch and newest position)...
    pub after: u64,
    /// ...in this epoch (`None`: whichever is the broker's). In another,
    /// `after` names nothing: the broker answers without messages.
    pub epoch: Option<Arc<str>>,
}

impl ReadPlan {
    /// Only the room's epoch and newest position.
    pub const TOP: Self = Self {
        after: u64::MAX,
        epoch: None,
    };
    /// Everything the broker keeps.
    pub const ALL: Self = Self {
        after: 0,
        epoch: None,
    };

    fn after(after: u64, epoch: &str) -> Self {
        Self {
            after,
            epoch: Some(epoch.into()),
        }
    }
}

/// One message of a [`BrokerPage`].
#[derive(Debug, Clone)]
pub struct Numbered {
    pub position: u64,
    /// The room's message before it (see [`Sequenced::previous`]).
    pub previous: u64,
    pub frame: Frame,
    /// Its publisher, if a member here that does not want it back.
    pub sender: Option<SenderTag>,
    /// This node's clients had it already (see [`Sequenced::placeholder`]).
    pub placeholder: bool,
}

impl Numbered {
    /// Who skips it in a log whose generation is `generation`.
    fn log_sender(&self, generation: u32) -> Sender {
        match (self.placeholder, self.sender) {
            (true, _) => had_before(generation),
            (false, Some(tag)) => tag.id,
            (false, None) => 0,
        }
    }
}

/// A message read from the broker on its way into a log: its position,
/// the position before it, its frame and who skips it.
type Chained = (u64, u64, Frame, Sender);

/// The sender of an entry the members older than `generation` had.
fn had_before(generation: u32) -> Sender {
    HAD_BEFORE | Sender::from(generation)
}

impl HistoryPage {
    /// `limit` messages of `page` after position `since` (in `epoch`, if
    /// given), for a room this node does not have.
    pub fn from_broker(page: BrokerPage, since: u64, epoch: Option<&str>, limit: usize) -> Self {
        let same_epoch = epoch.is_none_or(|e| e == page.epoch);
        let listed: Vec<Numbered> = match same_epoch {
            true => page
                .messages
                .into_iter()
                .filter(|m| m.position > since)
                .take(limit)
                .collect(),
            false => Vec::new(),
        };
        // Complete if what is listed follows on from `since` without a hole
        // (or there was nothing after it).
        let follows = match listed.is_empty() {
            true => since == page.top,
            false => std::iter::once(since)
                .chain(listed.iter().map(|m| m.position))
                .zip(&listed)
                .all(|(before, m)| m.previous == before),
        };
        let listed = listed.into_iter().map(|m| (m.position, m.frame)).collect();
        Self {
            epoch: page.epoch.into(),
            position: page.top,
            complete: same_epoch && since <= page.top && follows,
            messages: listed,
        }
    }
}

/// How [`Hub::append`] appends.
struct Appending<'a, 'b> {
    skip: Option<SenderTag>,
    backlog: Option<&'b mut Backlog>,
    sequence: Option<&'a Sequenced<'a>>,
    /// Answer with the room's epoch.
    with_epoch: bool,
}

/// What a member was due when it left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Messages handed to the sink, to be sent before the Close.
    pub sent: u64,
    /// Messages dropped for it by `drop_newest` while it was behind.
    pub dropped: u64,
}

/// How much one take may hand over: at least one message, then more while
/// within both caps.
#[derive(Clone, Copy)]
struct Batch {
    max_frames: usize,
    max_bytes: usize,
}

impl Batch {
    const UNBOUNDED: Self = Self {
        max_frames: usize::MAX,
        max_bytes: usize::MAX,
    };

    fn admits(self, (messages, bytes): (usize, usize), size: usize) -> bool {
        messages == 0 || (messages < self.max_frames && bytes + size <= self.max_bytes)
    }
}

thread_local! {
    /// Wakers taken out of a room to be woken after its lock is released;
    /// kept per thread so that waking allocates nothing.
    static WAKING: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// A hub whose members may fall `limits` behind, with at most
    /// `max_rooms` rooms (0: no cap), counting its rooms in `rooms_active`.
    pub fn new(limits: LagLimits, max_rooms: usize, rooms_active: Gauge) -> Self {
        Self {
            shards: std::array::from_fn(|_| RwLock::default()),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            limits: LagLimits {
                messages: limits.messages.max(1),
                bytes: limits.bytes.max(1),
                ..limits
            },
            max_rooms,
            room_count: AtomicUsize::new(0),
            rooms_active,
            interest: None,
            hearing: AtomicBool::new(true),
            shared: false,
            draining: AtomicBool::new(false),
            compression: None,
            history: None,
            clock: Instant::now(),
        }
    }

    /// Rooms keep `history`, counted in `held`.
    pub fn with_history(self, history: History, held: HistoryGauges) -> Self {
        Self {
            history: Some(HistoryKeeping {
                settings: history,
                held,
                shedding: AtomicBool::new(false),
                readers_bytes: AtomicU64::new(0),
            }),
            ..self
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Where `state`'s history starts now (the head: none).
    fn history_from(&self, state: &RoomState, now_ms: u64) -> Offset {
        let head = state.log.head();
        let Some(h) = &self.history else {
            return head;
        };
        match state.log.newest_ms() {
            Some(newest) if now_ms.saturating_sub(newest) <= h.ttl_ms() => state
                .log
                .retained_from(&h.settings.retention)
                .max(state.history_floor),
            _ => head,
        }
    }

    /// Whether a room nobody is in still keeps its epoch: with history on,
    /// for `ttl` after its last member left.
    fn keeps_epoch(&self, state: &RoomState, now_ms: u64) -> bool {
        !state.shed
            && self
                .history
                .as_ref()
                .is_some_and(|h| now_ms.saturating_sub(state.left_ms) <= h.ttl_ms())
    }

    /// Where `state` can be resumed from: its history, and in a cluster
    /// not before it last stopped hearing the other nodes (nowhere while it
    /// does not hear them).
    fn resumable_from(&self, state: &RoomState, now_ms: u64) -> Offset {
        match self.hearing.load(Ordering::SeqCst) {
            true => self.history_from(state, now_ms).max(state.resume_floor),
            false => Offset::MAX,
        }
    }

    /// Where a client that had every message up to `position` goes on in
    /// `state`'s log, if it can resume there: the position is one the log
    /// knows (a message's, or the one before its first), and everything
    /// after it is still here.
    fn resumes(&self, state: &RoomState, position: u64, now_ms: u64) -> Option<Offset> {
        let cursor = state.log.offset_after(position);
        let known = state.log.position_before(cursor) == position;
        (known && cursor >= self.resumable_from(state, now_ms)).then_some(cursor)
    }

    /// Lets `state`'s log go of what neither its readers (from
    /// `readers_from` on) nor its history need, and counts what it holds.
    fn trim(&self, state: &mut RoomState, readers_from: Offset, now_ms: u64) {
        let keep = readers_from.min(self.history_from(state, now_ms));
        state.log.trim(keep);
        self.recount(state);
    }

    /// Brings the history gauges up to date with `state`'s log, and the
    /// kept rooms with whether anyone is in it. A room out of the map
    /// counts nothing.
    fn recount(&self, state: &mut RoomState) {
        let Some(h) = &self.history else {
            return;
        };
        let now = match state.removed {
            true => (0, 0),
            false => state.log.held(),
        };
        let (m, b) = state.counted;
        h.held.messages.inc_by(now.0 as i64 - m as i64);
        h.held.bytes.inc_by(now.1 as i64 - b as i64);
        state.counted = now;
        let kept = !state.removed && state.members.is_empty();
        if kept != state.counted_kept {
            match kept {
                true => h.held.kept_rooms.inc(),
                false => h.held.kept_rooms.dec(),
            };
            state.counted_kept = kept;
        }
    }

    /// Past the relay-wide bound: the rooms quiet longest lose their
    /// history (what their readers still need stays, and is not counted
    /// against the bound) until the history left is at most nine tenths
    /// of it.
    fn shed_history(&self) {
        let Some(h) = &self.history else {
            return;
        };
        let bound = h.settings.total_bytes;
        let readers = h.readers_bytes.load(Ordering::Relaxed);
        if h.held_bytes() <= bound.saturating_add(readers)
            || h.shedding.swap(true, Ordering::Acquire)
        {
            return;
        }
        let mut rooms = Vec::new();
        let mut readers = 0u64;
        self.each_room(|room| {
            let state = room.lock();
            if !state.log.is_empty() || state.members.is_empty() {
                readers = readers.saturating_add(state.readers_bytes(readers_from(&state)));
                rooms.push((state.quiet_since(), room.clone()));
            }
        });
        h.readers_bytes.store(readers, Ordering::Relaxed);
        rooms.sort_unstable_by_key(|(newest, _)| *newest);
        let now = self.now_ms();
        for (_, room) in rooms {
            if h.held_bytes().saturating_sub(readers) <= bound / 10 * 9 {
                break;
            }
            self.shed_room(&room, now);
        }
        h.shedding.store(false, Ordering::Release);
    }

    /// Lets `room` go of its history (what its readers still need stays)
    /// and, if nobody is in it, of the room itself, epoch and all.
    fn shed_room(&self, room: &Arc<Room>, now_ms: u64) {
        let nobodys = {
            let mut state = room.lock();
            state.history_floor = state.log.head();
            let readers_from = readers_from(&state);
            self.trim(&mut state, readers_from, now_ms);
            state.shed = state.members.is_empty();
            state.shed
        };
        if nobodys {
            self.remove_if_empty(room);
        }
    }

    /// Logs messages from `compression.min_size` bytes on as compressible:
    /// a member that negotiated permessage-deflate gets them compressed,
    /// once for all such members ([`Frame::deflated`]).
    pub fn with_compression(self, compression: Compression, counted: CompressionCount) -> Self {
        Self {
            compression: Some((compression, counted)),
            ..self
        }
    }

    /// Reports rooms gaining their first or losing their last receiving
    /// member to `interest`.
    /// In a cluster, until its broker connection is up ([`Hub::hearing_others`]),
    /// the node does not hear the other nodes.
    pub fn with_interest(self, interest: Arc<dyn RoomInterest>) -> Self {
        Self {
            interest: Some(interest),
            hearing: AtomicBool::new(false),
            ..self
        }
    }

    /// Positions come from the cluster's broker, which numbers every
    /// room's messages for all nodes: this node appends a message only
    /// when the broker hands it back numbered ([`Hub::deliver_sequenced`]),
    /// fills what it missed from the broker's history ([`Hub::fill`]), and
    /// numbers messages itself only while its broker is unreachable, in an
    /// epoch of its own.
    pub fn with_shared_history(self) -> Self {
        Self {
            shared: true,
            ..self
        }
    }

    /// Whether this node hears the other nodes now (always, alone).
    pub fn hears_others(&self) -> bool {
        self.hearing.load(Ordering::SeqCst)
    }

    /// Whether positions come from the broker (and it is reachable now):
    /// then a message published here goes only to the broker, and comes
    /// back numbered.
    pub fn sequenced_by_broker(&self) -> bool {
        self.shared && self.hears_others()
    }

    /// A cluster node's broker connection came up (`true`, once its rooms
    /// are subscribed again) or went down. While it is down nobody resumes
    /// here: what the other nodes publish meanwhile is in no log here (it
    /// is read from the broker once it is back).
    pub fn hearing_others(&self, hearing: bool) {
        self.hearing.store(hearing, Ordering::SeqCst);
    }

    fn shard(&self, room: &str) -> &RwLock<HashMap<RoomName, Arc<Room>>> {
        &self.shards[self.hasher.hash_one(room) as usize % SHARDS]
    }

    /// The room called `name`, if it exists.
    pub fn room(&self, name: &str) -> Option<Arc<Room>> {
        let shard = self
            .shard(name)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(name).cloned()
    }

    /// The room called `name`, created if need be (within `max_rooms`; at
    /// the cap, a room nobody is in that is kept for its history gives way).
    fn room_or_create(&self, name: &RoomName) -> Result<Arc<Room>, RoomsFull> {
        let mut evicted = false;
        loop {
            if let Some(room) = self.room(name) {
                return Ok(room);
            }
            let mut map = self
                .shard(name)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(room) = map.get(name) {
                return Ok(room.clone());
            }
            // Counted across shards, so the cap holds whichever shard the
            // new room falls in.
            let counted = self
                .room_count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (self.max_rooms == 0 || n < self.max_rooms).then_some(n + 1)
                });
            if counted.is_err() {
                drop(map);
                if !evicted && self.evict_kept_room() {
                    evicted = true;
                    continue;
                }
                return Err(RoomsFull);
            }
            self.rooms_active.inc();
            let room = Arc::new(Room::new(name.clone()));
            map.insert(name.clone(), room.clone());
            return Ok(room);
        }
    }

    /// Removes the quietest room nobody is in (kept for its history or
    /// epoch), so that such rooms never keep clients out of `max_rooms`;
    /// whether there was one. A scan of every room, at the cap only.
    fn evict_kept_room(&self) -> bool {
        match &self.history {
            Some(h) if h.held.kept_rooms.get() > 0 => {}
            _ => return false,
        }
        let mut quietest: Option<(u64, Arc<Room>)> = None;
        self.each_room(|room| {
            let state = room.lock();
            // Counted as kept: not a room just created for someone about
            // to join it.
            if state.counted_kept && state.members.is_empty() && !state.removed {
                let quiet_since = state.quiet_since();
                if quietest.as_ref().is_none_or(|(q, _)| quiet_since < *q) {
                    quietest = Some((quiet_since, room.clone()));
                }
            }
        });
        let Some((_, room)) = quietest else {
            return false;
        };
        if !room.lock().members.is_empty() {
            return false;
        }
        self.shed_room(&room, self.now_ms());
        true
    }

    /// Adds a client to `room`, creating the room if needed; it hears every
    /// message published there from now on (unless `receives` is false).
    /// Once the hub is draining, the membership comes closed.
    pub fn join(&self, room: RoomName, receives: bool) -> Result<Subscription, RoomsFull> {
        self.join_at(room, receives, &Start::Live)
            .map(|(subscription, _)| subscription)
    }

    /// [`Hub::join`], starting where `start` says: behind the head, the
    /// member first takes the kept messages from there on, then live ones,
    /// with nothing lost or repeated between them.
    pub fn join_at(
        &self,
        room: RoomName,
        receives: bool,
        start: &Start,
    ) -> Result<(Subscription, Joined), RoomsFull> {
        self.join_as(room, receives, false, start)
    }

    /// [`Hub::join_at`] for a client told positions (`positions`) or not:
    /// one told positions is closed if its room's positions move to
    /// another epoch.
    pub fn join_as(
        &self,
        room: RoomName,
        receives: bool,
        positions: bool,
        start: &Start,
    ) -> Result<(Subscription, Joined), RoomsFull> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member::new(id, receives));
        member.positioned.store(positions, Ordering::Relaxed);
        // No shard lock is held while waiting for the room's: a room found
        // removed by the time its lock is taken (emptied, or closed) is
        // looked up again.
        loop {
            let arc = self.room_or_create(&room)?;
            let mut state = arc.lock();
            if state.removed {
                continue;
            }
            let (head, now) = (state.log.head(), self.now_ms());
            let from = self.history_from(&state, now);
            let (cursor, recovered) = match start {
                _ if !receives => (head, None),
                Start::Live => (head, None),
                Start::Last(n) => (head.saturating_sub(*n).max(from), None),
                Start::Within(age) => {
                    let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                    let since = now.saturating_sub(age);
                    (state.log.appended_since(from, since), None)
                }
                Start::Since { epoch, position } => {
                    let same_epoch = **epoch == *state.epoch;
                    match same_epoch.then(|| self.resumes(&state, *position, now)) {
                        Some(Some(cursor)) => (cursor, Some(true)),
                        _ => (head, Some(false)),
                    }
                }
            };
            member.cursor.store(cursor, Ordering::Relaxed);
            let generation = state.generation;
            let key = state.members.insert(Record {
                member: member.clone(),
                skip_to: 0,
                held: None,
                dropping: false,
                skips_own: false,
                generation,
                slept: u64::MAX,
                replay_to: if cursor < head { head } else { 0 },
                waker: None,
            });
            if receives {
                state.receivers += 1;
                if let (1, Some(i)) = (state.receivers, &self.interest) {
                    i.add(&room);
                }
            }
            // Someone is in it: no longer kept, nor to go at once.
            state.shed = false;
            self.recount(&mut state);
            // After joining, so that a drain that has passed this room
            // already is seen here, and one that has not yet sees this member.
            if self.draining.load(Ordering::SeqCst) {
                member.close(Ending::Shutdown);
            }
            let epoch = state.epoch.clone();
            let position = state.log.position_before(cursor);
            drop(state);
            let joined = Joined {
                epoch,
                position,
                replay: head - cursor,
                recovered,
            };
            let subscription = Subscription {
                id,
                room: arc,
                member,
                key,
                cursor,
            };
            return Ok((subscription, joined));
        }
    }

    /// Removes a client from its room (the room goes when it empties) and
    /// closes its membership. Idempotent. Returns what it was due, for the
    /// counts: messages `drop_newest` dropped for it.
    pub fn leave(&self, subscription: &Subscription) -> Left {
        self.leave_taking(subscription, |_, _| {})
    }

    /// [`Hub::leave`], handing `sink` first every message still due to the
    /// client (what it is sent before its Close), each with its position
    /// frame.
    pub fn leave_taking(
        &self,
        subscription: &Subscription,
        mut sink: impl FnMut(&Frame, &Mark),
    ) -> Left {
        let room = &subscription.room;
        let mut left = Left::default();
        let empty = {
            let mut state = room.lock();
            if !subscription.owns(&state) {
                return left;
            }
            let mut record = state.members.remove(subscription.key);
            if record.member.receives {
                if record.dropping {
                    let held = record.held.take().unwrap_or_default();
                    left.sent = held.len() as u64;
                    for (frame, mark) in held.iter() {
                        sink(frame, mark);
                    }
                    left.dropped = record.drop_to_head(subscription.cursor, &state.log);
                } else {
                    let mut cursor = subscription.cursor;
                    let (messages, _) = take(
                        &state.log,
                        &mut record,
                        &mut cursor,
                        Batch::UNBOUNDED,
                        &mut sink,
                    );
                    left.sent = messages as u64;
                }
                self.lose_receiver(&mut state, room, &record.member);
            }
            record.member.close(Ending::Left);
            state.left_ms = self.now_ms();
            state.members.is_empty()
        };
        if empty {
            self.remove_if_empty(room);
        }
        left
    }

    fn lose_receiver(&self, state: &mut RoomState, room: &Room, member: &Member) {
        state.receivers -= 1;
        if member.compresses.load(Ordering::Relaxed) {
            room.compressing.fetch_sub(1, Ordering::Relaxed);
        }
        // A room closed by an operator told the interest already.
        if state.receivers == 0
            && !state.removed
            && let Some(i) = &self.interest
        {
            i.remove(&room.name);
        }
    }

    /// `frame` as a member that negotiated permessage-deflate with
    /// `window` takes it: compressed once for all such members (here, if
    /// its publisher did not), and counted where that happened.
    pub fn deflated<'a>(&self, frame: &'a Frame, window: Window) -> &'a Bytes {
        match &self.compression {
            Some((_, counted)) => frame.deflated(window, counted),
            None => frame.wire(),
        }
    }

    /// Counts `subscription`'s member among those of its room that take
    /// messages compressed with the full window: while there are any, the
    /// room's publishers compress each message before taking the room's
    /// lock, not the first such member under it.
    pub fn compresses(&self, subscription: &Subscription) {
        let state = subscription.room.lock();
        let member = &subscription.member;
        if subscription.owns(&state)
            && member.receives
            && !member.compresses.swap(true, Ordering::Relaxed)
        {
            subscription
                .room
                .compressing
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends `frame` to `room`'s log for everyone there who receives,
    /// except `skip`'s member (a sender that does not want its own
    /// messages back), and wakes those waiting for it. When a lag check is
    /// due it runs here; members it finds past their limits whose writers
    /// had not yet run go into `backlog`, for a publisher that can wait.
    pub fn publish_to(
        &self,
        room: &Arc<Room>,
        frame: &Frame,
        skip: Option<&Subscription>,
        backlog: Option<&mut Backlog>,
    ) -> Published {
        let appending = Appending {
            skip: skip.map(Subscription::tag),
            backlog,
            sequence: None,
            with_epoch: false,
        };
        // Only a sequenced message finds no place.
        self.append(room, self.loggable(room, frame), appending)
            .unwrap_or_default()
    }

    /// `frame` as a room's log keeps it: with room for its compressed
    /// frame if it is large enough, compressed here already if a member
    /// will want it so (here, not under the room's lock in the first
    /// compressing member's writer: compressing a large message takes long).
    fn loggable(&self, room: &Room, frame: &Frame) -> Frame {
        match &self.compression {
            Some((c, counted)) if frame.payload().len() >= c.min_size => {
                let logged = frame.compressible(c.level);
                if room.compressing.load(Ordering::Relaxed) > 0 {
                    logged.deflated(Window::Full, counted);
                }
                logged
            }
            _ => frame.clone(),
        }
    }

    /// Appends `logged` to `room`'s log (see [`Hub::publish_to`]); a
    /// sequenced message goes only where its position says
    /// ([`Hub::deliver_sequenced`]).
    fn append(
        &self,
        room: &Arc<Room>,
        logged: Frame,
        appending: Appending<'_, '_>,
    ) -> Result<Published, Placed> {
        let Appending {
            skip,
            backlog,
            sequence,
            with_epoch,
        } = appending;
        let mut published = Published::default();
        let mut waking = WAKING.take();
        let emptied = {
            let mut state = room.lock();
            // With no one to hear it, only a room with history keeps it.
            if state.removed || (state.receivers == 0 && self.history.is_none()) {
                WAKING.set(waking);
                return Ok(published);
            }
            match sequence {
                Some(at) => {
                    let placed = self.place(&mut state, at);
                    if placed != Placed::Here {
                        WAKING.set(waking);
                        return Err(placed);
                    }
                }
                // This node numbers a message itself in a cluster with
                // history only while its broker is unreachable (its relay
                // decided so): its positions are then its own, in an epoch
                // of its own.
                None if self.shared && state.synced => {
                    let top = state.log.top();
                    state.last_broker = Some((state.epoch.clone(), top));
                    self.move_epoch(&mut state, &new_epoch(), top);
                    state.synced = false;
                }
                None => {}
            }
            let head = state.log.head();
            let mut skipped = 0;
            let placeholder = sequence.is_some_and(|at| at.placeholder);
            let mut sender: Sender = match placeholder {
                true => had_before(state.generation),
                false => 0,
            };
            if let Some(tag) = skip
                && !placeholder
                && let Some(record) = state.members.get(tag.key)
                && record.member.id == tag.id
            {
                sender = tag.id;
                let RoomState { log, members, .. } = &mut *state;
                let record = &mut members[tag.key];
                record.skips_own = true;
                // Up to date: it stays so, past its own message, and that
                // message never counts towards its lag.
                if record.position(record.member.cursor.load(Ordering::Relaxed), log) == head {
                    record.skip_to = head + 1;
                }
                skipped = usize::from(record.member.receives);
            }
            published.queued = match placeholder {
                true => 0,
                false => state.receivers - skipped,
            };
            let size = logged.payload().len() as u64;
            let now = self.now_ms();
            match sequence {
                Some(at) => state.log.append_at(logged, sender, now, at.position),
                None => state.log.append(logged, sender, now),
            };
            published.position = state.log.top();
            if with_epoch {
                published.epoch = Some(state.epoch.clone());
            }
            state.unchecked.messages += 1;
            state.unchecked.bytes += size;
            if self.check_due(&state) {
                published.dropped = self.check(&mut state, room, now);
            } else if self.history.is_some() {
                // Between checks the log holds what readers may still
                // need; with no readers, only the history.
                let readers_from = match state.receivers {
                    0 => Offset::MAX,
                    _ => state.log.first(),
                };
                self.trim(&mut state, readers_from, now);
            }
            if let Some(b) = backlog
                && b.members.is_empty()
                && !state.behind.is_empty()
            {
                state.behind.retain(Backlog::waits_for);
                b.members.extend(state.behind.iter().cloned());
            }
            wake_sleepers(&mut state, &mut waking);
            // A room kept for its history stays; looking costs a shard's lock.
            state.members.is_empty() && state.log.is_empty()
        };
        waking.drain(..).for_each(Waker::wake);
        WAKING.set(waking);
        if emptied {
            self.remove_if_empty(room);
        }
        self.shed_history();
        Ok(published)
    }

    /// Where a sequenced message goes in `state`'s log: next, if it
    /// follows the newest in the room's epoch; nowhere if the log has it; a
    /// gap if messages before it are missing (unless `at.force`, which
    /// gives them up). A new epoch starts the log afresh.
    fn place(&self, state: &mut RoomState, at: &Sequenced<'_>) -> Placed {
        let top = state.log.top();
        if !state.synced {
            self.move_epoch(state, at.epoch, at.previous);
            return Placed::Here;
        }
        if *state.epoch != *at.epoch {
            // Which epoch is the broker's now is for a read to say (a
            // message of the old one may still come after the new one's).
            return match at.force {
                false => Placed::Gap { after: top },
                true => Placed::Duplicate,
            };
        }
        match at.position {
            p if p <= top => Placed::Duplicate,
            _ if follows(top, at.position, at.previous) => Placed::Here,
            _ if !at.force => Placed::Gap { after: top },
            _ => {
                // The broker no longer has them either.
                self.give_up_before_next(state);
                Placed::Here
            }
        }
    }

    /// The room's messages between the newest in `state`'s log and the next
    /// one to be appended are lost (the broker no longer has them):
    /// receivers go on past them, and nobody resumes from before the next
    /// one, nor is history before it complete. Only a new epoch lowers
    /// these floors again.
    fn give_up_before_next(&self, state: &mut RoomState) {
        let head = state.log.head();
        state.history_floor = state.history_floor.max(head);
        state.resume_floor = state.resume_floor.max(head + 1);
    }

    /// `state`'s positions are the broker's in `epoch` after position
    /// `base` (or, for a new epoch of this node's own, its own). In another
    /// epoch the log starts afresh after `base`; position-aware members are
    /// closed to resume (what they hold names positions of the old epoch),
    /// the others carry on from the head.
    fn move_epoch(&self, state: &mut RoomState, epoch: &str, base: u64) {
        let other = *state.epoch != *epoch;
        if other || !state.synced {
            state.epoch = epoch.into();
            state.log.restart(base);
            let head = state.log.head();
            // Older messages of the new epoch may come before it (a fill);
            // losses of the old one are no longer its concern.
            state.history_floor = head;
            state.resume_floor = 0;
            state.last_broker = None;
            state.generation = state.generation.wrapping_add(1);
            state.behind.clear();
            for (_, record) in state.members.iter_mut() {
                if other && record.member.positioned.load(Ordering::Relaxed) {
                    record.member.close(Ending::Moved);
                }
                // Everything before the head is the old epoch's.
                record.skip_to = head;
                record.replay_to = 0;
            }
            self.recount(state);
        }
        state.synced = true;
    }

    /// Appends a message the broker numbered (see the module docs of
    /// `backplane`) to `room`'s log, if its position is the next one (a
    /// `placeholder` is skipped by the members that had it).
    /// Tells where it went: a gap means the node missed messages before
    /// it, which the caller reads from the broker ([`Hub::fill`]) before
    /// trying again (then with `force`, if they are not to be had).
    pub fn deliver_sequenced(&self, room: &str, frame: &Frame, at: &Sequenced<'_>) -> Delivered {
        // A room removed meanwhile: nobody here to hear it.
        let Some(found) = self.room(room) else {
            return Delivered::Placed(Placed::Duplicate);
        };
        let appending = Appending {
            skip: at.sender,
            backlog: None,
            sequence: Some(at),
            with_epoch: false,
        };
        match self.append(&found, self.loggable(&found, frame), appending) {
            Ok(published) => Delivered::Appended(published),
            Err(placed) => Delivered::Placed(placed),
        }
    }

    /// Puts what the broker holds for `room` (read after a position this
    /// node needed) in its log: older messages before it, newer ones after
    /// its head, a new epoch instead of the old one. Creates the room: a
    /// client is about to join it.
    pub fn fill(&self, room: &str, page: BrokerPage) {
        let found = match self.room(room) {
            Some(found) => Ok(found),
            None => self.room_or_create(&room.into()),
        };
        let Ok(found) = found else {
            return;
        };
        if page.epoch.is_empty() {
            return;
        }
        // Compressed (if need be) before the lock is taken.
        let frames: Vec<Frame> = page
            .messages
            .iter()
            .map(|m| self.loggable(&found, &m.frame))
            .collect();
        let mut waking = WAKING.take();
        {
            let mut state = found.lock();
            if state.removed {
                WAKING.set(waking);
                return;
            }
            let now = self.now_ms();
            if !state.synced || *state.epoch != *page.epoch {
                let base = match &state.last_broker {
                    // Back in the epoch it numbered from: on from there.
                    Some((epoch, top)) if **epoch == *page.epoch && page.after == *top => *top,
                    _ => page.messages.first().map_or(page.top, |m| m.previous),
                };
                self.move_epoch(&mut state, &page.epoch, base);
            }
            let generation = state.generation;
            let mut messages: Vec<Chained> = Vec::with_capacity(frames.len());
            for (m, frame) in page.messages.iter().zip(frames) {
                // A sender here that does not want its own back skips it.
                if let Some(tag) = m.sender
                    && let Some(record) = state.members.get_mut(tag.key)
                    && record.member.id == tag.id
                {
                    record.skips_own = true;
                }
                let sender = m.log_sender(generation);
                messages.push((m.position, m.previous, frame, sender));
            }
            // Older than the log, up to the position before its first
            // entry, each after the one before: before it.
            let base = state.log.position_before(state.log.first());
            let older = messages.partition_point(|m| m.0 <= base);
            let reaches = older > 0 && messages[older - 1].0 == base;
            let chained = messages[..older].windows(2).all(|w| w[1].1 == w[0].0);
            if reaches && chained {
                let before = messages[0].1;
                let older = messages[..older]
                    .iter()
                    .map(|(position, _, f, sender)| (f.clone(), *sender, now, *position))
                    .collect();
                state.log.prepend(older, before);
                // Positions given up stay so (`resume_floor`).
                state.history_floor = state.history_floor.min(state.log.first());
            }
            // Newer than the newest: after it.
            for (position, previous, frame, sender) in messages {
                let top = state.log.top();
                if position <= top {
                    continue;
                }
                if !follows(top, position, previous) {
                    if page.after > top {
                        // Not asked for: a read from later on.
                        break;
                    }
                    // The broker no longer has those in between.
                    self.give_up_before_next(&mut state);
                }
                state.log.append_at(frame, sender, now, position);
            }
            state.filled_ms = now.max(1);
            state.filled_after = page.after;
            self.recount(&mut state);
            wake_sleepers(&mut state, &mut waking);
        }
        waking.drain(..).for_each(Waker::wake);
        WAKING.set(waking);
        self.shed_history();
    }

    /// After `room` was (re)subscribed on the broker: after which position
    /// to read what was published before the subscription took effect
    /// (`u64::MAX`: only the epoch and newest position).
    pub fn read_sync(&self, room: &str) -> Option<ReadPlan> {
        if !self.shared {
            return None;
        }
        let found = self.room(room)?;
        let state = found.lock();
        Some(match (state.synced, &state.last_broker) {
            (true, _) => ReadPlan::after(state.log.top(), &state.epoch),
            // Numbered here while the broker was away: from where the
            // broker's positions stopped.
            (false, Some((epoch, top))) => ReadPlan::after(*top, epoch),
            (false, None) => ReadPlan::TOP,
        })
    }

    /// Whether `room`'s log still lacks messages before `at` (the
    /// broker's), and after which position to read them: in another epoch
    /// (the broker lost the room's history, or `at` is a stale message of
    /// an old one), all of the broker's, to learn which epoch is current.
    pub fn read_gap(&self, room: &str, at: &Sequenced<'_>) -> Option<ReadPlan> {
        let found = self.room(room)?;
        let state = found.lock();
        let top = state.log.top();
        let gap = *state.epoch != *at.epoch
            || (at.position > top && !follows(top, at.position, at.previous));
        (state.synced && gap).then(|| ReadPlan::after(top, &state.epoch))
    }

    /// Receiving members of `room` on this node.
    pub fn receivers(&self, room: &str) -> usize {
        self.room(room).map_or(0, |r| r.lock().receivers)
    }

    /// Whether a client joining `room` at `start` needs the broker's
    /// history first, in a cluster with history, and what to read.
    /// `None` when this node's log serves the join: it hears the room
    /// (someone here receives) and holds what the join asks for.
    pub fn read_after(&self, room: &str, start: &Start) -> Option<ReadPlan> {
        if !self.shared || !self.hearing.load(Ordering::SeqCst) {
            return None;
        }
        let Some(found) = self.room(room) else {
            return Some(match start {
                Start::Live => ReadPlan::TOP,
                Start::Since { position, epoch } => ReadPlan::after(*position, epoch),
                _ => ReadPlan::ALL,
            });
        };
        let state = found.lock();
        let (top, now) = (state.log.top(), self.now_ms());
        let fresh = state.filled_ms > 0 && now.saturating_sub(state.filled_ms) < FRESH_MS;
        // Someone here receives (the room is subscribed, and what was
        // published before that was read: [`Hub::read_sync`]), or it was
        // just filled.
        let heard = state.synced && (state.receivers > 0 || fresh);
        let same_epoch = matches!(start, Start::Since { epoch, .. } if **epoch == *state.epoch);
        let ours = |after| Some(ReadPlan::after(after, &state.epoch));
        match start {
            Start::Since { position, .. } if heard && same_epoch => {
                // Ahead of the log: the client had messages still on their
                // way here. Behind it: read what it lacks, unless a read
                // from before it just brought all the broker had.
                let read_just_now = fresh && state.filled_after <= *position;
                match *position {
                    p if p > top => ours(top),
                    p if self.resumes(&state, p, now).is_none() && !read_just_now => ours(p),
                    _ => None,
                }
            }
            // Another epoch than the room's here: the broker may have moved
            // on (and the client with it) before this node heard of it.
            Start::Since { .. } if heard && !fresh => ours(top),
            _ if heard => None,
            Start::Since { position, .. } if state.synced && same_epoch => {
                ours((*position).min(top))
            }
            _ if state.synced => ours(top),
            Start::Since { position, epoch } => Some(ReadPlan::after(*position, epoch)),
            Start::Live => Some(ReadPlan::TOP),
            _ => Some(ReadPlan::ALL),
        }
    }

    /// [`Hub::publish_to`] the room called `room`, for publishers that are
    /// not members (the HTTP API, other nodes) and cannot wait. With
    /// history on, a room nobody is in is created to keep the message.
    pub fn publish(&self, room: &str, frame: &Frame) -> Published {
        // A room emptied and removed between finding it and publishing is
        // looked up (or created) again, as a joining member does.
        loop {
            let found = match &self.history {
                Some(_) if is_room_name(room) || room.is_empty() => {
                    self.room_or_create(&room.into()).ok()
                }
                _ => self.room(room),
            };
            let Some(found) = found else {
                return Published::default();
            };
            // The epoch only for these callers (the API answers with it),
            // not a reference count taken on every client's publish.
            let appending = Appending {
                skip: None,
                backlog: None,
                sequence: None,
                with_epoch: true,
            };
            let published = self
                .append(&found, self.loggable(&found, frame), appending)
                .unwrap_or_default();
            if published.position == 0 && self.history.is_some() && found.lock().removed {
                continue;
            }
            return published;
        }
    }

    /// Whether a quarter of the limits was appended since the last check.
    fn check_due(&self, state: &RoomState) -> bool {
        let l = &self.limits;
        state.unchecked.messages >= (l.messages as u64 / 4).max(1)
            || state.unchecked.bytes >= (l.bytes as u64 / 4).max(1)
    }

    /// Looks at every receiving member's lag, applies the policy to those
    /// past the limits (see the module docs), then lets the log go of what
    /// no member needs. Returns the messages dropped.
    fn check(&self, state: &mut RoomState, room: &Room, now_ms: u64) -> u64 {
        state.unchecked = Unchecked::default();
        state.behind.clear();
        let l = self.limits;
        let half = LagLimits {
            messages: (l.messages / 2).max(1),
            bytes: (l.bytes / 2).max(1),
            ..l
        };
        let head = state.log.head();
        // Never more than twice the limits, whoever is behind.
        let hard_tail = state.log.oldest_within(state.log.first(), &l, 2);
        let mut keep_from = head;
        let mut dropped = 0;
        let mut evicted = Vec::new();
        let RoomState {
            log,
            members,
            behind,
            ..
        } = state;
        for (key, record) in members.iter_mut() {
            let m = &record.member;
            if !m.receives {
                continue;
            }
            let cursor = m.cursor.load(Ordering::Acquire);
            // Still taking the window it kept (`drop_newest`): what came
            // since is dropped for it.
            if record.dropping {
                dropped += record.drop_to_head(cursor, log);
                continue;
            }
            let at = record.position(cursor, log);
            let skipping = record.skipping();
            // What it replays does not count; it needs the history instead.
            let counted_from = at.max(record.replay_to);
            // Closed and about to leave (shutdown): it takes what is due on
            // its way out, within the hard bound; what that cuts is dropped.
            if m.is_closed() {
                if at < hard_tail {
                    dropped += log.count_for(at, hard_tail, skipping);
                    record.skip_to = hard_tail;
                }
                keep_from = keep_from.min(at.max(hard_tail));
                continue;
            }
            let lag = log.lag(counted_from);
            let over = l.exceeded(lag, 1);
            let policy_applies =
                l.exceeded(lag, 2) || (over && m.socket_full.load(Ordering::Relaxed));
            if !policy_applies {
                if over {
                    let target = log.oldest_within(counted_from, &half, 1);
                    behind.push((m.clone(), target));
                }
                keep_from = keep_from.min(at);
                continue;
            }
            match l.on_overflow {
                OnOverflow::Disconnect => {
                    dropped += log.count_for(at, head, skipping);
                    evicted.push(key);
                }
                OnOverflow::DropOldest => {
                    let to = log.oldest_within(at, &l, 1);
                    dropped += log.count_for(at, to, skipping);
                    record.skip_to = to;
                    keep_from = keep_from.min(to);
                }
                OnOverflow::DropNewest => {
                    let keep = log.newest_within(at, &l);
                    let held: VecDeque<(Frame, Mark)> = log
                        .entries_in(at, keep)
                        .filter(|e| Some(e.sender) != skipping)
                        .map(|e| (e.frame.clone(), *e.mark))
                        .collect();
                    record.held = (!held.is_empty()).then(|| Box::new(held));
                    dropped += log.count_for(keep, head, skipping);
                    record.skip_to = head;
                    record.dropping = true;
                }
            }
        }
        // Replaying members the history has rolled past before they took
        // it: the policy, as for a member past its limits.
        let trim_to = keep_from
            .max(hard_tail)
            .min(self.history_from(state, now_ms));
        for (key, record) in state.members.iter_mut() {
            let cursor = record.member.cursor.load(Ordering::Acquire);
            let at = record.position(cursor, &state.log);
            let settled = record.replay_to <= at || at >= trim_to || record.dropping;
            // Evicted above already: its lag alone was past the limits.
            if settled || evicted.contains(&key) {
                continue;
            }
            dropped += state.log.count_for(at, trim_to, record.skipping());
            match l.on_overflow {
                OnOverflow::Disconnect => evicted.push(key),
                OnOverflow::DropOldest | OnOverflow::DropNewest => record.skip_to = trim_to,
            }
        }
        for key in evicted {
            let record = state.members.remove(key);
            record.member.close(Ending::Evicted);
            self.lose_receiver(state, room, &record.member);
        }
        self.trim(state, keep_from.max(hard_tail), now_ms);
        dropped
    }

    /// Drops from `backlog` the members whose writers have caught up (or
    /// turned out slow, or left); true when none is left to wait for.
    pub fn caught_up(&self, backlog: &mut Backlog) -> bool {
        backlog.members.retain(Backlog::waits_for);
        if backlog.members.is_empty() && backlog.members.capacity() > 16 {
            backlog.members = ThinVec::new();
        }
        backlog.members.is_empty()
    }

    /// Closes every member of `room` with `farewell` (a Close frame);
    /// returns how many there were, or `None` if there is no such room.
    /// With history on the room stays, with its history and epoch, for
    /// clients that come back; without, it goes at once.
    pub fn close_room(&self, room: &str, farewell: &Bytes) -> Option<usize> {
        let closing = |state: &RoomState| {
            for (_, record) in &state.members {
                record
                    .member
                    .close(Ending::Closed(Box::new(farewell.clone())));
            }
            state.members.len()
        };
        if self.history.is_some() {
            // Each member leaves as it says goodbye; the last one's leaving
            // tells the interest, as any.
            let room = self.room(room)?;
            let state = room.lock();
            return Some(closing(&state));
        }
        // Under the shard's lock throughout: a room of the same name joined
        // meanwhile tells the interest `add` only after this `remove`.
        let mut map = self
            .shard(room)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let r = map.remove(room)?;
        self.room_count.fetch_sub(1, Ordering::Relaxed);
        self.rooms_active.dec();
        // The members stay until each leaves, taking what was published
        // before the close; nothing more can be.
        let mut state = r.lock();
        state.removed = true;
        if state.receivers > 0
            && let Some(i) = &self.interest
        {
            i.remove(room);
        }
        Some(closing(&state))
    }

    /// Every room, one at a time.
    fn each_room(&self, mut f: impl FnMut(&Arc<Room>)) {
        for shard in &self.shards {
            let rooms: Vec<Arc<Room>> = shard
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            rooms.iter().for_each(&mut f);
        }
    }

    /// Asks every client's task to send a keepalive ping, room by room
    /// (no lock is held over all of them), and lets each room's log go of
    /// what every member has taken: a quiet room keeps nothing.
    pub fn ping_all(&self) {
        self.tidy(true);
    }

    /// Takes `room` out of the map if it has no members left, nor history.
    /// A room kept for its history counts against the relay-wide bound,
    /// which may shed the quietest such rooms.
    fn remove_if_empty(&self, room: &Arc<Room>) {
        let kept = {
            let mut map = self
                .shard(&room.name)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mut state = room.lock();
            if !state.members.is_empty() || state.removed {
                return;
            }
            let now = self.now_ms();
            self.trim(&mut state, Offset::MAX, now);
            if !state.log.is_empty() || self.keeps_epoch(&state, now) {
                true
            } else {
                state.removed = true;
                self.recount(&mut state);
                if map.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room)) {
                    map.remove(&room.name);
                    self.room_count.fetch_sub(1, Ordering::Relaxed);
                    self.rooms_active.dec();
                }
                false
            }
        };
        if kept {
            self.shed_history();
        }
    }

    /// Lets every room's log go of what its readers took and of history
    /// past its ttl; a room kept only for its history goes with it. (Pings
    /// do the same; this is for relays that do not ping.)
    pub fn expire_history(&self) {
        self.tidy(false);
    }

    fn tidy(&self, ping: bool) {
        let now = self.now_ms();
        let mut emptied = Vec::new();
        let mut readers = 0u64;
        self.each_room(|room| {
            let mut state = room.lock();
            if ping {
                for (_, record) in &state.members {
                    record.member.ping();
                }
            }
            let readers_from = readers_from(&state);
            readers = readers.saturating_add(state.readers_bytes(readers_from));
            self.trim(&mut state, readers_from, now);
            // Nobody waits for members that caught up or left.
            state.behind.retain(Backlog::waits_for);
            // A room kept only for its history goes once that expires.
            if state.members.is_empty() && state.log.is_empty() && !self.keeps_epoch(&state, now) {
                emptied.push(room.clone());
            }
        });
        // What readers need now, not at the last shedding: once they
        // caught up, what they held counts as history again.
        if let Some(h) = &self.history {
            h.readers_bytes.store(readers, Ordering::Relaxed);
        }
        for room in emptied {
            self.remove_if_empty(&room);
        }
        self.shed_history();
    }

    /// Begins shutdown: hands back every member, for the server to close in
    /// batches (each close wakes that client's task to say goodbye with
    /// 1001, and it leaves then). Members stay in their rooms until then,
    /// hearing and being heard as before. Clients joining from now on get
    /// a closed membership at once.
    pub fn drain(&self) -> Vec<Arc<Member>> {
        self.draining.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        self.each_room(|room| {
            let state = room.lock();
            all.extend(state.members.iter().map(|(_, r)| r.member.clone()));
        });
        all
    }

    /// Up to `limit` messages of `room`'s history after position `since`
    /// (in `epoch`, if given), oldest first; `None` if there is no such room.
    pub fn history(
        &self,
        room: &str,
        since: u64,
        epoch: Option<&str>,
        limit: usize,
    ) -> Option<HistoryPage> {
        let room = self.room(room)?;
        let state = room.lock();
        let head = state.log.head();
        let now = self.now_ms();
        let from = self.history_from(&state, now);
        // Positions from another epoch name other messages: none of these.
        let same_epoch = epoch.is_none_or(|e| *e == *state.epoch);
        let start = match same_epoch {
            true => state.log.offset_after(since).max(from),
            false => head,
        };
        let messages = state
            .log
            .entries_in(start, head)
            .take(limit)
            .map(|e| (e.mark.position(), e.frame.clone()))
            .collect();
        Some(HistoryPage {
            epoch: state.epoch.clone(),
            position: state.log.top(),
            complete: same_epoch && self.resumes(&state, since, now).is_some(),
            messages,
        })
    }

    /// Clients connected now, in every room.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.each_room(|room| n += room.lock().members.len());
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rooms that exist now.
    pub fn room_count(&self) -> usize {
        self.room_count.load(Ordering::Relaxed)
    }

    /// Every room with its number of receiving members, by name.
    pub fn rooms(&self) -> Vec<(RoomName, usize)> {
        let mut list = Vec::new();
        self.each_room(|room| list.push((room.name.clone(), room.lock().receivers)));
        list.sort();
        list
    }
}

/// Hands `sink` the messages from `cursor` on, within `batch`, leaving out
/// those the member skips (its own), and moves `cursor` past them; returns
/// the messages and payload bytes handed over.
fn take(
    log: &Log,
    record: &mut Record,
    cursor: &mut Offset,
    batch: Batch,
    sink: &mut impl FnMut(&Frame, &Mark),
) -> (usize, usize) {
    let mut taken = (0, 0);
    // The window kept by `drop_newest` goes first.
    if let Some(held) = &mut record.held {
        while let Some((frame, mark)) = held.front() {
            let size = frame.payload().len();
            if !batch.admits(taken, size) {
                return taken;
            }
            sink(frame, mark);
            taken = (taken.0 + 1, taken.1 + size);
            held.pop_front();
        }
        record.held = None;
        if taken.0 > 0 {
            return taken;
        }
    }
    let skipping = record.skipping();
    *cursor = record.position(*cursor, log);
    record.skip_to = 0;
    for e in log.entries_in(*cursor, log.head()) {
        let size = e.frame.payload().len();
        if !batch.admits(taken, size) {
            break;
        }
        *cursor += 1;
        if Some(e.sender) != skipping && !had(record, e.sender) {
            sink(e.frame, e.mark);
            taken = (taken.0 + 1, taken.1 + size);
        }
    }
    taken
}

/// Whether a message at `position`, after `previous` in its room, comes
/// right after position `top`: nothing of the room can lie between.
fn follows(top: u64, position: u64, previous: u64) -> bool {
    previous == top || position == top + 1
}

/// Whether `record`'s member had an entry of `sender` already.
fn had(record: &Record, sender: Sender) -> bool {
    sender & HAD_BEFORE != 0 && record.generation < (sender & !HAD_BEFORE) as u32
}

/// Hands `waking` the wakers of the members asleep waiting for the next
/// message.
fn wake_sleepers(state: &mut RoomState, waking: &mut Vec<Waker>) {
    let RoomState {
        members,
        sleepers,
        wakeups,
        ..
    } = state;
    for key in sleepers.drain(..) {
        if let Some(r) = members.get_mut(key)
            && let Some(w) = r.waker.take()
        {
            waking.push(w);
        }
    }
    *wakeups += 1;
}

/// The oldest position a receiving member of `state` still needs (the
/// head if none): a closed member still takes what is due on its way out.
fn readers_from(state: &RoomState) -> Offset {
    let mut from = state.log.head();
    for (_, record) in &state.members {
        if record.member.receives {
            let at = record.position(record.member.cursor.load(Ordering::Acquire), &state.log);
            from = from.min(at);
        }
    }
    from
}

/// A fresh epoch: 8 random letters and digits.
pub fn new_epoch() -> String {
    let mut rng = fastrand::Rng::new();
    std::iter::repeat_with(|| rng.alphanumeric())
        .take(8)
        .collect()
}

impl Room {
    fn new(name: RoomName) -> Self {
        let epoch = new_epoch();
        Self {
            name,
            state: Mutex::new(RoomState {
                epoch: epoch.into(),
                synced: false,
                log: Log::default(),
                members: Slab::new(),
                receivers: 0,
                sleepers: Vec::new(),
                wakeups: 0,
                unchecked: Unchecked::default(),
                behind: Vec::new(),
                removed: false,
                history_floor: 0,
                resume_floor: 0,
                left_ms: 0,
                counted: (0, 0),
                counted_kept: false,
                shed: false,
                filled_ms: 0,
                filled_after: u64::MAX,
                last_broker: None,
                generation: 0,
            }),
            compressing: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &RoomName {
        &self.name
    }

    /// The room's epoch now (see [`Joined::epoch`]).
    pub fn epoch(&self) -> Arc<str> {
        self.lock().epoch.clone()
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        lock(&self.state)
    }

    /// Messages in the room's log now.
    #[cfg(test)]
    fn log_len(&self) -> usize {
        self.lock().log.len()
    }
}

impl Member {
    fn new(id: ClientId, receives: bool) -> Self {
        Self {
            id,
            receives,
            cursor: AtomicU64::new(0),
            socket_full: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            positioned: AtomicBool::new(false),
            ping_due: AtomicBool::new(false),
            compresses: AtomicBool::new(false),
            signals: Mutex::default(),
        }
    }

    /// Called by the member's writer: whether its socket is refusing bytes.
    pub fn set_socket_full(&self, full: bool) {
        // Read first: the flag changes rarely, and a store would dirty the
        // cache line lag checks read.
        if self.socket_full.load(Ordering::Relaxed) != full {
            self.socket_full.store(full, Ordering::Relaxed);
        }
    }

    /// Asks for a keepalive ping at the member's next frame boundary, and
    /// wakes its task even if it waits on its socket: the tick is also when
    /// it checks whether its peer has gone silent, which a task blocked on
    /// a write to a dead peer would otherwise never do.
    pub fn ping(&self) {
        let mut signals = lock(&self.signals);
        if signals.closed {
            return;
        }
        signals.ping = true;
        self.ping_due.store(true, Ordering::Release);
        let task = signals.task.take();
        drop(signals);
        if let Some(t) = task {
            t.wake();
        }
    }

    /// Ends the membership: the task wakes and finds it closed, whatever
    /// it was waiting for. The first close decides the [`Ending`].
    pub fn close(&self, ending: Ending) {
        let mut signals = lock(&self.signals);
        if !signals.closed {
            signals.ending = Some(ending);
        }
        signals.closed = true;
        self.closed.store(true, Ordering::Release);
        let task = signals.task.take();
        drop(signals);
        if let Some(t) = task {
            t.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Why the membership ended (`None` while it goes on).
    pub fn ending(&self) -> Option<Ending> {
        lock(&self.signals).ending.clone()
    }

    /// Arranges a wake-up for a ping or the end of the membership; true if
    /// it has ended already.
    pub fn watch(&self, task: &Context<'_>) -> bool {
        let mut signals = lock(&self.signals);
        match &signals.task {
            Some(w) if w.will_wake(task.waker()) => {}
            _ => signals.task = Some(task.waker().clone()),
        }
        signals.closed
    }

    /// Takes a due ping.
    fn take_ping(&self) -> bool {
        if !self.ping_due.load(Ordering::Acquire) {
            return false;
        }
        let mut signals = lock(&self.signals);
        self.ping_due.store(false, Ordering::Relaxed);
        std::mem::take(&mut signals.ping)
    }
}

impl Subscription {
    /// Its member as a publisher.
    pub fn tag(&self) -> SenderTag {
        SenderTag {
            id: self.id,
            key: self.key,
        }
    }

    /// Whether the record under its key is still this membership's: a
    /// membership that has ended may have had its key reused.
    fn owns(&self, state: &RoomState) -> bool {
        state
            .members
            .get(self.key)
            .is_some_and(|r| Arc::ptr_eq(&r.member, &self.member))
    }

    /// Hands `sink` the messages from this member's cursor on, oldest
    /// first: at least one, then more while within `max_frames` and
    /// `max_bytes` of payload. A due ping comes first; an ended membership
    /// reports only that. With nothing to take, the task is woken by the
    /// next message, ping or end.
    pub fn poll_take(
        &mut self,
        task: &mut Context<'_>,
        max_frames: usize,
        max_bytes: usize,
        mut sink: impl FnMut(&Frame, &Mark),
    ) -> Poll<Taken> {
        let member = &*self.member;
        if member.watch(task) {
            return Poll::Ready(Taken::Closed);
        }
        if member.take_ping() {
            return Poll::Ready(Taken::Ping);
        }
        // A publish-only member hears nothing.
        if !member.receives {
            return Poll::Pending;
        }
        let mut state = self.room.lock();
        // Ended while this task waited for the lock: the record may be gone.
        if member.is_closed() || !self.owns(&state) {
            return Poll::Ready(Taken::Closed);
        }
        let RoomState {
            log,
            members,
            sleepers,
            wakeups,
            ..
        } = &mut *state;
        let record = &mut members[self.key];
        let mut dropped = 0;
        // Taken all it kept: what was published meanwhile was dropped.
        if record.dropping && record.held.is_none() {
            record.dropping = false;
            dropped = record.drop_to_head(self.cursor, log);
        }
        let batch = Batch {
            max_frames,
            max_bytes,
        };
        let mut cursor = self.cursor;
        let (messages, bytes) = take(log, record, &mut cursor, batch, &mut sink);
        if cursor != self.cursor {
            self.cursor = cursor;
            member.cursor.store(cursor, Ordering::Release);
        }
        if messages == 0 && dropped == 0 {
            match &record.waker {
                Some(w) if w.will_wake(task.waker()) => {}
                _ => record.waker = Some(task.waker().clone()),
            }
            if record.slept != *wakeups {
                record.slept = *wakeups;
                sleepers.push(self.key);
                // Keys of members that left stay until the next publish;
                // in a room that publishes rarely, they must not pile up.
                if sleepers.len() > 2 * members.len() + 16 {
                    let now = *wakeups;
                    sleepers.retain(|k| members.get(*k).is_some_and(|r| r.slept == now));
                    sleepers.sort_unstable();
                    sleepers.dedup();
                }
            }
            return Poll::Pending;
        }
        Poll::Ready(Taken::Frames {
            messages,
            bytes,
            dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(messages: usize, on_overflow: OnOverflow) -> Hub {
        let limits = LagLimits {
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

    /// Takes everything due, returning what `each` makes of each message.
    fn take_each<T>(s: &mut Subscription, each: impl Fn(&Frame, &Mark) -> T) -> Vec<T> {
        let mut got = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Taken::Frames { .. }) =
            s.poll_take(&mut cx, 1000, usize::MAX, |f, m| got.push(each(f, m)))
        {}
        got
    }

    /// Takes everything due, returning the frames.
    fn take(s: &mut Subscription) -> Vec<Frame> {
        take_each(s, |f, _| f.clone())
    }

    fn publish(hub: &Hub, s: &Subscription, payload: &[u8]) -> Published {
        hub.publish_to(&s.room, &Frame::new(true, payload), None, None)
    }

    fn with_history(hub: Hub, messages: usize) -> Hub {
        hub.with_history(
            History {
                retention: Retention {
                    messages,
                    bytes: 1 << 20,
                },
                ttl: Duration::from_secs(60),
                total_bytes: 1 << 30,
            },
            HistoryGauges::default(),
        )
    }

    /// 1 000 joins behind the head while a publisher on another thread
    /// keeps publishing: each member gets a run of consecutive positions
    /// from where it was told it stands, the replay and the live messages
    /// meeting with no gap and no repeat.
    #[test]
    fn joins_behind_the_head_meet_the_live_stream_without_a_seam() {
        let hub = Arc::new(with_history(hub(100_000, OnOverflow::Disconnect), 200));
        let stop = Arc::new(AtomicBool::new(false));
        // Where the reader is: the publisher stays at most 10 000 ahead of
        // it, far within the lag limit, however the threads are scheduled.
        let read = Arc::new(AtomicU64::new(0));
        // The room exists (and keeps its history) from the first publish on.
        hub.publish("", &Frame::new(false, &1u64.to_be_bytes()));
        let publisher = {
            let (hub, stop, read) = (hub.clone(), stop.clone(), read.clone());
            std::thread::spawn(move || {
                // Position n carries n.
                for n in 2u64.. {
                    while n > read.load(Ordering::Relaxed) + 10_000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::yield_now();
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    hub.publish("", &Frame::new(false, &n.to_be_bytes()));
                }
            })
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let start = Start::Last(rng.u64(0..300));
            let (mut s, joined) = hub.join_at("".into(), true, &start).unwrap();
            let mut next = joined.position + 1;
            // Through the replay and at least 20 live messages.
            while next <= joined.position + joined.replay + 20 {
                let taken = s.poll_take(&mut cx, 64, usize::MAX, |f, mark| {
                    let n = u64::from_be_bytes(f.payload().try_into().unwrap());
                    assert_eq!(n, next, "gap or repeat at the seam: {joined:?}");
                    assert_eq!(mark.frame()[2..], *format!("@{n}").as_bytes());
                    next += 1;
                });
                // Evicted or closed, it would never get the rest.
                assert!(
                    !matches!(taken, Poll::Ready(Taken::Closed)),
                    "closed at {next}: {joined:?}"
                );
                read.store(next, Ordering::Relaxed);
            }
            hub.leave(&s);
        }
        stop.store(true, Ordering::Relaxed);
        publisher.join().unwrap();
    }

    /// A replaying member whose live lag passes the limits and whom the
    /// history rolls past in the same check is evicted once (it used to be
    /// removed twice: a panic under the room's lock).
    #[test]
    fn a_replaying_member_past_both_bounds_is_evicted_once() {
        let hub = with_history(hub(8, OnOverflow::Disconnect), 100);
        for n in 0..100u8 {
            hub.publish("", &Frame::new(false, &[n]));
        }
        let (mut s, joined) = hub.join_at("".into(), true, &Start::Last(100)).unwrap();
        assert_eq!(joined.replay, 100);
        let mut cx = Context::from_waker(Waker::noop());
        let _ = s.poll_take(&mut cx, 16, usize::MAX, |_, _| {});
        s.member.set_socket_full(true);
        for n in 0..40u8 {
            hub.publish("", &Frame::new(false, &[n]));
        }
        assert_eq!(s.member.ending(), Some(Ending::Evicted));
        let mut other = hub.join("".into(), true).unwrap();
        hub.publish("", &Frame::new(false, b"after"));
        assert_eq!(take(&mut other).len(), 1, "the room goes on");
    }

    /// A cluster node whose positions come from the broker, hearing it.
    fn shared_hub() -> Hub {
        struct Nobody;
        impl RoomInterest for Nobody {
            fn add(&self, _: &RoomName) {}
            fn remove(&self, _: &str) {}
        }
        let hub = with_history(hub(100, OnOverflow::Disconnect), 100)
            .with_interest(Arc::new(Nobody))
            .with_shared_history();
        hub.hearing_others(true);
        hub
    }

    fn at(epoch: &str, position: u64) -> Sequenced<'_> {
        Sequenced {
            epoch,
            position,
            previous: position - 1,
            sender: None,
            placeholder: false,
            force: false,
        }
    }

    fn deliver(hub: &Hub, at: &Sequenced<'_>, payload: &[u8]) -> Delivered {
        hub.deliver_sequenced("r", &Frame::new(true, payload), at)
    }

    fn payloads(frames: Vec<Frame>) -> Vec<Vec<u8>> {
        frames.into_iter().map(|f| f.payload().to_vec()).collect()
    }

    /// Sequenced messages go in at their positions: the next one is
    /// appended, one the log has is dropped, one after missing positions
    /// is a gap (given up with `force`); a placeholder reaches nobody.
    #[test]
    fn the_brokers_positions_place_each_message() {
        let hub = shared_hub();
        // What a join reads first: the room's epoch and newest position.
        let top = BrokerPage {
            epoch: "E1".into(),
            top: 40,
            after: u64::MAX,
            messages: Vec::new(),
        };
        hub.fill("r", top);
        let (mut s, joined) = hub.join_as("r".into(), true, true, &Start::Live).unwrap();
        assert_eq!((joined.position, joined.epoch.as_ref()), (40, "E1"));
        assert!(matches!(
            deliver(&hub, &at("E1", 41), b"41"),
            Delivered::Appended(_)
        ));
        assert_eq!(
            deliver(&hub, &at("E1", 41), b"again"),
            Delivered::Placed(Placed::Duplicate)
        );
        assert_eq!(
            deliver(&hub, &at("E1", 44), b"44"),
            Delivered::Placed(Placed::Gap { after: 41 })
        );
        let placeholder = Sequenced {
            placeholder: true,
            ..at("E1", 42)
        };
        assert!(matches!(
            deliver(&hub, &placeholder, b"had"),
            Delivered::Appended(_)
        ));
        let forced = Sequenced {
            force: true,
            ..at("E1", 44)
        };
        assert!(matches!(
            deliver(&hub, &forced, b"44"),
            Delivered::Appended(_)
        ));
        // The placeholder stands for a message the members from before
        // this generation of the log had (none here: it is sent).
        assert_eq!(
            payloads(take(&mut s)),
            [b"41".to_vec(), b"had".to_vec(), b"44".to_vec()]
        );
        // Nobody resumes from before the positions given up.
        let since = |position| Start::Since {
            epoch: "E1".into(),
            position,
        };
        for (position, recovered) in [(42, false), (43, false), (44, true)] {
            let (_, back) = hub.join_at("r".into(), true, &since(position)).unwrap();
            assert_eq!(back.recovered, Some(recovered), "since {position}");
        }
        // Another epoch: which is the broker's now is for a read to say.
        assert_eq!(
            deliver(&hub, &at("E2", 1), b"new"),
            Delivered::Placed(Placed::Gap { after: 44 })
        );
        let moved = BrokerPage {
            epoch: "E2".into(),
            top: 0,
            after: 0,
            messages: Vec::new(),
        };
        hub.fill("r", moved);
        // A client told positions is closed to resume; a stale message of
        // the old epoch goes nowhere.
        assert_eq!(s.member.ending(), Some(Ending::Moved));
        let stale = Sequenced {
            force: true,
            ..at("E1", 45)
        };
        assert_eq!(
            deliver(&hub, &stale, b"old"),
            Delivered::Placed(Placed::Duplicate)
        );
        assert!(matches!(
            deliver(&hub, &at("E2", 1), b"new"),
            Delivered::Appended(_)
        ));
    }

    /// Takes everything due, returning the positions from the marks.
    fn take_positions(s: &mut Subscription) -> Vec<u64> {
        take_each(s, |_, m| m.position())
    }

    /// A broker numbering all rooms in one sequence (NATS JetStream): a
    /// room's positions have gaps, and each message names the room's
    /// previous position. A message follows the log when that is the log's
    /// newest; a client resumes from any position the room had, and from
    /// no other.
    #[test]
    fn positions_with_gaps_follow_the_rooms_previous_one() {
        let hub = shared_hub();
        let after = |position, previous| Sequenced {
            previous,
            ..at("J", position)
        };
        hub.fill(
            "r",
            BrokerPage {
                epoch: "J".into(),
                top: 10,
                after: u64::MAX,
                messages: Vec::new(),
            },
        );
        let (mut s, joined) = hub.join_as("r".into(), true, true, &Start::Live).unwrap();
        assert_eq!(joined.position, 10);
        assert!(
            matches!(deliver(&hub, &after(14, 10), b"14"), Delivered::Appended(p) if p.position == 14)
        );
        // 17 is missing before 20.
        assert_eq!(
            deliver(&hub, &after(20, 17), b"20"),
            Delivered::Placed(Placed::Gap { after: 14 })
        );
        assert_eq!(
            hub.read_gap("r", &after(20, 17)),
            Some(ReadPlan::after(14, "J"))
        );
        assert!(matches!(
            deliver(&hub, &after(17, 14), b"17"),
            Delivered::Appended(_)
        ));
        assert!(matches!(
            deliver(&hub, &after(20, 17), b"20"),
            Delivered::Appended(_)
        ));
        assert_eq!(
            deliver(&hub, &after(17, 14), b"17"),
            Delivered::Placed(Placed::Duplicate)
        );
        assert_eq!(take_positions(&mut s), [14, 17, 20]);
        let since = |position| Start::Since {
            epoch: "J".into(),
            position,
        };
        for (position, recovered, replay) in
            [(10, true, 3), (14, true, 2), (15, false, 0), (20, true, 0)]
        {
            let (_, back) = hub.join_at("r".into(), true, &since(position)).unwrap();
            assert_eq!(
                (back.recovered, back.replay),
                (Some(recovered), replay),
                "since {position}"
            );
        }
        // Given up: nobody resumes from before the message after the gap.
        let forced = Sequenced {
            force: true,
            ..after(30, 25)
        };
        assert!(matches!(
            deliver(&hub, &forced, b"30"),
            Delivered::Appended(_)
        ));
        assert_eq!(take_positions(&mut s), [30]);
        for (position, recovered) in [(20, false), (25, false), (30, true)] {
            let (_, back) = hub.join_at("r".into(), true, &since(position)).unwrap();
            assert_eq!(back.recovered, Some(recovered), "since {position}");
        }
        // A read from the broker goes before the log only if it ends at the
        // position before the log's first message, each after the other.
        let history = hub.history("r", 0, Some("J"), 10).unwrap();
        assert!(!history.complete);
        let numbered = |position, previous| Numbered {
            position,
            previous,
            frame: Frame::new(true, position.to_string().as_bytes()),
            sender: None,
            placeholder: false,
        };
        let fresh = shared_hub();
        fresh.fill(
            "r",
            BrokerPage {
                epoch: "J".into(),
                top: 10,
                after: 8,
                messages: vec![numbered(9, 8), numbered(10, 9)],
            },
        );
        fresh.fill(
            "r",
            BrokerPage {
                epoch: "J".into(),
                top: 10,
                after: 2,
                messages: vec![
                    numbered(3, 2),
                    numbered(6, 3),
                    numbered(8, 6),
                    numbered(9, 8),
                ],
            },
        );
        let page = fresh.history("r", 2, Some("J"), 10).unwrap();
        let positions: Vec<u64> = page.messages.iter().map(|(p, _)| *p).collect();
        assert_eq!((positions, page.complete), (vec![3, 6, 8, 9, 10], true));
        // A broken chain stays out.
        fresh.fill(
            "r",
            BrokerPage {
                epoch: "J".into(),
                top: 10,
                after: 0,
                messages: vec![numbered(1, 0), numbered(2, 0)],
            },
        );
        assert!(!fresh.history("r", 0, Some("J"), 10).unwrap().complete);
    }

    /// What the broker holds goes before the log (a client resuming from
    /// a position this node never held) and after its head, in order; a
    /// member that is not told positions carries on across a new epoch,
    /// from its head.
    #[test]
    fn a_fill_puts_older_messages_before_the_log_and_newer_after() {
        let hub = shared_hub();
        let (mut s, _) = hub.join_at("r".into(), true, &Start::Live).unwrap();
        deliver(&hub, &at("E1", 11), b"11");
        assert_eq!(payloads(take(&mut s)), [b"11".to_vec()]);
        let page = |epoch: &str, top, range: std::ops::RangeInclusive<u64>| BrokerPage {
            epoch: epoch.into(),
            top,
            after: range.start() - 1,
            messages: range
                .map(|position| Numbered {
                    position,
                    previous: position - 1,
                    frame: Frame::new(true, position.to_string().as_bytes()),
                    sender: None,
                    placeholder: false,
                })
                .collect(),
        };
        hub.fill("r", page("E1", 13, 5..=13));
        // The member was at the head: it gets what is newer only.
        assert_eq!(payloads(take(&mut s)), [b"12".to_vec(), b"13".to_vec()]);
        let since = Start::Since {
            epoch: "E1".into(),
            position: 4,
        };
        let (mut back, joined) = hub.join_at("r".into(), true, &since).unwrap();
        assert_eq!((joined.recovered, joined.replay), (Some(true), 9));
        assert_eq!(take(&mut back).len(), 9);
        let history = hub.history("r", 4, Some("E1"), 100).unwrap();
        assert!(history.complete);
        assert_eq!(history.messages.first().map(|(p, _)| *p), Some(5));
        // A page of another epoch starts the log afresh there.
        hub.fill("r", page("E2", 3, 2..=3));
        assert_eq!(payloads(take(&mut s)), [b"2".to_vec(), b"3".to_vec()]);
        assert_eq!(s.member.ending(), None);
        assert_eq!(hub.read_after("r", &since), None);
    }

    /// Which joins need the broker's history first: one into a room this
    /// node does not hear, or from a position its log does not hold (behind
    /// it, or ahead of it while messages are on their way).
    #[test]
    fn joins_read_the_broker_only_for_what_the_log_lacks() {
        let hub = shared_hub();
        let since = |position| Start::Since {
            epoch: "E1".into(),
            position,
        };
        let e1 = |after| Some(ReadPlan::after(after, "E1"));
        assert_eq!(hub.read_after("r", &Start::Live), Some(ReadPlan::TOP));
        assert_eq!(hub.read_after("r", &since(7)), e1(7));
        let (_s, _) = hub.join_at("r".into(), true, &Start::Live).unwrap();
        deliver(&hub, &at("E1", 5), b"5");
        deliver(&hub, &at("E1", 6), b"6");
        assert_eq!(hub.read_after("r", &Start::Live), None);
        assert_eq!(hub.read_after("r", &since(5)), None);
        assert_eq!(hub.read_after("r", &since(2)), e1(2));
        assert_eq!(hub.read_after("r", &since(9)), e1(6));
        assert_eq!(hub.read_after("r", &since(0)), e1(0));
        // Another epoch's position: whether the broker moved on is read,
        // unless the log was just filled.
        let other = Start::Since {
            epoch: "E0".into(),
            position: 1,
        };
        assert_eq!(hub.read_after("r", &other), e1(6));
        hub.fill(
            "r",
            BrokerPage {
                epoch: "E1".into(),
                top: 6,
                after: 6,
                messages: Vec::new(),
            },
        );
        assert_eq!(hub.read_after("r", &other), None);
        // Behind the log: read once; clients behind it from the same place
        // or later find what the broker had, one from further back reads.
        hub.fill(
            "r",
            BrokerPage {
                epoch: "E1".into(),
                top: 6,
                after: 3,
                messages: Vec::new(),
            },
        );
        assert_eq!(hub.read_after("r", &since(3)), None);
        assert_eq!(hub.read_after("r", &since(4)), None);
        assert_eq!(hub.read_after("r", &since(2)), e1(2));
        // Not hearing the broker: nothing to read, and nobody resumes.
        hub.hearing_others(false);
        assert_eq!(hub.read_after("r", &since(2)), None);
        let (_, refused) = hub.join_at("r".into(), true, &since(6)).unwrap();
        assert_eq!(refused.recovered, Some(false));
    }

    #[test]
    fn history_outlives_members_and_the_relay_wide_bound_sheds_the_quietest() {
        // Eight messages of 100 bytes, each with its entry, in two rooms
        // nobody is in.
        let (hub, gauges) = bounded_history(8 * (100 + ENTRY_BYTES) + 2 * KEPT_ROOM_BYTES);
        // Two rooms of 400 payload bytes each, nobody in them.
        for room in ["quiet", "busy"] {
            for _ in 0..4 {
                assert!(hub.publish(room, &Frame::new(false, &[0; 100])).position > 0);
            }
        }
        assert_eq!(hub.room_count(), 2);
        assert_eq!((gauges.messages.get(), gauges.bytes.get()), (8, 800));
        // Past the bound: "quiet", the room quiet longest, loses its history.
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..3 {
            hub.publish("busy", &Frame::new(false, &[0; 100]));
        }
        assert_eq!(gauges.bytes.get(), 700);
        // Nobody in it, nothing kept: it goes, epoch and all.
        assert!(hub.history("quiet", 0, None, 100).is_none());
        assert_eq!(hub.room_count(), 1);
        let page = hub.history("busy", 0, None, 100).unwrap();
        assert_eq!(
            (page.position, page.messages.len(), page.complete),
            (7, 7, true)
        );
    }

    fn bounded_history(total_bytes: u64) -> (Hub, HistoryGauges) {
        let gauges = HistoryGauges::default();
        let hub = hub(1000, OnOverflow::Disconnect).with_history(
            History {
                retention: Retention {
                    messages: 100,
                    bytes: 1 << 20,
                },
                ttl: Duration::from_secs(300),
                total_bytes,
            },
            gauges.clone(),
        );
        (hub, gauges)
    }

    /// Rooms joined and left once each, or published to once through the
    /// API, are kept for their epoch or history: each counts against the
    /// relay-wide bound, which sheds the quietest, so they cannot pile up.
    #[test]
    fn rooms_kept_without_members_count_against_the_bound() {
        let bound = 16 * KEPT_ROOM_BYTES;
        let (hub, _) = bounded_history(bound);
        for i in 0..10_000 {
            let s = hub.join(format!("r{i}").into(), true).unwrap();
            hub.leave(&s);
        }
        assert!(hub.room_count() <= 16, "{} rooms kept", hub.room_count());
        assert!(hub.room("r9999").is_some(), "the newest stays");
        let (hub, gauges) = bounded_history(bound);
        for i in 0..10_000 {
            hub.publish(&format!("p{i}"), &Frame::new(false, b"x"));
        }
        assert!(hub.room_count() <= 16, "{} rooms kept", hub.room_count());
        assert!(gauges.messages.get() <= 16);
        assert_eq!(gauges.kept_rooms.get(), hub.room_count() as i64);
    }

    /// At `max_rooms`, a room nobody is in gives way to a client's new one.
    #[test]
    fn rooms_kept_without_members_never_keep_clients_out() {
        let hub = with_history(
            Hub::new(
                LagLimits {
                    messages: 100,
                    bytes: 1 << 20,
                    on_overflow: OnOverflow::Disconnect,
                },
                100,
                Gauge::default(),
            ),
            10,
        );
        for i in 0..100 {
            let s = hub.join(format!("r{i}").into(), true).unwrap();
            hub.publish(&format!("r{i}"), &Frame::new(false, b"x"));
            hub.leave(&s);
        }
        assert_eq!(hub.room_count(), 100);
        let _in = hub
            .join("legit".into(), true)
            .expect("a kept room gave way");
        let kept = (0..100)
            .filter(|i| hub.room(&format!("r{i}")).is_some())
            .count();
        assert_eq!(kept, 99, "one kept room went");
        assert_eq!(hub.room_count(), 100);
        // Rooms with members never give way.
        let full = (0..100)
            .map(|i| hub.join(format!("m{i}").into(), true))
            .take_while(Result::is_ok)
            .count();
        assert_eq!(full, 99);
        assert_eq!(hub.room_count(), 100);
    }

    /// What slow readers needed stops counting once they caught up: the
    /// history left is held to the bound again.
    #[test]
    fn history_is_bound_again_once_readers_caught_up() {
        let bound = 10_000 + 2 * KEPT_ROOM_BYTES;
        let (hub, gauges) = bounded_history(bound);
        let mut slow = hub.join("slow".into(), true).unwrap();
        for _ in 0..50 {
            hub.publish("slow", &Frame::new(false, &[0; 1000]));
        }
        take(&mut slow);
        hub.ping_all();
        for _ in 0..4 {
            hub.publish("other", &Frame::new(false, &[0; 1000]));
        }
        assert!(
            gauges.bytes.get() as u64 <= bound,
            "{} bytes of history held past the bound {bound}",
            gauges.bytes.get()
        );
    }

    /// The history route answers nothing for positions of another epoch.
    #[test]
    fn history_of_another_epoch_is_empty_and_incomplete() {
        let hub = with_history(hub(100, OnOverflow::Disconnect), 100);
        hub.publish("r", &Frame::new(false, b"one"));
        let page = hub.history("r", 0, Some("other"), 10).unwrap();
        assert!(page.messages.is_empty() && !page.complete);
        let page = hub.history("r", 0, Some(&page.epoch), 10).unwrap();
        assert_eq!((page.messages.len(), page.complete), (1, true));
    }

    /// An operator closing a room with history closes its clients and
    /// keeps the room, its history and epoch, for those that come back.
    #[test]
    fn closing_a_room_with_history_keeps_its_history() {
        let hub = with_history(hub(100, OnOverflow::Disconnect), 100);
        let (s, joined) = hub.join_at("r".into(), true, &Start::Live).unwrap();
        hub.publish("r", &Frame::new(false, b"one"));
        assert_eq!(hub.close_room("r", &Bytes::from_static(b"")), Some(1));
        assert!(s.member.is_closed());
        hub.leave(&s);
        let page = hub.history("r", 0, Some(&joined.epoch), 10).unwrap();
        assert_eq!((page.messages.len(), page.complete), (1, true));
        assert_eq!(hub.close_room("r", &Bytes::from_static(b"")), Some(0));
        assert_eq!(hub.close_room("none", &Bytes::from_static(b"")), None);
    }

    #[test]
    fn publishers_compress_while_the_room_has_compressing_members() {
        let done = Arc::new(AtomicUsize::new(0));
        let count = done.clone();
        let hub = hub(8, OnOverflow::Disconnect).with_compression(
            Compression {
                level: 1,
                min_size: 10,
            },
            Box::new(move |_| {
                count.fetch_add(1, Ordering::Relaxed);
            }),
        );
        let text = b"compress me, compress me, compress me, compress me";
        let mut plain = join(&hub);
        publish(&hub, &plain, text);
        assert_eq!(done.load(Ordering::Relaxed), 0, "nobody compresses yet");

        let mut deflating = join(&hub);
        hub.compresses(&deflating);
        hub.compresses(&deflating); // counted once
        publish(&hub, &plain, text);
        publish(&hub, &plain, b"short");
        // Compressed by the publish itself, before anyone took it.
        assert_eq!(done.load(Ordering::Relaxed), 1);
        let got = take(&mut deflating);
        let compressed = got[0].deflated(Window::Full, |_| panic!("compressed again"));
        assert_eq!(compressed[0], 0xC1, "final, RSV1, text");
        assert_eq!(take(&mut plain).len(), 3);

        // Once it has left, publishers stop compressing.
        hub.leave(&deflating);
        publish(&hub, &plain, text);
        assert_eq!(done.load(Ordering::Relaxed), 1);
        // And an evicted member is uncounted as well.
        let stalled = join(&hub);
        hub.compresses(&stalled);
        stalled.member.set_socket_full(true);
        for _ in 0..12 {
            publish(&hub, &plain, text);
            take(&mut plain);
        }
        assert!(stalled.member.is_closed(), "evicted");
        let before = done.load(Ordering::Relaxed);
        publish(&hub, &plain, text);
        assert_eq!(done.load(Ordering::Relaxed), before);
    }

    #[test]
    fn publish_appends_once_and_every_member_takes_the_same_frame() {
        let hub = hub(4, OnOverflow::Disconnect);
        let mut a = join(&hub);
        let mut b = join(&hub);
        let published = hub.publish("", &Frame::new(false, b"hello"));
        assert_eq!(
            published,
            Published {
                queued: 2,
                dropped: 0,
                position: 1,
                epoch: Some(a.room.epoch().clone()),
            }
        );
        assert_eq!(a.room.log_len(), 1);
        let (ra, rb) = (take(&mut a), take(&mut b));
        // Same allocation: fan-out shares the encoded frame.
        assert_eq!(ra[0].wire().as_ptr(), rb[0].wire().as_ptr());
        assert_eq!(ra[0].payload(), b"hello");
        assert!(!ra[0].is_text());
        assert!(take(&mut a).is_empty());
    }

    #[test]
    fn a_sender_without_echo_skips_only_its_own_messages() {
        let hub = hub(8, OnOverflow::Disconnect);
        let mut sender = join(&hub);
        let mut other = join(&hub);
        let p = hub.publish_to(
            &sender.room,
            &Frame::new(true, b"mine"),
            Some(&sender),
            None,
        );
        assert_eq!(p.queued, 1);
        publish(&hub, &other, b"theirs");
        let payloads = |v: Vec<Frame>| v.iter().map(|f| f.payload().to_vec()).collect::<Vec<_>>();
        assert_eq!(payloads(take(&mut sender)), [b"theirs".to_vec()]);
        assert_eq!(
            payloads(take(&mut other)),
            [b"mine".to_vec(), b"theirs".to_vec()]
        );
    }

    #[test]
    fn a_slow_member_past_its_limits_is_evicted_and_only_it() {
        let hub = hub(4, OnOverflow::Disconnect);
        let slow = join(&hub);
        slow.member.set_socket_full(true);
        let mut fast = join(&hub);
        let mut dropped = 0;
        for i in 0..6u8 {
            dropped += publish(&hub, &fast, &[i]).dropped;
            assert_eq!(take(&mut fast).len(), 1);
        }
        // Checked after the fifth message: five were due to it.
        assert_eq!(slow.member.ending(), Some(Ending::Evicted));
        assert_eq!(dropped, 5);
        assert!(!fast.member.is_closed());
        assert_eq!(hub.len(), 1);
        assert_eq!(publish(&hub, &fast, b"x").queued, 1);
    }

    #[test]
    fn drop_oldest_jumps_a_slow_member_forward_counting_what_it_skips() {
        let hub = hub(4, OnOverflow::DropOldest);
        let mut slow = join(&hub);
        slow.member.set_socket_full(true);
        let mut dropped = 0;
        for i in 0..5u8 {
            dropped += publish(&hub, &slow, &[i]).dropped;
        }
        assert_eq!(dropped, 1);
        let got: Vec<u8> = take(&mut slow).iter().map(|f| f.payload()[0]).collect();
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!(hub.len(), 1);
    }

    #[test]
    fn drop_newest_keeps_what_fits_then_jumps_to_the_head() {
        let hub = hub(4, OnOverflow::DropNewest);
        let mut slow = join(&hub);
        slow.member.set_socket_full(true);
        let mut dropped = 0;
        for i in 0..7u8 {
            dropped += publish(&hub, &slow, &[i]).dropped;
        }
        let mut got = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Taken::Frames { dropped: d, .. }) =
            slow.poll_take(&mut cx, 1000, usize::MAX, |f, _| got.push(f.payload()[0]))
        {
            dropped += d;
        }
        // Checked at the fifth: it keeps four; the fifth to seventh go.
        assert_eq!(got, [0, 1, 2, 3]);
        assert_eq!(dropped, 3);
        publish(&hub, &slow, &[7]);
        assert_eq!(take(&mut slow)[0].payload(), [7]);
    }

    #[test]
    fn a_member_whose_writer_has_not_run_is_waited_for_not_evicted() {
        let hub = hub(4, OnOverflow::Disconnect);
        let mut behind = join(&hub);
        let mut backlog = Backlog::default();
        for i in 0..5u8 {
            hub.publish_to(
                &behind.room,
                &Frame::new(true, &[i]),
                None,
                Some(&mut backlog),
            );
        }
        // Past its limits, but its socket takes bytes: the publisher waits.
        assert!(!backlog.is_empty());
        assert!(!hub.caught_up(&mut backlog));
        assert_eq!(take(&mut behind).len(), 5);
        assert!(hub.caught_up(&mut backlog));
        assert!(!behind.member.is_closed());
        // Twice the limits is the hard bound, whatever the socket.
        for i in 0..9u8 {
            hub.publish_to(&behind.room, &Frame::new(true, &[i]), None, None);
        }
        assert_eq!(behind.member.ending(), Some(Ending::Evicted));
    }

    #[test]
    fn every_sender_waits_for_a_reader_behind_not_only_the_one_that_found_it() {
        let hub = hub(16, OnOverflow::Disconnect);
        let mut reader = join(&hub);
        let senders: Vec<Subscription> = (0..8)
            .map(|_| hub.join("".into(), false).unwrap())
            .collect();
        let mut backlogs: Vec<Backlog> = (0..8).map(|_| Backlog::default()).collect();
        // Each sender bursts until it is told to wait, before the reader's
        // writer runs at all: together they must not take it to the hard
        // bound (32 behind).
        for (s, b) in senders.iter().zip(&mut backlogs) {
            for i in 0..32u8 {
                hub.publish_to(&s.room, &Frame::new(true, &[i]), None, Some(&mut *b));
                if !b.is_empty() {
                    break;
                }
            }
            assert!(!b.is_empty());
        }
        assert!(!reader.member.is_closed());
        assert!(take(&mut reader).len() <= 16 + 16 / 4 + 8);
        assert!(backlogs.iter_mut().all(|b| hub.caught_up(b)));
    }

    #[test]
    fn the_log_keeps_at_most_twice_the_limits_and_a_quiet_room_nothing() {
        let hub = hub(8, OnOverflow::DropOldest);
        let stalled = join(&hub);
        stalled.member.set_socket_full(true);
        let mut reader = join(&hub);
        for i in 0..100u8 {
            publish(&hub, &reader, &[i]);
            assert!(
                reader.room.log_len() <= 2 * 8 + 8 / 4,
                "{}",
                reader.room.log_len()
            );
        }
        take(&mut reader);
        hub.ping_all();
        // The stalled member was moved forward and holds what it is due.
        assert!(reader.room.log_len() <= 8 + 8 / 4);
        hub.leave(&stalled);
        hub.ping_all();
        assert_eq!(reader.room.log_len(), 0);
    }

    #[test]
    fn members_that_slept_and_left_leave_nothing_behind() {
        let hub = hub(8, OnOverflow::Disconnect);
        let mut cx = Context::from_waker(Waker::noop());
        let _stays = join(&hub);
        // No message for a long time, while clients come, wait and go.
        for _ in 0..10_000 {
            let mut s = join(&hub);
            assert!(s.poll_take(&mut cx, 8, usize::MAX, |_, _| {}).is_pending());
            hub.leave(&s);
        }
        let state = _stays.room.lock();
        // Compacted whenever it passes twice the members (and a few).
        assert!(state.sleepers.len() < 32, "{}", state.sleepers.len());
        assert!(state.members.iter().all(|(_, r)| r.waker.is_none()));
    }

    #[test]
    fn a_busy_room_lets_go_of_what_everyone_took_without_pings() {
        let hub = hub(64, OnOverflow::Disconnect);
        let mut a = join(&hub);
        let mut b = join(&hub);
        for i in 0..1000u32 {
            publish(&hub, &a, &i.to_le_bytes());
            take(&mut a);
            take(&mut b);
            // Trimmed at every quarter of the limits appended.
            assert!(a.room.log_len() <= 64 / 4, "{}", a.room.log_len());
        }
    }

    #[test]
    fn a_senders_own_skipped_messages_do_not_count_towards_its_lag() {
        let hub = hub(4, OnOverflow::Disconnect);
        // Sends without echo, reads nothing, socket full: only what others
        // send counts against it.
        let sender = join(&hub);
        sender.member.set_socket_full(true);
        let mut other = join(&hub);
        for i in 0..100u8 {
            hub.publish_to(&sender.room, &Frame::new(true, &[i]), Some(&sender), None);
            take(&mut other);
        }
        assert!(!sender.member.is_closed());
        // Only what `other` had not taken at the last check is kept.
        assert!(other.room.log_len() <= 1);
    }

    #[test]
    fn pings_come_first_and_an_ended_membership_reports_only_that() {
        let hub = hub(4, OnOverflow::Disconnect);
        let mut a = join(&hub);
        let mut cx = Context::from_waker(Waker::noop());
        publish(&hub, &a, b"x");
        hub.ping_all();
        assert_eq!(
            a.poll_take(&mut cx, 10, 100, |_, _| {}),
            Poll::Ready(Taken::Ping)
        );
        assert!(matches!(
            a.poll_take(&mut cx, 10, 100, |_, _| {}),
            Poll::Ready(Taken::Frames { messages: 1, .. })
        ));
        assert!(a.poll_take(&mut cx, 10, 100, |_, _| {}).is_pending());
        let drained = hub.drain();
        assert_eq!(drained.len(), 1);
        // Draining hands the members over; until closed they still hear.
        assert_eq!(publish(&hub, &a, b"y").queued, 1);
        drained.iter().for_each(|m| m.close(Ending::Shutdown));
        assert_eq!(
            a.poll_take(&mut cx, 10, 100, |_, _| {}),
            Poll::Ready(Taken::Closed)
        );
        assert_eq!(a.member.ending(), Some(Ending::Shutdown));
        assert_eq!(join(&hub).member.ending(), Some(Ending::Shutdown));
    }

    #[test]
    fn leaving_hands_over_what_is_due_and_is_idempotent() {
        let hub = hub(8, OnOverflow::Disconnect);
        let s = join(&hub);
        publish(&hub, &s, b"a");
        publish(&hub, &s, b"b");
        let mut got = Vec::new();
        let left = hub.leave_taking(&s, |f, _| got.push(f.clone()));
        assert_eq!(
            left,
            Left {
                sent: 2,
                dropped: 0
            }
        );
        assert_eq!(got.len(), 2);
        hub.leave(&s);
        assert!(hub.is_empty());
        assert_eq!(hub.room_count(), 0);
        assert!(s.member.is_closed());
    }

    #[test]
    fn rooms_are_isolated_and_go_when_empty() {
        let rooms_active = Gauge::default();
        let limits = LagLimits {
            messages: 8,
            bytes: 1 << 20,
            on_overflow: OnOverflow::Disconnect,
        };
        let hub = Hub::new(limits, 2, rooms_active.clone());
        let mut a1 = hub.join("a".into(), true).unwrap();
        let mut a2 = hub.join("a".into(), true).unwrap();
        let mut b = hub.join("b".into(), true).unwrap();
        assert_eq!(rooms_active.get(), 2);
        // A third room is refused; joining an existing one is not.
        assert_eq!(hub.join("c".into(), true).err(), Some(RoomsFull));
        let mut a3 = hub.join("a".into(), false).unwrap();

        let m = Frame::new(true, b"to a");
        // Publish-only members hear nothing; the sender can be skipped.
        assert_eq!(hub.publish_to(&a1.room, &m, Some(&a1), None).queued, 1);
        assert_eq!(take(&mut a2).len(), 1);
        assert!(take(&mut a1).is_empty() && take(&mut b).is_empty() && take(&mut a3).is_empty());
        assert_eq!(hub.publish("nowhere", &m), Published::default());
        assert_eq!(
            hub.rooms(),
            vec![(RoomName::from("a"), 2), (RoomName::from("b"), 1)]
        );

        hub.leave(&b);
        assert_eq!(rooms_active.get(), 1);
        assert!(hub.join("c".into(), true).is_ok());
        assert_eq!(hub.room_count(), 2);
        for s in [&a1, &a2, &a3] {
            hub.leave(s);
        }
        assert_eq!(rooms_active.get(), 1);
        assert_eq!(hub.close_room("c", &Bytes::from_static(b"")), Some(1));
        assert_eq!(rooms_active.get(), 0);
    }

    /// Several threads join, leave, publish, take, fall behind (and get
    /// evicted), ping and close rooms at once, in random order, for
    /// thousands of rounds. Each room's appends are recorded in order
    /// beside the hub: the harness holds a lock per room name around joins,
    /// leaves, publishes and closes of that room, only to know the truth;
    /// takes, lag checks, wake-ups, pings and other rooms run concurrently.
    /// Every member must receive exactly the messages published in its room
    /// from its join to its leave or its room's close (its own left out
    /// when it skips them), in order; an evicted one, a prefix of them.
    #[test]
    fn concurrent_joins_leaves_publishes_evictions_and_closes_keep_order_and_exactly_once() {
        const THREADS: u64 = 4;
        const ROUNDS: usize = 20_000;
        const ROOMS: [&str; 3] = ["a", "b", "c"];
        type Truth = Arc<Mutex<Vec<(ClientId, u64)>>>;
        struct Mine {
            sub: Subscription,
            skip_own: bool,
            truth: Truth,
            joined_at: usize,
            got: Vec<(ClientId, u64)>,
        }
        fn decode(f: &Frame) -> (ClientId, u64) {
            let p = f.payload();
            let word = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().unwrap());
            (word(0), word(8))
        }
        fn slot_of(m: &Mine) -> usize {
            ROOMS
                .iter()
                .position(|n| **n == **m.sub.room.name())
                .unwrap()
        }
        /// Leaves (under the room's harness lock) and checks what it got.
        fn leave_and_check(hub: &Hub, slots: &[Mutex<Truth>], mut m: Mine) -> usize {
            let slot = lock(&slots[slot_of(&m)]);
            hub.leave_taking(&m.sub, |f, _| m.got.push(decode(f)));
            let upto = lock(&m.truth).len();
            drop(slot);
            let due: Vec<(ClientId, u64)> = lock(&m.truth)[m.joined_at..upto]
                .iter()
                .filter(|(sender, _)| !(m.skip_own && *sender == m.sub.id))
                .copied()
                .collect();
            match m.sub.member.ending() {
                Some(Ending::Evicted) => assert_eq!(m.got[..], due[..m.got.len()]),
                ending => assert_eq!(m.got, due, "member {} ({ending:?})", m.sub.id),
            }
            m.got.len()
        }
        let limits = LagLimits {
            messages: 16,
            bytes: 1 << 20,
            on_overflow: OnOverflow::Disconnect,
        };
        let hub = Arc::new(Hub::new(limits, 0, Gauge::default()));
        let slots: Arc<Vec<Mutex<Truth>>> =
            Arc::new(ROOMS.iter().map(|_| Mutex::default()).collect());
        let evictions = Arc::new(AtomicUsize::new(0));
        let checked = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(std::sync::Barrier::new(THREADS as usize));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (hub, slots) = (hub.clone(), slots.clone());
                let (evictions, checked, start) =
                    (evictions.clone(), checked.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut rng = fastrand::Rng::with_seed(t + 1);
                    let mut mine: Vec<Mine> = Vec::new();
                    let mut seq = 0;
                    let mut cx = Context::from_waker(Waker::noop());
                    for _ in 0..ROUNDS {
                        let r = rng.usize(..ROOMS.len());
                        match rng.u32(..100) {
                            0..15 if mine.len() < 8 => {
                                let slot = lock(&slots[r]);
                                let sub = hub.join(ROOMS[r].into(), true).unwrap();
                                let truth = slot.clone();
                                let joined_at = lock(&truth).len();
                                drop(slot);
                                let skip_own = rng.bool();
                                mine.push(Mine {
                                    sub,
                                    skip_own,
                                    truth,
                                    joined_at,
                                    got: Vec::new(),
                                });
                            }
                            15..25 if !mine.is_empty() => {
                                let m = mine.swap_remove(rng.usize(..mine.len()));
                                if m.sub.member.ending() == Some(Ending::Evicted) {
                                    evictions.fetch_add(1, Ordering::Relaxed);
                                }
                                checked
                                    .fetch_add(leave_and_check(&hub, &slots, m), Ordering::Relaxed);
                            }
                            25..75 if !mine.is_empty() => {
                                let m = &mine[rng.usize(..mine.len())];
                                let slot = lock(&slots[slot_of(m)]);
                                // An evicted client, or one whose room was
                                // closed, publishes nothing more.
                                if !m.sub.member.is_closed() {
                                    seq += 1;
                                    let id = m.sub.id;
                                    let payload =
                                        [id.to_le_bytes(), u64::to_le_bytes(seq)].concat();
                                    let skip = m.skip_own.then_some(&m.sub);
                                    hub.publish_to(
                                        &m.sub.room,
                                        &Frame::new(false, &payload),
                                        skip,
                                        None,
                                    );
                                    lock(&slot).push((id, seq));
                                }
                                drop(slot);
                            }
                            75..80 if !mine.is_empty() => {
                                let m = &mine[rng.usize(..mine.len())];
                                m.sub.member.set_socket_full(rng.bool());
                            }
                            80..82 => {
                                let mut slot = lock(&slots[r]);
                                hub.close_room(ROOMS[r], &Bytes::from_static(b""));
                                *slot = Truth::default();
                            }
                            82..85 => hub.ping_all(),
                            _ => {
                                for m in &mut mine {
                                    let got = &mut m.got;
                                    while let Poll::Ready(Taken::Frames { .. } | Taken::Ping) =
                                        m.sub.poll_take(&mut cx, 8, usize::MAX, |f, _| {
                                            got.push(decode(f))
                                        })
                                    {}
                                }
                            }
                        }
                    }
                    for m in mine {
                        checked.fetch_add(leave_and_check(&hub, &slots, m), Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(hub.is_empty());
        assert_eq!(hub.room_count(), 0);
        // The run did exercise evictions, and checked many deliveries.
        assert!(evictions.load(Ordering::Relaxed) > 0);
        assert!(checked.load(Ordering::Relaxed) > 50_000, "{checked:?}");
    }
}
