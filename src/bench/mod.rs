//! `wsrelay bench`: a load generator that checks what it measures.
//!
//! It points at any relay URL (wsrelay or another) and runs one of four modes:
//!
//! - [`fanout`]: N subscribers and P publishers. Every message carries its
//!   publisher, a per-publisher sequence number and its send time
//!   ([`payload`]); every receiver checks order and completeness
//!   ([`stats::OrderCheck`]). Publishers send as fast as an in-flight window
//!   allows (their own echo frees a slot) or at a fixed total rate.
//! - [`idle`]: hold N connections open, to measure memory per connection,
//!   fresh or after a burst of traffic.
//! - [`connect`]: open connections as fast as possible until one fails.
//! - [`churn::churn`]: connections that come and go at a steady rate,
//!   ending every way a client can (for soak tests).
//!
//! With `--pid` of a relay on the same host, the report includes the relay's
//! CPU time per delivery and memory per connection, read from /proc over the
//! measured window only (after warm-up).
//!
//! A tool: it drives a relay over real sockets, through `client`, and
//! reads `/proc`; it knows nothing of the relay's internals.

pub mod churn;
pub mod payload;
pub mod process;
mod resume;
pub mod stats;
pub mod storm;

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_websockets::{Message, Payload};

use crate::client::{ClientError, ClientStream, Dialer};
use payload::Stamp;
use stats::{OrderCheck, Percentiles};

/// Connections per source address above which the bench spreads source
/// addresses over 127.0.0.x (each address has about 28 000 ephemeral ports).
const CONNECTIONS_PER_SOURCE: usize = 25_000;

/// Where to connect and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    /// Source addresses to spread connections over; empty means automatic.
    pub sources: Vec<IpAddr>,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    /// The relay's process id, for CPU and memory figures.
    pub pid: Option<u32>,
    /// Print a live progress line on stderr (when it is a terminal).
    pub progress: bool,
    /// Offer permessage-deflate (and inflate what the relay compresses).
    pub deflate: bool,
}

/// The `fanout` scenario.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub subscribers: usize,
    pub publishers: usize,
    /// Total messages per second over all publishers; `None` = window-limited.
    pub rate: Option<f64>,
    /// Messages each publisher may have in flight (sent, own echo not yet back).
    pub window: usize,
    /// Messages each publisher writes at once, in one write (1: as the
    /// window or the rate allows). The window is at least this.
    pub burst: usize,
    /// Payload bytes per message (at least the stamp header).
    pub size: usize,
    /// What fills each message after its stamp.
    pub payload: payload::Kind,
    pub binary: bool,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long receivers may take, after publishing stops, to get the rest.
    pub drain_timeout: Duration,
    /// Other relays of a cluster to spread the subscribers over (publishers
    /// stay on the target); empty: everyone on the target. With these,
    /// latency is measured at the subscribers only, across the broker.
    pub subscriber_urls: Vec<String>,
    /// Reconnect mode: subscribers are position-aware (`wsrelay.v1`, the
    /// room needs history) and each drops its connection after a random
    /// 0.5 to 1.5 times this, resuming on its node from the last position
    /// it had.
    pub reconnect: Option<Duration>,
}

/// How long subscribers on other nodes may take to hear the publishers.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "subscribers on the other nodes did not hear the publishers within {SETTLE_TIMEOUT:?}: \
         are the nodes in one cluster, and the URLs on one room?"
    )]
    Settle,
    #[error(
        "no join notice within {SETTLE_TIMEOUT:?}: reconnect mode needs wsrelay with \
         rooms.history on"
    )]
    NoPositions,
    #[error(transparent)]
    Client(#[from] Box<ClientError>),
    #[error("connection {index} of {total} failed: {source}")]
    Connect {
        index: usize,
        total: usize,
        #[source]
        source: Box<ClientError>,
    },
    #[error("cannot read the relay's resource use (pid {pid}): {source}")]
    Process {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The relay's resource use over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    pub cpu_seconds: f64,
    pub cpu_ns_per_delivery: Option<f64>,
    /// Of that, system time: the kernel's share (a loopback write runs the
    /// receiving side's network stack too).
    pub kernel_ns_per_delivery: Option<f64>,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_per_connection_bytes: f64,
}

/// Time to open the connections.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectFigures {
    pub connections: usize,
    /// Connections on which the relay accepted permessage-deflate.
    pub deflated: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// Per-connection handshake time, microseconds.
    pub latency_us: Percentiles,
    #[serde(skip)]
    histogram: Histogram<u64>,
}

impl ConnectFigures {
    /// `connections` opened since `started` (`deflated` of them with
    /// permessage-deflate), each taking what `latency` holds (ns).
    fn new(connections: usize, deflated: usize, started: Instant, latency: Histogram<u64>) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        Self {
            connections,
            deflated,
            seconds,
            per_second: connections as f64 / seconds.max(1e-9),
            latency_us: Percentiles::of(&latency),
            histogram: latency,
        }
    }
}

