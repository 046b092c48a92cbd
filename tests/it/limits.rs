//! Protections applied before the upgrade: connection caps and the Origin
//! allowlist. Refused clients get an HTTP status, never a WebSocket.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_websockets::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_503_until_a_place_frees() {
    let mut config = test_config();
    config.limits.max_connections = 2;
    let server = start(config).await;
    let mut a = server.client().await;
    let _b = server.client().await;

    let (status, _) = handshake(server.addr, "127.0.0.1", "").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    server.wait_metric(&rejected("max_connections"), 1).await;

    // The two admitted clients still relay.
    a.send(Message::text("still fine")).await.unwrap();
    assert_eq!(recv(&mut a).await.as_text(), Some("still fine"));

    // One leaves; its place goes to the next client.
    a.close().await.unwrap();
    server.wait_metric("wsrelay_connections_active", 1).await;
    let (status, _) = handshake(server.addr, "127.0.0.1", "").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    assert_eq!(server.metric("wsrelay_connections_total").await, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_refuses_with_429_per_address() {
    let mut config = test_config();
    config.limits.max_connections_per_ip = 1;
    let server = start(config).await;
    let (first, _held) = handshake(server.addr, "127.0.0.1", "").await;
    assert!(first.starts_with("HTTP/1.1 101"), "{first}");
    let (second, _) = handshake(server.addr, "127.0.0.1", "").await;
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    // Another address has its own allowance.
    let (other, _held2) = handshake(server.addr, "127.0.0.2", "").await;
    assert!(other.starts_with("HTTP/1.1 101"), "{other}");
    server
        .wait_metric(&rejected("max_connections_per_ip"), 1)
        .await;
    server.wait_metric("wsrelay_connections_active", 2).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allowlist_refuses_other_pages_with_403() {
    let mut config = test_config();
    config.server.allowed_origins = vec![
        "https://app.example.com".into(),
        "https://*.example.org".into(),
    ];
    let server = start(config).await;
    let cases = [
        ("Origin: https://app.example.com\r\n", "101"),
        ("Origin: https://chat.example.org\r\n", "101"),
        ("", "101"),
        ("Origin: https://evil.example.net\r\n", "403"),
        ("Origin: https://example.org\r\n", "403"),
    ];
    let mut held = Vec::new();
    for (header, want) in cases {
        let (status, s) = handshake(server.addr, "127.0.0.1", header).await;
        assert!(
            status.starts_with(&format!("HTTP/1.1 {want}")),
            "{header:?}: {status}"
        );
        held.push(s);
    }
    server.wait_metric(&rejected("origin"), 2).await;
    server.wait_metric("wsrelay_connections_active", 3).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_are_dropped_at_the_timeout() {
    let mut config = test_config();
    config.limits.handshake_timeout = std::time::Duration::from_millis(300);
    let server = start(config).await;
    // Says nothing at all.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Dribbles half a request and stalls (slowloris).
    let mut dribbler = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    dribbler
        .write_all(b"GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    assert!(read_until_closed(&mut dribbler).await.is_empty());
    server.wait_metric(&rejected("handshake_timeout"), 2).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431() {
    let server = start(test_config()).await;
    let flood: String = (0..400)
        .map(|i| format!("X-Flood-{i}: {}\r\n", "a".repeat(40)))
        .collect();
    let (status, _) = handshake(server.addr, "127.0.0.1", &flood).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    server.wait_metric(&rejected("bad_request"), 1).await;
    assert_eq!(server.metric("wsrelay_connections_total").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_closed_with_1008() {
    let mut config = test_config();
    config.limits.messages_per_second = 1;
    config.limits.burst = 3;
    let server = start(config).await;
    let mut observer = server.client().await;
    let mut flooder = server.client().await;
    for i in 0..10 {
        flooder.send(Message::text(i.to_string())).await.unwrap();
    }
    assert_eq!(recv_close(&mut flooder).await, 1008);
    // Answer the close, as a well-behaved client does.
    let _ = within(flooder.close()).await;
    // The burst went through, in order; the flood did not.
    for i in 0..3 {
        assert_eq!(
            recv(&mut observer).await.as_text(),
            Some(i.to_string().as_str())
        );
    }
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"rate_limit\"}",
            1,
        )
        .await;
    // Everyone else carries on, with a rate of their own.
    observer.send(Message::text("mine")).await.unwrap();
    loop {
        let m = recv(&mut observer).await;
        if m.as_text() == Some("mine") {
            break;
        }
        // At most one more of the flood, if a token was refilled in between.
        assert_eq!(m.as_text(), Some("3"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_drop_the_excess_is_dropped_and_the_client_stays() {
    let mut config = test_config();
    config.limits.messages_per_second = 1;
    config.limits.burst = 3;
    config.limits.on_rate_exceeded = wsrelay::config::OnRateExceeded::Drop;
    let server = start(config).await;
    let mut observer = server.client().await;
    let mut flooder = server.client().await;
    for i in 0..20 {
        flooder.send(Message::text(i.to_string())).await.unwrap();
    }
    server.wait_metric("wsrelay_messages_total", 20).await;
    let dropped = server
        .metric("wsrelay_dropped_messages_total{reason=\"rate_limit\"}")
        .await;
    // 3 in the burst, plus one per second the flood took to arrive.
    assert!((10..=17).contains(&dropped), "dropped {dropped}");
    let passed = 20 - dropped;
    let mut last = -1;
    for _ in 0..passed {
        let n: i64 = recv(&mut observer)
            .await
            .as_text()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > last, "order kept");
        last = n;
    }
    // Nothing else of the flood follows: the next message is the observer's own.
    observer.send(Message::text("mine")).await.unwrap();
    assert_eq!(recv(&mut observer).await.as_text(), Some("mine"));
    assert_eq!(server.metric("wsrelay_connections_active").await, 2);
    server.stop().await;
}

/// A dead peer whose socket is full (nothing reads it, nothing answers) is
/// found idle even with `write_timeout: 0s`: the keepalive tick wakes a task
/// blocked on its write too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_blocking_a_write_is_closed_at_the_idle_timeout() {
    let mut config = test_config();
    config.client.write_timeout = std::time::Duration::ZERO;
    config.client.on_overflow = wsrelay::config::OnOverflow::DropNewest;
    config.client.ping_interval = std::time::Duration::from_millis(250);
    config.client.idle_timeout = std::time::Duration::from_secs(1);
    config.client.close_timeout = std::time::Duration::from_millis(500);
    let server = start(config).await;
    let _dead = RawClient::connect_stalling(server.addr).await;
    let mut publisher = join(server.addr, "/?echo=false").await;
    // Well past what the dead peer's socket buffers take (the relay's send
    // buffer grows to 4 MiB): its writer stays blocked, and the rest is
    // dropped by the policy.
    for _ in 0..256 {
        publisher
            .send(Message::binary(vec![0u8; 64 * 1024]))
            .await
            .unwrap();
    }
    // Polling the publisher is what makes it answer pings: it stays.
    let answering = tokio::spawn(async move { while publisher.next().await.is_some() {} });
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"idle_timeout\"}",
            1,
        )
        .await;
    assert_eq!(server.metric("wsrelay_connections_active").await, 1);
    server.stop().await;
    within(answering).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_and_others_stay() {
    let mut config = test_config();
    // The answering client has a whole idle timeout to answer, on a loaded
    // machine too.
    config.client.ping_interval = std::time::Duration::from_millis(250);
    config.client.idle_timeout = std::time::Duration::from_secs(2);
    let server = start(config).await;
    // Reads (so it sees the pings) but never answers anything.
    let mut deaf = RawClient::connect(server.addr).await;
    // A normal client answers pings whenever it is polled.
    let mut alive = server.client().await;
    let answering = tokio::spawn(async move {
        // Polling the stream is what makes it answer pings; stop at "done".
        loop {
            let m = recv(&mut alive).await;
            if m.as_text() == Some("done") {
                return alive;
            }
        }
    });

    assert_eq!(
        deaf.read_frame().await,
        Some((0x9, Vec::new())),
        "the relay pings"
    );
    assert_eq!(deaf.read_close().await, 1001);
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"idle_timeout\"}",
            1,
        )
        .await;

    // A whole idle timeout after both joined, the answering client is still
    // there and relays.
    let mut other = server.client().await;
    other.send(Message::text("done")).await.unwrap();
    let _alive = within(answering).await.unwrap();
    assert_eq!(server.metric("wsrelay_connections_active").await, 2);
    // Pings are not counted as relayed messages.
    assert_eq!(server.metric("wsrelay_messages_delivered_total").await, 2);
    server.stop().await;
}

/// A client dribbling a message (here a byte at a time) cannot hold its
/// partial message open: past `limits.message_timeout` it gets 1008, and
/// others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dribbled_past_the_message_timeout_gets_1008() {
    let mut config = test_config();
    config.limits.message_timeout = std::time::Duration::from_millis(500);
    config.client.close_timeout = std::time::Duration::from_millis(500);
    let server = start(config).await;
    let mut bystander = server.client().await;
    let raw = RawClient::connect(server.addr).await;
    let (mut read, mut write) = raw.stream.into_split();
    // A 1 000-byte message, one byte of it every 50 ms: 50 s if let be.
    let whole = frame(true, 0x2, &[7; 1000], true);
    let dribbling = tokio::spawn(async move {
        for b in whole {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            // Pacing the attacker, not waiting for the relay.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let mut close = [0u8; 4];
    within(read.read_exact(&mut close)).await.unwrap();
    assert_eq!(close[0], 0x88);
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1008);
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"message_timeout\"}",
            1,
        )
        .await;
    bystander.send(Message::text("fine")).await.unwrap();
    assert_eq!(recv(&mut bystander).await.as_text(), Some("fine"));
    dribbling.abort();
    server.stop().await;
}

/// With `limits.max_handshakes` connections in their handshake, the next
/// one waits in the accept queue, unanswered, until one of them ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_cap_wait_for_a_place() {
    let mut config = test_config();
    config.limits.max_handshakes = 2;
    config.limits.handshake_timeout = std::time::Duration::from_secs(60);
    let server = start(config).await;
    // Two connections that never send their request hold both places.
    let stalled = [
        within(tokio::net::TcpStream::connect(server.addr))
            .await
            .unwrap(),
        within(tokio::net::TcpStream::connect(server.addr))
            .await
            .unwrap(),
    ];
    let mut third = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    third
        .write_all(upgrade_request("/", "").as_bytes())
        .await
        .unwrap();
    // Unanswered while the places are taken. (With the cap broken the 101
    // comes at once, so this cannot pass by luck; it only takes the wait.)
    let mut head = [0u8; 12];
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(300),
            third.read_exact(&mut head)
        )
        .await
        .is_err(),
        "answered past the cap: {:?}",
        String::from_utf8_lossy(&head)
    );
    // One leaves: the third is accepted and upgraded.
    let [leaving, _staying] = stalled;
    drop(leaving);
    within(third.read_exact(&mut head)).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    server.stop().await;
}
