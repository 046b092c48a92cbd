//! One client's life after the upgrade: reading, writing and closing.
//!
//! Each client is driven by a single task that polls two things at once:
//! its socket for incoming frames, and its [`Subscription`] for the
//! messages in its room's log past its cursor, keepalive pings and the end
//! of its membership (the hub closes it for eviction or shutdown). One task
//! instead of a reader and a writer halves the per-client footprint and
//! needs no lock around the socket.
//!
//! Reading: bytes are read into a buffer shared by every client on the
//! thread and parsed by [`wire::Reader`], which keeps per-client bytes
//! only for a frame still arriving, so an idle client holds no read buffer.
//! A complete data message is encoded once as the frame everyone will be
//! sent, and published.
//!
//! Writing: the `Outbox` takes the log from its cursor to the head in
//! batches, packs small frames into one buffer and writes each batch with
//! one vectored write, so a busy client gets many frames per syscall and an
//! idle one gets each message at once. Pongs (one per ping, the 16 latest
//! at most) and keepalive pings go out at the next frame boundary, ahead of
//! data. While a batch is partly written the cursor stays put: that is what
//! lets a stalled client fall behind and trip the slow-consumer policy;
//! `client.write_timeout` drops a socket that takes nothing at all.
//!
//! Closing: the client leaves the hub, what was due to it goes out, then
//! the Close; if the relay started the close it reads on (discarding) until the
//! peer's Close, so the peer sees the code and the connection ends with FIN.
//!
//! It knows the relay, the wire format and its own settings
//! ([`ConnectionContext`]); nothing of the cluster, the HTTP layer or the
//! configuration file.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::net::SocketAddr;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::hub::{Backlog, Ending, Hub, Joined, Member, Role, Subscription, Taken};
use crate::limits::{OnRateExceeded, Permit, RateLimit};
use crate::log::Mark;
use crate::metrics::{DisconnectReason, DropReason};
use crate::relay::Relay;
use crate::upgrade::Client;
use crate::wire::{self, Frame, Incoming, Reader, Violation, Window};

/// Most messages, and most payload bytes (or one message), taken from the
/// log for one flush. Bounds what a client holds beyond the log, and keeps
/// one client from monopolising its worker thread.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Batches written, and reads made, per poll before the task yields to
/// others on its thread.
const MAX_BATCHES_PER_POLL: usize = 4;
const MAX_READS_PER_POLL: usize = 4;

/// Pongs waiting for a frame boundary; past this the oldest are dropped
/// (RFC 6455 allows answering only the latest ping), so a ping flood
/// cannot grow memory.
const MAX_PENDING_PONGS: usize = 16;

/// Frames up to this size are copied into one buffer; larger ones are
/// written from the shared frame itself (copying would cost more than the
/// extra iovec).
const COPY_BELOW: usize = 1024;

/// Chunks per vectored write (Linux allows 1024; more gains nothing).
const MAX_IOVECS: usize = 64;

/// Chunk and pong capacity kept while a client is idle.
const KEEP_BATCH: usize = 16;

/// Size of the read buffer each worker thread shares among its clients.
const READ_BUFFER: usize = 64 * 1024;

thread_local! {
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUFFER].into_boxed_slice());
}

/// What one client needs from the server around it.
pub struct ConnectionContext {
    /// Where its messages go, and the hub it is a member of.
    pub relay: Arc<Relay>,
    /// Cancelled when the server starts shutting down: clients get 1001.
    /// Clients are woken by the hub closing their memberships, not by
    /// polling this token: a shared token's waiter list is a lock every
    /// client would take on every wake-up.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown timeout has passed: clients are dropped.
    pub force: CancellationToken,
    /// How long a client being disconnected gets to finish the close handshake.
    pub close_timeout: Duration,
    /// How long a client's socket may accept nothing while there is
    /// something to send it; `None`: no limit.
    pub write_timeout: Option<Duration>,
    /// Largest message (and frame) a client may send.
    pub max_message_size: usize,
    /// Longest one message may take to arrive; `None`: no limit.
    pub message_timeout: Option<Duration>,
    /// Messages per second and burst per client (0 per second: no limit).
    pub rate_limit: (u32, u32),
    pub on_rate_exceeded: OnRateExceeded,
    /// Server pings and the idle timeout; `None` when pings are off.
    pub keepalive: Option<KeepAlive>,
}