/// What a `fanout` run saw.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub subscribers: usize,
    pub publishers: usize,
    pub size: usize,
    /// `random` or `json`.
    pub payload: &'static str,
    pub binary: bool,
    pub window: Option<usize>,
    /// Messages per write per publisher.
    pub burst: usize,
    pub rate: Option<f64>,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    pub connect: ConnectFigures,
    pub published: u64,
    pub publishes_per_second: f64,
    /// Every message to every connected client, publishers included.
    pub expected_deliveries: u64,
    pub received_deliveries: u64,
    pub lost: u64,
    pub loss_percent: f64,
    pub reorders: u64,
    pub malformed: u64,
    /// Receivers that were closed or dropped, by close code (or `eof`/`error`).
    pub disconnects: BTreeMap<String, u64>,
    /// Deliveries arriving in the measured window, per second.
    pub deliveries_per_second: f64,
    /// Bytes read from the clients' sockets after their handshakes (frame
    /// headers included, compressed if the relay compressed), per delivery
    /// over the whole run: against `size`, what compression saved.
    pub wire_bytes_per_delivery: f64,
    /// Send-to-receive latency of deliveries in the measured window.
    pub latency_us: Percentiles,
    pub server: Option<ServerFigures>,
    /// Reconnect mode only.
    pub reconnect: Option<ReconnectFigures>,
}

/// What the subscribers of a reconnect-mode run did.
#[derive(Debug, Clone, Serialize)]
pub struct ReconnectFigures {
    /// Mean time between a subscriber's drops.
    pub every_seconds: f64,
    /// Drops, each followed by a resumption.
    pub reconnects: u64,
    /// Resumptions the relay answered `recovered: false`.
    pub not_recovered: u64,
}

impl FanoutReport {
    /// Whether anything was lost, reordered, malformed or disconnected, or
    /// a resuming subscriber was not recovered.
    pub fn saw_loss(&self) -> bool {
        self.lost > 0
            || self.reorders > 0
            || self.malformed > 0
            || !self.disconnects.is_empty()
            || self.reconnect.as_ref().is_some_and(|r| r.not_recovered > 0)
    }
}

/// State every fan-out task shares.
struct Run {
    clock: Instant,
    /// Messages sent so far by each publisher; final once `published` is cancelled.
    sent: Vec<AtomicU64>,
    published: CancellationToken,
    measure_from_ns: u64,
    measure_to_ns: u64,
    drain_deadline: Instant,
    /// Deliveries so far, updated in steps, for the progress line.
    progress: AtomicU64,
}

impl Run {
    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    fn sent(&self) -> Vec<u64> {
        self.sent
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .collect()
    }
}

/// One receiver's findings.
struct Received {
    check: OrderCheck,
    latency: Histogram<u64>,
    measured: u64,
    disconnect: Option<String>,
    /// Times it dropped its connection and resumed (reconnect mode).
    reconnects: u64,
    /// Resumptions the relay answered `recovered: false`.
    not_recovered: u64,
}

impl Received {
    fn new(publishers: usize) -> Self {
        Self {
            check: OrderCheck::new(publishers),
            latency: stats::new_histogram(),
            measured: 0,
            disconnect: None,
            reconnects: 0,
            not_recovered: 0,
        }
    }
}

