//! permessage-deflate against the real relay: what is negotiated, that
//! compressing and plain clients in one room get the same messages, and
//! that what clients send compressed is inflated safely.

use futures_util::SinkExt;
use tokio_websockets::Message;
use wsrelay::wire::{Window, deflate};

use crate::common::*;

const ACCEPTED: &str = "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn compressing_config() -> wsrelay::config::Config {
    let mut config = test_config();
    config.compression.enabled = true;
    config
}

/// The `Sec-WebSocket-Extensions` line of a 101, lowercased, if any.
fn extensions(head: &str) -> Option<String> {
    head.lines()
        .map(str::to_ascii_lowercase)
        .find(|l| l.starts_with("sec-websocket-extensions:"))
}

/// A JSON document of about `size` bytes, as a relay carries them.
fn json(size: usize, seq: usize) -> String {
    let mut s = format!("{{\"seq\":{seq},\"items\":[");
    let mut i = 0;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user-{}\",\"status\":\"online\",\"score\":{}}},",
            i % 7,
            i * 13 % 101
        ));
        i += 1;
    }
    s.push_str("{}]}");
    s
}

/// A compressed frame as a client sends it: RSV1 set, masked.
fn compressed_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let c = deflate::compress(payload, 6, Window::Full).expect("compressible");
    let mut f = frame(true, opcode, &c, true);
    f[0] |= 0x40;
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_accepts_what_it_can_honour_and_never_fails_the_handshake() {
    let server = start(compressing_config()).await;
    let offer = |v: &str| format!("Sec-WebSocket-Extensions: {v}\r\n");
    let cases: [(&str, Option<&str>); 7] = [
        ("", None),
        ("permessage-deflate", Some(ACCEPTED)),
        ("permessage-deflate; client_max_window_bits", Some(ACCEPTED)),
        (
            "permessage-deflate; server_max_window_bits=10",
            Some(&format!("{ACCEPTED}; server_max_window_bits=10")),
        ),
        ("permessage-deflate; x-unknown=1", None),
        ("permessage-deflate; server_max_window_bits=8", None),
        // The first offer cannot be honoured, the second can.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits",
            Some(ACCEPTED),
        ),
    ];
    for (value, want) in cases {
        let extra = if value.is_empty() {
            String::new()
        } else {
            offer(value)
        };
        let (head, _) = handshake(server.addr, "127.0.0.1", &extra).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{value}: {head}");
        assert_eq!(extensions(&head).as_deref(), want, "offer {value:?}");
    }
    // Two header lines are one list.
    let (head, _) = handshake(
        server.addr,
        "127.0.0.1",
        &format!(
            "{}{}",
            offer("x-webkit-deflate-frame"),
            offer("permessage-deflate")
        ),
    )
    .await;
    assert_eq!(extensions(&head).as_deref(), Some(ACCEPTED));
    server.stop().await;

    // Off: every offer is declined.
    let server = start(test_config()).await;
    let (head, _) = handshake(server.addr, "127.0.0.1", &offer("permessage-deflate")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(extensions(&head), None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressing_and_plain_clients_get_the_same_messages() {
    let server = start(compressing_config()).await;
    let (mut deflating, _) = RawClient::connect_with(
        server.addr,
        "/",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    let mut plain = server.client().await;
    let mut sender = server.client().await;
    let big = json(1024, 1);
    sender.send(Message::text(big.clone())).await.unwrap();
    sender
        .send(Message::text("small".to_owned()))
        .await
        .unwrap();
    sender
        .send(Message::binary(big.clone().into_bytes()))
        .await
        .unwrap();
    let own = json(600, 2);
    for (text, payload) in [
        (true, &big),
        (true, &"small".to_owned()),
        (false, &big),
        (true, &own),
    ] {
        if payload == &own {
            // Once the others have arrived (order across senders is not
            // defined): the compressing client sends one, compressed.
            deflating.send(&compressed_frame(0x1, own.as_bytes())).await;
        }
        let m = recv(&mut plain).await;
        assert_eq!(m.is_text(), text);
        assert_eq!(&**m.as_payload(), payload.as_bytes());

        let (b0, wire) = deflating.read_whole_frame().await.unwrap();
        assert_eq!(b0 & 0x0f, if text { 0x1 } else { 0x2 });
        let got = if payload.len() >= 256 {
            assert_eq!(b0 & 0x40, 0x40, "a message over min_size is compressed");
            assert!(
                wire.len() * 3 < payload.len(),
                "{} of {}",
                wire.len(),
                payload.len()
            );
            deflate::inflate(&wire, 1 << 20).unwrap()
        } else {
            assert_eq!(b0 & 0x40, 0, "a message under min_size goes plain");
            wire
        };
        assert_eq!(got, payload.as_bytes());
    }
    // Three messages over min_size, each compressed once.
    assert_eq!(server.metric("wsrelay_compressed_messages_total").await, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_faults_get_their_close_codes_and_others_carry_on() {
    let mut config = compressing_config();
    config.limits.max_message_size = 64 * 1024;
    let server = start(config).await;
    let mut bystander = server.client().await;
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";

    // 10 KB on the wire, 10 MB inflated: refused once past the limit.
    let (mut bomber, _) = RawClient::connect_with(server.addr, "/", offer).await;
    let bomb = compressed_frame(0x2, &vec![0u8; 10 << 20]);
    assert!(bomb.len() < 12_000, "{}", bomb.len());
    bomber.send(&bomb).await;
    assert_eq!(bomber.read_close().await, 1009);

    // Text that inflates to invalid UTF-8.
    let (mut liar, _) = RawClient::connect_with(server.addr, "/", offer).await;
    liar.send(&compressed_frame(0x1, &[0xc3; 400])).await;
    assert_eq!(liar.read_close().await, 1007);

    // RSV1 without the extension; a compressed control frame.
    let mut plain = RawClient::connect(server.addr).await;
    plain
        .send(&compressed_frame(0x1, json(300, 0).as_bytes()))
        .await;
    assert_eq!(plain.read_close().await, 1002);
    let (mut pinger, _) = RawClient::connect_with(server.addr, "/", offer).await;
    let mut ping = frame(true, 0x9, b"p", true);
    ping[0] |= 0x40;
    pinger.send(&ping).await;
    assert_eq!(pinger.read_close().await, 1002);

    // Nobody else noticed.
    let mut sender = server.client().await;
    sender
        .send(Message::text("still here".to_owned()))
        .await
        .unwrap();
    assert_eq!(recv(&mut bystander).await.as_text(), Some("still here"));
    server.stop().await;
}

/// `wsrelay client --deflate` negotiates the extension and prints what the
/// relay compressed for it, inflated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_subcommand_inflates_what_the_relay_compresses() {
    let server = start(compressing_config()).await;
    let mut peer = server.client().await;
    let mut child = spawn_client(&["--deflate", &server.url]);
    server.wait_metric("wsrelay_connections_active", 2).await;
    let document = json(4000, 1);
    peer.send(Message::text(document.clone())).await.unwrap();
    assert_eq!(stdout_lines(&mut child, 1).await, [document]);
    // Only the client subcommand negotiated, so it is the one that got it compressed.
    assert_eq!(server.metric("wsrelay_compressed_messages_total").await, 1);
    let _ = child.kill();
    let _ = child.wait();
    server.stop().await;
}

/// `bench fanout --deflate --payload json`: every connection negotiates,
/// nothing is lost, and the wire carries fewer bytes than the payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_measures_wire_bytes_with_and_without_compression() {
    use std::time::Duration;
    use wsrelay::bench::{self, FanoutOptions, payload::Kind};

    let server = start(compressing_config()).await;
    let opts = FanoutOptions {
        subscribers: 20,
        publishers: 1,
        rate: Some(200.0),
        window: 16,
        burst: 1,
        size: 1024,
        payload: Kind::Json,
        binary: false,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(10),
        subscriber_urls: Vec::new(),
        reconnect: None,
    };
    let mut target = bench_target(&server.url);
    let plain = bench::fanout(&target, &opts).await.unwrap();
    target.deflate = true;
    let deflated = bench::fanout(&target, &opts).await.unwrap();
    for r in [&plain, &deflated] {
        assert!(!r.saw_loss(), "{r}");
        assert!(r.received_deliveries > 0);
    }
    assert_eq!(plain.connect.deflated, 0);
    assert_eq!(deflated.connect.deflated, 21);
    // Plain: the payload plus a 4-byte frame header, near enough.
    assert!(
        (1024.0..1100.0).contains(&plain.wire_bytes_per_delivery),
        "{plain}"
    );
    assert!(deflated.wire_bytes_per_delivery < 600.0, "{deflated}");
    server.stop().await;
}