/// A coarse clock that advances once per ping interval, when the server
/// pings every client through the hub. A client remembers the tick at which
/// it last heard from its peer; checking for idleness is one atomic load,
/// and no client needs a timer of its own.
pub struct KeepAlive {
    /// How often the server pings and the clock advances.
    pub interval: Duration,
    tick: AtomicU32,
    /// Whole ping intervals of silence after which a client is idle.
    idle_ticks: u32,
}

impl KeepAlive {
    pub fn new(ping_interval: Duration, idle_timeout: Duration) -> Option<Self> {
        if ping_interval.is_zero() {
            return None;
        }
        let ticks = idle_timeout.as_secs_f64() / ping_interval.as_secs_f64();
        Some(Self {
            interval: ping_interval,
            tick: AtomicU32::new(0),
            idle_ticks: (ticks.ceil() as u32).max(1),
        })
    }

    /// Called by the server once per ping interval, before it pings.
    pub fn advance(&self) {
        self.tick.fetch_add(1, Ordering::Relaxed);
    }

    fn now(&self) -> u32 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Silent for more than `idle_ticks` whole intervals: between
    /// `idle_timeout` and one ping interval more.
    fn is_idle(&self, last_heard: u32) -> bool {
        self.now().wrapping_sub(last_heard) > self.idle_ticks
    }
}

/// What ended a client's active phase.
enum Event {
    /// The peer sent Close (with this code, if any).
    PeerClosed(Option<u16>),
    /// The peer broke the protocol.
    Violation(Violation),
    /// The connection ended without a close frame.
    Eof(Option<io::Error>),
    /// The hub dropped this client: it fell past its limits with its
    /// socket full.
    Evicted,
    /// Its socket accepted nothing for `client.write_timeout`.
    WriteTimeout,
    /// It sent faster than its rate limit allows.
    RateLimited,
    /// It sent nothing, not even a pong, for `client.idle_timeout`.
    IdleTimeout,
    /// Its JWT expired.
    TokenExpired,
    /// A subscriber sent a message.
    NotPermitted,
    /// A message took longer than `limits.message_timeout` to arrive.
    MessageTimeout,
    /// Closed through the HTTP API, with this Close frame.
    ClosedByOperator(Bytes),
    Shutdown,
    /// Its room's positions moved to another epoch (it is told positions).
    EpochMoved,
    WriteFailed(io::Error),
}

/// Drives an upgraded client, already a hub member, until it is gone.
/// Counts it in the metrics on the way in, and removes it from the hub and
/// counts it out exactly once on the way out.
///
/// Everything the client needs is one [`Session`], owned by the returned
/// future and stored in it once: an idle client's task is most of what an
/// idle client costs, and an `async fn`'s arguments and locals would each
/// keep a place of their own in it for its whole life.
pub fn serve<S>(
    io: S,
    read_ahead: Bytes,
    client: Client,
    subscription: Subscription,
    joined: &Joined,
    cx: Arc<ConnectionContext>,
) -> impl Future<Output = ()> + use<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    cx.relay.metrics.connected();
    debug!(peer = %client.peer, ip = %client.ip, id = subscription.id, "client connected");
    let positions = client.positions;
    let mut session = Session::new(io, client, subscription, &cx);
    session.reader.preload(&read_ahead);
    if positions {
        session.outbox.chunks.push_back(joined_notice(joined));
    }
    async move {
        let event = poll_fn(|task| session.poll_active(task, &cx)).await;
        // Boxed: the close phase runs once per client, and its futures,
        // timers and locals would otherwise be part of every idle client's
        // task state.
        Box::pin(session.finish(event, &cx)).await;
    }
}

