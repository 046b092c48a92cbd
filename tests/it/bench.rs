//! `wsrelay bench` against the real relay (no loss, exact counts) and
//! against a relay that loses messages (the bench must say so).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_websockets::{Message, ServerBuilder};
use wsrelay::bench::{self, FanoutOptions};

/// A short fan-out: 200 ms of warm-up, 1 s measured, 100-byte messages.
pub(crate) fn short_fanout(
    subscribers: usize,
    publishers: usize,
    rate: Option<f64>,
) -> FanoutOptions {
    FanoutOptions {
        subscribers,
        publishers,
        rate,
        window: 16,
        burst: 1,
        size: 100,
        payload: bench::payload::Kind::Random,
        binary: false,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(10),
        subscriber_urls: Vec::new(),
        reconnect: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_the_relay_sees_every_message_in_order() {
    let server = start(test_config()).await;
    let report = bench::fanout(&bench_target(&server.url), &short_fanout(20, 3, None))
        .await
        .unwrap();

    assert!(report.published > 0);
    assert_eq!(report.expected_deliveries, report.published * 23);
    assert_eq!(report.received_deliveries, report.expected_deliveries);
    assert_eq!((report.lost, report.reorders, report.malformed), (0, 0, 0));
    assert!(report.disconnects.is_empty(), "{:?}", report.disconnects);
    assert!(!report.saw_loss());
    assert!(report.deliveries_per_second > 0.0);
    assert!(report.latency_us.samples > 0);
    // The relay counted the same traffic.
    server
        .wait_metric("wsrelay_messages_total", report.published)
        .await;
    server
        .wait_metric(
            "wsrelay_messages_delivered_total",
            report.expected_deliveries,
        )
        .await;
    server.stop().await;
}

/// `--burst`: publishers write 500 messages at a time; none is lost and no
/// subscriber is evicted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_in_bursts_loses_nothing_and_evicts_nobody() {
    let mut config = test_config();
    // Far below a burst: only the burst rule keeps the subscribers.
    config.client.queue_messages = 64;
    let server = start(config).await;
    let opts = FanoutOptions {
        burst: 500,
        ..short_fanout(20, 2, None)
    };
    let report = bench::fanout(&bench_target(&server.url), &opts)
        .await
        .unwrap();
    assert_eq!(report.burst, 500);
    assert_eq!(report.window, Some(500));
    // Whole bursts only: each publisher sent a multiple of 500.
    assert!(
        report.published >= 1000 && report.published % 500 == 0,
        "{report:?}"
    );
    assert_eq!(report.received_deliveries, report.expected_deliveries);
    assert_eq!((report.lost, report.reorders, report.malformed), (0, 0, 0));
    assert!(report.disconnects.is_empty(), "{:?}", report.disconnects);
    let text = server.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "wsrelay_disconnections_by_reason_total{reason=\"slow_consumer\"}"
        ),
        Some(0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_connect_modes_hold_their_connections() {
    let server = start(test_config()).await;
    let opts = bench::IdleOptions {
        connections: 50,
        hold: Duration::from_millis(100),
        traffic: 20,
        size: 900,
    };
    let idle = bench::idle(&bench_target(&server.url), &opts)
        .await
        .unwrap();
    assert_eq!(idle.connect.connections, 50);
    assert!(idle.disconnects.is_empty());
    server.wait_metric("wsrelay_connections_total", 50).await;

    let connect = bench::connect(&bench_target(&server.url), 40, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!((connect.attempted, connect.established), (40, 40));
    assert_eq!(connect.first_failure, None);
    server.wait_metric("wsrelay_connections_total", 90).await;
    server.stop().await;
}

/// A deliberately broken relay: it silently skips every `drop_every`-th delivery.
async fn lossy_relay(drop_every: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Arc<Mutex<Vec<mpsc::UnboundedSender<Message>>>> = Arc::default();
    let deliveries = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (clients, deliveries) = (clients.clone(), deliveries.clone());
            tokio::spawn(async move {
                let Ok((_, ws)) = ServerBuilder::new().accept(stream).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
                clients.lock().unwrap().push(tx);
                tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        if sink.send(m).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(m)) = stream.next().await {
                    if !(m.is_text() || m.is_binary()) {
                        continue;
                    }
                    for c in clients.lock().unwrap().iter() {
                        if deliveries.fetch_add(1, Ordering::Relaxed) % drop_every != drop_every - 1
                        {
                            let _ = c.send(m.clone());
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_drops_every_50th_delivery_shows_2_percent_loss() {
    let addr = lossy_relay(50).await;
    let url = format!("ws://{addr}/");
    // Rate-paced: a window would shrink as the relay eats the publisher's echoes.
    let mut opts = short_fanout(9, 1, Some(2000.0));
    // Lost messages never arrive: do not wait long for them.
    opts.drain_timeout = Duration::from_secs(2);
    let report = bench::fanout(&bench_target(&url), &opts).await.unwrap();
    assert!(report.expected_deliveries >= 5000, "{report:?}");
    assert!(
        (report.loss_percent - 2.0).abs() < 0.05,
        "loss {} %",
        report.loss_percent
    );
    assert_eq!(
        report.lost,
        report.expected_deliveries - report.received_deliveries
    );
    assert!(report.saw_loss());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_nonzero_on_loss_unless_allowed() {
    let addr = lossy_relay(50).await;
    let url = format!("ws://{addr}/");
    let run = |allow: bool| {
        let mut cmd = binary();
        cmd.args([
            "bench", "fanout", "--url", &url, "-n", "4", "--rate", "1000", "--warmup", "100ms",
        ])
        .args(["--duration", "500ms", "--drain-timeout", "2s", "--json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null());
        if allow {
            cmd.arg("--allow-loss");
        }
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = within(run(false)).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["lost"].as_u64().unwrap() > 0, "{report}");
    let out = within(run(true)).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_can_come_from_a_chosen_source_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let dialer = wsrelay::client::Dialer::new(&url, None).await.unwrap();
    let source: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    // The handshake itself fails (nobody answers it); the accepted peer is what matters.
    let connecting = tokio::spawn(async move { dialer.connect(Some(source)).await.is_ok() });
    let (_stream, peer) = within(listener.accept()).await.unwrap();
    assert_eq!(peer.ip(), source);
    connecting.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_ends_connections_every_way_and_the_relay_counts_each() {
    let server = start(test_config()).await;
    let opts = bench::churn::ChurnOptions {
        rate: 100,
        duration: Duration::from_millis(500),
        max_life: Duration::from_millis(200),
        max_alive: 100,
    };
    let report = bench::churn::churn(&bench_target(&server.url), &opts)
        .await
        .unwrap();
    assert_eq!(report.failed, 0, "{:?}", report.first_failure);
    assert!(report.started >= 10, "{report:?}");
    assert_eq!(report.ended.values().sum::<u64>(), report.started);
    for (ending, n) in &report.ended {
        assert!(*n >= 2, "{ending}: {report:?}");
    }
    let ended = |e: &str| report.ended[e];
    // Every upgraded client was counted out under the matching reason;
    // half handshakes never became clients.
    let reason = |r: &str| format!("wsrelay_disconnections_by_reason_total{{reason=\"{r}\"}}");
    server
        .wait_metric(&reason("client_close"), ended("clean"))
        .await;
    server
        .wait_metric(&reason("protocol_error"), ended("violation"))
        .await;
    server
        .wait_metric(&reason("reset"), ended("drop") + ended("reset"))
        .await;
    server.wait_metric("wsrelay_connections_active", 0).await;
    assert_eq!(
        server.metric("wsrelay_connections_total").await,
        report.started - ended("half_handshake")
    );
    server.stop().await;
}