/// Runs the fan-out scenario against `target`.
pub async fn fanout(target: &Target, opts: &FanoutOptions) -> Result<FanoutReport, BenchError> {
    let received_bytes = Arc::new(AtomicU64::new(0));
    let dialer = prepare(target).await?.counting_into(received_bytes.clone());
    let dialer = burst_dialer(dialer, opts);
    let total = opts.subscribers + opts.publishers;
    let rss_before = sample(target.pid)?;
    let cross_node = !opts.subscriber_urls.is_empty();
    // Subscribers dial on their own when they must resume (position-aware,
    // unlike the publishers) or are on other nodes.
    let separate = cross_node || opts.reconnect.is_some();
    let mut nodes = Vec::new();
    if separate {
        let urls = match cross_node {
            true => opts.subscriber_urls.clone(),
            false => vec![target.url.clone()],
        };
        let protocols: &[&str] = match opts.reconnect {
            Some(_) => &[crate::wire::POSITIONS_PROTOCOL],
            None => &[],
        };
        for url in urls {
            let node = Target {
                url,
                ..target.clone()
            };
            let node = prepare(&node).await?.counting_into(received_bytes.clone());
            nodes.push(node.with_protocols(protocols).map_err(Box::new)?);
        }
    }
    let (mut clients, connect) = match separate {
        false => connect_all(&dialer, target, total).await?,
        true => connect_across(&nodes, &dialer, target, opts).await?,
    };
    let (subscribers, publishers) = clients.split_at_mut(opts.subscribers);
    let mut joined = Vec::new();
    if opts.reconnect.is_some() {
        for ws in subscribers.iter_mut() {
            let notice = tokio::time::timeout(SETTLE_TIMEOUT, resume::notice(ws)).await;
            joined.push(notice.ok().flatten().ok_or(BenchError::NoPositions)?);
        }
    }
    if cross_node && let Some(first) = publishers.first_mut() {
        await_subscriptions(subscribers, first).await?;
    }
    let rss_after = sample(target.pid)?;

    let clock = Instant::now();
    let measure_from = opts.warmup;
    let measure_to = opts.warmup + opts.duration;
    let run = Arc::new(Run {
        clock,
        sent: (0..opts.publishers).map(|_| AtomicU64::new(0)).collect(),
        published: CancellationToken::new(),
        measure_from_ns: measure_from.as_nanos() as u64,
        measure_to_ns: measure_to.as_nanos() as u64,
        drain_deadline: clock + measure_to + opts.drain_timeout,
        progress: AtomicU64::new(0),
    });

    let mut receivers = JoinSet::new();
    let mut publishers = JoinSet::new();
    let mut clients = clients.into_iter();
    let reconnecting = opts.reconnect.map(|every| {
        // Spread like connect_all, as if every resumption (at most about
        // two per interval per subscriber) were a connection of its own.
        let run_for = opts.warmup + opts.duration + opts.drain_timeout;
        let resumptions =
            opts.subscribers as f64 * 2.0 * run_for.as_secs_f64() / every.as_secs_f64();
        let sources = match nodes.first() {
            Some(node) => source_addresses(target, node, resumptions.min(1e9) as usize),
            None => Vec::new(),
        };
        resume::Reconnecting {
            nodes: nodes.into(),
            every,
            sources: sources.into(),
            next_source: Arc::default(),
        }
    });
    let mut joined = joined.into_iter();
    for i in 0..opts.subscribers {
        let Some(ws) = clients.next() else { break };
        match (&reconnecting, joined.next()) {
            (Some(how), Some(notice)) => receivers.spawn(resume::receive_reconnecting(
                ws,
                notice,
                i % how.nodes.len(),
                how.clone(),
                run.clone(),
            )),
            _ => receivers.spawn(receive(ws, run.clone(), None, true)),
        };
    }
    let burst = opts.burst.max(1);
    // With a rate, each tick sends one burst.
    let interval = opts
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(opts.publishers as f64 * burst as f64 / r));
    for (id, ws) in clients.enumerate() {
        let (sink, stream) = ws.split();
        let window = match interval {
            None => Some(Arc::new(Semaphore::new(opts.window.max(burst)))),
            Some(_) => None,
        };
        let own = window.clone().map(|w| (id as u32, w));
        receivers.spawn(receive(stream, run.clone(), own, !cross_node));
        publishers.spawn(publish(
            sink,
            id as u32,
            run.clone(),
            window,
            interval,
            opts.clone(),
        ));
    }

    let progress = (target.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(show_progress(run.clone())));
    tokio::time::sleep_until(clock + measure_from).await;
    let cpu_from = sample(target.pid)?;
    tokio::time::sleep_until(clock + measure_to).await;
    let cpu_to = sample(target.pid)?;
    while publishers.join_next().await.is_some() {}
    run.published.cancel();

    let mut check = OrderCheck::new(opts.publishers);
    let mut latency = stats::new_histogram();
    let (mut measured, mut received, mut lost) = (0, 0, 0);
    let mut disconnects = BTreeMap::new();
    let (mut reconnects, mut not_recovered) = (0, 0);
    let sent = run.sent();
    while let Some(r) = receivers.join_next().await {
        let Ok(r) = r else { continue };
        reconnects += r.reconnects;
        not_recovered += r.not_recovered;
        received += r.check.received.iter().sum::<u64>();
        lost += r.check.lost(&sent);
        check.reorders += r.check.reorders;
        check.malformed += r.check.malformed;
        measured += r.measured;
        let _ = latency.add(&r.latency);
        if let Some(why) = r.disconnect {
            *disconnects.entry(why).or_insert(0) += 1;
        }
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }

    let published: u64 = sent.iter().sum();
    let expected = published * total as u64;
    let seconds = opts.duration.as_secs_f64();
    Ok(FanoutReport {
        subscribers: opts.subscribers,
        publishers: opts.publishers,
        size: opts.size.max(opts.payload.min_len()),
        payload: match opts.payload {
            payload::Kind::Random => "random",
            payload::Kind::Json => "json",
        },
        binary: opts.binary,
        window: interval.is_none().then_some(opts.window.max(burst)),
        burst,
        rate: opts.rate,
        warmup_seconds: opts.warmup.as_secs_f64(),
        duration_seconds: seconds,
        connect,
        published,
        publishes_per_second: published as f64 / (opts.warmup + opts.duration).as_secs_f64(),
        expected_deliveries: expected,
        received_deliveries: received,
        lost,
        loss_percent: if expected == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / expected as f64
        },
        reorders: check.reorders,
        malformed: check.malformed,
        disconnects,
        deliveries_per_second: measured as f64 / seconds,
        wire_bytes_per_delivery: received_bytes.load(Ordering::Relaxed) as f64
            / received.max(1) as f64,
        latency_us: Percentiles::of(&latency),
        server: server_figures(
            rss_before,
            rss_after,
            cpu_from,
            cpu_to,
            total,
            Some(measured),
        ),
        reconnect: opts.reconnect.map(|every| ReconnectFigures {
            every_seconds: every.as_secs_f64(),
            reconnects,
            not_recovered,
        }),
    })
}

