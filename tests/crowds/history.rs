//! Rooms' history under a flood: big messages into many rooms never hold
//! more than `rooms.history.total_bytes`, whatever is offered.

use futures_util::SinkExt;
use tokio_websockets::Message;

use crate::common::*;

const ROOMS: usize = 50;
const PER_ROOM: usize = 40;
const SIZE: usize = 64 << 10;
const TOTAL_BYTES: u64 = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_big_messages_in_many_rooms_stays_within_the_history_bound() {
    let _turn = crate::one_at_a_time().await;
    let dir = TempDir::new("history-flood");
    let relay = spawn_relay(&dir.file(
        "wsrelay.yaml",
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n\
             limits:\n  max_message_size: 128KiB\n\
             rooms:\n  enabled: true\n  history:\n    size: 1000\n    max_bytes: 4MiB\n    total_bytes: {TOTAL_BYTES}\n"
        ),
    ));
    let metrics = relay.metrics_addr.unwrap();
    let before = relay.rss_bytes();
    // 50 rooms x 40 messages x 64 KiB: 128 MiB offered, eight times the bound.
    let mut publishers = Vec::new();
    for room in 0..ROOMS {
        let url = format!("ws://{}/rooms/flood-{room}?role=publisher", relay.addr);
        let ws = within(wsrelay::client::connect(&url, None)).await.unwrap();
        publishers.push(tokio::spawn(async move {
            let mut ws = ws;
            for i in 0..PER_ROOM {
                ws.send(Message::binary(numbered(i, SIZE))).await.unwrap();
            }
            ws.flush().await.unwrap();
            ws
        }));
    }
    let mut held = Vec::new();
    for p in publishers {
        held.push(within(p).await.unwrap());
    }
    wait_metric_at(metrics, "wsrelay_messages_total", (ROOMS * PER_ROOM) as u64).await;
    let (_, text) = http_get(metrics, "/metrics").await;
    let bytes = metric_value(&text, "wsrelay_history_bytes").unwrap();
    let messages = metric_value(&text, "wsrelay_history_messages").unwrap();
    // Every room kept something, and all of them together within the bound.
    assert!(bytes <= TOTAL_BYTES, "{bytes} bytes held");
    assert!(bytes >= TOTAL_BYTES / 2, "history was kept at all: {bytes}");
    assert_eq!(bytes, messages * SIZE as u64);
    // The process: the bound, plus a stated overhead for read buffers, the
    // allocator's slack and 50 sockets: 24 MiB (12 MiB measured: 27.8 MiB
    // grown in all, debug build).
    let grown = relay.rss_bytes().saturating_sub(before);
    eprintln!("history flood: {bytes} B held in {messages} messages; relay RSS grew {grown} B");
    assert!(
        grown <= TOTAL_BYTES + (24 << 20),
        "RSS grew {} MiB for a 16 MiB bound",
        grown >> 20
    );
    drop(held);
}

/// Tiny messages, where the per-message overhead is most of what is held:
/// 1 000 000 of 16 bytes into 100 rooms against the same bound. The bound
/// counts each message's entry as well as its payload, so the process
/// grows by about the bound, not by the messages' count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_tiny_messages_stays_within_the_history_bound() {
    const ROOMS: usize = 100;
    const PER_ROOM: usize = 10_000;
    const SIZE: usize = 16;
    let _turn = crate::one_at_a_time().await;
    let dir = TempDir::new("history-tiny-flood");
    let relay = spawn_relay(&dir.file(
        "wsrelay.yaml",
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n\
             rooms:\n  enabled: true\n  history:\n    size: 100000\n    total_bytes: {TOTAL_BYTES}\n"
        ),
    ));
    let metrics = relay.metrics_addr.unwrap();
    let before = relay.rss_bytes();
    let mut publishers = Vec::new();
    for room in 0..ROOMS {
        let url = format!("ws://{}/rooms/tiny-{room}?role=publisher", relay.addr);
        let ws = within(wsrelay::client::connect(&url, None)).await.unwrap();
        publishers.push(tokio::spawn(async move {
            let mut ws = ws;
            for i in 0..PER_ROOM {
                ws.feed(Message::binary(numbered(i, SIZE))).await.unwrap();
            }
            ws.flush().await.unwrap();
            ws
        }));
    }
    let mut held = Vec::new();
    for p in publishers {
        held.push(within(p).await.unwrap());
    }
    wait_metric_at(metrics, "wsrelay_messages_total", (ROOMS * PER_ROOM) as u64).await;
    let (_, text) = http_get(metrics, "/metrics").await;
    let bytes = metric_value(&text, "wsrelay_history_bytes").unwrap();
    let messages = metric_value(&text, "wsrelay_history_messages").unwrap();
    // Each message counts 208 bytes besides its payload (log::ENTRY_BYTES).
    let counted = bytes + messages * 208;
    assert!(counted <= TOTAL_BYTES, "{counted} bytes counted");
    assert!(
        counted >= TOTAL_BYTES / 2,
        "history was kept at all: {counted}"
    );
    let grown = relay.rss_bytes().saturating_sub(before);
    eprintln!(
        "tiny flood: {messages} messages, {counted} B counted; relay RSS grew {grown} B ({:.0} B per message held)",
        grown as f64 / messages as f64
    );
    assert!(
        grown <= TOTAL_BYTES + (24 << 20),
        "RSS grew {} MiB for a 16 MiB bound",
        grown >> 20
    );
    drop(held);
}
