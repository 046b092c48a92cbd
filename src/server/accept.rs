//! The WebSocket listener's side of a connection: accept (within
//! `limits.max_handshakes`), TLS, hyper reading the request, the [`crate::upgrade::Gate`]'s
//! decision and the hand-off of the upgraded socket to
//! [`crate::connection::serve`], all bounded by `limits.handshake_timeout`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::{MAX_REQUEST_HEAD, ServerError, Shared};
use crate::connection;
use crate::hub::{Joined, RoomsFull, Subscription};
use crate::metrics::RejectReason;
use crate::upgrade::{self, Client, Decision};
use crate::wire::Window;

/// Accepts the next connection once a handshake place is free: while all
/// are taken, connections wait in the kernel's accept queue. Cancel-safe.
pub(super) async fn accept(
    listener: &TcpListener,
    handshakes: Option<&Arc<Semaphore>>,
) -> io::Result<(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>)> {
    let place = match handshakes {
        // Never closed, so acquiring cannot fail.
        Some(places) => places.clone().acquire_owned().await.ok(),
        None => None,
    };
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, place))
}

pub(super) async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// One accepted socket: TLS if configured, then HTTP and the upgrade.
pub(super) async fn handle_socket(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Relayed messages are small and latency matters more than packet count;
    // the writer batches frames itself.
    let _ = stream.set_nodelay(true);
    // One deadline for the whole handshake, so a slow TLS handshake cannot
    // buy a slow HTTP request more time (slowloris).
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    let Some(acceptor) = &shared.tls else {
        return serve_http(stream, peer, shared, deadline).await;
    };
    let accepted = tokio::select! {
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
        () = shared.conn.shutdown.cancelled() => return,
    };
    match accepted {
        Ok(Ok(tls_stream)) => serve_http(tls_stream, peer, shared, deadline).await,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            shared.conn.relay.metrics.rejected(RejectReason::Tls);
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            shared
                .conn
                .relay
                .metrics
                .rejected(RejectReason::HandshakeTimeout);
        }
    }
}

/// Reads HTTP requests until one upgrades, then starts the WebSocket client.
async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    shared: Arc<Shared>,
    deadline: tokio::time::Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The service hands the pending upgrade back through this slot, so the
    // WebSocket runs on this same task once hyper lets go of the socket.
    // The client joins the hub before its 101 is sent: once a client sees
    // the handshake complete, it hears every message published after it.
    let slot: Arc<Mutex<Option<Admitted>>> = Arc::default();
    let service = {
        let (shared, slot) = (shared.clone(), slot.clone());
        service_fn(move |mut req: Request<Incoming>| {
            let (shared, slot) = (shared.clone(), slot.clone());
            async move {
                let decision = match shared.gate.admit(&req, peer) {
                    Decision::Upgrade(response, client) => {
                        let relay = &shared.conn.relay;
                        // In a cluster with shared history: what this node's
                        // log lacks for the join is read from the broker first.
                        relay.prepare(&client.room, &client.start).await;
                        let (hub, receives) = (&relay.hub, client.role.receives());
                        match hub.join_as(
                            client.room.clone(),
                            receives,
                            client.positions,
                            &client.start,
                        ) {
                            Ok((subscription, joined)) => {
                                if client.deflate == Some(Window::Full) {
                                    hub.compresses(&subscription);
                                }
                                Ok((response, client, subscription, joined))
                            }
                            Err(RoomsFull) => Err((
                                RejectReason::MaxRooms,
                                upgrade::refuse(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "too many rooms; try again later",
                                ),
                            )),
                        }
                    }
                    Decision::Refuse(reason, response) => Err((reason, response)),
                };
                let response = match decision {
                    Ok((response, client, subscription, joined)) => {
                        let admitted = Admitted {
                            upgrade: hyper::upgrade::on(&mut req),
                            subscription,
                            client,
                            joined,
                        };
                        if let Some(old) = lock(&slot).replace(admitted) {
                            shared.conn.relay.hub.leave(&old.subscription);
                        }
                        response
                    }
                    Err((reason, response)) => {
                        shared.conn.relay.metrics.rejected(reason);
                        // The path only: a query may carry a token.
                        debug!(%peer, status = %response.status(), path = req.uri().path(), reason = reason.as_str(), "request refused");
                        response
                    }
                };
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // The handshake deadline below is what counts; hyper's own timer is
        // only a backstop, so it must not fire first.
        .header_read_timeout(shared.handshake_timeout + Duration::from_secs(1))
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let served = tokio::select! {
        r = tokio::time::timeout_at(deadline, conn) => match r {
            Ok(r) => r.map_err(|e| {
                // hyper answered these itself (400, or 431 for a head over
                // the limit) before any request reached the gate.
                if e.is_parse() || e.is_parse_too_large() {
                    shared.conn.relay.metrics.rejected(RejectReason::BadRequest);
                }
                debug!(%peer, error = %e, "HTTP connection failed")
            }).is_ok(),
            Err(_) => {
                debug!(%peer, "handshake timed out");
                shared.conn.relay.metrics.rejected(RejectReason::HandshakeTimeout);
                false
            }
        },
        () = shared.conn.shutdown.cancelled() => false,
    };
    let Some(admitted) = lock(&slot).take() else {
        return;
    };
    let Admitted {
        upgrade,
        subscription,
        client,
        joined,
    } = admitted;
    let upgraded = match served {
        true => upgrade
            .await
            .map_err(|e| debug!(%peer, error = %e, "upgrade failed"))
            .ok(),
        false => None,
    };
    // The stream itself, taken back out of hyper's box around it (one
    // allocation less per client), with whatever hyper read past the
    // request, for the client's reader to parse first.
    let parts = upgraded.and_then(|u| {
        u.downcast::<TokioIo<IO>>()
            .map_err(|_| debug!(%peer, "upgraded connection of an unexpected type"))
            .ok()
    });
    match parts {
        Some(parts) => {
            let cx = shared.conn.clone();
            let io = parts.io.into_inner();
            // A task of its own: this one's state is sized for the TLS and
            // HTTP phases (about 5.5 KiB), the client's future 400 B,
            // and an idle client should hold only what it uses.
            cx.relay.metrics.joined(joined.replay, joined.recovered);
            shared.tracker.spawn(connection::serve(
                io,
                parts.read_buf,
                client,
                subscription,
                &joined,
                cx,
            ));
        }
        None => {
            shared.conn.relay.hub.leave(&subscription);
        }
    }
}

/// A request that passed every check, waiting for hyper to hand over its socket.
struct Admitted {
    upgrade: OnUpgrade,
    /// Joined before the 101 is sent.
    subscription: Subscription,
    client: Client,
    /// Where it stood when it joined.
    joined: Joined,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