/// Raises the open-file limit (every connection is a descriptor) and
/// resolves the target once for all connections.
async fn prepare(target: &Target) -> Result<Dialer, BenchError> {
    // Best effort: where the hard limit is low, the connections past it
    // fail and are reported as such.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    Ok(Dialer::new(&target.url, target.ca_file.as_deref())
        .await
        .map_err(Box::new)?
        .with_deflate(target.deflate))
}

/// A burst's frames must all fit the write buffer to go out in one write.
fn burst_dialer(dialer: Dialer, opts: &FanoutOptions) -> Dialer {
    match opts.burst {
        0 | 1 => dialer,
        n => dialer.with_flush_threshold(n * (opts.size.max(opts.payload.min_len()) + 14)),
    }
}

/// Sends stamped messages until the measured window ends.
async fn publish<S>(
    mut sink: S,
    id: u32,
    run: Arc<Run>,
    window: Option<Arc<Semaphore>>,
    interval: Option<Duration>,
    opts: FanoutOptions,
) where
    S: futures_util::Sink<Message> + Unpin,
{
    let stop = run.clock + opts.warmup + opts.duration;
    let mut ticker = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let burst = opts.burst.max(1);
    let mut seq = 0u64;
    loop {
        if let Some(window) = &window {
            // Feed while the window has room; flush only when it is full, so
            // one write carries many messages. A burst waits for room for
            // all of its messages.
            if let Ok(permit) = window.try_acquire_many(burst as u32) {
                permit.forget();
            } else {
                if sink.flush().await.is_err() {
                    break;
                }
                tokio::select! {
                    permit = window.acquire_many(burst as u32) => match permit {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    },
                    () = tokio::time::sleep_until(stop) => break,
                }
            }
        }
        if let Some(t) = &mut ticker {
            tokio::select! {
                _ = t.tick() => {}
                () = tokio::time::sleep_until(stop) => break,
            }
        }
        if Instant::now() >= stop {
            break;
        }
        let mut fed = Ok(());
        for _ in 0..burst {
            let body = payload::encode(
                Stamp {
                    publisher: id,
                    seq,
                    sent_ns: run.now_ns(),
                },
                opts.size,
                opts.payload,
            );
            let message = match opts.binary {
                true => Message::binary(body),
                false => Message::text(Payload::from(body)),
            };
            fed = sink.feed(message).await;
            if fed.is_err() {
                break;
            }
            seq += 1;
            run.sent[id as usize].store(seq, Ordering::Release);
        }
        // Paced and burst messages go out now; others when the window fills.
        if fed.is_ok() && (ticker.is_some() || burst > 1) {
            fed = sink.flush().await;
        }
        if fed.is_err() {
            break;
        }
    }
    let _ = sink.flush().await;
}

/// Reads until every publisher's messages are in, the connection ends, or
/// the drain deadline passes. `own` is a publisher's id and window: its own
/// echoes free window slots. Latency is recorded if `timed`.
async fn receive<S>(
    mut stream: S,
    run: Arc<Run>,
    own: Option<(u32, Arc<Semaphore>)>,
    timed: bool,
) -> Received
where
    S: Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    let mut r = Received::new(run.sent.len());
    if let Outcome::Ended(why) =
        read_until(&mut stream, &run, &mut r, own.as_ref(), timed, None, None).await
    {
        r.disconnect = Some(why);
    }
    r
}

/// Why [`read_until`] stopped reading.
enum Outcome {
    /// Every publisher's messages are in, or the drain deadline passed.
    Stopped,
    /// The connection ended: its close code, or `eof` or `error`.
    Ended(String),
    /// The `due` time came.
    Due,
}

