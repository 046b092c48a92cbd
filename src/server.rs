//! Listeners, accept, the WebSocket upgrade, and shutdown.
//!
//! A connection goes: TCP accept → (TLS handshake) → hyper reads the HTTP
//! request → [`upgrade_response`] checks it and answers 101 or a 4xx →
//! the upgraded socket becomes a [`WebSocketStream`] handed to
//! [`connection::serve`]. Doing the upgrade in hyper rather than inside the
//! WebSocket library lets the relay refuse a request with a proper HTTP
//! status before any WebSocket state exists.
//!
//! Shutdown is one [`CancellationToken`] and a [`TaskTracker`]: stop
//! accepting, cancel the token (every client gets Close 1001), wait for the
//! tracked tasks up to `shutdown.timeout`, then cancel a second token that
//! makes every remaining task drop its socket at once.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{Admission, AuthError, Authenticator};
use crate::config::Config;
use crate::connection::Client;
use crate::connection::{self, ConnectionContext, KeepAlive};
use crate::forwarded::TrustedProxies;
use crate::hub::{Hub, Subscription};
use crate::limits::{ConnectionLimits, LimitExceeded};
use crate::metrics::{self, Metrics, RejectReason};
use crate::origin::OriginPolicy;
use crate::queue::QueueLimits;
use crate::tls::{self, TlsError};

/// How long a metrics client may take to send its request.
const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest HTTP request head accepted before the upgrade.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid server.allowed_origins: {0}")]
    Origins(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A relay whose listeners are bound and ready; [`Server::run`] serves it.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown_timeout: Duration,
}

/// What every connection task needs, shared by reference count.
struct Shared {
    conn: Arc<ConnectionContext>,
    /// Tracks every task that serves a client, for shutdown.
    tracker: TaskTracker,
    tls: Option<TlsAcceptor>,
    path: String,
    origins: OriginPolicy,
    /// `None` when anyone may connect.
    auth: Option<Authenticator>,
    proxies: TrustedProxies,
    limits: Arc<ConnectionLimits>,
    /// How long a client may take from TCP accept to its 101 (TLS included).
    handshake_timeout: Duration,
}

impl Server {
    /// Loads TLS files and binds both listeners. Fails with the file or the
    /// address at fault; nothing is served until [`Server::run`].
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let tls = match &config.server.tls {
            Some(t) => Some(TlsAcceptor::from(tls::server_config(
                &t.cert_file,
                &t.key_file,
            )?)),
            None => None,
        };
        let listener = bind(config.server.listen).await?;
        let metrics_listener = match config.metrics.enabled {
            true => Some(bind(config.metrics.listen).await?),
            false => None,
        };
        let conn = ConnectionContext {
            hub: Arc::new(Hub::new(QueueLimits {
                messages: config.client.queue_messages,
                bytes: config.client.queue_bytes,
                on_overflow: config.client.on_overflow,
            })),
            metrics: Arc::new(Metrics::new()),
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
            close_timeout: config.client.close_timeout,
            write_timeout: Some(config.client.write_timeout).filter(|t| !t.is_zero()),
            max_message_size: config.limits.max_message_size,
            rate_limit: (config.limits.messages_per_second, config.limits.burst),
            on_rate_exceeded: config.limits.on_rate_exceeded,
            keepalive: KeepAlive::new(config.client.ping_interval, config.client.idle_timeout),
        };
        Ok(Self {
            listener,
            metrics_listener,
            shared: Arc::new(Shared {
                conn: Arc::new(conn),
                tracker: TaskTracker::new(),
                tls,
                path: config.server.path.clone(),
                origins: OriginPolicy::new(&config.server.allowed_origins)
                    .map_err(ServerError::Origins)?,
                auth: Authenticator::new(&config.auth)?,
                proxies: TrustedProxies::new(&config.server.trusted_proxies),
                handshake_timeout: config.limits.handshake_timeout,
                limits: ConnectionLimits::new(
                    config.limits.max_connections,
                    config.limits.max_connections_per_ip,
                ),
            }),
            shutdown_timeout: config.shutdown.timeout,
        })
    }

    /// The WebSocket listener's address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has an address; fall back rather than panic.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The metrics listener's address, if metrics are enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The URL clients connect to, for logs.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}{}", self.local_addr(), self.shared.path)
    }

    /// Serves until `shutdown` resolves, then closes every client with 1001
    /// and returns once they are gone or `shutdown.timeout` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            metrics_listener,
            shared,
            shutdown_timeout,
        } = self;
        let cx = shared.conn.clone();
        let metrics_stop = CancellationToken::new();
        if let Some(l) = metrics_listener {
            tokio::spawn(serve_metrics(l, cx.metrics.clone(), metrics_stop.clone()));
        }

        if cx.keepalive.is_some() {
            tokio::spawn(keepalive(cx.clone()));
        }

        let tracker = shared.tracker.clone();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tracker.spawn(handle_socket(stream, peer, shared.clone()));
                    }
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);

        info!(clients = cx.metrics.connections_active.get(), timeout = ?shutdown_timeout, "shutting down: closing clients with 1001");
        // Cancel first, then clear: a client woken by the clear (or joining
        // after it) finds the token cancelled and closes with 1001.
        cx.shutdown.cancel();
        cx.hub.clear();
        tracker.close();
        if tokio::time::timeout(shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                clients = cx.metrics.connections_active.get(),
                "shutdown timeout passed; dropping remaining clients"
            );
            cx.force.cancel();
            // Closing clients race `force` and handshakes race the shutdown
            // token, so this is quick; bound it anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
        }
        metrics_stop.cancel();
        info!("shutdown complete");
    }
}

