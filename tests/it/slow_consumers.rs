//! The slow-consumer policy: a client that reads nothing never slows the
//! others, holds bounded memory, and gets what `client.on_overflow` says.

use std::time::Duration;

use crate::common::*;
use wsrelay::config::{Config, OnOverflow};

const SIZE: usize = 16 * 1024;
/// The publisher keeps at most WINDOW of its own messages in flight, so a
/// reader as fast as the publisher never lags by more than the limits.
const WINDOW: usize = 8;

/// How far behind (`client.queue_messages`) a client may fall, for the
/// drop policies.
const QUEUE: usize = 128;

const DROPPED: &str = "wsrelay_dropped_messages_total{reason=\"slow_consumer\"}";

/// A relay, a client that reads nothing, and the two well-behaved clients
/// (publisher and reader) that stay connected beside it.
struct Scene {
    server: TestServer,
    stalled: RawClient,
    // Held so they stay connected for the whole test.
    _others: [wsrelay::client::ClientStream; 2],
}

/// A relay with `config`; a client that completes its handshake and then
/// reads nothing; and `messages` numbered messages of [`SIZE`] published
/// past it to a reader that must receive every one, in order. The lag
/// limits must be well over [`WINDOW`] messages, or the reader itself may
/// lag past them.
async fn publish_past_a_stalled_client(config: Config, messages: usize) -> Scene {
    let server = start(config).await;
    let stalled = RawClient::connect_stalling(server.addr).await;
    let mut publisher = server.client().await;
    let mut reader = server.client().await;

    let reading = tokio::spawn(async move {
        for i in 0..messages {
            let m = recv(&mut reader).await;
            assert!(m.is_binary(), "message {i}: {m:?}");
            assert_eq!(sequence(m.as_payload()), i);
        }
        reader
    });
    publish_windowed(&mut publisher, SIZE, messages, WINDOW).await;
    let reader = within(reading).await.unwrap();
    Scene {
        server,
        stalled,
        _others: [publisher, reader],
    }
}

/// Reads data frames until the stalled client has received or been denied
/// all `messages`: returns the sequence numbers it got.
async fn read_until_accounted(
    server: &TestServer,
    stalled: &mut RawClient,
    messages: usize,
) -> Vec<usize> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let dropped = server.metric(DROPPED).await as usize;
        if got.len() + dropped == messages {
            return got;
        }
        assert!(
            got.len() + dropped < messages,
            "received {} + dropped {dropped}",
            got.len()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "received {} + dropped {dropped}",
            got.len()
        );
        // The last drops may be counted a moment after the last delivery.
        if let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(20), stalled.read_frame()).await
        {
            let (opcode, payload) = frame.expect("connection stays open");
            assert_eq!(opcode, 0x2, "only data, no close");
            got.push(sequence(&payload));
        }
    }
}

/// Reads past what reached the stalled client's socket buffers to Close
/// 1008 "slow consumer", answers it, and sees the eviction counted.
async fn expect_evicted(server: &TestServer, stalled: &mut RawClient) {
    assert_eq!(stalled.read_close().await, 1008);
    stalled
        .send(&frame(true, 0x8, &1008u16.to_be_bytes(), true))
        .await;
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"slow_consumer\"}",
            1,
        )
        .await;
}