/// Reads one connection into `r` (see [`receive`]) until it has every
/// publisher's messages, the connection ends, the drain deadline passes or
/// `due` comes. With a `cursor`, the stream is position-aware (`@N` before
/// each message) and replayed messages are not timed.
async fn read_until<S>(
    stream: &mut S,
    run: &Run,
    r: &mut Received,
    own: Option<&(u32, Arc<Semaphore>)>,
    timed: bool,
    mut cursor: Option<&mut resume::Cursor>,
    due: Option<Instant>,
) -> Outcome
where
    S: Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    let mut done = run.published.is_cancelled();
    if done && r.check.complete(&run.sent()) {
        return Outcome::Stopped;
    }
    let due = async {
        match due {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(due);
    let mut unreported = 0u64;
    let outcome = loop {
        let next = tokio::select! {
            m = stream.next() => m,
            () = run.published.cancelled(), if !done => {
                done = true;
                if r.check.complete(&run.sent()) {
                    break Outcome::Stopped;
                }
                continue;
            }
            () = tokio::time::sleep_until(run.drain_deadline) => break Outcome::Stopped,
            () = &mut due => break Outcome::Due,
        };
        let m = match next {
            Some(Ok(m)) if m.is_text() || m.is_binary() => m,
            Some(Ok(m)) if m.is_close() => {
                let code = m
                    .as_close()
                    .map_or_else(|| "close".to_owned(), |(c, _)| u16::from(c).to_string());
                break Outcome::Ended(code);
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) => break Outcome::Ended("error".to_owned()),
            None => break Outcome::Ended("eof".to_owned()),
        };
        let live = match cursor.as_deref_mut().map(|c| c.take(&m)) {
            None => true,
            Some(resume::Frame::Message { live }) => live,
            Some(resume::Frame::Position { valid }) => {
                r.check.malformed += u64::from(!valid);
                continue;
            }
        };
        if payload::is_probe(m.as_payload()) {
            continue;
        }
        let now = run.now_ns();
        let stamp = payload::decode(m.as_payload());
        r.check.observe(stamp);
        if let Some(stamp) = stamp {
            if timed && live && (run.measure_from_ns..run.measure_to_ns).contains(&now) {
                r.measured += 1;
                let _ = r.latency.record(now.saturating_sub(stamp.sent_ns).max(1));
            }
            if let Some((id, window)) = own
                && stamp.publisher == *id
            {
                window.add_permits(1);
            }
        }
        unreported += 1;
        if unreported == 256 {
            run.progress.fetch_add(unreported, Ordering::Relaxed);
            unreported = 0;
        }
        if done && r.check.complete(&run.sent()) {
            break Outcome::Stopped;
        }
    };
    run.progress.fetch_add(unreported, Ordering::Relaxed);
    outcome
}

async fn show_progress(run: Arc<Run>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = run.progress.load(Ordering::Relaxed);
        let sent: u64 = run.sent().iter().sum();
        eprint!(
            "\r{:>5.1}s  published {sent:>10}  deliveries/s {:>12}   ",
            run.clock.elapsed().as_secs_f64(),
            now - last
        );
        last = now;
    }
}

/// Connects the subscribers round-robin over `nodes` (the target's or
/// other nodes' dialers), then the publishers to the target; the clients
/// come back subscribers first, as [`connect_all`] returns them, subscriber
/// `i` on node `i % nodes.len()`.
async fn connect_across(
    nodes: &[Dialer],
    dialer: &Dialer,
    target: &Target,
    opts: &FanoutOptions,
) -> Result<(Vec<ClientStream>, ConnectFigures), BenchError> {
    let started = Instant::now();
    let mut by_node = Vec::with_capacity(nodes.len());
    let mut latency = stats::new_histogram();
    let mut deflated = 0;
    for (i, node) in nodes.iter().enumerate() {
        // Node i takes every nodes-th subscriber, starting at the i-th.
        let share = (opts.subscribers + nodes.len() - 1 - i) / nodes.len();
        let (more, figures) = connect_all(node, target, share).await?;
        by_node.push(more.into_iter());
        deflated += figures.deflated;
        let _ = latency.add(&figures.histogram);
    }
    let mut clients = Vec::with_capacity(opts.subscribers + opts.publishers);
    for i in 0..opts.subscribers {
        clients.extend(by_node[i % nodes.len()].next());
    }
    let (publishers, figures) = connect_all(dialer, target, opts.publishers).await?;
    deflated += figures.deflated;
    let _ = latency.add(&figures.histogram);
    clients.extend(publishers);
    let figures = ConnectFigures::new(clients.len(), deflated, started, latency);
    Ok((clients, figures))
}

/// Probes from `publisher` until every subscriber has heard one: each
/// remote node subscribes to the room on the broker when its first
/// subscriber arrives, and anything published before that would count as
/// lost. Also catches nodes that are not in one cluster, or not on one room.
async fn await_subscriptions(
    subscribers: &mut [ClientStream],
    publisher: &mut ClientStream,
) -> Result<(), BenchError> {
    let heard = futures_util::future::join_all(subscribers.iter_mut().map(|ws| async move {
        while let Some(Ok(m)) = ws.next().await {
            if payload::is_probe(m.as_payload()) {
                return true;
            }
        }
        false
    }));
    tokio::pin!(heard);
    let deadline = tokio::time::sleep(SETTLE_TIMEOUT);
    tokio::pin!(deadline);
    let mut probe = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            heard = &mut heard => {
                return match heard.iter().all(|h| *h) {
                    true => Ok(()),
                    false => Err(BenchError::Settle),
                };
            }
            _ = probe.tick() => {
                let probe = Message::binary(bytes::Bytes::from_static(payload::PROBE));
                publisher.send(probe).await.map_err(|_| BenchError::Settle)?;
            }
            () = &mut deadline => return Err(BenchError::Settle),
        }
    }
}