/// One upgraded client's state.
struct Session<S> {
    io: S,
    subscription: Subscription,
    /// Of the admitted [`Client`], what is needed after the start.
    peer: SocketAddr,
    role: Role,
    /// Its place under the connection caps, held for its lifetime; it
    /// also holds the client's address (behind any trusted proxy).
    permit: Permit,
    reader: Reader,
    outbox: Outbox,
    rate: Option<Box<RateLimit>>,
    /// The keepalive tick at which the peer was last heard from.
    last_heard: u32,
    /// Writers this client's last publish got ahead of.
    backlog: Backlog,
    /// When the message now arriving began to.
    message_began: Option<std::time::Instant>,
    /// A timer only for clients whose credentials expire.
    expiry: Option<Pin<Box<Sleep>>>,
    /// Without echo, a sender that receives skips its own messages.
    skips_own: bool,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(io: S, client: Client, subscription: Subscription, cx: &ConnectionContext) -> Self {
        let expiry = client.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep(left))
        });
        let skips_own = !client.echo && client.role.receives();
        Self {
            io,
            subscription,
            peer: client.peer,
            role: client.role,
            permit: client.permit,
            reader: Reader::new(cx.max_message_size, client.deflate.is_some()),
            outbox: Outbox::new(client.deflate, client.positions),
            rate: RateLimit::new(cx.rate_limit.0, cx.rate_limit.1).map(Box::new),
            last_heard: cx.keepalive.as_ref().map_or(0, KeepAlive::now),
            backlog: Backlog::default(),
            message_began: None,
            expiry,
            skips_own,
        }
    }

    /// Reads, publishes and writes until something ends the client.
    fn poll_active(&mut self, task: &mut Context<'_>, cx: &ConnectionContext) -> Poll<Event> {
        // Dropped from the hub: evicted as a slow consumer, or shutdown.
        if self.subscription.member.is_closed() {
            return Poll::Ready(ended(&self.subscription.member));
        }
        if let Poll::Ready(stop) = self
            .outbox
            .pump(&mut self.io, &mut self.subscription, cx, task)
        {
            return Poll::Ready(match stop {
                Stop::Closed => ended(&self.subscription.member),
                Stop::Failed(e) => Event::WriteFailed(e),
                Stop::TimedOut => Event::WriteTimeout,
            });
        }
        if let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(task).is_ready()
        {
            return Poll::Ready(Event::TokenExpired);
        }
        // Publish nothing more until the writers the last publish got ahead
        // of have drained: they can write (or they would count as slow), so
        // they will, once this thread lets them run.
        if !self.backlog.is_empty() && !cx.relay.hub.caught_up(&mut self.backlog) {
            task.waker().wake_by_ref();
            return Poll::Pending;
        }
        let pongs = &mut self.outbox.pongs;
        let mut heard = false;
        let polled =
            poll_incoming(
                &mut self.io,
                &mut self.reader,
                task,
                &mut heard,
                |item| match item {
                    Incoming::Message(frame) => {
                        cx.relay.metrics.received(frame.payload().len());
                        if let Some(rate) = self.rate.as_mut()
                            && !rate.allow(std::time::Instant::now())
                        {
                            return match cx.on_rate_exceeded {
                                OnRateExceeded::Close => Step::End(Event::RateLimited),
                                OnRateExceeded::Drop => {
                                    cx.relay.metrics.dropped(DropReason::RateLimit, 1);
                                    Step::Go
                                }
                            };
                        }
                        if !self.role.sends() {
                            return Step::End(Event::NotPermitted);
                        }
                        let skip = self.skips_own.then_some(&self.subscription);
                        cx.relay.publish_from(
                            &self.subscription.room,
                            &frame,
                            skip,
                            Some(&mut self.backlog),
                        );
                        if self.backlog.is_empty() {
                            Step::Go
                        } else {
                            Step::Pause
                        }
                    }
                    Incoming::Ping(payload) => {
                        pongs.push(wire::pong_frame(&payload));
                        Step::Go
                    }
                    Incoming::Close(code) => Step::End(Event::PeerClosed(code)),
                },
            );
        if heard && let Some(k) = &cx.keepalive {
            self.last_heard = k.now();
        }
        if polled.is_pending() {
            // Checked as bytes arrive: what a client dribbling a message
            // does. (One that goes silent mid-message meets the idle timeout.)
            if heard && let Some(limit) = cx.message_timeout {
                match self.reader.mid_message() {
                    false => self.message_began = None,
                    true => {
                        let began = *self
                            .message_began
                            .get_or_insert_with(std::time::Instant::now);
                        if began.elapsed() > limit {
                            return Poll::Ready(Event::MessageTimeout);
                        }
                    }
                }
            }
            // Checked after reading, so a pong already in the socket counts.
            if let Some(k) = &cx.keepalive
                && k.is_idle(self.last_heard)
            {
                return Poll::Ready(Event::IdleTimeout);
            }
            if !self.outbox.pongs.is_empty() && !self.outbox.socket_full {
                // A pong is waiting for the next frame boundary: get there.
                // (A full socket wakes the task itself when it drains.)
                task.waker().wake_by_ref();
            }
        }
        polled
    }

    /// Leaves the hub without a word: the connection is gone or takes
    /// nothing. What `drop_newest` dropped for it is counted.
    fn leave(&self, cx: &ConnectionContext) {
        let left = cx.relay.hub.leave(&self.subscription);
        if left.dropped > 0 {
            cx.relay
                .metrics
                .dropped(DropReason::SlowConsumer, left.dropped);
        }
    }

    /// Closes the connection as `event` requires, then counts and logs it.
    async fn finish(self, event: Event, cx: &ConnectionContext) {
        let (peer, ip, id) = (self.peer, self.permit.ip(), self.subscription.id);
        let reason = self.close(event, cx).await;
        cx.relay.metrics.disconnected(reason);
        // Per-client events stay at debug whatever the reason: a client can
        // cause any of them at will, and the metrics count them by reason.
        debug!(%peer, %ip, id, reason = reason.as_str(), "client disconnected");
    }

    /// Leaves the hub, says goodbye as the end calls for, and reports why
    /// the client went.
    async fn close(mut self, event: Event, cx: &ConnectionContext) -> DisconnectReason {
        // A message over the size limit is read through (and discarded) before
        // the Close goes: a browser that is still sending it when the Close
        // arrives stops, and reports the close as unclean however it ends.
        let skip_message_first = matches!(&event, Event::Violation(v) if v.code == 1009);
        let (reason, close, await_peer) = match event {
            Event::PeerClosed(code) => (
                DisconnectReason::ClientClose,
                wire::close_reply(code),
                false,
            ),
            Event::Violation(v) => {
                debug!(code = v.code, reason = v.reason, "protocol error");
                (
                    DisconnectReason::ProtocolError,
                    wire::close_frame(v.code, v.reason),
                    true,
                )
            }
            Event::Eof(e) => {
                if let Some(e) = e {
                    debug!(error = %e, "read failed");
                }
                self.leave(cx);
                return DisconnectReason::Reset;
            }
            Event::WriteFailed(e) => {
                debug!(error = %e, "write failed");
                self.leave(cx);
                return DisconnectReason::WriteError;
            }
            // It takes no bytes, so it would not take a Close either.
            Event::WriteTimeout => {
                self.leave(cx);
                return DisconnectReason::WriteTimeout;
            }
            Event::Evicted => (
                DisconnectReason::SlowConsumer,
                wire::close_frame(1008, "slow consumer"),
                true,
            ),
            Event::IdleTimeout => (
                DisconnectReason::IdleTimeout,
                wire::close_frame(1001, "idle timeout"),
                // It has not answered pings; it will not answer a close either.
                false,
            ),
            Event::ClosedByOperator(close) => (DisconnectReason::ClosedByApi, close, true),
            Event::NotPermitted => (
                DisconnectReason::NotPermitted,
                wire::close_frame(1008, "subscribers may not send"),
                true,
            ),
            Event::MessageTimeout => (
                DisconnectReason::MessageTimeout,
                wire::close_frame(1008, "message took too long"),
                true,
            ),
            Event::TokenExpired => (
                DisconnectReason::TokenExpired,
                wire::close_frame(1008, "token expired"),
                true,
            ),
            Event::RateLimited => (
                DisconnectReason::RateLimit,
                wire::close_frame(1008, "rate limit exceeded"),
                true,
            ),
            Event::Shutdown => (
                DisconnectReason::Shutdown,
                wire::close_frame(1001, "server shutting down"),
                true,
            ),
            Event::EpochMoved => (
                DisconnectReason::EpochMoved,
                wire::close_frame(1012, "room epoch moved; resume"),
                true,
            ),
        };
        let timeout = match reason {
            // The server bounds the whole shutdown; `force` ends this earlier if needed.
            DisconnectReason::Shutdown => Duration::MAX,
            _ => cx.close_timeout,
        };

        // It leaves its room here: what was published before goes out before
        // the Close (its own echo included), nothing after. Except for a slow
        // consumer, closed for not taking it (counted when it was evicted),
        // and a client whose socket is full now: a socket that takes nothing
        // more would not take these either.
        if reason == DisconnectReason::EpochMoved {
            // Nothing more: what follows carries the new epoch's positions,
            // and the client knows only the old one.
            cx.relay.hub.leave(&self.subscription);
        } else if reason == DisconnectReason::SlowConsumer || self.outbox.socket_full {
            let left = cx.relay.hub.leave_taking(&self.subscription, |_, _| {});
            cx.relay
                .metrics
                .dropped(DropReason::SlowConsumer, left.sent + left.dropped);
            self.outbox.pongs.clear();
        } else {
            self.outbox.take_rest(&cx.relay, &self.subscription);
        }

        // Write all that, then (if we started the close) keep reading and
        // discarding until the peer's Close or EOF, so the peer reads our Close
        // before the socket goes and the connection ends with FIN, not a reset;
        // then shut the socket. Reading goes on while writing, since a peer busy
        // sending may read nothing until it is done. Bounded, because the peer
        // may never answer or never stop sending.
        let Self {
            io, reader, outbox, ..
        } = &mut self;
        let finish = async {
            let mut peer_done = !await_peer;
            if skip_message_first {
                // Half the time at most, so the Close still goes out in time.
                let skipped = poll_fn(|task| {
                    if poll_discard(io, reader, task).is_ready() {
                        peer_done = true;
                    }
                    match outbox.poll_write(io, task) {
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        _ if peer_done || reader.message_skipped() => Poll::Ready(Ok(())),
                        _ => Poll::Pending,
                    }
                });
                if let Ok(written) = tokio::time::timeout(timeout / 2, skipped).await {
                    written?;
                }
            }
            outbox.close_with(close);
            poll_fn(|task| {
                if !peer_done && poll_discard(io, reader, task).is_ready() {
                    peer_done = true;
                }
                match outbox.poll_write(io, task) {
                    Poll::Ready(Ok(())) if !peer_done => Poll::Pending,
                    polled => polled,
                }
            })
            .await?;
            poll_fn(|task| Pin::new(&mut *io).poll_shutdown(task)).await
        };
        tokio::select! {
            _ = tokio::time::timeout(timeout, finish) => {}
            _ = cx.force.cancelled() => {}
        }
        reason
    }
}

