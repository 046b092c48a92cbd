//! Prometheus metrics and the small HTTP listener that serves them.
//!
//! Every metric is created once at start-up and held as a handle (labelled
//! ones by reason, one handle per label value), so the hot path is one
//! relaxed atomic add per update: no label lookup, no lock. The one
//! exception is opt-in: with `metrics.per_room_labels`, each publish looks
//! its room's series up under a lock, and at most [`MAX_ROOM_SERIES`] rooms
//! get series of their own.
//! Counters end in `_total` (prometheus-client appends it) and only go up;
//! gauges describe the present.
//!
//! A leaf: it knows nothing of who counts.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a client's connection ended. Each connection ends exactly once, so
/// the per-reason counters always add up to `wsrelay_disconnections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client sent a Close frame.
    ClientClose,
    /// The TCP connection ended without a Close frame (EOF or reset).
    Reset,
    /// The client broke the protocol (bad frame, invalid UTF-8, too large).
    ProtocolError,
    /// It fell too far behind its room's log (past its lag limits with its
    /// socket full, or past twice them); it was closed with 1008.
    SlowConsumer,
    /// Writing to the client's socket failed.
    WriteError,
    /// Its socket accepted nothing for `client.write_timeout`; dropped.
    WriteTimeout,
    /// The server shut down and closed it with 1001.
    Shutdown,
    /// It sent faster than `limits.messages_per_second` allows; closed with 1008.
    RateLimit,
    /// It sent nothing, not even a pong, for `client.idle_timeout`; closed with 1001.
    IdleTimeout,
    /// Its JWT expired; closed with 1008.
    TokenExpired,
    /// It sent a message as a subscriber; closed with 1008.
    NotPermitted,
    /// Its room's connections were closed through the HTTP API (1000).
    ClosedByApi,
    /// One of its messages took longer than `limits.message_timeout` to
    /// arrive; closed with 1008.
    MessageTimeout,
    /// It was told positions, and its room's positions moved to another
    /// epoch (in a cluster: the broker lost the room's history, or the
    /// node numbered messages itself while the broker was unreachable);
    /// closed with 1012 so that it resumes.
    EpochMoved,
}

impl DisconnectReason {
    pub const ALL: [Self; 14] = [
        Self::ClientClose,
        Self::Reset,
        Self::ProtocolError,
        Self::SlowConsumer,
        Self::WriteError,
        Self::WriteTimeout,
        Self::Shutdown,
        Self::RateLimit,
        Self::IdleTimeout,
        Self::TokenExpired,
        Self::NotPermitted,
        Self::ClosedByApi,
        Self::MessageTimeout,
        Self::EpochMoved,
    ];

    /// The label value, as it appears in `/metrics` and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClose => "client_close",
            Self::Reset => "reset",
            Self::ProtocolError => "protocol_error",
            Self::SlowConsumer => "slow_consumer",
            Self::WriteError => "write_error",
            Self::WriteTimeout => "write_timeout",
            Self::Shutdown => "shutdown",
            Self::RateLimit => "rate_limit",
            Self::IdleTimeout => "idle_timeout",
            Self::TokenExpired => "token_expired",
            Self::NotPermitted => "not_permitted",
            Self::ClosedByApi => "closed_by_api",
            Self::MessageTimeout => "message_timeout",
            Self::EpochMoved => "epoch_moved",
        }
    }
}

/// Why a connection attempt never became a WebSocket client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The TLS handshake failed or timed out.
    Tls,
    /// The HTTP request was not a valid WebSocket upgrade (4xx sent).
    BadRequest,
    /// The page's origin is not allowed (403).
    Origin,
    /// No valid token (401).
    Auth,
    /// The token does not allow that room or role (403).
    Forbidden,
    /// `limits.max_connections` was reached (503).
    MaxConnections,
    /// `limits.max_connections_per_ip` was reached for its address (429).
    MaxConnectionsPerIp,
    /// `rooms.max_rooms` rooms exist and it asked for another (503).
    MaxRooms,
    /// The TLS handshake and HTTP request took longer than `limits.handshake_timeout`.
    HandshakeTimeout,
}

