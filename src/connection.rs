//! One client's life after the upgrade: reading, writing and closing.
//!
//! Each client is driven by a single task that polls three things at once:
//! its socket for incoming frames, its hub queue for outgoing messages, and
//! the signals that end it (eviction by the hub, server shutdown). One task
//! instead of a reader and a writer halves the per-client footprint and
//! needs no lock around the socket.
//!
//! Reading goes through tokio-websockets, which enforces RFC 6455 strictly
//! and answers pings. Writing data bypasses it: the hub hands over frames
//! already encoded once for everyone ([`Frame`]), and the [`Outbox`] drains
//! them from the queue in batches, packs small ones into one buffer, and
//! writes each batch with one vectored write, so a busy client gets many
//! frames per syscall and an idle one gets each message at once.
//!
//! Two writers share the socket, so they take turns at frame boundaries:
//! the library's control frames (pongs, closes) are flushed only while the
//! outbox is empty, and the outbox starts a batch only once the library's
//! queue is empty. While a batch is partly written, the client is not read
//! (reading could queue a pong) and its queue is left alone: that is what
//! lets a stalled client's queue fill up and trip the slow-consumer policy
//! instead of growing without bound.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{CloseCode, Error as WsError, Message, WebSocketStream};
use tracing::{debug, warn};

use crate::hub::{Frame, Hub, Subscription};
use crate::metrics::{DisconnectReason, Metrics};

/// Most messages, and about the most payload bytes, taken from the queue
/// for one flush. Bounds what a client holds beyond its queue, and keeps one
/// client from monopolising its worker thread.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Batches written per poll before the task yields to others on its thread.
const MAX_BATCHES_PER_POLL: usize = 4;

/// Frames up to this size are copied into one buffer; larger ones are
/// written from the shared frame itself (copying would cost more than the
/// extra iovec).
const COPY_BELOW: usize = 1024;

/// Chunks per vectored write (Linux allows 1024; more gains nothing).
const MAX_IOVECS: usize = 64;

/// A coalescing buffer larger than this is released once the client goes
/// idle, so quiet clients do not keep a burst's worth of memory.
const KEEP_SCRATCH: usize = 64 * 1024;
const KEEP_BATCH: usize = 16;

/// What one client needs from the server around it.
pub struct ConnectionContext {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts shutting down: clients get 1001.
    /// Clients are woken by the hub dropping their membership, not by
    /// polling this token: a shared token's waiter list is a lock every
    /// client would take on every wake-up.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown timeout has passed: clients are dropped.
    pub force: CancellationToken,
    /// How long a client being disconnected gets to finish the close handshake.
    pub close_timeout: Duration,
}

/// What ended a client's active phase.
enum Event {
    Data(Message),
    /// The peer sent Close; the stream has queued the echo.
    PeerClosed,
    /// The peer broke the protocol; the stream has queued the matching close frame.
    ProtocolError(WsError),
    /// The connection ended without a close frame.
    Eof(Option<WsError>),
    /// The hub dropped this client because its queue was full.
    Evicted,
    Shutdown,
    WriteFailed(io::Error),
}

/// Drives an upgraded client, already a hub member, until it is gone.
/// Counts it in the metrics on the way in, and removes it from the hub and
/// counts it out exactly once on the way out.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    subscription: Subscription,
    cx: Arc<ConnectionContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = subscription.id;
    cx.metrics.connected();
    debug!(%peer, id, "client connected");

    let reason = drive(ws, subscription.queue, subscription.evicted, &cx).await;

    cx.hub.leave(id);
    cx.metrics.disconnected(reason);
    match reason {
        DisconnectReason::ClientClose | DisconnectReason::Reset | DisconnectReason::Shutdown => {
            debug!(%peer, id, reason = reason.as_str(), "client disconnected");
        }
        _ => warn!(%peer, id, reason = reason.as_str(), "client disconnected"),
    }
}