fn assert_increasing_with_gaps(got: &[usize]) {
    assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept: {got:?}");
    assert!(
        got.windows(2).any(|w| w[1] > w[0] + 1),
        "something was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_evicts_a_client_that_never_reads_without_slowing_the_others() {
    const MESSAGES: usize = 3000;
    let mut config = test_config();
    config.client.queue_messages = 256;
    // Long enough that the stalled client, once it reads, still finds the close.
    config.client.close_timeout = Duration::from_secs(120);
    let Scene {
        server,
        mut stalled,
        _others,
    } = publish_past_a_stalled_client(config, MESSAGES).await;
    // 48 MiB went to the reader while the stalled client sat there. It fell
    // past its limits many times over: when it finally reads, it finds
    // what fit in the socket buffers, then Close 1008 "slow consumer".
    expect_evicted(&server, &mut stalled).await;
    // What it was due was dropped at eviction instead of being held.
    assert!(server.metric(DROPPED).await > 0);
    assert_eq!(
        server.metric("wsrelay_connections_active").await,
        2,
        "{}",
        server.metrics().await
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bytes_bounds_the_queue_before_queue_messages_does() {
    let mut config = test_config();
    // 1000 messages are within 1024; only the byte bound (64 messages'
    // worth) can put the stalled client past its limits.
    config.client.queue_messages = 1024;
    config.client.queue_bytes = 1 << 20;
    config.client.close_timeout = Duration::from_secs(120);
    let Scene {
        server,
        mut stalled,
        _others,
    } = publish_past_a_stalled_client(config, 1000).await;
    expect_evicted(&server, &mut stalled).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_client_and_the_newest_messages() {
    const MESSAGES: usize = 1000;
    let mut config = test_config();
    config.client.queue_messages = QUEUE;
    config.client.on_overflow = OnOverflow::DropOldest;
    let Scene {
        server,
        mut stalled,
        _others,
    } = publish_past_a_stalled_client(config, MESSAGES).await;
    // Reading now: the socket buffers' worth, then the newest ones (about
    // QUEUE of them), ending with the very last message.
    let mut got = Vec::new();
    while got.last() != Some(&(MESSAGES - 1)) {
        let (opcode, payload) = stalled.read_frame().await.expect("connection stays open");
        assert_eq!(opcode, 0x2);
        got.push(sequence(&payload));
    }
    assert_increasing_with_gaps(&got);
    assert_eq!(
        got[got.len() - 16..],
        (MESSAGES - 16..MESSAGES).collect::<Vec<_>>()[..]
    );
    server
        .wait_metric(DROPPED, (MESSAGES - got.len()) as u64)
        .await;

    // Still a member: it hears the next message, and nobody was disconnected.
    let mut other = server.client().await;
    use futures_util::SinkExt;
    other
        .send(tokio_websockets::Message::binary(numbered(MESSAGES, 8)))
        .await
        .unwrap();
    let (_, payload) = stalled.read_frame().await.expect("connection stays open");
    assert_eq!(sequence(&payload), MESSAGES);
    assert_eq!(server.metric("wsrelay_disconnections_total").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_keeps_the_client_and_the_oldest_messages() {
    const MESSAGES: usize = 1000;
    let mut config = test_config();
    config.client.queue_messages = QUEUE;
    config.client.on_overflow = OnOverflow::DropNewest;
    let Scene {
        server,
        mut stalled,
        _others,
    } = publish_past_a_stalled_client(config, MESSAGES).await;
    let got = read_until_accounted(&server, &mut stalled, MESSAGES).await;
    // What it got is a prefix: the socket buffers' worth and the window
    // kept for it behind them; everything after was dropped, the last
    // included.
    assert_eq!(got, (0..got.len()).collect::<Vec<_>>());
    assert!(got.len() < MESSAGES);
    assert_eq!(server.metric("wsrelay_disconnections_total").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_drops_a_client_whose_socket_takes_nothing() {
    let mut config = test_config();
    config.client.queue_messages = QUEUE;
    // A drop policy never disconnects a client for falling behind; the
    // write timeout does.
    config.client.on_overflow = OnOverflow::DropNewest;
    config.client.write_timeout = Duration::from_millis(300);
    let Scene {
        server,
        mut stalled,
        _others,
    } = publish_past_a_stalled_client(config, 1000).await;
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"write_timeout\"}",
            1,
        )
        .await;
    assert_eq!(
        server.metric("wsrelay_connections_active").await,
        2,
        "{}",
        server.metrics().await
    );
    // No close handshake for a socket that takes nothing: it just ends.
    while let Some((opcode, _)) = stalled.read_frame().await {
        assert_eq!(opcode, 0x2, "no close frame");
    }
    server.stop().await;
}