/// Asks every client to ping its peer once per interval, and advances the
/// clock clients measure idleness by.
async fn keepalive(cx: Arc<ConnectionContext>) {
    let Some(clock) = &cx.keepalive else { return };
    let mut ticks = tokio::time::interval(clock.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cx.shutdown.cancelled() => return,
        }
        clock.advance();
        cx.hub.ping_all();
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// One accepted socket: TLS if configured, then HTTP and the upgrade.
async fn handle_socket(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
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
            shared.conn.metrics.rejected(RejectReason::Tls);
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            shared.conn.metrics.rejected(RejectReason::HandshakeTimeout);
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
            let response = match admit(&req, peer, &shared) {
                Decision::Upgrade(response, client) => {
                    let admitted = Admitted {
                        upgrade: hyper::upgrade::on(&mut req),
                        subscription: shared.conn.hub.join(),
                        client,
                    };
                    if let Some(old) = lock(&slot).replace(admitted) {
                        shared.conn.hub.leave(old.subscription.id);
                    }
                    response
                }
                Decision::Refuse(reason, response) => {
                    shared.conn.metrics.rejected(reason);
                    // The path only: a query may carry a token.
                    debug!(%peer, status = %response.status(), path = req.uri().path(), reason = reason.as_str(), "request refused");
                    response
                }
            };
            std::future::ready(Ok::<_, Infallible>(response))
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
            Ok(r) => r.map_err(|e| debug!(%peer, error = %e, "HTTP connection failed")).is_ok(),
            Err(_) => {
                debug!(%peer, "handshake timed out");
                shared.conn.metrics.rejected(RejectReason::HandshakeTimeout);
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
    } = admitted;
    let upgraded = match served {
        true => upgrade
            .await
            .map_err(|e| debug!(%peer, error = %e, "upgrade failed"))
            .ok(),
        false => None,
    };
    match upgraded {
        Some(upgraded) => {
            let io = TokioIo::new(upgraded);
            let cx = shared.conn.clone();
            // A task of its own: this one's state is sized for the TLS and
            // HTTP phases (about 5.5 KiB), the client's needs about 1.5 KiB,
            // and an idle client should hold only what it uses.
            shared
                .tracker
                .spawn(connection::serve(io, client, subscription, cx));
        }
        None => shared.conn.hub.leave(subscription.id),
    }
}

/// A request that passed every check, waiting for hyper to hand over its socket.
struct Admitted {
    upgrade: OnUpgrade,
    /// Joined before the 101 is sent.
    subscription: Subscription,
    client: Client,
}

/// What to do with a request on the WebSocket listener.
enum Decision {
    /// Answer 101 and serve this client.
    Upgrade(Response<Full<Bytes>>, Client),
    /// Answer with this refusal, counted under this reason.
    Refuse(RejectReason, Response<Full<Bytes>>),
}

/// Decides a request: protocol checks, then the Origin allowlist, then
/// credentials, then the caps (counted against the real client address).
fn admit(req: &Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Decision {
    let mut response = upgrade_response(req, &shared.path);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Decision::Refuse(RejectReason::BadRequest, response);
    }
    let origin = req.headers().get(header::ORIGIN).map(HeaderValue::as_bytes);
    if !shared.origins.allows(origin) {
        let refusal = refuse(StatusCode::FORBIDDEN, "origin not allowed");
        return Decision::Refuse(RejectReason::Origin, refusal);
    }
    let admission = match &shared.auth {
        None => Admission::default(),
        Some(auth) => match auth.admit(req.uri().query(), req.headers()) {
            Ok(admission) => admission,
            Err(why) => {
                let mut r = refuse(StatusCode::UNAUTHORIZED, why.as_str());
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Decision::Refuse(RejectReason::Auth, r);
            }
        },
    };
    if let Some(protocol) = admission.protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    let ip = shared.proxies.client_ip(peer.ip(), req.headers());
    match shared.limits.try_acquire(ip) {
        Ok(permit) => Decision::Upgrade(
            response,
            Client {
                peer,
                ip,
                expires_at: admission.expires_at,
                permit,
            },
        ),
        Err(LimitExceeded::Total) => Decision::Refuse(
            RejectReason::MaxConnections,
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections; try again later",
            ),
        ),
        Err(LimitExceeded::PerIp) => Decision::Refuse(
            RejectReason::MaxConnectionsPerIp,
            refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            ),
        ),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The response to a request on the WebSocket listener: 101 for a valid
/// upgrade on the configured path, otherwise the 4xx that says what is wrong.
fn upgrade_response(req: &Request<Incoming>, path: &str) -> Response<Full<Bytes>> {
    let headers = req.headers();
    if req.uri().path() != path {
        return refuse(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != Method::GET {
        let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades use GET");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if req.version() != Version::HTTP_11 || !has_token(headers, header::UPGRADE, "websocket") {
        let mut r = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: connect with a WebSocket client",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return refuse(StatusCode::BAD_REQUEST, "missing `Connection: Upgrade`");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut r = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version; use 13",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| is_valid_key(k.as_bytes()))
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key",
        );
    };
    let accept = accept_key(key.as_bytes());
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// A plain-text refusal that also ends the HTTP connection.
fn refuse(status: StatusCode, why: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{why}\n"))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// RFC 6455: the key is 16 random bytes, base64-encoded (24 characters).
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// RFC 6455 section 4.2.2: base64(SHA-1(key + GUID)).
fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Serves `/metrics` and `/healthz` until `stop` is cancelled.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| metrics::handle_http(req, metrics.clone()));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(METRICS_REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is created: a
/// signal that arrives before the server starts waiting is not lost (nor
/// does it kill the process with the default action).
pub struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (int, term) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        if int.is_err() || term.is_err() {
            warn!("cannot install signal handlers; the relay may not shut down gracefully");
        }
        Self {
            int: int.ok(),
            term: term.ok(),
        }
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.int) => "SIGINT",
            () = recv(&mut self.term) => "SIGTERM",
        }
    }

    /// Resolves on the first signal, naming it. A second signal afterwards
    /// ends the process at once, for operators who cannot wait.
    pub async fn shutdown(mut self) -> &'static str {
        let name = self.next().await;
        tokio::spawn(async move {
            let again = self.next().await;
            warn!(signal = again, "second signal: exiting now");
            std::process::exit(if again == "SIGINT" { 130 } else { 143 });
        });
        name
    }
}

/// Runs the relay described by `config` until SIGINT or SIGTERM.
pub async fn run(config: &Config) -> Result<(), ServerError> {
    // Before anything is announced, so a signal sent on seeing "listening" counts.
    let signals = Signals::install();
    // Each client is a file descriptor: use all the process may have.
    let files = raise_open_file_limit();
    let server = Server::bind(config).await?;
    info!(url = %server.url(), addr = %server.local_addr(), open_files = files, "relay listening");
    if let Some(addr) = server.metrics_addr() {
        info!(url = %format!("http://{addr}/metrics"), addr = %addr, "metrics listening");
    }
    server
        .run(async {
            let signal = signals.shutdown().await;
            info!(signal, "signal received");
        })
        .await;
    Ok(())
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_open_file_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl = raised;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    let limit = rl.rlim_cur as u64;
    limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limit_is_raised_to_the_hard_limit() {
        assert!(raise_open_file_limit() > 0);
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"short"));
        assert!(!is_valid_key(b"!!!!!!!!!!!!!!!!!!!!!!!!"));
    }
}