/// Opens `total` connections, `connect_concurrency` at a time, spreading
/// source addresses when there are more than one address can hold.
async fn connect_all(
    dialer: &Dialer,
    target: &Target,
    total: usize,
) -> Result<(Vec<ClientStream>, ConnectFigures), BenchError> {
    let sources = source_addresses(target, dialer, total);
    let started = Instant::now();
    let mut latency = stats::new_histogram();
    let mut clients = Vec::with_capacity(total);
    let mut deflated = 0;
    let limit = target.connect_concurrency.max(1);
    let mut next = 0;
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    while clients.len() < total {
        while next < total && in_flight.len() < limit {
            let source = (!sources.is_empty()).then(|| sources[next % sources.len()]);
            let index = next;
            in_flight.push(async move {
                let t = Instant::now();
                (index, dialer.connect(source).await, t.elapsed())
            });
            next += 1;
        }
        let Some((index, result, took)) = in_flight.next().await else {
            break;
        };
        match result {
            Ok(ws) => {
                deflated += usize::from(ws.get_ref().deflates());
                clients.push(ws);
                let _ = latency.record((took.as_nanos() as u64).max(1));
            }
            Err(e) => {
                return Err(BenchError::Connect {
                    index,
                    total,
                    source: Box::new(e),
                });
            }
        }
    }
    let figures = ConnectFigures::new(total, deflated, started, latency);
    Ok((clients, figures))
}

/// The source addresses to use: the given ones, or 127.0.0.1..127.0.0.k
/// when connecting to a loopback relay with more connections than one
/// source address has ephemeral ports for.
fn source_addresses(target: &Target, dialer: &Dialer, total: usize) -> Vec<IpAddr> {
    if !target.sources.is_empty() {
        return target.sources.clone();
    }
    if total <= CONNECTIONS_PER_SOURCE
        || !dialer.addr().ip().is_loopback()
        || !dialer.addr().is_ipv4()
    {
        return Vec::new();
    }
    let k = total.div_ceil(CONNECTIONS_PER_SOURCE).min(254);
    (1..=k as u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

fn sample(pid: Option<u32>) -> Result<Option<process::Sample>, BenchError> {
    pid.map(|pid| process::sample(pid).map_err(|source| BenchError::Process { pid, source }))
        .transpose()
}

fn server_figures(
    rss_before: Option<process::Sample>,
    rss_after: Option<process::Sample>,
    cpu_from: Option<process::Sample>,
    cpu_to: Option<process::Sample>,
    connections: usize,
    deliveries: Option<u64>,
) -> Option<ServerFigures> {
    let (before, after, from, to) = (rss_before?, rss_after?, cpu_from?, cpu_to?);
    let cpu_ns = to.cpu_ns.saturating_sub(from.cpu_ns);
    let system_ns = to.system_ns.saturating_sub(from.system_ns);
    let per_delivery = |ns: u64| deliveries.filter(|d| *d > 0).map(|d| ns as f64 / d as f64);
    Some(ServerFigures {
        cpu_seconds: cpu_ns as f64 / 1e9,
        cpu_ns_per_delivery: per_delivery(cpu_ns),
        kernel_ns_per_delivery: per_delivery(system_ns),
        rss_before_bytes: before.rss_bytes,
        rss_after_bytes: after.rss_bytes,
        rss_per_connection_bytes: (after.rss_bytes as f64 - before.rss_bytes as f64)
            / connections.max(1) as f64,
    })
}

/// What an `idle` run saw.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub connect: ConnectFigures,
    pub held_seconds: f64,
    /// Connections that were closed or dropped while held, by close code.
    pub disconnects: BTreeMap<String, u64>,
    /// Relay memory with the connections fresh (never sent anything).
    pub server: Option<ServerFigures>,
    /// Messages every connection received before the idle phase.
    pub traffic_messages: usize,
    /// Relay memory per connection once they are idle again after that
    /// traffic and two of the relay's keepalive pings have reached them all,
    /// against the relay before the connections (bytes).
    pub rss_per_connection_after_traffic_bytes: Option<f64>,
}

/// The `idle` scenario: connections held open, optionally after traffic.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    pub connections: usize,
    pub hold: Duration,
    /// Messages one connection publishes to all of them before the idle
    /// phase (0: none), of `size` bytes each.
    pub traffic: usize,
    pub size: usize,
}

