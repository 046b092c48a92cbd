//! Fan-out behaviour of the real relay over real sockets.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_websockets::{CloseCode, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_reach_every_client_byte_exact() {
    let server = start(test_config()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.client().await);
    }
    let text = "héllo, wörld ✓ \u{0}";
    let binary: Vec<u8> = (0..=255u8).chain([0, 0xff, 0x80]).collect();
    clients[0]
        .send(Message::text(text.to_owned()))
        .await
        .unwrap();
    clients[0]
        .send(Message::binary(binary.clone()))
        .await
        .unwrap();

    // Every client, the sender included, gets both, in order, types kept.
    for ws in &mut clients {
        let m = recv(ws).await;
        assert!(m.is_text());
        assert_eq!(m.as_text(), Some(text));
        let m = recv(ws).await;
        assert!(m.is_binary());
        assert_eq!(&**m.as_payload(), &binary[..]);
    }
    server.wait_metric("wsrelay_messages_total", 2).await;
    server
        .wait_metric("wsrelay_messages_delivered_total", 6)
        .await;
    let bytes_in = (text.len() + binary.len()) as u64;
    assert_eq!(
        server.metric("wsrelay_received_bytes_total").await,
        bytes_in
    );
    assert_eq!(
        server.metric("wsrelay_sent_bytes_total").await,
        3 * bytes_in
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_reassembled() {
    let server = start(test_config()).await;
    let mut listener = server.client().await;
    let mut raw = RawClient::connect(server.addr).await;
    raw.send(&frame(false, 0x1, b"frag", true)).await;
    raw.send(&frame(false, 0x0, "men".as_bytes(), true)).await;
    raw.send(&frame(true, 0x0, "ted ✓".as_bytes(), true)).await;
    let m = recv(&mut listener).await;
    assert_eq!(m.as_text(), Some("fragmented ✓"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_senders_order_is_kept_with_50_concurrent_senders() {
    const SENDERS: usize = 50;
    const PER_SENDER: usize = 100;
    let mut config = test_config();
    // Every sender also receives all 5000 messages; give slow test tasks room.
    config.client.queue_messages = SENDERS * PER_SENDER;
    let server = start(config).await;
    let mut observer = server.client().await;

    // Everyone joins before anyone sends, so every client hears every message.
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(server.client().await);
    }
    let mut tasks = Vec::new();
    for (s, ws) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            // Drain our own deliveries concurrently so we never become slow.
            let drain = tokio::spawn(async move {
                let mut n = 0;
                while n < SENDERS * PER_SENDER {
                    match rx.next().await {
                        Some(Ok(m)) if m.is_text() => n += 1,
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
                n
            });
            for i in 0..PER_SENDER {
                tx.send(Message::text(format!("{s}:{i}"))).await.unwrap();
            }
            drain.await.unwrap()
        }));
    }

    let mut next: HashMap<usize, usize> = HashMap::new();
    for _ in 0..SENDERS * PER_SENDER {
        let m = recv(&mut observer).await;
        let (s, i) = m.as_text().unwrap().split_once(':').unwrap();
        let (s, i): (usize, usize) = (s.parse().unwrap(), i.parse().unwrap());
        let expected = next.entry(s).or_insert(0);
        assert_eq!(i, *expected, "sender {s} out of order");
        *expected += 1;
    }
    assert!(next.values().all(|&n| n == PER_SENDER));
    for t in tasks {
        assert_eq!(within(t).await.unwrap(), SENDERS * PER_SENDER);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_close_and_reset_are_each_counted_once() {
    let server = start(test_config()).await;
    let mut closing = server.client().await;
    let resetting = RawClient::connect(server.addr).await;
    server.wait_metric("wsrelay_connections_active", 2).await;

    closing.close().await.unwrap();
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"client_close\"}",
            1,
        )
        .await;

    // SO_LINGER 0 makes the kernel send RST instead of FIN.
    resetting.stream.set_zero_linger().unwrap();
    drop(resetting);
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"reset\"}",
            1,
        )
        .await;

    server.wait_metric("wsrelay_connections_active", 0).await;
    assert_eq!(server.metric("wsrelay_connections_total").await, 2);
    assert_eq!(server.metric("wsrelay_disconnections_total").await, 2);
    for reason in [
        "protocol_error",
        "slow_consumer",
        "write_error",
        "shutdown",
        "rate_limit",
    ] {
        let series = format!("wsrelay_disconnections_by_reason_total{{reason=\"{reason}\"}}");
        assert_eq!(server.metric(&series).await, 0, "{series}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_text_gets_1007_and_others_carry_on() {
    let server = start(test_config()).await;
    let mut bystander = server.client().await;
    let mut raw = RawClient::connect(server.addr).await;
    raw.send(&frame(true, 0x1, &[b'o', b'k', 0xc3, 0x28], true))
        .await;
    assert_eq!(raw.read_close().await, 1007);

    // Split across fragments: the first part ends inside a character.
    let mut raw = RawClient::connect(server.addr).await;
    raw.send(&frame(false, 0x1, &[0xce, 0xba, 0xe1], true))
        .await;
    raw.send(&frame(true, 0x0, &[0x28, 0x28], true)).await;
    assert_eq!(raw.read_close().await, 1007);

    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"protocol_error\"}",
            2,
        )
        .await;
    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(recv(&mut bystander).await.as_text(), Some("still here"));
    assert_eq!(server.metric("wsrelay_messages_total").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_the_right_close_code() {
    let server = start(test_config()).await;
    let mut bystander = server.client().await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", frame(true, 0x2, b"hi", false), 1002),
        (
            "reserved bit",
            {
                let mut f = frame(true, 0x2, b"hi", true);
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("unknown opcode", frame(true, 0x3, b"", true), 1002),
        (
            "continuation without start",
            frame(true, 0x0, b"x", true),
            1002,
        ),
        ("fragmented ping", frame(false, 0x9, b"", true), 1002),
        ("oversized ping", frame(true, 0x9, &[0; 126], true), 1002),
        (
            "new message inside a fragmented one",
            [frame(false, 0x1, b"a", true), frame(true, 0x1, b"b", true)].concat(),
            1002,
        ),
        (
            "close with a one-byte payload",
            frame(true, 0x8, &[0x03], true),
            1002,
        ),
        (
            "close code 1005",
            frame(true, 0x8, &1005u16.to_be_bytes(), true),
            1002,
        ),
        (
            "close code 5000",
            frame(true, 0x8, &5000u16.to_be_bytes(), true),
            1002,
        ),
        (
            "close code 1006",
            frame(true, 0x8, &1006u16.to_be_bytes(), true),
            1002,
        ),
        (
            "close code 999",
            frame(true, 0x8, &999u16.to_be_bytes(), true),
            1002,
        ),
        (
            "close reason not UTF-8",
            frame(true, 0x8, &[0x03, 0xe8, 0xc3, 0x28], true),
            1007,
        ),
    ];
    for (name, bytes, code) in &cases {
        let mut raw = RawClient::connect(server.addr).await;
        raw.send(bytes).await;
        assert_eq!(raw.read_close().await, *code, "{name}");
    }
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"protocol_error\"}",
            cases.len() as u64,
        )
        .await;
    bystander.send(Message::binary(&b"fine"[..])).await.unwrap();
    assert_eq!(&**recv(&mut bystander).await.as_payload(), b"fine");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_gets_1009_before_it_is_buffered() {
    let mut config = test_config();
    config.limits.max_message_size = 1024;
    let server = start(config).await;
    let mut raw = RawClient::connect(server.addr).await;
    // Only the header of a 1 GiB frame is sent: the relay must refuse on the
    // length alone rather than wait to buffer it.
    let mut header = frame(true, 0x2, b"", true);
    header[1] = 0x80 | 127;
    header.splice(2..2, (1u64 << 30).to_be_bytes());
    raw.send(&header).await;
    assert_eq!(raw.read_close().await, 1009);

    // Fragments that only add up to too much are refused too.
    let mut raw = RawClient::connect(server.addr).await;
    raw.send(&frame(false, 0x2, &[0; 1000], true)).await;
    raw.send(&frame(true, 0x0, &[0; 100], true)).await;
    assert_eq!(raw.read_close().await, 1009);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered() {
    let server = start(test_config()).await;
    let mut raw = RawClient::connect(server.addr).await;
    raw.send(&frame(true, 0x9, b"are you there", true)).await;
    assert_eq!(
        raw.read_frame().await,
        Some((0xA, b"are you there".to_vec()))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_bad_upgrades_get_clean_4xx() {
    let server = start(test_config()).await;
    let (status, body) = http_get(server.addr, "/").await;
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("WebSocket"), "{body}");
    let (status, _) = http_get(server.addr, "/elsewhere").await;
    assert_eq!(status, 404);

    let cases = [
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            426,
        ),
    ];
    for (request, want) in cases {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        within(tokio::io::AsyncReadExt::read_to_end(&mut s, &mut raw))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want} ")),
            "{request:?} got {text}"
        );
    }
    server
        .wait_metric(
            "wsrelay_rejected_connections_total{reason=\"bad_request\"}",
            6,
        )
        .await;
    assert_eq!(server.metric("wsrelay_connections_total").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_path_is_the_only_upgrade_path() {
    let mut config = test_config();
    config.server.path = "/relay".into();
    let server = start(config).await;
    assert!(server.url.ends_with("/relay"));
    let mut ws = server.client().await;
    ws.send(Message::text("on the path")).await.unwrap();
    assert_eq!(recv(&mut ws).await.as_text(), Some("on the path"));
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(UPGRADE_REQUEST.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    within(tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut resp))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 404 "));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_going_away_to_everyone() {
    let server = start(test_config()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(recv_close(&mut a).await, u16::from(CloseCode::GOING_AWAY));
    assert_eq!(recv_close(&mut b).await, 1001);
    within(stopping).await.unwrap();
    // Once `run` has returned, the listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// During a graceful shutdown clients are closed in batches; until its own
/// Close, a client still hears the others and is heard, its own echo
/// included. And shutdown ends as soon as every client is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_for_their_close_still_relay() {
    let mut config = test_config();
    // Three clients, three batches a minute apart: the test is done long
    // before a second batch is due.
    config.shutdown.timeout = Duration::from_secs(360);
    let mut server = start(config).await;
    let mut clients = vec![
        server.client().await,
        server.client().await,
        server.client().await,
    ];
    server.begin_stop();
    // The first batch: one client gets 1001.
    let closed = within(async {
        let (i, m) = {
            let [a, b, c] = &mut clients[..] else {
                unreachable!()
            };
            tokio::select! {
                m = a.next() => (0, m),
                m = b.next() => (1, m),
                m = c.next() => (2, m),
            }
        };
        match m {
            Some(Ok(m)) if m.is_close() => {
                assert_eq!(m.as_close().unwrap().0, CloseCode::GOING_AWAY);
                i
            }
            other => panic!("client {i}: {other:?}"),
        }
    })
    .await;
    clients.remove(closed);
    let [mut talker, mut listener] = <[_; 2]>::try_from(clients).ok().unwrap();
    talker.send(Message::text("during")).await.unwrap();
    assert_eq!(recv(&mut listener).await.as_text(), Some("during"));
    assert_eq!(recv(&mut talker).await.as_text(), Some("during"));
    // Leaving by themselves, they end the shutdown without waiting out
    // the batches.
    drop((talker, listener));
    within(server.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_frames_affect_no_one_else() {
    let server = start(test_config()).await;
    let mut bystander = server.client().await;

    // Not HTTP at all: a clean 400, then the connection is closed.
    let mut garbage = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x00\xa5 definitely not http\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    within(tokio::io::AsyncReadExt::read_to_end(
        &mut garbage,
        &mut answer,
    ))
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400 "),
        "{answer:?}"
    );
    server
        .wait_metric(
            "wsrelay_rejected_connections_total{reason=\"bad_request\"}",
            1,
        )
        .await;

    // Half a frame, then EOF: counted as a reset, nothing relayed.
    let mut truncated = RawClient::connect(server.addr).await;
    let whole = frame(true, 0x1, b"never finished", true);
    truncated.send(&whole[..whole.len() - 4]).await;
    truncated.stream.shutdown().await.unwrap();
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"reset\"}",
            1,
        )
        .await;

    bystander.send(Message::text("fine")).await.unwrap();
    assert_eq!(recv(&mut bystander).await.as_text(), Some("fine"));
    assert_eq!(server.metric("wsrelay_messages_total").await, 1);
    assert_eq!(server.metric("wsrelay_connections_active").await, 1);
    server.stop().await;
}

/// A message past `limits.max_message_size` gets Close 1009, and the relay
/// keeps reading (and discarding) while the client is still sending it, so
/// the client reads the code and the connection ends with FIN, not a reset
/// (a reset is what makes browsers report 1006 instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_gets_1009_and_the_connection_ends_with_fin() {
    let server = start(test_config()).await; // limit: 1 MiB
    let mut bystander = server.client().await;
    for mib in [2usize, 4, 16] {
        let mut raw = RawClient::connect(server.addr).await;
        // The whole message goes out before the client reads anything, as
        // a browser's send() does.
        raw.send(&frame(true, 0x2, &vec![7; mib << 20], true)).await;
        assert_eq!(raw.read_close().await, 1009, "{mib} MiB");
        raw.send(&frame(true, 0x8, &1009u16.to_be_bytes(), true))
            .await;
        assert!(raw.ends_with_fin().await, "{mib} MiB: reset, not FIN");
    }
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"protocol_error\"}",
            3,
        )
        .await;
    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(recv(&mut bystander).await.as_text(), Some("still here"));
    server.stop().await;
}

/// A client that keeps sending after the relay's Close is read and
/// discarded only until `client.close_timeout`, then cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_stops_sending_is_cut_at_the_close_timeout() {
    let mut config = test_config();
    config.client.close_timeout = Duration::from_millis(500);
    let server = start(config).await;
    let raw = RawClient::connect(server.addr).await;
    let (mut read, mut write) = raw.stream.into_split();
    // A frame header announcing 1 TiB, then bytes for as long as it is taken.
    let mut header = frame(true, 0x2, b"", true);
    header[1] = 0x80 | 127;
    header.splice(2..2, (1u64 << 40).to_be_bytes());
    let start = std::time::Instant::now();
    write.write_all(&header).await.unwrap();
    let sending = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        while write.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        sent
    });
    // The Close arrives while the client is still sending...
    let mut close = [0u8; 2 + 2 + 15];
    within(read.read_exact(&mut close)).await.unwrap();
    assert_eq!(close[0], 0x88);
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009);
    // ...and the relay takes bytes until the timeout, not longer. (It can
    // only start timing once it has the header, so this bound is safe.)
    let sent = within(sending).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "cut after {:?} and {sent} bytes: the relay did not linger",
        start.elapsed()
    );
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"protocol_error\"}",
            1,
        )
        .await;
    server.stop().await;
}

