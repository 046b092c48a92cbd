//! A sender's burst never gets a reader that keeps up evicted.
//!
//! One raw client writes thousands of small frames in a single `write`, as
//! a browser calling `send()` in a loop does; the relay parses them from a
//! few reads. Every reader reads as fast as it can and must receive every
//! message, in order, with nothing dropped and nobody evicted, on the
//! relay's one-worker runtime (confined to one CPU) and on two workers.
//!
//! The relay runs as its own process, so 1 000 readers cost 1 000 sockets
//! here and 1 000 there, within `ulimit -n 1024` each.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one burst may take to arrive everywhere on a loaded machine
/// (a debug build, 10 million deliveries); only bounds a broken build.
const BURST_PATIENCE: Duration = Duration::from_secs(240);

/// The server frame of message `i`: text, 8 digits.
fn server_frame(i: usize) -> [u8; 10] {
    let mut f = [0x81, 8, 0, 0, 0, 0, 0, 0, 0, 0];
    f[2..].copy_from_slice(format!("{i:08}").as_bytes());
    f
}

async fn burst(readers: usize, messages: usize, one_cpu: bool) {
    let _turn = crate::one_at_a_time().await;
    let dir = TempDir::new("burst");
    let file = dir.file(
        "wsrelay.yaml",
        // No keepalive pings: the readers compare bytes and answer nothing,
        // and the largest bursts take longer than a ping interval here.
        "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\nclient:\n  ping_interval: 0s\n",
    );
    let relay = match one_cpu {
        true => spawn_relay_on_one_cpu(&file),
        false => spawn_relay(&file),
    };
    let metrics = relay.metrics_addr.unwrap();

    // What every reader must receive, byte for byte: all messages in order
    // and nothing else (a Close would not match).
    let expected: Arc<Vec<u8>> = Arc::new((0..messages).flat_map(server_frame).collect());
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let mut raw = RawClient::connect(relay.addr).await;
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = vec![0u8; 64 * 1024];
            while got < expected.len() {
                let n = raw.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed after {got} of {} bytes", expected.len());
                let want = &expected[got..(got + n).min(expected.len())];
                assert!(
                    chunk[..n] == *want,
                    "wrong bytes at message {} of {messages}: {:?}",
                    got / 10,
                    String::from_utf8_lossy(&chunk[..n.min(40)])
                );
                got += n;
            }
        }));
    }
    wait_metric_at(metrics, "wsrelay_connections_active", readers as u64).await;

    // The sender hears nothing back, and sends everything in one write.
    let mut sender = RawClient::connect_to(relay.addr, "/?echo=false").await;
    let burst: Vec<u8> = (0..messages)
        .flat_map(|i| frame(true, 0x1, &server_frame(i)[2..], true))
        .collect();
    sender.stream.write_all(&burst).await.unwrap();

    for task in tasks {
        tokio::time::timeout(BURST_PATIENCE, task)
            .await
            .expect("every reader gets the whole burst in time")
            .unwrap();
    }
    let text = http_get(metrics, "/metrics").await.1;
    for series in [
        "wsrelay_disconnections_by_reason_total{reason=\"slow_consumer\"}",
        "wsrelay_dropped_messages_total{reason=\"slow_consumer\"}",
    ] {
        assert_eq!(metric_value(&text, series), Some(0), "{series}");
    }
    assert_eq!(
        metric_value(&text, "wsrelay_messages_total"),
        Some(messages as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_frames_in_one_write_reach_twenty_readers_on_one_worker() {
    burst(20, 10_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_frames_in_one_write_reach_twenty_readers_on_two_workers() {
    burst(20, 10_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_frames_in_one_write_reach_twenty_readers_on_one_worker() {
    burst(20, 100_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_frames_in_one_write_reach_twenty_readers_on_two_workers() {
    burst(20, 100_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_frames_in_one_write_reach_a_thousand_readers_on_one_worker() {
    burst(1000, 10_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_frames_in_one_write_reach_a_thousand_readers_on_two_workers() {
    burst(1000, 10_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_frames_in_one_write_reach_a_thousand_readers_on_one_worker() {
    burst(1000, 100_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_frames_in_one_write_reach_a_thousand_readers_on_two_workers() {
    burst(1000, 100_000, false).await;
}
