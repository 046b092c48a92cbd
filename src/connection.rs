//! One client's life after the upgrade: reading, writing and closing.
//!
//! Each client is driven by a single task that polls two things at once:
//! its socket for incoming frames, and its [`Queue`] for outgoing messages,
//! keepalive pings and the end of its membership (the hub closes the queue
//! for eviction or shutdown). One task instead of a reader and a writer halves the
//! per-client footprint and needs no lock around the socket.
//!
//! Reading: bytes are read into a buffer shared by every client on the
//! thread and parsed by [`wire::Reader`], which keeps per-client bytes
//! only for a frame still arriving, so an idle client holds no read buffer.
//! A complete data message is encoded once as the frame everyone will be
//! sent, and published.
//!
//! Writing: the `Outbox` drains the queue in batches, packs small frames
//! into one buffer and writes each batch with one vectored write, so a busy
//! client gets many frames per syscall and an idle one gets each message at
//! once. Pongs (one per ping, the 16 latest at most) and keepalive pings go
//! out at the next frame boundary, ahead of queued data. While a batch is
//! partly written the queue is left alone: that is what lets a stalled
//! client's queue fill up and trip the slow-consumer policy instead of
//! growing without bound; `client.write_timeout` drops a socket that takes
//! nothing at all.
//!
//! Closing: the client leaves the hub, what was queued goes out, then the
//! Close; if the relay started the close it reads on (discarding) until the
//! peer's Close, so the peer sees the code and the connection ends with FIN.
//!
//! It knows the relay, the wire format and its own settings
//! ([`ConnectionContext`]); nothing of the cluster, the HTTP layer or the
//! configuration file.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};

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

use crate::hub::{Backlog, Subscription};
use crate::limits::{OnRateExceeded, RateLimit};
use crate::metrics::{DisconnectReason, DropReason, Metrics};
use crate::queue::{Ending, Next, Queue};
use crate::relay::Relay;
use crate::upgrade::Client;
use crate::wire::{self, Frame, Incoming, Reader, Violation};

/// Most messages, and most payload bytes (or one message), taken from the
/// queue for one flush. Bounds what a client holds beyond its queue, and keeps one
/// client from monopolising its worker thread.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Batches written, and reads made, per poll before the task yields to
/// others on its thread.
const MAX_BATCHES_PER_POLL: usize = 4;
const MAX_READS_PER_POLL: usize = 4;

/// Deliveries a client's messages may make per poll (each message counting
/// at least one) before its task yields: a backstop so that one read of
/// tiny frames into a huge room cannot hold its worker thread for seconds
/// (1 Mi pushes: tens of ms). Not smaller: every yield lets each woken
/// writer flush what it has so far, and batches of a few frames per
/// `writev` cost far more than they save (measured on S1: a budget of
/// 16 Ki doubled the CPU per delivery at 1 000 subscribers, 64 Ki
/// quadrupled it at 10 000). Bursts need no budget: a queue that fills
/// before its writer runs makes the publisher wait (`hub::Backlog`).
const PUBLISH_DELIVERIES_PER_POLL: usize = 1 << 20;

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

/// Batch capacity kept while a client is idle.
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
    /// Clients are woken by the hub closing their queues, not by
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
    /// The hub dropped this client because its queue was full.
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
    WriteFailed(io::Error),
}

/// Drives an upgraded client, already a hub member, until it is gone.
/// Counts it in the metrics on the way in, and removes it from the hub and
/// counts it out exactly once on the way out.
pub async fn serve<S>(io: S, client: Client, subscription: Subscription, cx: Arc<ConnectionContext>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (id, peer, ip) = (subscription.id, client.peer, client.ip);
    cx.relay.metrics.connected();
    debug!(%peer, %ip, id, "client connected");

    // A timer only for clients whose credentials expire.
    let expiry = client.expires_at.map(|at| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    });
    // `drive` leaves the hub as soon as the client's end is decided.
    let reason = drive(io, &subscription, &client, expiry, &cx).await;
    cx.relay.metrics.disconnected(reason);
    // Per-client events stay at debug whatever the reason: a client can
    // cause any of them at will, and the metrics count them by reason.
    debug!(%peer, %ip, id, reason = reason.as_str(), "client disconnected");
    drop(client);
}

