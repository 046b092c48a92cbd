//! Rooms' history under a flood: messages big or tiny into many rooms
//! never hold more than `rooms.history.total_bytes`, whatever is offered.

use futures_util::SinkExt;
use tokio_websockets::Message;

use crate::common::*;

const TOTAL_BYTES: u64 = 16 << 20;

/// What a flood left behind.
struct Flooded {
    /// Payload bytes and messages the history holds, as exported.
    bytes: u64,
    messages: u64,
    /// How much the relay's RSS grew.
    grown: u64,
}

/// A relay with history on (`history` is the rest of its `rooms.history`
/// YAML, `limits` its own section) flooded with `per_room` messages of
/// `size` bytes in each of `rooms` rooms, one publisher each, all at once.
async fn flood(
    name: &str,
    limits: &str,
    history: &str,
    rooms: usize,
    per_room: usize,
    size: usize,
) -> Flooded {
    let dir = TempDir::new(name);
    let relay = spawn_relay(&dir.file(
        "wsrelay.yaml",
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n{limits}\
             rooms:\n  enabled: true\n  history:\n    total_bytes: {TOTAL_BYTES}\n{history}"
        ),
    ));
    let metrics = relay.metrics_addr.unwrap();
    let before = relay.rss_bytes();
    let mut publishers = Vec::new();
    for room in 0..rooms {
        let url = format!("ws://{}/rooms/{name}-{room}?role=publisher", relay.addr);
        let ws = within(wsrelay::client::connect(&url, None)).await.unwrap();
        publishers.push(tokio::spawn(async move {
            let mut ws = ws;
            for i in 0..per_room {
                ws.feed(Message::binary(numbered(i, size))).await.unwrap();
            }
            ws.flush().await.unwrap();
            ws
        }));
    }
    let mut held = Vec::new();
    for p in publishers {
        held.push(within(p).await.unwrap());
    }
    wait_metric_at(metrics, "wsrelay_messages_total", (rooms * per_room) as u64).await;
    let (_, text) = http_get(metrics, "/metrics").await;
    Flooded {
        bytes: metric_value(&text, "wsrelay_history_bytes").unwrap(),
        messages: metric_value(&text, "wsrelay_history_messages").unwrap(),
        grown: relay.rss_bytes().saturating_sub(before),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_big_messages_in_many_rooms_stays_within_the_history_bound() {
    const SIZE: usize = 64 << 10;
    let _turn = crate::one_at_a_time().await;
    // 50 rooms x 40 messages x 64 KiB: 128 MiB offered, eight times the bound.
    let f = flood(
        "flood",
        "limits:\n  max_message_size: 128KiB\n",
        "    size: 1000\n    max_bytes: 4MiB\n",
        50,
        40,
        SIZE,
    )
    .await;
    // Every room kept something, and all of them together within the bound.
    assert!(f.bytes <= TOTAL_BYTES, "{} bytes held", f.bytes);
    assert!(
        f.bytes >= TOTAL_BYTES / 2,
        "history was kept at all: {}",
        f.bytes
    );
    assert_eq!(f.bytes, f.messages * SIZE as u64);
    // The process: the bound, plus a stated overhead for read buffers, the
    // allocator's slack and 50 sockets: 24 MiB (12-13 MiB measured:
    // 27.8-29 MiB grown in all, debug build).
    eprintln!(
        "history flood: {} B held in {} messages; relay RSS grew {} B",
        f.bytes, f.messages, f.grown
    );
    assert!(
        f.grown <= TOTAL_BYTES + (24 << 20),
        "RSS grew {} MiB for a 16 MiB bound",
        f.grown >> 20
    );
}

/// Tiny messages, where the per-message overhead is most of what is held:
/// 1 000 000 of 16 bytes into 100 rooms against the same bound. The bound
/// counts each message's entry as well as its payload, so the process
/// grows by about the bound, not by the messages' count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_tiny_messages_stays_within_the_history_bound() {
    let _turn = crate::one_at_a_time().await;
    let f = flood("tiny", "", "    size: 100000\n", 100, 10_000, 16).await;
    // Each message counts 208 bytes besides its payload (log::ENTRY_BYTES).
    let counted = f.bytes + f.messages * 208;
    assert!(counted <= TOTAL_BYTES, "{counted} bytes counted");
    assert!(
        counted >= TOTAL_BYTES / 2,
        "history was kept at all: {counted}"
    );
    eprintln!(
        "tiny flood: {} messages, {counted} B counted; relay RSS grew {} B ({:.0} B per message held)",
        f.messages,
        f.grown,
        f.grown as f64 / f.messages as f64
    );
    // 8-9 MiB above the bound measured (24-25 MiB grown); counting 88
    // bytes a message, as before, it grew 38 MiB.
    assert!(
        f.grown <= TOTAL_BYTES + (16 << 20),
        "RSS grew {} MiB for a 16 MiB bound",
        f.grown >> 20
    );
}