/// What was published to a client before it broke the protocol (its own
/// echo here) still reaches it, before the Close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_queued_before_a_violation_go_out_before_the_close() {
    let server = start(test_config()).await;
    let mut raw = RawClient::connect(server.addr).await;
    let mut bad = frame(true, 0x1, b"bad", true);
    bad[0] |= 0x20;
    raw.send(&[frame(true, 0x1, b"before", true), bad].concat())
        .await;
    assert_eq!(raw.read_frame().await, Some((0x1, b"before".to_vec())));
    assert_eq!(raw.read_close().await, 1002);
    server.stop().await;
}

/// A client answering the relay's Close with an empty Close (what
/// `ws.close()` sends) ends the connection at once, with FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_close_in_reply_ends_the_connection_at_once() {
    let mut config = test_config();
    // Far longer than the test may take: only the reply can end it in time.
    config.client.close_timeout = Duration::from_secs(600);
    let server = start(config).await;
    let mut raw = RawClient::connect(server.addr).await;
    raw.send(&frame(true, 0x1, &[0xff], true)).await;
    assert_eq!(raw.read_close().await, 1007);
    raw.send(&frame(true, 0x8, b"", true)).await;
    assert!(raw.ends_with_fin().await);
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"protocol_error\"}",
            1,
        )
        .await;
    server.stop().await;
}