async fn drive<S>(
    mut io: S,
    subscription: &Subscription,
    client: &Client,
    mut expiry: Option<Pin<Box<Sleep>>>,
    cx: &ConnectionContext,
) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let queue: &Queue = &subscription.queue;
    // Without echo, publishing skips the sender itself.
    let skip = (!client.echo).then_some(subscription.id);
    let mut reader = Reader::new(cx.max_message_size);
    let mut outbox = Outbox::new(cx.write_timeout);
    let mut rate = RateLimit::new(cx.rate_limit.0, cx.rate_limit.1);
    let mut last_heard = cx.keepalive.as_ref().map_or(0, KeepAlive::now);
    // Writers this client's last publish got ahead of.
    let mut backlog = Backlog::default();
    // When the message now arriving began to.
    let mut message_began: Option<std::time::Instant> = None;

    let event = poll_fn(|task| {
        let dropped_by_hub = || match queue.ending() {
            Some(Ending::Closed(close)) => Event::ClosedByOperator(close),
            Some(Ending::Shutdown) => Event::Shutdown,
            Some(Ending::Evicted | Ending::Left) | None => Event::Evicted,
        };
        // Dropped from the hub: evicted as a slow consumer, or shutdown.
        if queue.is_closed() {
            return Poll::Ready(dropped_by_hub());
        }
        if let Poll::Ready(stop) = outbox.pump(&mut io, queue, &cx.relay.metrics, task) {
            return Poll::Ready(match stop {
                Stop::Closed => dropped_by_hub(),
                Stop::Failed(e) => Event::WriteFailed(e),
                Stop::TimedOut => Event::WriteTimeout,
            });
        }
        if let Some(expiry) = &mut expiry
            && expiry.as_mut().poll(task).is_ready()
        {
            return Poll::Ready(Event::TokenExpired);
        }
        // Publish nothing more until the writers the last publish got ahead
        // of have drained: they can write (or they would count as slow), so
        // they will, once this thread lets them run.
        if !backlog.is_empty() && !cx.relay.hub.caught_up(&mut backlog) {
            task.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut deliveries = 0;
        let pongs = &mut outbox.pongs;
        let mut heard = false;
        let polled = poll_incoming(&mut io, &mut reader, task, &mut heard, |item| match item {
            Incoming::Message(frame) => {
                cx.relay.metrics.received(frame.payload().len());
                if let Some(rate) = rate.as_mut()
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
                if !client.role.sends() {
                    return Step::End(Event::NotPermitted);
                }
                let done =
                    cx.relay
                        .publish_from(&subscription.room, &frame, skip, Some(&mut backlog));
                deliveries += done.queued.max(1);
                if !backlog.is_empty() || deliveries >= PUBLISH_DELIVERIES_PER_POLL {
                    Step::Pause
                } else {
                    Step::Go
                }
            }
            Incoming::Ping(payload) => {
                if pongs.len() == MAX_PENDING_PONGS {
                    pongs.pop_front();
                }
                pongs.push_back(wire::pong_frame(&payload));
                Step::Go
            }
            Incoming::Close(code) => Step::End(Event::PeerClosed(code)),
        });
        if heard && let Some(k) = &cx.keepalive {
            last_heard = k.now();
        }
        if polled.is_pending() {
            // Checked as bytes arrive: what a client dribbling a message
            // does. (One that goes silent mid-message meets the idle timeout.)
            if heard && let Some(limit) = cx.message_timeout {
                match reader.mid_message() {
                    false => message_began = None,
                    true => {
                        let began = *message_began.get_or_insert_with(std::time::Instant::now);
                        if began.elapsed() > limit {
                            return Poll::Ready(Event::MessageTimeout);
                        }
                    }
                }
            }
            // Checked after reading, so a pong already in the socket counts.
            if let Some(k) = &cx.keepalive
                && k.is_idle(last_heard)
            {
                return Poll::Ready(Event::IdleTimeout);
            }
            if !outbox.pongs.is_empty() && !outbox.socket_full {
                // A pong is waiting for the next frame boundary: get there.
                // (A full socket wakes the task itself when it drains.)
                task.waker().wake_by_ref();
            }
        }
        polled
    })
    .await;

    // From here on nothing more is published to this client.
    cx.relay.hub.leave(&subscription.room, subscription.id);

    // A message over the size limit is read through (and discarded) before
    // the Close goes: a browser that is still sending it when the Close
    // arrives stops, and reports the close as unclean however it ends.
    let skip_message_first = matches!(&event, Event::Violation(v) if v.code == 1009);
    let (reason, close, await_peer, timeout) = match event {
        Event::PeerClosed(code) => (
            DisconnectReason::ClientClose,
            wire::close_reply(code),
            false,
            cx.close_timeout,
        ),
        Event::Violation(v) => {
            debug!(code = v.code, reason = v.reason, "protocol error");
            (
                DisconnectReason::ProtocolError,
                wire::close_frame(v.code, v.reason),
                true,
                cx.close_timeout,
            )
        }
        Event::Eof(e) => {
            if let Some(e) = e {
                debug!(error = %e, "read failed");
            }
            queue.discard();
            return DisconnectReason::Reset;
        }
        Event::WriteFailed(e) => {
            debug!(error = %e, "write failed");
            queue.discard();
            return DisconnectReason::WriteError;
        }
        // It takes no bytes, so it would not take a Close either.
        Event::WriteTimeout => {
            queue.discard();
            return DisconnectReason::WriteTimeout;
        }
        Event::Evicted => (
            DisconnectReason::SlowConsumer,
            wire::close_frame(1008, "slow consumer"),
            true,
            cx.close_timeout,
        ),
        Event::IdleTimeout => (
            DisconnectReason::IdleTimeout,
            wire::close_frame(1001, "idle timeout"),
            // It has not answered pings; it will not answer a close either.
            false,
            cx.close_timeout,
        ),
        Event::ClosedByOperator(close) => {
            (DisconnectReason::ClosedByApi, close, true, cx.close_timeout)
        }
        Event::NotPermitted => (
            DisconnectReason::NotPermitted,
            wire::close_frame(1008, "subscribers may not send"),
            true,
            cx.close_timeout,
        ),
        Event::MessageTimeout => (
            DisconnectReason::MessageTimeout,
            wire::close_frame(1008, "message took too long"),
            true,
            cx.close_timeout,
        ),
        Event::TokenExpired => (
            DisconnectReason::TokenExpired,
            wire::close_frame(1008, "token expired"),
            true,
            cx.close_timeout,
        ),
        Event::RateLimited => (
            DisconnectReason::RateLimit,
            wire::close_frame(1008, "rate limit exceeded"),
            true,
            cx.close_timeout,
        ),
        Event::Shutdown => (
            DisconnectReason::Shutdown,
            wire::close_frame(1001, "server shutting down"),
            true,
            // The server bounds the whole shutdown; `force` ends this earlier if needed.
            Duration::MAX,
        ),
    };

    // What was queued before the decision goes out before the Close (the
    // client's own echo included), except for a slow consumer, which is
    // closed for not taking it, or a client whose socket is full now: their
    // queue is freed at once.
    if reason == DisconnectReason::SlowConsumer || outbox.socket_full {
        // A socket that takes nothing more would not take these either.
        let dropped = queue.discard();
        cx.relay
            .metrics
            .dropped(DropReason::SlowConsumer, dropped as u64);
        outbox.pongs.clear();
    } else {
        outbox.take_rest(queue, &cx.relay.metrics);
    }

    // Write all that, then (if we started the close) keep reading and
    // discarding until the peer's Close or EOF, so the peer reads our Close
    // before the socket goes and the connection ends with FIN, not a reset;
    // then shut the socket. Reading goes on while writing, since a peer busy
    // sending may read nothing until it is done. Bounded, because the peer
    // may never answer or never stop sending.
    // Boxed: the close phase runs once per client, and its futures and
    // timers would otherwise be part of every idle client's task state.
    Box::pin(async {
        let finish = async {
            let mut peer_done = !await_peer;
            if skip_message_first {
                // Half the time at most, so the Close still goes out in time.
                let skipped = poll_fn(|task| {
                    if poll_discard(&mut io, &mut reader, task).is_ready() {
                        peer_done = true;
                    }
                    match outbox.poll_write(&mut io, task) {
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
                if !peer_done && poll_discard(&mut io, &mut reader, task).is_ready() {
                    peer_done = true;
                }
                match outbox.poll_write(&mut io, task) {
                    Poll::Ready(Ok(())) if !peer_done => Poll::Pending,
                    polled => polled,
                }
            })
            .await?;
            poll_fn(|task| Pin::new(&mut io).poll_shutdown(task)).await
        };
        tokio::select! {
            _ = tokio::time::timeout(timeout, finish) => {}
            _ = cx.force.cancelled() => {}
        }
    })
    .await;
    reason
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
    /// The hub closed the queue.
    Closed,
    Failed(io::Error),
    /// The socket accepted nothing for the write timeout.
    TimedOut,
}

/// A keepalive ping with no payload.
const PING: &[u8] = &[0x89, 0x00];

/// Data frames taken from the queue and not yet fully written, in wire order.
struct Outbox {
    chunks: VecDeque<Bytes>,
    /// Pongs for the pings read so far, sent at the next frame boundary.
    pongs: VecDeque<Bytes>,
    /// The last write was held up by the socket.
    socket_full: bool,
    /// Frames just taken from the queue (kept to reuse its memory).
    batch: Vec<Frame>,
    /// A keepalive ping was taken: once the queue is empty again, every
    /// buffer goes back, not only those past [`KEEP_BATCH`].
    pinged: bool,
    /// Where small frames are packed; its memory is reused batch after batch.
    scratch: BytesMut,
    stall: Stall,
}

/// The write timeout: armed while the socket holds up a write, pushed back
/// whenever the socket takes some bytes.
struct Stall {
    limit: Option<Duration>,
    /// Created on the first stall, dropped once the client goes idle.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Bytes were written since the timer was armed.
    progressed: bool,
}

impl Stall {
    /// Called when a write is held up: ready once the socket has taken
    /// nothing for the whole limit.
    fn poll(&mut self, task: &mut Context<'_>) -> Poll<()> {
        let Some(limit) = self.limit else {
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
    fn new(write_timeout: Option<Duration>) -> Self {
        Self {
            chunks: VecDeque::new(),
            pongs: VecDeque::new(),
            socket_full: false,
            batch: Vec::new(),
            pinged: false,
            scratch: BytesMut::new(),
            stall: Stall {
                limit: write_timeout,
                timer: None,
                armed: false,
                progressed: false,
            },
        }
    }

    /// Writes queued frames until the queue is empty or the socket is full
    /// (`Pending`, with wake-ups arranged), or the client must go (`Ready`).
    /// After its share of batches it yields, and wakes the task to continue.
    fn pump<S>(
        &mut self,
        io: &mut S,
        queue: &Queue,
        metrics: &Metrics,
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
                    queue.set_socket_full(false);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Stop::Failed(e)),
                Poll::Pending => {
                    // Publishers may now count this client as slow.
                    self.socket_full = true;
                    queue.set_socket_full(true);
                    // Waiting on the socket, not the queue: an eviction must
                    // still wake us, but new messages need not.
                    if queue.watch_close(task) {
                        return Poll::Ready(Stop::Closed);
                    }
                    return self.stall.poll(task).map(|()| Stop::TimedOut);
                }
            }
            // At a frame boundary: pending pongs go before more data.
            if !self.pongs.is_empty() {
                self.chunks.extend(self.pongs.drain(..));
                continue;
            }
            match queue.poll_next(task, &mut self.batch, MAX_BATCH, MAX_BATCH_BYTES) {
                Poll::Pending => {
                    self.release_memory();
                    return Poll::Pending;
                }
                Poll::Ready(Next::Closed) => return Poll::Ready(Stop::Closed),
                Poll::Ready(Next::Ping) => {
                    self.pinged = true;
                    self.chunks.push_back(Bytes::from_static(PING));
                }
                Poll::Ready(Next::Frames) => self.encode_batch(metrics),
            }
        }
        // More may be queued; come back after others on this thread had a turn.
        task.waker().wake_by_ref();
        Poll::Pending
    }

    /// Gone idle: give back what a burst needed. The scratch buffer goes
    /// whatever its apparent capacity: after `split` that capacity is only
    /// the tail's, while the view still holds the whole allocation. Small
    /// batch buffers are kept for the next burst, until the queue is empty
    /// just after a keepalive ping: then they go too, and an idle client
    /// costs what a fresh one does.
    fn release_memory(&mut self) {
        self.scratch = BytesMut::new();
        let keep = if std::mem::take(&mut self.pinged) {
            0
        } else {
            KEEP_BATCH
        };
        if self.batch.capacity() > keep {
            self.batch = Vec::new();
        }
        if self.chunks.capacity() > keep {
            self.chunks = VecDeque::new();
        }
        if self.pongs.capacity() > keep {
            self.pongs = VecDeque::new();
        }
        self.stall.timer = None;
    }

    /// The client is leaving: after what is being written, its pending
    /// pongs and everything still queued for it.
    fn take_rest(&mut self, queue: &Queue, metrics: &Metrics) {
        self.chunks.extend(self.pongs.drain(..));
        queue.take_all(&mut self.batch);
        if !self.batch.is_empty() {
            self.encode_batch(metrics);
        }
    }

    /// Ends the stream with `close`; nothing may follow it.
    fn close_with(&mut self, close: Bytes) {
        self.pongs.clear();
        self.chunks.push_back(close);
    }

    /// Moves the batch taken from the queue into the outbox.
    fn encode_batch(&mut self, metrics: &Metrics) {
        let mut batch = std::mem::take(&mut self.batch);
        let count = batch.len();
        let mut payload_bytes = 0;
        for frame in batch.drain(..) {
            payload_bytes += frame.payload().len();
            if frame.wire().len() < COPY_BELOW {
                self.scratch.extend_from_slice(frame.wire());
            } else {
                self.seal_scratch();
                self.chunks.push_back(frame.wire().clone());
            }
        }
        self.batch = batch;
        self.seal_scratch();
        metrics.messages_sent.inc_by(count as u64);
        metrics.bytes_sent.inc_by(payload_bytes as u64);
    }

    fn seal_scratch(&mut self) {
        if !self.scratch.is_empty() {
            self.chunks.push_back(self.scratch.split().freeze());
        }
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use prometheus_client::metrics::gauge::Gauge;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::hub::{Hub, Role};
    use crate::limits::ConnectionLimits;
    use crate::queue::{OnOverflow, QueueLimits};

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One read of tiny frames into a big room stops fanning out once the
    /// publisher's deliveries pass its budget, lets the thread's other tasks
    /// run (having woken itself to carry on), and carries on at its next
    /// poll. (Without the budget, one poll delivered the whole read: here
    /// 1.2 million pushes.)
    #[tokio::test]
    async fn a_publisher_yields_its_thread_after_its_delivery_budget() {
        const MEMBERS: usize = 300;
        const MESSAGES: usize = 4000;
        let limits = QueueLimits {
            messages: MESSAGES,
            bytes: 1 << 30,
            on_overflow: OnOverflow::Disconnect,
        };
        let hub = Arc::new(Hub::new(limits, 0, Gauge::default()));
        let members: Vec<Subscription> = (0..MEMBERS)
            .map(|_| hub.join("".into(), true).unwrap())
            .collect();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let client = Client {
            peer: SocketAddr::new(ip, 1),
            ip,
            room: "".into(),
            role: Role::Publisher,
            echo: false,
            expires_at: None,
            permit: ConnectionLimits::new(0, 0).try_acquire(ip).unwrap(),
        };
        let publisher = hub.join("".into(), false).unwrap();
        let cx = Arc::new(ConnectionContext {
            relay: Arc::new(Relay::new(hub, Arc::new(Metrics::new()), None)),
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
            close_timeout: Duration::from_secs(1),
            write_timeout: None,
            max_message_size: 1 << 20,
            message_timeout: None,
            rate_limit: (0, 0),
            on_rate_exceeded: OnRateExceeded::Close,
            keepalive: None,
        });
        // Empty masked binary frames, all readable at once: 24 KB.
        let (mut peer, relay_end) = tokio::io::duplex(1 << 20);
        let frames: Vec<u8> = [0x82, 0x80, 1, 2, 3, 4].repeat(MESSAGES);
        peer.write_all(&frames).await.unwrap();

        let mut serving = Box::pin(serve(relay_end, client, publisher, cx));
        let wakes = Arc::new(CountingWaker::default());
        let waker = Waker::from(wakes.clone());
        let mut task = Context::from_waker(&waker);
        let queued = |members: &[Subscription]| members.iter().map(|s| s.queue.len()).sum();
        assert!(serving.as_mut().poll(&mut task).is_pending());
        let first: usize = queued(&members);
        assert!(
            (PUBLISH_DELIVERIES_PER_POLL..PUBLISH_DELIVERIES_PER_POLL + MEMBERS).contains(&first),
            "{first} deliveries in one poll"
        );
        assert!(
            wakes.0.load(Ordering::Relaxed) > 0,
            "paused without a wake-up"
        );
        // The rest at the next polls, each one asked for by a wake-up.
        for _ in 0..4 {
            let before = wakes.0.load(Ordering::Relaxed);
            assert!(serving.as_mut().poll(&mut task).is_pending());
            if queued(&members) == MEMBERS * MESSAGES {
                break;
            }
            assert!(wakes.0.load(Ordering::Relaxed) > before);
        }
        assert_eq!(queued(&members), MEMBERS * MESSAGES);
    }
}