/// What reading does after one item.
enum Step<T> {
    /// Go on parsing.
    Go,
    /// Stop for now: keep what is not parsed yet, and let others run.
    Pause,
    /// Stop for good.
    End(T),
}

/// Reads and parses what the client sent, handing each item to `on`, until
/// `on` ends or pauses, the connection ends or fails, or nothing more is
/// available (`Pending`). Sets `heard` when any bytes arrived. A pause
/// yields: the task is woken to carry on after others had a turn, and
/// parses what it kept before it reads more.
fn poll_incoming<S>(
    io: &mut S,
    reader: &mut Reader,
    task: &mut Context<'_>,
    heard: &mut bool,
    mut on: impl FnMut(Incoming) -> Step<Event>,
) -> Poll<Event>
where
    S: AsyncRead + Unpin,
{
    for _ in 0..MAX_READS_PER_POLL {
        let mut step = Step::Go;
        let mut feed = |reader: &mut Reader, data: &[u8]| {
            let parsed = reader.feed(data, &mut |item| match on(item) {
                Step::Go => true,
                other => {
                    step = other;
                    false
                }
            });
            if let Err(v) = parsed {
                step = Step::End(Event::Violation(v));
            }
        };
        if reader.is_paused() {
            feed(reader, &[]);
        } else {
            match read_scratch(io, task, |data| feed(reader, data)) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Event::Eof(Some(e))),
                Poll::Ready(Ok(None)) => return Poll::Ready(Event::Eof(None)),
                Poll::Ready(Ok(Some(()))) => *heard = true,
            }
        }
        match step {
            Step::Go => {}
            Step::Pause => break,
            Step::End(event) => return Poll::Ready(event),
        }
    }
    // More may be readable or parsed; come back after others on this thread had a turn.
    task.waker().wake_by_ref();
    Poll::Pending
}