impl RejectReason {
    pub const ALL: [Self; 9] = [
        Self::Tls,
        Self::BadRequest,
        Self::Origin,
        Self::Auth,
        Self::Forbidden,
        Self::MaxConnections,
        Self::MaxConnectionsPerIp,
        Self::MaxRooms,
        Self::HandshakeTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::BadRequest => "bad_request",
            Self::Origin => "origin",
            Self::Auth => "auth",
            Self::Forbidden => "forbidden",
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::MaxRooms => "max_rooms",
            Self::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Discarded by the slow-consumer policy: skipped by `drop_oldest`,
    /// missed under `drop_newest`, or still due to a client evicted for
    /// being slow (or whose socket was full when it left).
    SlowConsumer,
    /// Sent over `limits.messages_per_second` with `on_rate_exceeded: drop`.
    RateLimit,
}

impl DropReason {
    pub const ALL: [Self; 2] = [Self::SlowConsumer, Self::RateLimit];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow_consumer",
            Self::RateLimit => "rate_limit",
        }
    }
}

/// Why a cluster message was lost on its way to the broker or from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterDropReason {
    /// Pushed out of the outbox (`cluster.buffer_messages` / `buffer_bytes`),
    /// typically while the broker was unreachable.
    BufferFull,
    /// In a batch whose publish failed, or refused by the broker (too large).
    BrokerError,
    /// From the broker, with no room for it on this node: pushed out of the
    /// inbound queues (`cluster.inbound_messages` / `inbound_bytes`), or
    /// dropped by the NATS client as a slow consumer.
    InboundOverflow,
}

impl ClusterDropReason {
    pub const ALL: [Self; 3] = [Self::BufferFull, Self::BrokerError, Self::InboundOverflow];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BufferFull => "buffer_full",
            Self::BrokerError => "broker_error",
            Self::InboundOverflow => "inbound_overflow",
        }
    }
}

type ReasonLabel = [(&'static str, &'static str); 1];

/// A counter family labelled by a fixed set of reasons, every series
/// created at start-up (so each reads 0, not absent) and held by index, so
/// counting is one atomic add with no label lookup. A reason's index is its
/// enum discriminant, which is its place in the enum's `ALL` (a test checks).
#[derive(Clone)]
struct ByReason<const N: usize> {
    family: Family<ReasonLabel, Counter>,
    series: [Counter; N],
}

impl<const N: usize> ByReason<N> {
    fn new(reasons: [&'static str; N]) -> Self {
        let family = Family::<ReasonLabel, Counter>::default();
        // A counter handle shares its value with the family's series.
        let series = reasons.map(|r| family.get_or_create(&[("reason", r)]).clone());
        Self { family, series }
    }

    fn get(&self, index: usize) -> &Counter {
        &self.series[index]
    }
}

/// The cluster's metrics, registered only when a backend is configured.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// 1 while the broker connection is up.
    pub connected: Gauge,
    /// Rooms subscribed on the broker now.
    pub subscriptions: Gauge,
    /// Messages waiting for the broker now.
    pub buffered: Gauge,
    /// Messages handed to the broker.
    pub published: Counter,
    /// Messages from other nodes delivered here.
    pub received: Counter,
    /// Broker messages that were not wsrelay messages of a known version.
    pub malformed: Counter,
    /// Reads of a room's history from the broker (shared history), and
    /// those that failed.
    pub history_reads: Counter,
    pub history_read_errors: Counter,
    dropped: ByReason<{ ClusterDropReason::ALL.len() }>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            subscriptions: Gauge::default(),
            buffered: Gauge::default(),
            published: Counter::default(),
            received: Counter::default(),
            malformed: Counter::default(),
            history_reads: Counter::default(),
            history_read_errors: Counter::default(),
            dropped: ByReason::new(ClusterDropReason::ALL.map(|r| r.as_str())),
        }
    }
}

impl ClusterMetrics {
    /// `n` messages to or from the broker were lost.
    pub fn dropped(&self, reason: ClusterDropReason, n: u64) {
        self.dropped.get(reason as usize).inc_by(n);
    }

