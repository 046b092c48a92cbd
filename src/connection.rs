//! One client's life after the upgrade: reading, writing and closing.
//!
//! Each client is driven by a single task that polls three things at once:
//! its socket for incoming frames, its hub queue for outgoing messages, and
//! the signals that end it (eviction by the hub, server shutdown). One task
//! instead of a reader and a writer halves the per-client footprint and
//! needs no lock around the socket.
//!
//! Outgoing messages are drained from the queue in batches, all fed to the
//! socket, then flushed once, so a busy client gets many frames per syscall
//! and an idle one gets each message at once. While a flush is pending the
//! queue is left alone: that is what lets a stalled client's queue fill up
//! and trip the slow-consumer policy instead of growing without bound.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{CloseCode, Error as WsError, Message, WebSocketStream};
use tracing::{debug, warn};

use crate::hub::{Hub, Subscription};
use crate::metrics::{DisconnectReason, Metrics};

/// Most messages, and about the most payload bytes, taken from the queue
/// for one flush. Bounds what a client holds beyond its queue, and keeps one
/// client from monopolising its worker thread.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Batches written per poll before the task yields to others on its thread.
const MAX_BATCHES_PER_POLL: usize = 4;

/// What one client needs from the server around it.
pub struct ConnectionContext {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts shutting down: clients get 1001.
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
    WriteFailed(WsError),
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
    mut queue: mpsc::Receiver<Message>,
    mut evicted: oneshot::Receiver<()>,
    cx: &ConnectionContext,
) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut shutdown = pin!(cx.shutdown.cancelled());
    let mut flushing = false;

    let event = loop {
        let event = poll_fn(|task| {
            if shutdown.as_mut().poll(task).is_ready() {
                return Poll::Ready(Event::Shutdown);
            }
            if Pin::new(&mut evicted).poll(task).is_ready() {
                return Poll::Ready(Event::Evicted);
            }
            if let Err(e) = pump_outgoing(&mut ws, &mut queue, &mut flushing, &cx.metrics, task) {
                return Poll::Ready(Event::WriteFailed(e));
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
                    cx.metrics.messages_received.inc();
                    cx.metrics
                        .bytes_received
                        .inc_by(m.as_payload().len() as u64);
                    cx.hub.publish(&m);
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

/// Moves queued messages into the socket and flushes them. Returns an error
/// only when writing failed; `Ok` may leave a flush pending, in which case
/// the socket's readiness will wake the task.
fn pump_outgoing<S>(
    ws: &mut WebSocketStream<S>,
    queue: &mut mpsc::Receiver<Message>,
    flushing: &mut bool,
    metrics: &Metrics,
    task: &mut Context<'_>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..MAX_BATCHES_PER_POLL {
        if !*flushing {
            // Closed and empty: the hub evicted us; the eviction signal reports it.
            let Poll::Ready(Some(first)) = queue.poll_recv(task) else {
                return Ok(());
            };
            let (mut count, mut bytes) = (0, 0);
            let mut next = Some(first);
            while let Some(m) = next {
                count += 1;
                bytes += m.as_payload().len();
                Pin::new(&mut *ws).start_send(m)?;
                next = match count < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    true => queue.try_recv().ok(),
                    false => None,
                };
            }
            metrics.messages_sent.inc_by(count as u64);
            metrics.bytes_sent.inc_by(bytes as u64);
            *flushing = true;
        }
        match Pin::new(&mut *ws).poll_flush(task) {
            Poll::Ready(Ok(())) => *flushing = false,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(()),
        }
    }
    // More may be queued; come back after others on this thread had a turn.
    task.waker().wake_by_ref();
    Ok(())
}