/// Reads and discards after the relay's Close: `Ready` once the peer's
/// Close has been seen, or the connection ended.
fn poll_discard<S>(io: &mut S, reader: &mut Reader, task: &mut Context<'_>) -> Poll<()>
where
    S: AsyncRead + Unpin,
{
    if reader.discard(&[]) {
        return Poll::Ready(());
    }
    for _ in 0..MAX_READS_PER_POLL {
        match read_scratch(io, task, |data| reader.discard(data)) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Some(false))) => {}
            Poll::Ready(_) => return Poll::Ready(()),
        }
    }
    task.waker().wake_by_ref();
    Poll::Pending
}

/// One read into the buffer this thread's clients share, handed to `f`;
/// `None` at EOF.
fn read_scratch<S, R>(
    io: &mut S,
    task: &mut Context<'_>,
    f: impl FnOnce(&[u8]) -> R,
) -> Poll<io::Result<Option<R>>>
where
    S: AsyncRead + Unpin,
{
    READ_SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = ReadBuf::new(scratch);
        match Pin::new(&mut *io).poll_read(task, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(None)),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(f(buf.filled())))),
        }
    })
}

/// Why [`Outbox::pump`] stopped for good.
enum Stop {
    /// The hub closed the membership.
    Closed,
    Failed(io::Error),
    /// The socket accepted nothing for the write timeout.
    TimedOut,
}

