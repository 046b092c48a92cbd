//! permessage-deflate at scale, against the relay as its own process: one
//! message to 1 000 compressing clients is compressed once, and zip bombs
//! leave the relay's memory where it was.

use std::sync::Arc;

use crate::common::*;
use wsrelay::wire::{Window, deflate};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn relay_with(dir: &TempDir, extra: &str) -> RelayProcess {
    let file = dir.file(
        "wsrelay.yaml",
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n\
             client:\n  ping_interval: 0s\ncompression:\n  enabled: true\n{extra}"
        ),
    );
    spawn_relay(&file)
}

async fn metric(addr: std::net::SocketAddr, series: &str) -> u64 {
    let (_, body) = http_get(addr, "/metrics").await;
    metric_value(&body, series).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_to_a_thousand_compressing_clients_is_compressed_once() {
    let _turn = crate::one_at_a_time().await;
    let dir = TempDir::new("deflate-once");
    let relay = relay_with(&dir, "");
    let metrics = relay.metrics_addr.unwrap();

    let message: Arc<Vec<u8>> = Arc::new(
        (0..40)
            .map(|i| {
                format!(
                    "{{\"id\":{i},\"user\":\"user-{}\",\"online\":true}},",
                    i % 5
                )
            })
            .collect::<String>()
            .into_bytes(),
    );
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (mut raw, head) = RawClient::connect_with(relay.addr, "/", OFFER).await;
        assert!(
            head.to_ascii_lowercase().contains("permessage-deflate"),
            "{head}"
        );
        let message = message.clone();
        tasks.push(tokio::spawn(async move {
            let (b0, wire) = raw.read_whole_frame().await.expect("a message");
            assert_eq!(b0, 0x80 | 0x40 | 0x1, "final, compressed, text");
            assert!(wire.len() * 3 < message.len());
            assert_eq!(deflate::inflate(&wire, 1 << 20).unwrap(), *message);
        }));
    }
    wait_metric_at(metrics, "wsrelay_connections_active", 1000).await;

    let mut sender = RawClient::connect_to(relay.addr, "/?echo=false").await;
    sender.send(&frame(true, 0x1, &message, true)).await;
    for task in tasks {
        within(task)
            .await
            .expect("every client inflates the message");
    }
    assert_eq!(
        metric(metrics, "wsrelay_compressed_messages_total").await,
        1
    );
    assert_eq!(
        metric(metrics, "wsrelay_compression_input_bytes_total").await,
        message.len() as u64
    );
    assert_eq!(
        metric(metrics, "wsrelay_messages_delivered_total").await,
        1000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_bombs_get_1009_and_leave_memory_flat() {
    let _turn = crate::one_at_a_time().await;
    let dir = TempDir::new("deflate-bomb");
    let relay = relay_with(&dir, "limits:\n  max_message_size: 64KiB\n");
    // 10 KB on the wire, 10 MiB inflated.
    let c = deflate::compress(&vec![0u8; 10 << 20], 9, Window::Full).unwrap();
    assert!(c.len() < 11_000, "{}", c.len());
    let mut bomb = frame(true, 0x2, &c, true);
    bomb[0] |= 0x40;

    let mut bystander = RawClient::connect(relay.addr).await;
    let before = relay.rss_bytes();
    for _ in 0..20 {
        let (mut raw, _) = RawClient::connect_with(relay.addr, "/", OFFER).await;
        raw.send(&bomb).await;
        assert_eq!(raw.read_close().await, 1009);
    }
    let grown = relay.rss_bytes().saturating_sub(before);
    // Each inflation stops one byte past the 64 KiB limit.
    assert!(grown < 2 << 20, "RSS grew {grown} bytes over 20 bombs");

    // The relay still relays.
    let mut sender = RawClient::connect(relay.addr).await;
    sender.send(&frame(true, 0x1, b"after", true)).await;
    assert_eq!(bystander.read_frame().await, Some((0x1, b"after".to_vec())));
}
