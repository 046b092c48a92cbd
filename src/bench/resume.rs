//! Position-aware subscribers (`wsrelay.v1`, docs/PROTOCOL.md) for the
//! bench: the relay's join notice, the `@N` frame before each message, and
//! the fan-out's reconnect mode, in which every subscriber drops its
//! connection now and then and resumes from the last position it had
//! (`?since=&epoch=`) on the next subscriber node (across nodes, it
//! resumes where the broker keeps the history: a cluster with history on).
//!
//! The fan-out's order check then proves recovery: a message missed across
//! a reconnect counts as lost, one received twice as a reorder.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_websockets::Message;

use super::{Received, Run, read_until};
use crate::client::{ClientStream, Dialer};

/// Where a position-aware client stands: the relay's join notice.
#[derive(Debug, Clone)]
pub(super) struct Notice {
    pub epoch: String,
    pub position: u64,
    /// Messages replayed before live ones.
    pub replay: u64,
    /// Only when the client asked to resume: whether everything after its
    /// position is coming.
    pub recovered: Option<bool>,
}

/// Reads the join notice, the first frame of a `wsrelay.v1` client.
pub(super) async fn notice(ws: &mut ClientStream) -> Option<Notice> {
    while let Some(Ok(m)) = ws.next().await {
        let Some(text) = m.as_text() else { continue };
        let json = text.strip_prefix('#')?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        return Some(Notice {
            epoch: v["epoch"].as_str()?.to_owned(),
            position: v["position"].as_u64()?,
            replay: v["replay"].as_u64().unwrap_or(0),
            recovered: v["recovered"].as_bool(),
        });
    }
    None
}

/// A position-aware subscriber's place in its room's stream.
#[derive(Debug)]
pub(super) struct Cursor {
    epoch: String,
    /// The position of the last message handed over.
    position: u64,
    /// The position a `@N` frame announced for the message that follows it.
    announced: Option<u64>,
    /// Replayed messages still to come (they are not timed: their latency
    /// is the time the client was away).
    replaying: u64,
}

/// What [`Cursor::take`] made of a frame.
pub(super) enum Frame {
    /// A `@N` frame, or something that should have been one.
    Position { valid: bool },
    /// A message; `live` unless it was replayed.
    Message { live: bool },
}

impl Cursor {
    pub fn new(notice: Notice) -> Self {
        Self {
            epoch: notice.epoch,
            position: notice.position,
            announced: None,
            replaying: notice.replay,
        }
    }

    /// Takes the next frame of the stream: a position, then its message.
    pub fn take(&mut self, m: &Message) -> Frame {
        match self.announced.take() {
            None => {
                self.announced = m
                    .as_text()
                    .and_then(|t| t.strip_prefix('@'))
                    .and_then(|p| p.parse().ok());
                Frame::Position {
                    valid: self.announced.is_some(),
                }
            }
            Some(position) => {
                self.position = position;
                let live = self.replaying == 0;
                self.replaying = self.replaying.saturating_sub(1);
                Frame::Message { live }
            }
        }
    }

    /// The position of the last message handed over.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The query that resumes after the last message handed over.
    fn resume_query(&self) -> String {
        resume_query(self.position, &self.epoch)
    }
}

/// The query that resumes after `position` in `epoch`.
pub(super) fn resume_query(position: u64, epoch: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("since", &position.to_string())
        .append_pair("epoch", epoch)
        .finish()
}

/// How a reconnecting subscriber behaves.
#[derive(Clone)]
pub(super) struct Reconnecting {
    /// One dialer per subscriber node, offering `wsrelay.v1`.
    pub nodes: Arc<[Dialer]>,
    /// Mean time between drops; each connection lives a random 0.5 to 1.5
    /// times this.
    pub every: Duration,
    /// Source addresses the resumptions take in turn (empty: the system
    /// picks): each drop leaves a port in TIME_WAIT, and 1 000 drops a
    /// second would use up one address's ports in half a minute.
    pub sources: Arc<[IpAddr]>,
    pub next_source: Arc<AtomicUsize>,
}

impl Reconnecting {
    fn source(&self) -> Option<IpAddr> {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }
}

/// Receives as [`super::receive`] does, dropping the connection at random
/// times and resuming from the last position it had, each time on the
/// next subscriber node (starting from `node`; on the same one if there is
/// one: in a cluster, positions are the broker's only with shared history,
/// see the README's *Scaling out*), until every publisher's messages are
/// in or the run's drain deadline.
pub(super) async fn receive_reconnecting(
    mut ws: ClientStream,
    joined: Notice,
    mut node: usize,
    how: Reconnecting,
    run: Arc<Run>,
) -> Received {
    let mut r = Received::new(run.sent.len());
    let mut cursor = Cursor::new(joined);
    loop {
        let due = Instant::now() + how.every.mul_f64(0.5 + fastrand::f64());
        match read_until(
            &mut ws,
            &run,
            &mut r,
            None,
            true,
            Some(&mut cursor),
            Some(due),
        )
        .await
        {
            super::Outcome::Stopped => break,
            super::Outcome::Ended(why) => {
                r.disconnect = Some(why);
                break;
            }
            super::Outcome::Due => {}
        }
        // Gone without a close frame, as a network blip or a closed laptop.
        drop(ws);
        node = (node + 1) % how.nodes.len();
        let resumed = async {
            let mut next = how.nodes[node]
                .with_query(&cursor.resume_query())
                .ok()?
                .connect(how.source())
                .await
                .ok()?;
            let notice = notice(&mut next).await?;
            Some((next, notice))
        };
        let (next, notice) = match tokio::time::timeout_at(run.drain_deadline, resumed).await {
            Ok(Some(resumed)) => resumed,
            Ok(None) => {
                r.disconnect = Some("resume failed".to_owned());
                break;
            }
            // Out of time, as any receiver at the drain deadline.
            Err(_) => break,
        };
        r.reconnects += 1;
        if notice.recovered != Some(true) {
            r.not_recovered += 1;
        }
        cursor = Cursor::new(notice);
        ws = next;
    }
    r
}