/// A keepalive ping with no payload.
const PING: &[u8] = &[0x89, 0x00];

/// Data frames taken from the log and not yet fully written, in wire order.
struct Outbox {
    chunks: VecDeque<Bytes>,
    /// Pongs for the pings read so far, sent at the next frame boundary.
    pongs: Pongs,
    /// The last write was held up by the socket.
    socket_full: bool,
    /// A keepalive ping was taken: once the client is idle again, every
    /// buffer goes back, not only those past [`KEEP_BATCH`].
    pinged: bool,
    /// Where small frames are packed; its memory is reused batch after batch.
    scratch: BytesMut,
    stall: Stall,
    /// The window the client allowed, if it negotiated permessage-deflate.
    deflate: Option<Window>,
    /// Position-aware: each message goes after its position frame.
    positions: bool,
}

/// Pongs waiting for the next frame boundary, the latest
/// [`MAX_PENDING_PONGS`] at most; boxed, since most clients never ping.
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "one pointer in every client's state, not a queue's three words"
)]
struct Pongs(Option<Box<VecDeque<Bytes>>>);

impl Pongs {
    fn push(&mut self, pong: Bytes) {
        let queue = self.0.get_or_insert_default();
        if queue.len() == MAX_PENDING_PONGS {
            queue.pop_front();
        }
        queue.push_back(pong);
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }

