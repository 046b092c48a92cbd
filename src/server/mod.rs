//! Listeners, accept, the WebSocket upgrade, and shutdown.
//!
//! A connection goes: TCP accept → (TLS handshake) → hyper reads the HTTP
//! request → the [`Gate`] checks it and answers 101 or a 4xx → the
//! upgraded socket is handed to `connection::serve`. Doing the upgrade in
//! hyper rather than inside a WebSocket library lets the relay refuse a
//! request with a proper HTTP status before any WebSocket state exists.
//!
//! Shutdown is one [`CancellationToken`] and a [`TaskTracker`]: stop
//! accepting, cancel the token (every client gets Close 1001), wait for the
//! tracked tasks up to `shutdown.timeout`, then cancel a second token that
//! makes every remaining task drop its socket at once.
//!
//! The composition root: the only module that reads [`Config`], turning it
//! into each part's own settings; nothing below it knows it exists. Here:
//! wiring, `Server::bind` and `Server::run` (the shutdown sequence); the
//! rest by concern: `accept` (the WebSocket listener: accept, TLS, HTTP,
//! the upgrade), `side` (the metrics and API listeners), `shutdown`
//! (signals, closes spread over time), `certs` (certificate reloads),
//! `ticks` (what runs once per interval).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::Api;
use crate::auth::JwtRules;
use crate::backplane::{self, Cluster, ClusterSettings, SharedSettings};
use crate::config::{ClusterBackend, Config};
use crate::connection::{ConnectionContext, KeepAlive};
use crate::hub::{Compression, History, HistoryGauges, Hub};
use crate::log::{LagLimits, Retention};
use crate::metrics::{self, Metrics};
use crate::relay::{Relay, Remote};
use crate::tls::{self, CertStore, TlsError};
use crate::upgrade::{Gate, GateError, GateSettings};

mod accept;
mod certs;
mod shutdown;
mod side;
mod ticks;

use accept::{bind, handle_socket};
use certs::{CertReloader, watch_certificate};
use shutdown::close_in_batches;
use ticks::{history, keepalive};

pub use shutdown::Signals;
pub(crate) use side::serve_http_listener;

/// How long a metrics or API client may take to send its request head.
const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest HTTP request head accepted before the upgrade.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener: the key that sets its address.
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Gate(#[from] GateError),
    /// A cluster backend this build does not have.
    #[error("cluster.backend: {0}")]
    Cluster(String),
}

/// A relay whose listeners are bound and ready; [`Server::run`] serves it.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    /// The HTTP API's listener, when `api.enabled`.
    api: Option<(TcpListener, Arc<Api>)>,
    shared: Arc<Shared>,
    certs: Option<CertReloader>,
    shutdown_timeout: Duration,
    /// How long the relay keeps accepting after the signal, not ready.
    drain_delay: Duration,
    /// Rooms' history ttl, when history is on.
    history_ttl: Option<Duration>,
}

/// What every connection task needs, shared by reference count.
struct Shared {
    conn: Arc<ConnectionContext>,
    /// This node's end of the cluster, if it is in one.
    cluster: Option<Arc<Cluster>>,
    /// Tracks every task that serves a client, for shutdown.
    tracker: TaskTracker,
    tls: Option<TlsAcceptor>,
    /// Decides each upgrade request.
    gate: Gate,
    /// How long a client may take from TCP accept to its 101 (TLS included).
    handshake_timeout: Duration,
    /// Places for connections in their handshake (`limits.max_handshakes`).
    handshakes: Option<Arc<Semaphore>>,
}