/// Opens the connections, optionally sends them `traffic` messages and
/// waits until every one has them all, then holds them for `hold`,
/// watching for closes.
pub async fn idle(target: &Target, opts: &IdleOptions) -> Result<IdleReport, BenchError> {
    let connections = opts.connections;
    let dialer = prepare(target).await?;
    let rss_before = sample(target.pid)?;
    let cpu_from = rss_before;
    let (mut clients, connect) = connect_all(&dialer, target, connections).await?;
    // Let the relay finish its side of the last handshakes before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = sample(target.pid)?;
    if opts.traffic > 0
        && let Some(publisher) = clients.first_mut()
    {
        let failed = |source| {
            Box::new(ClientError::Connection {
                url: target.url.clone(),
                source,
            })
        };
        let body = bytes::Bytes::from(vec![b'x'; opts.size]);
        for _ in 0..opts.traffic {
            publisher
                .feed(Message::binary(body.clone()))
                .await
                .map_err(failed)?;
        }
        publisher.flush().await.map_err(failed)?;
    }
    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    // Clients pinged twice after they had all the traffic: the relay gives
    // back an idle client's buffers at a keepalive ping, and what they
    // freed to the system at the next one.
    let pinged_after = Arc::new(AtomicU64::new(0));
    let traffic = opts.traffic;
    let mut watchers = JoinSet::new();
    for mut ws in clients {
        let (stop, received, pinged_after) = (stop.clone(), received.clone(), pinged_after.clone());
        watchers.spawn(async move {
            let (mut mine, mut pings) = (0, 0);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    m = ws.next() => match m {
                        Some(Ok(m)) if m.is_close() => {
                            return Some(m.as_close().map_or_else(|| "close".to_owned(), |(c, _)| u16::from(c).to_string()));
                        }
                        Some(Ok(m)) => {
                            if m.is_binary() {
                                mine += 1;
                                received.fetch_add(1, Ordering::Relaxed);
                            } else if m.is_ping() && mine >= traffic {
                                pings += 1;
                                if pings == 2 {
                                    pinged_after.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Some(Err(_)) => return Some("error".to_owned()),
                        None => return Some("eof".to_owned()),
                    },
                }
            }
        });
    }
    let mut rss_after_traffic = None;
    if opts.traffic > 0 {
        // Everyone has everything (or the drain deadline passed), then the
        // relay's writers go idle.
        let want = (opts.traffic * connections) as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Then two of the relay's keepalive pings (at most two ping
        // intervals; with pings off, the wait ends at the deadline).
        let deadline = Instant::now() + IDLE_PING_WAIT;
        while pinged_after.load(Ordering::Relaxed) < connections as u64 && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_after_traffic = sample(target.pid)?;
    }
    tokio::time::sleep(opts.hold).await;
    let cpu_to = sample(target.pid)?;
    stop.cancel();
    let mut disconnects = BTreeMap::new();
    while let Some(r) = watchers.join_next().await {
        if let Ok(Some(why)) = r {
            *disconnects.entry(why).or_insert(0) += 1;
        }
    }
    let per_connection = |after: process::Sample| {
        let before = rss_before.map_or(0, |b| b.rss_bytes);
        (after.rss_bytes as f64 - before as f64) / connections.max(1) as f64
    };
    Ok(IdleReport {
        connect,
        held_seconds: opts.hold.as_secs_f64(),
        disconnects,
        server: server_figures(rss_before, rss_after, cpu_from, cpu_to, connections, None),
        traffic_messages: opts.traffic,
        rss_per_connection_after_traffic_bytes: rss_after_traffic.map(per_connection),
    })
}

/// How long `idle` waits, after the traffic, for two of the relay's
/// keepalive pings (its default interval is 30 s).
const IDLE_PING_WAIT: Duration = Duration::from_secs(65);

/// What a `connect` run saw.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub attempted: usize,
    pub established: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub latency_us: Percentiles,
    /// The first failure, if one stopped the run.
    pub first_failure: Option<String>,
}

/// Opens up to `max` connections (kept open) until one fails or `limit` passes.
pub async fn connect(
    target: &Target,
    max: usize,
    limit: Duration,
) -> Result<ConnectReport, BenchError> {
    let dialer = prepare(target).await?;
    let sources = source_addresses(target, &dialer, max);
    let started = Instant::now();
    let deadline = started + limit;
    let mut latency = stats::new_histogram();
    let mut held = Vec::new();
    let mut first_failure = None;
    let mut attempted = 0;
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    loop {
        while attempted < max
            && in_flight.len() < target.connect_concurrency.max(1)
            && first_failure.is_none()
        {
            let source = (!sources.is_empty()).then(|| sources[attempted % sources.len()]);
            let dialer = &dialer;
            in_flight.push(async move {
                let t = Instant::now();
                (dialer.connect(source).await, t.elapsed())
            });
            attempted += 1;
        }
        let next = tokio::select! {
            n = in_flight.next() => n,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let Some((result, took)) = next else { break };
        match result {
            Ok(ws) => {
                held.push(ws);
                let _ = latency.record((took.as_nanos() as u64).max(1));
            }
            Err(e) => {
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ConnectReport {
        attempted,
        established: held.len(),
        seconds,
        per_second: held.len() as f64 / seconds.max(1e-9),
        latency_us: Percentiles::of(&latency),
        first_failure,
    })
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs ({} samples)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.samples
        )
    }
}

impl fmt::Display for ConnectFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections in {:.2} s ({:.0}/s); handshake {}",
            self.connections, self.seconds, self.per_second, self.latency_us
        )?;
        match self.deflated {
            0 => Ok(()),
            n => write!(f, "; permessage-deflate on {n}"),
        }
    }
}