    /// What [`ClusterMetrics::dropped`] has counted for `reason` (the
    /// tests' view; `/metrics` reads the family).
    #[cfg(test)]
    pub fn dropped_count(&self, reason: ClusterDropReason) -> u64 {
        self.dropped.get(reason as usize).get()
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "cluster_connected",
            "1 while the cluster broker connection is up",
            self.connected.clone(),
        );
        r.register(
            "cluster_subscriptions",
            "Rooms this node is subscribed to on the broker (those with local subscribers)",
            self.subscriptions.clone(),
        );
        r.register(
            "cluster_buffered_messages",
            "Messages waiting to be sent to the broker",
            self.buffered.clone(),
        );
        r.register(
            "cluster_published_messages",
            "Messages sent to the broker for the other nodes",
            self.published.clone(),
        );
        r.register(
            "cluster_received_messages",
            "Messages from other nodes delivered to this node's clients",
            self.received.clone(),
        );
        r.register(
            "cluster_history_reads",
            "Reads of a room's history from the broker (shared history): one per room and range, however many clients need it",
            self.history_reads.clone(),
        );
        r.register(
            "cluster_history_read_errors",
            "Reads of a room's history from the broker that failed or timed out (what they were for goes without: a resume is answered recovered false, a gap's messages are given up)",
            self.history_read_errors.clone(),
        );
        r.register(
            "cluster_dropped_messages",
            "Cluster messages lost on their way to the broker or from it, by reason",
            self.dropped.family.clone(),
        );
        r.register(
            "cluster_malformed_messages",
            "Broker messages dropped as not wsrelay messages of a known version",
            self.malformed.clone(),
        );
    }
}
type RoomLabel = [(&'static str, String); 1];

/// Rooms that get series of their own with `metrics.per_room_labels`: room
/// names are chosen by clients, and each name would otherwise be a series
/// forever. The rest are counted together under `room="other"`.
pub const MAX_ROOM_SERIES: usize = 1000;
const OTHER_ROOMS: &str = "other";

/// The relay's metrics. Cheap to share: every field is a handle onto an atomic.
pub struct Metrics {
    registry: Registry,
    /// WebSocket clients accepted (101 sent).
    pub connections: Counter,
    /// Clients gone, for any reason.
    pub disconnections: Counter,
    disconnections_by_reason: ByReason<{ DisconnectReason::ALL.len() }>,
    /// Clients connected now.
    pub connections_active: Gauge,
    /// Rooms with at least one member.
    pub rooms_active: Gauge,
    /// 1 while the relay accepts new clients, 0 once it drains for
    /// shutdown; `/readyz` answers from it.
    pub ready: Gauge,
    rejected: ByReason<{ RejectReason::ALL.len() }>,
    /// Data messages received from clients.
    pub messages_received: Counter,
    /// Payload bytes of data messages received from clients.
    pub bytes_received: Counter,
    /// Data messages written to clients' sockets.
    pub messages_sent: Counter,
    /// Payload bytes of data messages written to clients' sockets.
    pub bytes_sent: Counter,
    dropped: ByReason<{ DropReason::ALL.len() }>,
    compressed_messages: Counter,
    compression_input_bytes: Counter,
    compression_output_bytes: Counter,
    compression_seconds: Counter<f64, AtomicU64>,
    /// Messages and payload bytes rooms' logs hold, while history is on.
    pub history_messages: Gauge,
    pub history_bytes: Gauge,
    pub history_rooms_kept: Gauge,
    /// Clients that joined behind the head (a rewind or a recovery), and
    /// the messages they were replayed.
    pub replays: Counter,
    pub replayed_messages: Counter,
    recoveries: Family<[(&'static str, &'static str); 1], Counter>,
    tls_reloads: Family<[(&'static str, &'static str); 1], Counter>,
    room_messages: Family<RoomLabel, Counter>,
    room_deliveries: Family<RoomLabel, Counter>,
    /// The per-room series made so far (messages, deliveries), at most
    /// [`MAX_ROOM_SERIES`]; rooms past that count under `room="other"`.
    room_series: std::sync::Mutex<std::collections::HashMap<String, (Counter, Counter)>>,
    /// Whether the per-room families are exported at all.
    per_room: bool,
    /// When the certificate in use expires (Unix seconds; 0 without TLS).
    pub tls_certificate_expiry: Gauge,
    /// Present when the relay is part of a cluster.
    pub cluster: Option<ClusterMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, without per-room series.
    pub fn new() -> Self {
        Self::with_per_room_labels(false)
    }

    /// Every metric; with `per_room`, also messages and deliveries by room.
    pub fn with_per_room_labels(per_room: bool) -> Self {
        let mut registry = Registry::with_prefix("wsrelay");
        let m = Self {
            connections: Counter::default(),
            disconnections: Counter::default(),
            disconnections_by_reason: ByReason::new(DisconnectReason::ALL.map(|r| r.as_str())),
            connections_active: Gauge::default(),
            ready: Gauge::default(),
            rooms_active: Gauge::default(),
            rejected: ByReason::new(RejectReason::ALL.map(|r| r.as_str())),
            messages_received: Counter::default(),
            bytes_received: Counter::default(),
            messages_sent: Counter::default(),
            bytes_sent: Counter::default(),
            dropped: ByReason::new(DropReason::ALL.map(|r| r.as_str())),
            compressed_messages: Counter::default(),
            compression_input_bytes: Counter::default(),
            compression_output_bytes: Counter::default(),
            compression_seconds: Counter::default(),
            history_messages: Gauge::default(),
            history_bytes: Gauge::default(),
            history_rooms_kept: Gauge::default(),
            replays: Counter::default(),
            replayed_messages: Counter::default(),
            recoveries: Family::default(),
            tls_reloads: Family::default(),
            room_messages: Family::default(),
            room_deliveries: Family::default(),
            room_series: Default::default(),
            per_room: false,
            tls_certificate_expiry: Gauge::default(),
            cluster: None,
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections",
            "WebSocket clients accepted",
            m.connections.clone(),
        );
        r.register(
            "disconnections",
            "WebSocket clients gone, for any reason",
            m.disconnections.clone(),
        );
        r.register(
            "disconnections_by_reason",
            "WebSocket clients gone, by reason",
            m.disconnections_by_reason.family.clone(),
        );
        r.register(
            "connections_active",
            "WebSocket clients connected now",
            m.connections_active.clone(),
        );
        r.register(
            "rooms_active",
            "Rooms that exist: with at least one member, or history kept (1 with rooms off and anyone connected)",
            m.rooms_active.clone(),
        );
        r.register(
            "ready",
            "1 while the relay accepts new clients, 0 while it drains for shutdown",
            m.ready.clone(),
        );
        m.ready.set(1);
        r.register(
            "rejected_connections",
            "Connection attempts that never became WebSocket clients, by reason",
            m.rejected.family.clone(),
        );
        r.register(
            "messages",
            "Data messages received from clients",
            m.messages_received.clone(),
        );
        r.register(
            "received_bytes",
            "Payload bytes of data messages received from clients",
            m.bytes_received.clone(),
        );
        r.register(
            "messages_delivered",
            "Data messages written to client sockets (one per recipient)",
            m.messages_sent.clone(),
        );
        r.register(
            "sent_bytes",
            "Payload bytes of data messages written to client sockets",
            m.bytes_sent.clone(),
        );
        r.register(
            "dropped_messages",
            "Messages not delivered, by reason: discarded by the slow-consumer policy, or over a client's rate limit",
            m.dropped.family.clone(),
        );
        r.register(
            "compressed_messages",
            "Messages compressed for clients with permessage-deflate (each once, however many clients get it)",
            m.compressed_messages.clone(),
        );
        r.register(
            "compression_input_bytes",
            "Payload bytes of the messages compressed",
            m.compression_input_bytes.clone(),
        );
        r.register(
            "compression_output_bytes",
            "Payload bytes they came to (a message that did not get smaller counts as sent, plain)",
            m.compression_output_bytes.clone(),
        );
        r.register(
            "compression_seconds",
            "CPU time spent compressing messages",
            m.compression_seconds.clone(),
        );
        r.register(
            "history_messages",
            "Messages held in rooms' logs (history, and what readers still need), while rooms.history is on",
            m.history_messages.clone(),
        );
        r.register(
            "history_bytes",
            "Payload bytes held in rooms' logs, while rooms.history is on",
            m.history_bytes.clone(),
        );
        r.register(
            "history_rooms_kept",
            "Rooms nobody is in, kept for their history or epoch (each counts 1 KiB against rooms.history.total_bytes)",
            m.history_rooms_kept.clone(),
        );
        r.register(
            "replays",
            "Clients that joined behind the head of their room's log (?rewind= or ?since=)",
            m.replays.clone(),
        );
        r.register(
            "replayed_messages",
            "Messages those clients started behind the head",
            m.replayed_messages.clone(),
        );
        r.register(
            "recoveries",
            "Clients that asked to resume (?since=), by result: recovered, or not (told recovered: false)",
            m.recoveries.clone(),
        );
        r.register(
            "tls_reloads",
            "Certificate reloads (SIGHUP or a changed file), by result",
            m.tls_reloads.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate in use expires, in Unix seconds (0 without TLS)",
            m.tls_certificate_expiry.clone(),
        );
        if per_room {
            r.register(
                "room_messages",
                "Messages published into each room (metrics.per_room_labels)",
                m.room_messages.clone(),
            );
            r.register(
                "room_deliveries",
                "Messages queued for a room's subscribers, by room (metrics.per_room_labels)",
                m.room_deliveries.clone(),
            );
        }
        // Create every labelled series up front so they read 0, not absent.
        for result in ["ok", "error"] {
            let _ = m.tls_reloads.get_or_create(&[("result", result)]);
        }
        for result in ["recovered", "failed"] {
            let _ = m.recoveries.get_or_create(&[("result", result)]);
        }
        Self {
            registry,
            per_room,
            ..m
        }
    }

    /// A client joined `replay` messages behind the head; `recovered`: how
    /// its `?since=` went, if it asked.
    pub fn joined(&self, replay: u64, recovered: Option<bool>) {
        if replay > 0 {
            self.replays.inc();
            self.replayed_messages.inc_by(replay);
        }
        if let Some(ok) = recovered {
            let result = if ok { "recovered" } else { "failed" };
            self.recoveries.get_or_create(&[("result", result)]).inc();
        }
    }

    /// Registers the cluster's metrics and returns their handles.
    pub fn register_cluster(&mut self) -> ClusterMetrics {
        let cluster = ClusterMetrics::default();
        cluster.register(&mut self.registry);
        self.cluster = Some(cluster.clone());
        cluster
    }

    /// A client was accepted.
    pub fn connected(&self) {
        self.connections.inc();
        self.connections_active.inc();
    }

    /// A client is gone; called exactly once per accepted client.
    pub fn disconnected(&self, reason: DisconnectReason) {
        self.disconnections.inc();
        self.disconnections_by_reason.get(reason as usize).inc();
        self.connections_active.dec();
    }

    /// `n` messages were not delivered.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped.get(reason as usize).inc_by(n);
    }

    /// A message was compressed for the clients with permessage-deflate:
    /// `before` payload bytes to `after`, in `seconds`.
    pub fn compressed(&self, before: usize, after: usize, seconds: f64) {
        self.compressed_messages.inc();
        self.compression_input_bytes.inc_by(before as u64);
        self.compression_output_bytes.inc_by(after as u64);
        self.compression_seconds.inc_by(seconds);
    }

    /// A connection attempt was turned away before the upgrade.
    pub fn rejected(&self, reason: RejectReason) {
        self.rejected.get(reason as usize).inc();
    }

    /// A data message of `bytes` payload bytes arrived (from a client or
    /// the HTTP API).
    pub fn received(&self, bytes: usize) {
        self.messages_received.inc();
        self.bytes_received.inc_by(bytes as u64);
    }

    /// A message was published into `room` for `deliveries` subscribers;
    /// counted per room only with `metrics.per_room_labels`.
    pub fn room_published(&self, room: &str, deliveries: usize) {
        if !self.per_room {
            return;
        }
        let (messages, delivered) = {
            let mut series = self
                .room_series
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let full = series.len() >= MAX_ROOM_SERIES;
            let name = match (series.contains_key(room), full) {
                (false, true) => OTHER_ROOMS,
                _ => room,
            };
            match series.get(name) {
                Some(handles) => handles.clone(),
                None => {
                    let label = [("room", name.to_owned())];
                    let handles = (
                        self.room_messages.get_or_create(&label).clone(),
                        self.room_deliveries.get_or_create(&label).clone(),
                    );
                    series.insert(name.to_owned(), handles.clone());
                    handles
                }
            }
        };
        // Deliveries first: whoever sees a message counted sees its
        // deliveries counted too.
        delivered.inc_by(deliveries as u64);
        messages.inc();
    }

    /// A certificate reload succeeded (`ok`) or was refused.
    pub fn tls_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads.get_or_create(&[("result", result)]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Answers one request on the metrics listener: `/metrics` and `/healthz`.
pub async fn handle_http(req: Request<Incoming>, metrics: Arc<Metrics>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Bytes::from(metrics.render()),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        (&Method::GET, "/readyz") => match metrics.ready.get() {
            // Still serving: a node cut off from the broker relays locally,
            // so it stays in rotation, but says what it is missing.
            1 if metrics
                .cluster
                .as_ref()
                .is_some_and(|c| c.connected.get() == 0) =>
            {
                (
                    StatusCode::OK,
                    "text/plain",
                    Bytes::from_static(
                        b"degraded: cluster broker unreachable, relaying locally only\n",
                    ),
                )
            }
            1 => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"draining\n"),
            ),
        },
        (_, "/metrics" | "/healthz" | "/readyz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"method not allowed\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_prefix_and_total_suffix() {
        let m = Metrics::new();
        m.connected();
        m.disconnected(DisconnectReason::SlowConsumer);
        let text = m.render();
        for line in [
            "wsrelay_connections_total 1",
            "wsrelay_disconnections_total 1",
            "wsrelay_disconnections_by_reason_total{reason=\"slow_consumer\"} 1",
            "wsrelay_disconnections_by_reason_total{reason=\"reset\"} 0",
            "wsrelay_connections_active 0",
            "wsrelay_messages_total 0",
            "wsrelay_messages_delivered_total 0",
            "wsrelay_received_bytes_total 0",
            "wsrelay_sent_bytes_total 0",
            "wsrelay_dropped_messages_total{reason=\"slow_consumer\"} 0",
            "wsrelay_dropped_messages_total{reason=\"rate_limit\"} 0",
            "wsrelay_rejected_connections_total{reason=\"bad_request\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn per_room_series_are_capped_with_the_rest_as_other() {
        let m = Metrics::with_per_room_labels(true);
        for i in 0..MAX_ROOM_SERIES + 10 {
            m.room_published(&format!("room{i}"), 2);
        }
        m.room_published("room0", 2);
        let text = m.render();
        let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        // The first MAX_ROOM_SERIES names, and "other" for the rest.
        assert_eq!(count("wsrelay_room_messages_total{"), MAX_ROOM_SERIES + 1);
        assert!(text.contains("wsrelay_room_messages_total{room=\"room0\"} 2\n"));
        assert!(text.contains("wsrelay_room_messages_total{room=\"other\"} 10\n"));
        assert!(text.contains("wsrelay_room_deliveries_total{room=\"other\"} 20\n"));
    }

    /// Series are held by the reason's discriminant: each reason must land
    /// in its own series, whatever order the enum lists them in.
    #[test]
    fn each_reason_counts_in_its_own_series() {
        let mut m = Metrics::new();
        let cluster = m.register_cluster();
        for (i, r) in DisconnectReason::ALL.into_iter().enumerate() {
            (0..=i).for_each(|_| m.disconnected(r));
        }
        for (i, r) in RejectReason::ALL.into_iter().enumerate() {
            (0..=i).for_each(|_| m.rejected(r));
        }
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            m.dropped(r, i as u64 + 1);
        }
        for (i, r) in ClusterDropReason::ALL.into_iter().enumerate() {
            cluster.dropped(r, i as u64 + 1);
        }
        let text = m.render();
        let want = |family: &str, reasons: Vec<&str>| {
            for (i, r) in reasons.into_iter().enumerate() {
                let line = format!("wsrelay_{family}_total{{reason=\"{r}\"}} {}", i + 1);
                assert!(
                    text.lines().any(|l| l == line),
                    "missing {line:?} in\n{text}"
                );
            }
        };
        want(
            "disconnections_by_reason",
            DisconnectReason::ALL.map(|r| r.as_str()).to_vec(),
        );
        want(
            "rejected_connections",
            RejectReason::ALL.map(|r| r.as_str()).to_vec(),
        );
        want(
            "dropped_messages",
            DropReason::ALL.map(|r| r.as_str()).to_vec(),
        );
        want(
            "cluster_dropped_messages",
            ClusterDropReason::ALL.map(|r| r.as_str()).to_vec(),
        );
    }
}