async fn drive<S>(
    mut ws: WebSocketStream<S>,
    mut queue: mpsc::Receiver<Frame>,
    mut evicted: oneshot::Receiver<()>,
    cx: &ConnectionContext,
) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut outbox = Outbox::default();

    let event = loop {
        let event = poll_fn(|task| {
            // Dropped from the hub: evicted as a slow consumer, or shutdown.
            if cx.shutdown.is_cancelled() {
                return Poll::Ready(Event::Shutdown);
            }
            if Pin::new(&mut evicted).poll(task).is_ready() {
                return Poll::Ready(match cx.shutdown.is_cancelled() {
                    true => Event::Shutdown,
                    false => Event::Evicted,
                });
            }
            match outbox.pump(&mut ws, &mut queue, &cx.metrics, task) {
                Err(e) => return Poll::Ready(Event::WriteFailed(e)),
                // A batch is partly written: wait for the socket, not the peer.
                Ok(true) => return Poll::Pending,
                Ok(false) => {}
            }
            match Pin::new(&mut ws).poll_next(task) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(m))) if m.is_close() => Poll::Ready(Event::PeerClosed),
                Poll::Ready(Some(Ok(m))) => Poll::Ready(Event::Data(m)),
                Poll::Ready(Some(Err(e @ WsError::Io(_)))) => Poll::Ready(Event::Eof(Some(e))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Event::ProtocolError(e)),
                Poll::Ready(None) => Poll::Ready(Event::Eof(None)),
            }
        })
        .await;
        match event {
            Event::Data(m) => {
                // Pings are answered by the stream itself; pongs need nothing.
                if m.is_text() || m.is_binary() {
                    let payload = m.as_payload();
                    cx.metrics.messages_received.inc();
                    cx.metrics.bytes_received.inc_by(payload.len() as u64);
                    cx.hub.publish(&Frame::new(m.is_text(), payload));
                }
            }
            other => break other,
        }
    };

    // Whatever is still queued will not be sent; free it now, not after the
    // close handshake, so a stalled client stops holding memory at once.
    let dropped = queue.len();
    drop(queue);

    let (reason, close, timeout) = match event {
        Event::Data(_) => unreachable!("data events are handled in the loop"),
        Event::PeerClosed => (DisconnectReason::ClientClose, None, cx.close_timeout),
        Event::ProtocolError(e) => {
            debug!(error = %e, "protocol error");
            // The stream queues the right close frame itself, except for a
            // fragmented message that grew too large; then this one is sent.
            let too_big = Message::close(Some(CloseCode::MESSAGE_TOO_BIG), "message too big");
            (
                DisconnectReason::ProtocolError,
                Some(too_big),
                cx.close_timeout,
            )
        }
        Event::Eof(e) => {
            if let Some(e) = e {
                debug!(error = %e, "read failed");
            }
            return DisconnectReason::Reset;
        }
        Event::WriteFailed(e) => {
            debug!(error = %e, "write failed");
            return DisconnectReason::WriteError;
        }
        Event::Evicted => {
            cx.metrics.messages_dropped.inc_by(dropped as u64);
            (
                DisconnectReason::SlowConsumer,
                Some(Message::close(
                    Some(CloseCode::POLICY_VIOLATION),
                    "slow consumer",
                )),
                cx.close_timeout,
            )
        }
        Event::Shutdown => (
            DisconnectReason::Shutdown,
            Some(Message::close(
                Some(CloseCode::GOING_AWAY),
                "server shutting down",
            )),
            // The server bounds the whole shutdown; `force` ends this earlier if needed.
            Duration::MAX,
        ),
    };

    // Finish the close handshake: send our Close (if we start it), wait for
    // the peer's, then shut the socket. Bounded, because the peer may never answer.
    let finish = async {
        // The close goes right after the batch being written, ahead of
        // everything that was still queued.
        poll_fn(|task| outbox.poll_write(ws.get_mut(), task)).await?;
        if let Some(close) = close {
            // Fails harmlessly if a close frame is already on its way.
            let _ = ws.feed(close).await;
        }
        ws.close().await
    };
    tokio::select! {
        _ = tokio::time::timeout(timeout, finish) => {}
        _ = cx.force.cancelled() => {}
    }
    reason
}

/// Data frames taken from the queue and not yet fully written, in wire order.
#[derive(Default)]
struct Outbox {
    chunks: VecDeque<Bytes>,
    /// Frames just taken from the queue (kept to reuse its memory).
    batch: Vec<Frame>,
    /// Where small frames are packed; its memory is reused batch after batch.
    scratch: BytesMut,
}

impl Outbox {
    /// Writes queued frames until the queue is empty, the socket is full, or
    /// this poll has done its share. Returns whether a batch is still partly
    /// written (then the socket's readiness wakes the task).
    fn pump<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        queue: &mut mpsc::Receiver<Frame>,
        metrics: &Metrics,
        task: &mut Context<'_>,
    ) -> io::Result<bool>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        for _ in 0..MAX_BATCHES_PER_POLL {
            if self.poll_write(ws.get_mut(), task)?.is_pending() {
                return Ok(true);
            }
            // Our batch is out: the library may now flush its pongs and
            // closes, and only once they are out may the next batch start.
            match Pin::new(&mut *ws).poll_flush(task) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(WsError::Io(e))) => return Err(e),
                Poll::Ready(Err(e)) => return Err(io::Error::other(e)),
                Poll::Pending => return Ok(false),
            }
            // Closed and empty: the hub evicted us; the eviction signal reports it.
            let Poll::Ready(Some(first)) = queue.poll_recv(task) else {
                if self.scratch.capacity() > KEEP_SCRATCH {
                    self.scratch = BytesMut::new();
                }
                if self.batch.capacity() > KEEP_BATCH {
                    self.batch = Vec::new();
                }
                return Ok(false);
            };
            self.fill(first, queue, metrics, task);
        }
        // More may be queued; come back after others on this thread had a turn.
        task.waker().wake_by_ref();
        Ok(!self.chunks.is_empty())
    }

    /// Takes `first` and whatever else is queued, up to one batch.
    fn fill(
        &mut self,
        first: Frame,
        queue: &mut mpsc::Receiver<Frame>,
        metrics: &Metrics,
        task: &mut Context<'_>,
    ) {
        // One bulk receive returns all the queue permits at once (one lock,
        // not one per frame); its size comes from the first frame's, so the
        // batch stays near MAX_BATCH_BYTES whatever the message size.
        let limit = (MAX_BATCH_BYTES / first.wire().len()).clamp(1, MAX_BATCH);
        self.batch.push(first);
        if limit > 1 {
            let _ = queue.poll_recv_many(task, &mut self.batch, limit - 1);
        }
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