impl fmt::Display for ServerFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server: {:.2} CPU s", self.cpu_seconds)?;
        if let Some(ns) = self.cpu_ns_per_delivery {
            write!(f, ", {ns:.0} CPU ns per delivery")?;
        }
        if let Some(ns) = self.kernel_ns_per_delivery {
            write!(f, " ({ns:.0} in the kernel)")?;
        }
        write!(
            f,
            "; RSS {:.1} MiB → {:.1} MiB ({:.0} B per connection)",
            self.rss_before_bytes as f64 / 1048576.0,
            self.rss_after_bytes as f64 / 1048576.0,
            self.rss_per_connection_bytes
        )
    }
}

fn write_disconnects(f: &mut fmt::Formatter<'_>, d: &BTreeMap<String, u64>) -> fmt::Result {
    if d.is_empty() {
        return writeln!(f, "disconnects:  none");
    }
    let list: Vec<String> = d.iter().map(|(why, n)| format!("{n} × {why}")).collect();
    writeln!(f, "disconnects:  {}", list.join(", "))
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pace = match (self.rate, self.window) {
            (Some(r), _) => format!("{r} msg/s in total"),
            (None, Some(w)) => format!("window {w} per publisher"),
            _ => String::new(),
        };
        let pace = match self.burst {
            0 | 1 => pace,
            n => format!("{pace}, bursts of {n} per write"),
        };
        writeln!(
            f,
            "fanout: {} subscriber{}, {} publisher{}, {} B {} {}, {pace}, {:.0} s warm-up + {:.0} s measured",
            self.subscribers,
            if self.subscribers == 1 { "" } else { "s" },
            self.publishers,
            if self.publishers == 1 { "" } else { "s" },
            self.size,
            self.payload,
            if self.binary { "binary" } else { "text" },
            self.warmup_seconds,
            self.duration_seconds
        )?;
        writeln!(f, "connect:      {}", self.connect)?;
        writeln!(
            f,
            "published:    {} ({:.0}/s)",
            self.published, self.publishes_per_second
        )?;
        writeln!(
            f,
            "deliveries:   {} of {} expected; lost {} ({:.3} %), reordered or repeated {}, malformed {}",
            self.received_deliveries,
            self.expected_deliveries,
            self.lost,
            self.loss_percent,
            self.reorders,
            self.malformed
        )?;
        write_disconnects(f, &self.disconnects)?;
        if let Some(r) = &self.reconnect {
            writeln!(
                f,
                "reconnects:   {} (each subscriber about every {:.1} s), {} not recovered",
                r.reconnects, r.every_seconds, r.not_recovered
            )?;
        }
        writeln!(
            f,
            "throughput:   {:.0} deliveries/s",
            self.deliveries_per_second
        )?;
        writeln!(
            f,
            "wire:         {:.0} B per delivery received ({} B payload)",
            self.wire_bytes_per_delivery, self.size
        )?;
        writeln!(f, "latency:      {}", self.latency_us)?;
        if let Some(s) = &self.server {
            writeln!(f, "{s}")?;
        }
        Ok(())
    }
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "idle: held for {:.0} s", self.held_seconds)?;
        writeln!(f, "connect:      {}", self.connect)?;
        write_disconnects(f, &self.disconnects)?;
        if let Some(s) = &self.server {
            writeln!(f, "{s}")?;
        }
        if let Some(b) = self.rss_per_connection_after_traffic_bytes {
            writeln!(
                f,
                "after {} messages to each and two keepalive pings, idle again: {b:.0} B per connection",
                self.traffic_messages
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for ConnectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "connect: {} of {} attempts established in {:.2} s ({:.0}/s)",
            self.established, self.attempted, self.seconds, self.per_second
        )?;
        writeln!(f, "handshake:    {}", self.latency_us)?;
        match &self.first_failure {
            Some(e) => writeln!(f, "first failure: {e}"),
            None => writeln!(f, "no failures"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(sources: Vec<IpAddr>) -> Target {
        Target {
            url: String::new(),
            ca_file: None,
            sources,
            connect_concurrency: 1,
            pid: None,
            progress: false,
            deflate: false,
        }
    }

    #[tokio::test]
    async fn source_addresses_spread_only_when_one_address_is_not_enough() {
        let loopback = Dialer::new("ws://127.0.0.1:9/", None).await.unwrap();
        assert!(source_addresses(&target(vec![]), &loopback, 25_000).is_empty());
        let spread = source_addresses(&target(vec![]), &loopback, 60_000);
        let want: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(spread, want);
        let given: Vec<IpAddr> = vec!["127.0.0.9".parse().unwrap()];
        assert_eq!(
            source_addresses(&target(given.clone()), &loopback, 10),
            given
        );
    }
}
