//! The reconnect storm: N position-aware clients (`wsrelay.v1`) of a room
//! with history drop at once, M messages are published while they are
//! away, and all of them come back at once asking to resume
//! (`?since=&epoch=`), as after a deploy. Reports how long until every one
//! had its M messages, each exactly once and in order, and the relay's
//! peak memory meanwhile.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_websockets::{Message, Payload};

use super::payload::{self, Stamp};
use super::resume::{Cursor, Frame, notice, resume_query};
use super::stats::{self, Percentiles};
use super::{BenchError, ConnectFigures, Target, connect_all, prepare, sample};
use crate::client::ClientError;

/// How long a recovered client may take to get what it missed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The `storm` scenario.
#[derive(Debug, Clone)]
pub struct StormOptions {
    pub clients: usize,
    /// Messages published while they are away.
    pub missed: usize,
    /// Payload bytes of each.
    pub size: usize,
}

/// What a `storm` run saw.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub clients: usize,
    pub missed: usize,
    pub size: usize,
    /// The first connections, before the drop.
    pub connect: ConnectFigures,
    /// Clients told `recovered: true` on their return.
    pub recovered: usize,
    /// Clients told `recovered: false`, or that failed to come back.
    pub not_recovered: usize,
    /// Missed messages that did not arrive, over all clients.
    pub lost: u64,
    /// Messages that arrived twice, out of order, or not as sent.
    pub out_of_order: u64,
    /// From the first reconnect attempt until the last client had all.
    pub caught_up_seconds: f64,
    /// Per client, from its reconnect attempt until it had all.
    pub caught_up_us: Percentiles,
    pub rss_before_bytes: Option<u64>,
    /// The relay's largest RSS while the clients came back.
    pub peak_rss_bytes: Option<u64>,
}

impl StormReport {
    /// Whether any client missed, repeated or reordered a message.
    pub fn saw_loss(&self) -> bool {
        self.not_recovered > 0 || self.lost > 0 || self.out_of_order > 0
    }
}

/// Why a bench run could not go on: a message the storm did not expect.
fn unexpected(url: &str, why: &str) -> BenchError {
    BenchError::Client(Box::new(ClientError::Unusable {
        url: url.to_owned(),
        why: why.to_owned(),
    }))
}

/// One returning client's findings.
#[derive(Default)]
struct Return {
    recovered: bool,
    received: u64,
    out_of_order: u64,
    took: Option<Duration>,
}