    /// Every pending pong, oldest first; the queue's memory goes with them.
    fn take(&mut self) -> impl Iterator<Item = Bytes> + use<> {
        self.0.take().into_iter().flat_map(|q| *q)
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

/// The write timeout: armed while the socket holds up a write, pushed back
/// whenever the socket takes some bytes.
struct Stall {
    /// Created on the first stall, dropped once the client goes idle.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Bytes were written since the timer was armed.
    progressed: bool,
}

impl Stall {
    /// Called when a write is held up: ready once the socket has taken
    /// nothing for the whole `limit` (`client.write_timeout`, if any).
    fn poll(&mut self, limit: Option<Duration>, task: &mut Context<'_>) -> Poll<()> {
        let Some(limit) = limit else {
            return Poll::Pending;
        };
        if !self.armed || self.progressed {
            let deadline = Instant::now() + limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
            self.progressed = false;
        }
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(task),
            None => Poll::Pending,
        }
    }
}

impl Outbox {
    fn new(deflate: Option<Window>, positions: bool) -> Self {
        Self {
            deflate,
            positions,
            chunks: VecDeque::new(),
            pongs: Pongs::default(),
            socket_full: false,
            pinged: false,
            scratch: BytesMut::new(),
            stall: Stall {
                timer: None,
                armed: false,
                progressed: false,
            },
        }
    }

    /// Writes the frames due until there are none or the socket is full
    /// (`Pending`, with wake-ups arranged), or the client must go (`Ready`).
    /// After its share of batches it yields, and wakes the task to continue.
    fn pump<S>(
        &mut self,
        io: &mut S,
        subscription: &mut Subscription,
        cx: &ConnectionContext,
        task: &mut Context<'_>,
    ) -> Poll<Stop>
    where
        S: AsyncWrite + Unpin,
    {
        for _ in 0..MAX_BATCHES_PER_POLL {
            match self.poll_write(io, task) {
                Poll::Ready(Ok(())) => {
                    self.stall.armed = false;
                    self.socket_full = false;
                    subscription.member.set_socket_full(false);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Stop::Failed(e)),
                Poll::Pending => {
                    // Lag checks may now count this client as slow.
                    self.socket_full = true;
                    subscription.member.set_socket_full(true);
                    // Waiting on the socket, not the log: an eviction or a
                    // ping must still wake us, but new messages need not.
                    if subscription.member.watch(task) {
                        return Poll::Ready(Stop::Closed);
                    }
                    return self
                        .stall
                        .poll(cx.write_timeout, task)
                        .map(|()| Stop::TimedOut);
                }
            }
            // At a frame boundary: pending pongs go before more data.
            if !self.pongs.is_empty() {
                self.chunks.extend(self.pongs.take());
                continue;
            }
            let (scratch, chunks) = (&mut self.scratch, &mut self.chunks);
            let (deflate, positions, hub) = (self.deflate, self.positions, &cx.relay.hub);
            let taken = subscription.poll_take(task, MAX_BATCH, MAX_BATCH_BYTES, |frame, mark| {
                add_message(
                    scratch,
                    chunks,
                    positions.then_some(mark),
                    encoded(frame, deflate, hub),
                )
            });
            match taken {
                Poll::Pending => {
                    self.release_memory();
                    return Poll::Pending;
                }
                Poll::Ready(Taken::Closed) => return Poll::Ready(Stop::Closed),
                Poll::Ready(Taken::Ping) => {
                    self.pinged = true;
                    self.chunks.push_back(Bytes::from_static(PING));
                }
                Poll::Ready(Taken::Frames {
                    messages,
                    bytes,
                    dropped,
                }) => {
                    seal_scratch(&mut self.scratch, &mut self.chunks);
                    cx.relay.metrics.messages_sent.inc_by(messages as u64);
                    cx.relay.metrics.bytes_sent.inc_by(bytes as u64);
                    if dropped > 0 {
                        cx.relay.metrics.dropped(DropReason::SlowConsumer, dropped);
                    }
                }
            }
        }
        // More may be due; come back after others on this thread had a turn.
        task.waker().wake_by_ref();
        Poll::Pending
    }

    /// Gone idle: give back what a burst needed. The scratch buffer goes
    /// whatever its apparent capacity: after `split` that capacity is only
    /// the tail's, while the view still holds the whole allocation. Small
    /// buffers are kept for the next burst, until the client is idle just
    /// after a keepalive ping: then they go too, and an idle client costs
    /// what a fresh one does.
    fn release_memory(&mut self) {
        self.scratch = BytesMut::new();
        let keep = if std::mem::take(&mut self.pinged) {
            0
        } else {
            KEEP_BATCH
        };
        if self.chunks.capacity() > keep {
            self.chunks = VecDeque::new();
        }
        self.stall.timer = None;
    }

