//! The HTTP API for backends, over real sockets, beside real WebSocket
//! clients.

use std::net::SocketAddr;

use crate::common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_websockets::Message;
use wsrelay::config::Config;

const KEY: &str = "backend-key-1";

fn api_config(rooms: bool) -> Config {
    let mut c = test_config();
    c.rooms.enabled = rooms;
    c.api.enabled = true;
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.api.keys = vec!["other-key".into(), KEY.into()];
    c
}

/// An API call with the right key: (status, JSON body).
async fn call(
    api: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let extra = format!("Authorization: Bearer {KEY}\r\nContent-Type: {content_type}\r\n");
    let (status, text) = http_request(api, method, path, &extra, body).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_reaches_the_rooms_subscribers_as_text_or_binary() {
    let server = start(api_config(true)).await;
    let api = server.api_addr.unwrap();
    let mut a1 = join(server.addr, "/rooms/a").await;
    let mut a2 = join(server.addr, "/rooms/a?role=subscriber").await;
    let _a_publisher = join(server.addr, "/rooms/a?role=publisher").await;
    let mut b = join(server.addr, "/rooms/b").await;

    let (status, body) = call(
        api,
        "POST",
        "/api/v1/rooms/a/messages",
        "application/json",
        br#"{"n":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["delivered"], 2);
    // Its place in the room's log, for a page that subscribes from there.
    assert_eq!(body["position"], 1);
    assert_eq!(body["epoch"].as_str().map(str::len), Some(8), "{body}");
    for ws in [&mut a1, &mut a2] {
        let m = recv(ws).await;
        assert_eq!(m.as_text(), Some(r#"{"n":1}"#));
    }
    let (status, body) = call(
        api,
        "POST",
        "/api/v1/rooms/b/messages",
        "application/octet-stream",
        &[0, 159, 255],
    )
    .await;
    assert_eq!((status, body["delivered"].clone()), (200, json!(1)));
    let m = recv(&mut b).await;
    assert!(m.is_binary());
    assert_eq!(&**m.as_payload(), &[0, 159, 255]);
    let (_, body) = call(
        api,
        "POST",
        "/api/v1/rooms/b/messages",
        "text/plain; charset=utf-8",
        "héllo".as_bytes(),
    )
    .await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(recv(&mut b).await.as_text(), Some("héllo"));
    // Nobody in the room: delivered to none, not an error.
    let (status, body) = call(
        api,
        "POST",
        "/api/v1/rooms/empty/messages",
        "text/plain",
        b"x",
    )
    .await;
    assert_eq!((status, body), (200, json!({ "delivered": 0 })));

    // Counted like client messages; a1 did not get b's messages.
    server.wait_metric("wsrelay_messages_total", 4).await;
    a1.send(Message::text("still a")).await.unwrap();
    assert_eq!(recv(&mut a1).await.as_text(), Some("still a"));

    let (status, body) = call(api, "GET", "/api/v1/rooms", "", b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "rooms": [{ "name": "a", "subscribers": 2 }, { "name": "b", "subscribers": 1 }] })
    );
    let (status, body) = call(api, "GET", "/api/v1/stats", "", b"").await;
    assert_eq!(status, 200);
    assert_eq!(body["connections"], 4);
    assert_eq!(body["rooms"], 2);
    assert_eq!(body["messages_received"], 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_rooms_connections_sends_1000_with_the_reason() {
    let server = start(api_config(true)).await;
    let api = server.api_addr.unwrap();
    let mut doomed = [
        join(server.addr, "/rooms/old").await,
        join(server.addr, "/rooms/old").await,
    ];
    let mut spared = join(server.addr, "/rooms/new").await;

    let (status, body) = call(
        api,
        "DELETE",
        "/api/v1/rooms/old/connections",
        "text/plain",
        b"room archived",
    )
    .await;
    assert_eq!((status, body), (200, json!({ "closed": 2 })));
    for ws in &mut doomed {
        let m = recv(ws).await;
        let (code, reason) = m.as_close().unwrap();
        assert_eq!((u16::from(code), reason), (1000, "room archived"));
    }
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"closed_by_api\"}",
            2,
        )
        .await;
    let (status, _) = call(
        api,
        "DELETE",
        "/api/v1/rooms/old/connections",
        "text/plain",
        b"",
    )
    .await;
    assert_eq!(status, 404);
    spared.send(Message::text("fine")).await.unwrap();
    assert_eq!(recv(&mut spared).await.as_text(), Some("fine"));
    server.wait_metric("wsrelay_rooms_active", 1).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let mut config = api_config(true);
    config.limits.max_message_size = 1024;
    let server = start(config).await;
    let api = server.api_addr.unwrap();

    // Keys: none, unknown, wrong scheme.
    for extra in [
        "",
        "Authorization: Bearer nope\r\n",
        &format!("Authorization: Basic {KEY}\r\n"),
    ] {
        let (status, text) = http_request(api, "GET", "/api/v1/stats", extra, b"").await;
        assert_eq!(status, 401, "{extra:?}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(body["error"].as_str().unwrap().contains("key"), "{body}");
    }
    let cases: [(&str, &str, &str, &[u8], u16); 9] = [
        (
            "POST",
            "/api/v1/rooms/bad%20name/messages",
            "text/plain",
            b"x",
            400,
        ),
        (
            "POST",
            "/api/v1/rooms/a/messages",
            "text/plain",
            &[0xff, 0xfe],
            400,
        ),
        (
            "POST",
            "/api/v1/rooms/a/messages",
            "application/octet-stream",
            &[7; 1025],
            413,
        ),
        (
            "DELETE",
            "/api/v1/rooms/a/connections",
            "text/plain",
            &[b'r'; 124],
            413,
        ),
        ("GET", "/api/v1/rooms/a/messages", "", b"", 405),
        ("PUT", "/api/v1/stats", "", b"", 405),
        ("GET", "/api/v1/nothing", "", b"", 404),
        ("GET", "/", "", b"", 404),
        (
            "DELETE",
            "/api/v1/rooms/nobody/connections",
            "text/plain",
            b"",
            404,
        ),
    ];
    for (method, path, ct, body, want) in cases {
        let (status, reply) = call(api, method, path, ct, body).await;
        assert_eq!(status, want, "{method} {path}: {reply}");
        assert!(reply["error"].is_string(), "{method} {path}: {reply}");
    }
    // A 405 says, in Allow, which method the route takes.
    for (method, path, allow) in [
        ("GET", "/api/v1/rooms/a/messages", "POST"),
        ("POST", "/api/v1/rooms/a/connections", "DELETE"),
        ("DELETE", "/api/v1/rooms/a/history", "GET"),
        ("PUT", "/api/v1/stats", "GET"),
    ] {
        let mut s = within(tokio::net::TcpStream::connect(api)).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {KEY}\r\nContent-Length: 0\r\n\r\n"
        );
        tokio::io::AsyncWriteExt::write_all(&mut s, request.as_bytes())
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&read_until_closed(&mut s).await).to_lowercase();
        assert!(head.starts_with("http/1.1 405"), "{method} {path}: {head}");
        assert!(
            head.contains(&format!("\r\nallow: {}\r\n", allow.to_lowercase())),
            "{method} {path}: {head}"
        );
    }
    // A message at the limit still goes.
    let (status, _) = call(
        api,
        "POST",
        "/api/v1/rooms/a/messages",
        "application/octet-stream",
        &[7; 1024],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(server.metric("wsrelay_messages_total").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rooms_off_the_one_room_is_called_default() {
    let server = start(api_config(false)).await;
    let api = server.api_addr.unwrap();
    let mut ws = join(server.addr, "/").await;
    let (status, body) = call(
        api,
        "POST",
        "/api/v1/rooms/default/messages",
        "text/plain",
        b"to all",
    )
    .await;
    assert_eq!((status, body["delivered"].clone()), (200, json!(1)));
    assert_eq!(recv(&mut ws).await.as_text(), Some("to all"));
    let (status, _) = call(
        api,
        "POST",
        "/api/v1/rooms/other/messages",
        "text/plain",
        b"x",
    )
    .await;
    assert_eq!(status, 404);
    let (_, body) = call(api, "GET", "/api/v1/rooms", "", b"").await;
    assert_eq!(
        body,
        json!({ "rooms": [{ "name": "default", "subscribers": 1 }] })
    );
    server.stop().await;
}

#[test]
fn an_enabled_api_without_keys_is_a_config_error() {
    let e = Config::parse("api:\n  enabled: true\n", std::path::Path::new("api.yaml")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("api.yaml") && text.contains("api") && text.contains("keys"),
        "{text}"
    );
    assert!(text.contains("line"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_503_while_the_relay_shuts_down() {
    let server = start(api_config(true)).await;
    let api = server.api_addr.unwrap();
    // A client that never answers the Close keeps the shutdown going.
    let _deaf = RawClient::connect_to(server.addr, "/rooms/a").await;
    let metrics = server.metrics_addr;
    let stopping = tokio::spawn(server.stop());
    within(async {
        loop {
            let (status, body) = call(
                api,
                "POST",
                "/api/v1/rooms/a/messages",
                "text/plain",
                b"late",
            )
            .await;
            if status == 503 {
                assert_eq!(body, json!({ "error": "shutting down" }));
                return;
            }
            assert_eq!(status, 200, "{body}");
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(http_get(metrics, "/readyz").await.0, 503);
    within(stopping).await.unwrap();
}