/// Runs the storm against `target`, a room's URL on a relay with history.
pub async fn storm(target: &Target, opts: &StormOptions) -> Result<StormReport, BenchError> {
    let dialer = prepare(target)
        .await?
        .with_protocols(&[crate::wire::POSITIONS_PROTOCOL])
        .map_err(Box::new)?;
    let (mut clients, connect) = connect_all(&dialer, target, opts.clients).await?;
    let mut at = None;
    for ws in &mut clients {
        let n = notice(ws).await.ok_or_else(|| {
            unexpected(
                &target.url,
                "no join notice: is this wsrelay, with rooms.history on?",
            )
        })?;
        at.get_or_insert((n.epoch, n.position));
    }
    let Some((epoch, position)) = at else {
        return Err(unexpected(&target.url, "no clients"));
    };
    // Everyone drops at once.
    drop(clients);

    // Missed meanwhile: published, and in the room's log once the
    // publisher has its own copies back.
    let plain = prepare(target).await?;
    let mut publisher = plain.connect(None).await.map_err(Box::new)?;
    let failed = |source| {
        Box::new(ClientError::Connection {
            url: target.url.clone(),
            source,
        })
    };
    for seq in 0..opts.missed as u64 {
        let stamp = Stamp {
            publisher: 0,
            seq,
            sent_ns: 0,
        };
        let body = payload::encode(stamp, opts.size, payload::Kind::Random);
        publisher
            .feed(Message::text(Payload::from(body)))
            .await
            .map_err(failed)?;
    }
    publisher.flush().await.map_err(failed)?;
    let mut echoed = 0;
    while echoed < opts.missed {
        match publisher.next().await {
            Some(Ok(m)) if m.is_text() => echoed += 1,
            Some(Ok(_)) => {}
            _ => return Err(unexpected(&target.url, "the publisher's connection ended")),
        }
    }

    // Everyone comes back at once.
    let back = Arc::new(
        dialer
            .with_query(&resume_query(position, &epoch))
            .map_err(Box::new)?,
    );
    let rss_before = sample(target.pid)?.map(|s| s.rss_bytes);
    let peak = Arc::new(AtomicU64::new(rss_before.unwrap_or(0)));
    let sampling = target
        .pid
        .map(|pid| tokio::spawn(peak_rss(pid, peak.clone())));
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(target.connect_concurrency.max(1)));
    let mut returns = JoinSet::new();
    for _ in 0..opts.clients {
        let (back, gate) = (back.clone(), gate.clone());
        let missed = opts.missed as u64;
        returns.spawn(async move {
            let t = Instant::now();
            let ws = {
                let _permit = gate.acquire_owned().await;
                back.connect(None).await
            };
            let Ok(mut ws) = ws else {
                return Return::default();
            };
            let Some(joined) = notice(&mut ws).await else {
                return Return::default();
            };
            let mut r = Return {
                recovered: joined.recovered == Some(true),
                ..Return::default()
            };
            // Not recovered: nothing missed is coming, only live messages.
            if !r.recovered {
                return r;
            }
            let mut cursor = Cursor::new(joined);
            let catching_up = async {
                while r.received < missed {
                    let Some(Ok(m)) = ws.next().await else { break };
                    match cursor.take(&m) {
                        Frame::Position { valid } => r.out_of_order += u64::from(!valid),
                        Frame::Message { .. } => {
                            let seq = payload::decode(m.as_payload()).map(|s| s.seq);
                            if cursor.position() != position + r.received + 1
                                || seq != Some(r.received)
                            {
                                r.out_of_order += 1;
                            }
                            r.received += 1;
                        }
                    }
                }
            };
            // What has not come by then is lost.
            let _ = tokio::time::timeout(CATCH_UP_TIMEOUT, catching_up).await;
            r.took = (r.received == missed).then(|| t.elapsed());
            r
        });
    }
    let mut latency = stats::new_histogram();
    let (mut recovered, mut lost, mut out_of_order) = (0, 0, 0);
    while let Some(r) = returns.join_next().await {
        let r = r.unwrap_or_default();
        recovered += usize::from(r.recovered);
        lost += opts.missed as u64 - r.received.min(opts.missed as u64);
        out_of_order += r.out_of_order;
        if let Some(took) = r.took {
            let _ = latency.record((took.as_nanos() as u64).max(1));
        }
    }
    let caught_up = started.elapsed();
    if let Some(task) = &sampling {
        task.abort();
    }
    Ok(StormReport {
        clients: opts.clients,
        missed: opts.missed,
        size: opts.size.max(payload::HEADER_LEN),
        connect,
        recovered,
        not_recovered: opts.clients - recovered,
        lost,
        out_of_order,
        caught_up_seconds: caught_up.as_secs_f64(),
        caught_up_us: Percentiles::of(&latency),
        rss_before_bytes: rss_before,
        peak_rss_bytes: sampling.map(|_| peak.load(Ordering::Relaxed)),
    })
}

/// Samples `pid`'s RSS every 5 ms into `peak`, keeping the largest.
async fn peak_rss(pid: u32, peak: Arc<AtomicU64>) {
    loop {
        if let Ok(s) = super::process::sample(pid) {
            peak.fetch_max(s.rss_bytes, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl fmt::Display for StormReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "storm: {} clients drop, {} messages of {} B go by, all come back at once",
            self.clients, self.missed, self.size
        )?;
        writeln!(f, "connect:      {}", self.connect)?;
        writeln!(
            f,
            "resumed:      {} recovered, {} not; lost {}, out of order or repeated {}",
            self.recovered, self.not_recovered, self.lost, self.out_of_order
        )?;
        writeln!(
            f,
            "caught up:    all in {:.2} s; per client {}",
            self.caught_up_seconds, self.caught_up_us
        )?;
        if let (Some(before), Some(peak)) = (self.rss_before_bytes, self.peak_rss_bytes) {
            writeln!(
                f,
                "server:       RSS {:.1} MiB before, {:.1} MiB at the peak",
                before as f64 / 1048576.0,
                peak as f64 / 1048576.0
            )?;
        }
        Ok(())
    }
}