    /// The client is leaving: after what is being written, its pending
    /// pongs and every message still due to it; it leaves its room here.
    fn take_rest(&mut self, relay: &Relay, subscription: &Subscription) {
        self.chunks.extend(self.pongs.take());
        let (scratch, chunks) = (&mut self.scratch, &mut self.chunks);
        let mut bytes = 0;
        let positions = self.positions;
        let left = relay.hub.leave_taking(subscription, |frame, mark| {
            bytes += frame.payload().len() as u64;
            let wire = encoded(frame, self.deflate, &relay.hub);
            add_message(scratch, chunks, positions.then_some(mark), wire);
        });
        seal_scratch(&mut self.scratch, &mut self.chunks);
        relay.metrics.messages_sent.inc_by(left.sent);
        relay.metrics.bytes_sent.inc_by(bytes);
        if left.dropped > 0 {
            relay
                .metrics
                .dropped(DropReason::SlowConsumer, left.dropped);
        }
    }

    /// Ends the stream with `close`; nothing may follow it.
    fn close_with(&mut self, close: Bytes) {
        self.pongs.clear();
        self.chunks.push_back(close);
    }

    /// Writes until the outbox is empty (`Ready(Ok)`) or the socket is full.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        task: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.chunks.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut used = 0;
                for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
                    *slot = IoSlice::new(chunk);
                    used += 1;
                }
                match Pin::new(&mut *io).poll_write_vectored(task, &slices[..used]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            };
            self.stall.progressed = true;
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }
}

/// Adds one frame to what is to be written: a small one is copied into
/// `scratch` (many go out as one chunk), a large one goes as it is (copying
/// would cost more than the extra iovec).
fn add_frame(scratch: &mut BytesMut, chunks: &mut VecDeque<Bytes>, frame: &Bytes) {
    if frame.len() < COPY_BELOW {
        scratch.extend_from_slice(frame);
    } else {
        seal_scratch(scratch, chunks);
        chunks.push_back(frame.clone());
    }
}

/// Adds one message to what is to be written, after its position frame
/// for a position-aware client.
fn add_message(
    scratch: &mut BytesMut,
    chunks: &mut VecDeque<Bytes>,
    mark: Option<&Mark>,
    frame: &Bytes,
) {
    if let Some(mark) = mark {
        scratch.extend_from_slice(mark.frame());
    }
    add_frame(scratch, chunks, frame);
}

/// The first frame a position-aware client gets: where it stands (see
/// docs/PROTOCOL.md).
fn joined_notice(joined: &Joined) -> Bytes {
    let recovered = match joined.recovered {
        Some(r) => format!(r#","recovered":{r}"#),
        None => String::new(),
    };
    // The epoch is alphanumeric: no escaping needed.
    let text = format!(
        r##"#{{"type":"joined","epoch":"{}","position":{},"replay":{}{recovered}}}"##,
        joined.epoch, joined.position, joined.replay
    );
    Frame::new(true, text.as_bytes()).wire().clone()
}

/// `frame` as this client takes it: compressed if it negotiated
/// permessage-deflate (once for all such clients), plain otherwise.
fn encoded<'a>(frame: &'a Frame, deflate: Option<Window>, hub: &Hub) -> &'a Bytes {
    match deflate {
        None => frame.wire(),
        Some(window) => hub.deflated(frame, window),
    }
}

/// Ends the chunk being packed in `scratch`.
fn seal_scratch(scratch: &mut BytesMut, chunks: &mut VecDeque<Bytes>) {
    if !scratch.is_empty() {
        chunks.push_back(scratch.split().freeze());
    }
}

/// What a client is told when its membership ended.
fn ended(member: &Member) -> Event {
    match member.ending() {
        Some(Ending::Closed(close)) => Event::ClosedByOperator(*close),
        Some(Ending::Shutdown) => Event::Shutdown,
        Some(Ending::Moved) => Event::EpochMoved,
        Some(Ending::Evicted | Ending::Left) | None => Event::Evicted,
    }
}