/// Ten pings in one write get ten pongs, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ping_in_a_burst_gets_its_pong() {
    let server = start(test_config()).await;
    let mut raw = RawClient::connect(server.addr).await;
    let pings: Vec<u8> = (0..10u8)
        .flat_map(|i| frame(true, 0x9, &[b'p', b'0' + i], true))
        .collect();
    raw.send(&pings).await;
    for i in 0..10u8 {
        assert_eq!(raw.read_frame().await, Some((0xA, vec![b'p', b'0' + i])));
    }
    server.stop().await;
}

/// A flood of pings from a client that does not read grows nothing: at most
/// the 16 latest pongs wait, and the oldest are the ones dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pongs_are_bounded_to_the_latest_sixteen() {
    let server = start(test_config()).await;
    let mut raw = RawClient::connect(server.addr).await;
    // 40 pings and then a message, all in one write: the relay reads them
    // in one go, so the pongs all wait for the same frame boundary.
    let mut burst: Vec<u8> = (0..40u8)
        .flat_map(|i| frame(true, 0x9, &[i], true))
        .collect();
    burst.extend(frame(true, 0x1, b"after", true));
    raw.send(&burst).await;
    let mut pongs = Vec::new();
    loop {
        match raw.read_frame().await {
            Some((0xA, p)) => pongs.push(p[0]),
            Some((0x1, p)) => {
                assert_eq!(p, b"after");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pongs, (24..40u8).collect::<Vec<_>>());
    server.stop().await;
}

/// A frame sent in the same write as the upgrade request is read by the
/// HTTP layer along with the request; it is relayed all the same, first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_request_is_relayed() {
    let server = start(test_config()).await;
    let mut observer = server.client().await;
    let mut early = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = upgrade_request("/", "").into_bytes();
    bytes.extend(frame(true, 0x1, b"early", true));
    early.write_all(&bytes).await.unwrap();
    assert_eq!(recv(&mut observer).await.as_text(), Some("early"));
    // And the sender itself: its 101, then its own echo.
    let mut got = Vec::new();
    let echo = [0x81, 5, b'e', b'a', b'r', b'l', b'y'];
    while !got.windows(echo.len()).any(|w| w == echo) {
        let mut buf = [0u8; 1024];
        let n = within(early.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the echo: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    server.stop().await;
}