impl Server {
    /// Loads TLS files and binds both listeners. Fails with the file or the
    /// address at fault; nothing is served until [`Server::run`].
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        backplane::check_backend(config.cluster.backend).map_err(ServerError::Cluster)?;
        let certs = match &config.server.tls {
            Some(t) => Some(Arc::new(CertStore::load(&t.cert_file, &t.key_file)?)),
            None => None,
        };
        let tls = match &certs {
            Some(store) => Some(TlsAcceptor::from(tls::server_config(store.clone())?)),
            None => None,
        };
        let listener = bind("server.listen, --listen", config.server.listen).await?;
        let metrics_listener = match config.metrics.enabled {
            true => Some(
                bind(
                    "metrics.listen, --metrics-listen; metrics.enabled: false turns it off",
                    config.metrics.listen,
                )
                .await?,
            ),
            false => None,
        };
        let api_listener = match config.api.enabled {
            true => Some(bind("api.listen", config.api.listen).await?),
            false => None,
        };
        let mut metrics = Metrics::with_per_room_labels(config.metrics.per_room_labels);
        let cluster = match config.cluster.backend {
            ClusterBackend::None => None,
            _ => Some(Arc::new(Cluster::new(
                &cluster_settings(config),
                metrics.register_cluster(),
            ))),
        };
        let metrics = Arc::new(metrics);
        let max_rooms = match config.rooms.enabled {
            true => config.rooms.max_rooms,
            false => 0,
        };
        if let Some(expiry) = certs.as_ref().and_then(|c| c.not_after()) {
            metrics.tls_certificate_expiry.set(expiry);
        }
        let mut hub = Hub::new(
            LagLimits {
                messages: config.client.queue_messages,
                bytes: config.client.queue_bytes,
                on_overflow: config.client.on_overflow,
            },
            max_rooms,
            metrics.rooms_active.clone(),
        );
        if let Some(c) = &cluster {
            hub = hub.with_interest(c.interest());
            if c.shares_history() {
                hub = hub.with_shared_history();
            }
        }
        let h = &config.rooms.history;
        if h.size > 0 {
            hub = hub.with_history(
                History {
                    retention: Retention {
                        messages: h.size,
                        bytes: h.max_bytes,
                    },
                    ttl: h.ttl,
                    total_bytes: h.total_bytes as u64,
                },
                HistoryGauges {
                    messages: metrics.history_messages.clone(),
                    bytes: metrics.history_bytes.clone(),
                    kept_rooms: metrics.history_rooms_kept.clone(),
                },
            );
        }
        if config.compression.enabled {
            let counter = metrics.clone();
            hub = hub.with_compression(
                Compression {
                    level: config.compression.level,
                    min_size: config.compression.min_size,
                },
                Box::new(move |c| counter.compressed(c.before, c.after, c.took.as_secs_f64())),
            );
        }
        let remote = cluster.clone().map(|c| c as Arc<dyn Remote>);
        let mut relay = Relay::new(Arc::new(hub), metrics, remote);
        if let Some(c) = cluster.clone().filter(|c| c.shares_history()) {
            relay = relay.with_shared_history(c);
        }
        let relay = Arc::new(relay);
        let conn = ConnectionContext {
            relay: relay.clone(),
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
            close_timeout: config.client.close_timeout,
            write_timeout: Some(config.client.write_timeout).filter(|t| !t.is_zero()),
            max_message_size: config.limits.max_message_size,
            message_timeout: Some(config.limits.message_timeout).filter(|t| !t.is_zero()),
            rate_limit: (config.limits.messages_per_second, config.limits.burst),
            on_rate_exceeded: config.limits.on_rate_exceeded,
            keepalive: KeepAlive::new(config.client.ping_interval, config.client.idle_timeout),
        };
        let conn = Arc::new(conn);
        let api = api_listener.map(|l| {
            let api = Api::new(
                &config.api.keys,
                relay,
                cluster.clone(),
                config.limits.max_message_size,
                config.rooms.enabled,
                conn.shutdown.clone(),
            );
            (l, Arc::new(api))
        });
        Ok(Self {
            listener,
            metrics_listener,
            api,
            shared: Arc::new(Shared {
                conn,
                cluster,
                tracker: TaskTracker::new(),
                tls,
                gate: Gate::new(gate_settings(config))?,
                handshake_timeout: config.limits.handshake_timeout,
                handshakes: (config.limits.max_handshakes > 0)
                    .then(|| Arc::new(Semaphore::new(config.limits.max_handshakes))),
            }),
            certs: certs.map(|store| CertReloader {
                store,
                watch_interval: config
                    .server
                    .tls
                    .as_ref()
                    .map_or(Duration::ZERO, |t| t.watch_interval),
            }),
            shutdown_timeout: config.shutdown.timeout,
            drain_delay: config.shutdown.drain_delay,
            history_ttl: (config.rooms.history.size > 0).then_some(config.rooms.history.ttl),
        })
    }

    /// The WebSocket listener's address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has an address; fall back rather than panic.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Where the HTTP API listens, if it is enabled.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|(l, _)| l.local_addr().ok())
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
        format!(
            "{scheme}://{}{}",
            self.local_addr(),
            self.shared.gate.path()
        )
    }

    /// Reloads the certificate on every SIGHUP until shutdown (a relay
    /// without TLS logs the signal and carries on). Installed before the
    /// relay says it is listening, so a SIGHUP sent after that is never fatal.
    pub fn reload_on_sighup(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; certificates reload only when their files change");
                return;
            }
        };
        let (certs, cx) = (self.certs.clone(), self.shared.conn.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = hup.recv() => if got.is_none() { return },
                    () = cx.shutdown.cancelled() => return,
                }
                match &certs {
                    Some(certs) => certs.reload(&cx.relay.metrics, "SIGHUP"),
                    None => info!("SIGHUP received; no TLS certificate to reload"),
                }
            }
        });
    }

    /// Serves until `shutdown` resolves, then closes every client with 1001
    /// and returns once they are gone or `shutdown.timeout` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            metrics_listener,
            api,
            shared,
            certs,
            shutdown_timeout,
            drain_delay,
            history_ttl,
        } = self;
        let cx = shared.conn.clone();
        // Stops the metrics and API listeners once shutdown is complete.
        let side_listeners_stop = CancellationToken::new();
        if let Some(l) = metrics_listener {
            let metrics = cx.relay.metrics.clone();
            let handle = move |req| metrics::handle_http(req, metrics.clone());
            let stop = side_listeners_stop.clone();
            tokio::spawn(serve_http_listener(l, "metrics", stop, handle));
        }
        if let Some((l, api)) = api {
            let handle = move |req| {
                let api = api.clone();
                async move { api.handle(req).await }
            };
            let stop = side_listeners_stop.clone();
            tokio::spawn(serve_http_listener(l, "api", stop, handle));
        }

        if cx.keepalive.is_some() {
            tokio::spawn(keepalive(cx.clone()));
        }
        if let Some(ttl) = history_ttl {
            tokio::spawn(history(cx.clone(), ttl));
        }
        // Stopped last, once every client is gone: their last messages
        // still reach the other nodes.
        let cluster_stop = CancellationToken::new();
        let cluster = shared.cluster.clone().map(|cluster| {
            let relay = cx.relay.clone();
            let task = tokio::spawn(cluster.clone().run(relay, cluster_stop.clone()));
            (cluster, task)
        });
        if let Some(certs) = certs.filter(|c| !c.watch_interval.is_zero()) {
            tokio::spawn(watch_certificate(certs, cx.clone()));
        }

        let tracker = shared.tracker.clone();
        tokio::pin!(shutdown);
        // Set when the shutdown signal came: until then, keep accepting.
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            let drained = async {
                match drain_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = drained => break,
                () = &mut shutdown, if drain_until.is_none() => {
                    // Load balancers stop sending clients; those already on
                    // their way are still served for the drain delay.
                    cx.relay.metrics.ready.set(0);
                    info!(drain_delay = ?drain_delay, "draining: /readyz now answers 503");
                    drain_until = Some(tokio::time::Instant::now() + drain_delay);
                }
                accepted = accept::accept(&listener, shared.handshakes.as_ref()) => match accepted {
                    Ok((stream, peer, place)) => {
                        let shared = shared.clone();
                        tracker.spawn(async move {
                            handle_socket(stream, peer, shared).await;
                            // The handshake is over: upgraded (the client runs
                            // on a task of its own by now) or refused.
                            drop(place);
                        });
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

        // Cancel first (handshakes in flight give up; the keepalive stops),
        // then close every membership in batches: a client whose membership
        // closes says goodbye with 1001 and leaves its room. Until its batch
        // comes it stays in its room, hearing and being heard.
        cx.shutdown.cancel();
        let clients = cx.relay.hub.drain();
        info!(clients = clients.len(), timeout = ?shutdown_timeout, "shutting down: closing clients with 1001");
        tracker.close();
        let closing = async {
            // Done when every client is gone, whether or not the last
            // batches were due yet.
            tokio::select! {
                () = async {
                    close_in_batches(clients, shutdown_timeout / 2).await;
                    tracker.wait().await;
                } => {}
                () = tracker.wait() => {}
            }
        };
        if tokio::time::timeout(shutdown_timeout, closing)
            .await
            .is_err()
        {
            warn!(
                clients = cx.relay.metrics.connections_active.get(),
                "shutdown timeout passed; dropping remaining clients"
            );
            cx.force.cancel();
            // Closing clients race `force` and handshakes race the shutdown
            // token, so this is quick; bound it anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
        }
        if let Some((cluster, task)) = cluster {
            info!(
                waiting = cluster.waiting(),
                timeout = ?shutdown_timeout,
                "shutting down: sending what waits for the cluster broker"
            );
            cluster_stop.cancel();
            if tokio::time::timeout(shutdown_timeout, task).await.is_err() {
                warn!(
                    waiting = cluster.waiting(),
                    "cluster broker did not take the last messages in time; leaving them"
                );
            }
        }
        side_listeners_stop.cancel();
        info!("shutdown complete");
    }
}

/// Loads everything [`Server::bind`] would load from `config` (TLS files,
/// the JWT key, the origin list) without binding anything.
pub fn check(config: &Config) -> Result<(), ServerError> {
    backplane::check_backend(config.cluster.backend).map_err(ServerError::Cluster)?;
    if let Some(t) = &config.server.tls {
        CertStore::load(&t.cert_file, &t.key_file)?;
    }
    Gate::new(gate_settings(config))?;
    Ok(())
}

/// Runs the relay described by `config` until SIGINT or SIGTERM.
pub async fn run(config: &Config) -> Result<(), ServerError> {
    // Before anything is announced, so a signal sent on seeing "listening" counts.
    let signals = Signals::install();
    // Each client is a file descriptor: use all the process may have.
    let files = raise_open_file_limit();
    let server = Server::bind(config).await?;
    server.reload_on_sighup();
    if let Some(addr) = server.metrics_addr() {
        info!(url = %format!("http://{addr}/metrics"), addr = %addr, "metrics listening");
    }
    if let Some(addr) = server.api_addr() {
        info!(url = %format!("http://{addr}/api/v1/"), addr = %addr, "api listening");
    }
    // Last: scripts and tests take this line to mean "ready".
    info!(url = %server.url(), addr = %server.local_addr(), open_files = files, "relay listening");
    server
        .run(async {
            let signal = signals.shutdown().await;
            info!(signal, "signal received");
        })
        .await;
    Ok(())
}

/// The cluster's settings from the configuration.
fn cluster_settings(config: &Config) -> ClusterSettings {
    let c = &config.cluster;
    ClusterSettings {
        backend: c.backend,
        url: c.url.clone(),
        prefix: c.prefix.clone(),
        node_id: c.node_id.clone(),
        buffer_messages: c.buffer_messages,
        buffer_bytes: c.buffer_bytes,
        inbound_messages: c.inbound_messages,
        inbound_bytes: c.inbound_bytes,
        max_message_size: config.limits.max_message_size,
        history: (config.rooms.history.size > 0).then_some(SharedSettings {
            size: config.rooms.history.size,
            ttl: config.rooms.history.ttl,
            total_bytes: config.rooms.history.total_bytes,
        }),
    }
}

/// The gate's settings from the configuration.
fn gate_settings(config: &Config) -> GateSettings {
    let auth = &config.auth;
    GateSettings {
        path: config.server.path.clone(),
        room_prefix: config.rooms.enabled.then(|| config.rooms.prefix.clone()),
        echo: config.relay.echo_to_sender,
        allowed_origins: config.server.allowed_origins.clone(),
        tokens: auth.tokens.clone(),
        jwt: auth.jwt.as_ref().map(|j| JwtRules {
            key: j.key.clone(),
            audience: j.audience.clone(),
            issuer: j.issuer.clone(),
            leeway: j.leeway,
        }),
        trusted_proxies: config.server.trusted_proxies.clone(),
        max_connections: config.limits.max_connections,
        max_connections_per_ip: config.limits.max_connections_per_ip,
        compression: config.compression.enabled,
    }
}

/// Raises the soft open-file limit to the hard limit; returns the new soft
/// limit (0 if it cannot be read).
fn raise_open_file_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limit_is_raised_to_the_hard_limit() {
        let raised = raise_open_file_limit();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!((raised, soft), (hard, hard));
    }
}
