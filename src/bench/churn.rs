//! `bench churn`: clients that come and go, ending in every way a real
//! client's connection ends, at a steady rate, for soak tests.
//!
//! Each new connection takes the next of five endings in turn:
//!
//! - `clean`: a WebSocket client that lives a while, then closes with 1000
//!   and waits for the relay's Close;
//! - `drop`: a client that lives a while, then drops the TCP connection
//!   without a Close (FIN);
//! - `reset`: an upgraded connection aborted with a TCP reset (RST);
//! - `half_handshake`: half an HTTP request, then the connection is dropped;
//! - `violation`: an upgraded connection that sends an unmasked frame and
//!   waits for the relay to close it.
//!
//! While alive, every client reads whatever the relay sends it, so churn
//! runs under the fan-out load of a concurrent `bench fanout`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{BenchError, Target, prepare, source_addresses};
use crate::client::Dialer;

/// The `churn` scenario.
#[derive(Debug, Clone)]
pub struct ChurnOptions {
    /// New connections per second.
    pub rate: u32,
    pub duration: Duration,
    /// Longest a `clean` or `drop` client stays (each picks up to this).
    pub max_life: Duration,
    /// Most connections alive at once; more wait.
    pub max_alive: usize,
}

/// What a `churn` run did.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub seconds: f64,
    pub started: u64,
    /// Connections that ended as planned, by ending.
    pub ended: BTreeMap<&'static str, u64>,
    /// Connections that did not go as planned (refused, closed early...).
    pub failed: u64,
    pub first_failure: Option<String>,
}

const ENDINGS: [&str; 5] = ["clean", "drop", "reset", "half_handshake", "violation"];

/// Bounds every wait on the relay, so a stuck relay fails the run instead
/// of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

pub async fn churn(target: &Target, opts: &ChurnOptions) -> Result<ChurnReport, BenchError> {
    let dialer = Arc::new(prepare(target).await?);
    let total = (f64::from(opts.rate) * opts.duration.as_secs_f64()) as usize;
    let sources = source_addresses(target, &dialer, total);
    let alive = Arc::new(Semaphore::new(opts.max_alive.max(1)));
    let started = Instant::now();
    let mut ticks =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1))));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    let mut report = ChurnReport {
        seconds: 0.0,
        started: 0,
        ended: ENDINGS.iter().map(|e| (*e, 0)).collect(),
        failed: 0,
        first_failure: None,
    };
    let mut n: usize = 0;
    while started.elapsed() < opts.duration {
        tokio::select! {
            _ = ticks.tick() => {}
            Some(done) = tasks.join_next() => {
                report.record( done.map_err(|e| e.to_string()).and_then(|r| r));
                continue;
            }
        }
        let Ok(permit) = alive.clone().acquire_owned().await else {
            break;
        };
        let source = (!sources.is_empty()).then(|| sources[n % sources.len()]);
        let ending = ENDINGS[n % ENDINGS.len()];
        // Spread lifetimes over (0, max_life] without a random source.
        let life = opts
            .max_life
            .mul_f64(((n * 7919) % 1000 + 1) as f64 / 1000.0);
        let dialer = dialer.clone();
        tasks.spawn(async move {
            let r = tokio::time::timeout(life + PATIENCE, one(&dialer, source, ending, life))
                .await
                .map_err(|_| format!("{ending}: the relay did not finish in time"))
                .and_then(|r| r.map(|()| ending));
            drop(permit);
            r
        });
        n += 1;
        report.started += 1;
    }
    while let Some(done) = tasks.join_next().await {
        report.record(done.map_err(|e| e.to_string()).and_then(|r| r));
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One connection, ending as `ending` says.
async fn one(
    dialer: &Dialer,
    source: Option<IpAddr>,
    ending: &str,
    life: Duration,
) -> Result<(), String> {
    let fail = |what: &str, e: &dyn fmt::Display| format!("{ending}: {what}: {e}");
    match ending {
        "clean" | "drop" => {
            let mut ws = dialer
                .connect(source)
                .await
                .map_err(|e| fail("connect", &e))?;
            let until = Instant::now() + life;
            loop {
                match tokio::time::timeout_at(until, ws.next()).await {
                    Err(_) => break,
                    Ok(Some(Ok(_))) => {}
                    Ok(other) => return Err(format!("{ending}: closed early: {other:?}")),
                }
            }
            if ending == "clean" {
                ws.close().await.map_err(|e| fail("close", &e))?;
                // Read to the relay's Close (the stream ends after it).
                while let Some(m) = ws.next().await {
                    m.map_err(|e| fail("closing", &e))?;
                }
            }
            Ok(())
        }
        "reset" => {
            let stream = raw_upgrade(dialer, source)
                .await
                .map_err(|e| fail("upgrade", &e))?;
            stream.set_zero_linger().map_err(|e| fail("linger", &e))?;
            Ok(())
        }
        "half_handshake" => {
            let mut stream = dialer
                .connect_tcp(source)
                .await
                .map_err(|e| fail("connect", &e))?;
            let request = upgrade_request(dialer);
            stream
                .write_all(&request.as_bytes()[..request.len() / 2])
                .await
                .map_err(|e| fail("write", &e))?;
            Ok(())
        }
        "violation" => {
            let mut stream = raw_upgrade(dialer, source)
                .await
                .map_err(|e| fail("upgrade", &e))?;
            // An unmasked text frame: the relay must close with 1002.
            stream
                .write_all(&[0x81, 0x02, b'h', b'i'])
                .await
                .map_err(|e| fail("write", &e))?;
            let mut seen = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => seen.extend_from_slice(&buf[..k]),
                }
            }
            // The Close is the last frame sent: 0x88, its length, the code.
            let close = (0..seen.len().saturating_sub(3))
                .rev()
                .find(|&p| seen[p] == 0x88 && usize::from(seen[p + 1]) == seen.len() - p - 2);
            match close {
                Some(p) if u16::from_be_bytes([seen[p + 2], seen[p + 3]]) == 1002 => Ok(()),
                _ => Err(format!("{ending}: no Close 1002 before the end")),
            }
        }
        other => Err(format!("unknown ending {other}")),
    }
}

fn upgrade_request(dialer: &Dialer) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        dialer.path_and_query(),
        dialer.host()
    )
}

/// A plain-TCP upgrade (`ws://` only), read up to the end of the 101.
async fn raw_upgrade(dialer: &Dialer, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let mut stream = dialer
        .connect_tcp(source)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(upgrade_request(dialer).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Err("connection ended during the handshake".into()),
        }
    }
    match head.starts_with(b"HTTP/1.1 101") {
        true => Ok(stream),
        false => Err(format!(
            "refused: {}",
            String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
        )),
    }
}

impl ChurnReport {
    fn record(&mut self, outcome: Result<&'static str, String>) {
        match outcome {
            Ok(ending) => *self.ended.entry(ending).or_default() += 1,
            Err(e) => {
                self.failed += 1;
                self.first_failure.get_or_insert(e);
            }
        }
    }
}

impl fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "churn: {} connections in {:.0} s ({:.0}/s)",
            self.started,
            self.seconds,
            self.started as f64 / self.seconds.max(1e-9)
        )?;
        let ended: Vec<String> = self
            .ended
            .iter()
            .map(|(e, n)| format!("{n} × {e}"))
            .collect();
        writeln!(f, "ended:   {}", ended.join(", "))?;
        match &self.first_failure {
            None => writeln!(f, "failed:  none"),
            Some(e) => writeln!(f, "failed:  {} (first: {e})", self.failed),
        }
    }
}
