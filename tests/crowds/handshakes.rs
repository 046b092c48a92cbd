//! A thousand half-open handshakes (the request head never finished) do
//! not keep a real client out, and each is dropped at
//! `limits.handshake_timeout`.

use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_websockets::Message;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_handshakes_do_not_stop_real_clients() {
    let _turn = crate::one_at_a_time().await;
    let dir = TempDir::new("half-open");
    let relay = spawn_relay(&dir.file(
        "wsrelay.yaml",
        "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n\
         limits:\n  handshake_timeout: 2s\n",
    ));
    let metrics = relay.metrics_addr.unwrap();
    let mut half_open = Vec::new();
    for _ in 0..1000 {
        let mut s = within(tokio::net::TcpStream::connect(relay.addr))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n")
            .await
            .unwrap();
        half_open.push(s);
    }
    // A real client meanwhile connects and relays as usual.
    let mut ws = join(relay.addr, "/").await;
    ws.send(Message::text("not blocked")).await.unwrap();
    assert_eq!(recv(&mut ws).await.as_text(), Some("not blocked"));
    // Every half-open one is dropped once its time is up.
    for s in &mut half_open {
        assert!(read_until_closed(s).await.is_empty());
    }
    wait_metric_at(metrics, &rejected("handshake_timeout"), 1000).await;
    let text = http_get(metrics, "/metrics").await.1;
    assert_eq!(metric_value(&text, "wsrelay_connections_active"), Some(1));
}
