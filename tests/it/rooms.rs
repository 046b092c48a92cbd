//! Rooms by path, echo control and client roles.

use crate::common::*;
use futures_util::SinkExt;
use tokio_websockets::Message;
use wsrelay::config::Config;

fn rooms_config() -> Config {
    let mut c = test_config();
    c.rooms.enabled = true;
    c
}

/// The status line of a handshake for `target`.
async fn status(server: &TestServer, target: &str) -> String {
    let (head, _) = handshake_to(server.addr, "127.0.0.1", target, "").await;
    head.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_hear_only_their_own_messages_under_concurrent_load() {
    const PER_PUBLISHER: usize = 200;
    let server = start(rooms_config()).await;
    let rooms = ["alpha", "beta.2", "user:42"];
    let mut listeners = Vec::new();
    for room in rooms {
        for _ in 0..2 {
            listeners.push((room, join(server.addr, &format!("/rooms/{room}")).await));
        }
    }
    server.wait_metric("wsrelay_rooms_active", 3).await;

    // Two publishers per room send at once, each message naming its room.
    let mut publishing = tokio::task::JoinSet::new();
    for room in rooms {
        for p in 0..2 {
            let mut ws = join(server.addr, &format!("/rooms/{room}?role=publisher")).await;
            publishing.spawn(async move {
                for i in 0..PER_PUBLISHER {
                    ws.send(Message::text(format!("{room}/{p}/{i}")))
                        .await
                        .unwrap();
                }
                ws
            });
        }
    }
    let _publishers = publishing.join_all().await;
    let mut receiving = tokio::task::JoinSet::new();
    for (room, mut ws) in listeners {
        receiving.spawn(async move {
            let mut next = [0usize; 2];
            for _ in 0..2 * PER_PUBLISHER {
                let m = recv(&mut ws).await;
                let text = m.as_text().unwrap().to_owned();
                let mut parts = text.split('/');
                assert_eq!(parts.next(), Some(room), "{text} reached room {room}");
                let p: usize = parts.next().unwrap().parse().unwrap();
                let i: usize = parts.next().unwrap().parse().unwrap();
                assert_eq!(i, next[p], "order from publisher {p} in {room}");
                next[p] += 1;
            }
            (room, ws)
        });
    }
    let mut listeners = receiving.join_all().await;
    // Nothing else arrives: the next message each hears is its room's marker.
    for room in rooms {
        let mut marker = join(server.addr, &format!("/rooms/{room}?echo=false")).await;
        marker
            .send(Message::text(format!("{room}/end")))
            .await
            .unwrap();
    }
    for (room, ws) in &mut listeners {
        assert_eq!(
            recv(ws).await.as_text(),
            Some(format!("{room}/end").as_str())
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_paths_are_checked_and_rooms_are_capped() {
    let mut config = rooms_config();
    config.rooms.max_rooms = 2;
    let server = start(config).await;
    assert!(status(&server, "/").await.contains(" 404 "));
    assert!(status(&server, "/rooms").await.contains(" 404 "));
    let long = format!("/rooms/{}", "x".repeat(129));
    for bad in [
        "/rooms/",
        "/rooms/a%20b",
        "/rooms/a/b",
        "/rooms/a*b",
        long.as_str(),
    ] {
        assert!(status(&server, bad).await.contains(" 400 "), "{bad}");
    }
    server.wait_metric(&rejected("bad_request"), 7).await;

    let a = join(server.addr, &format!("/rooms/{}", "x".repeat(128))).await;
    let _b = join(server.addr, "/rooms/b").await;
    assert_eq!(server.metric("wsrelay_rooms_active").await, 2);
    // A third room is refused before the upgrade; an existing one is not.
    assert!(status(&server, "/rooms/c").await.contains(" 503 "));
    server.wait_metric(&rejected("max_rooms"), 1).await;
    let _b2 = join(server.addr, "/rooms/b").await;
    // A room goes when its last member leaves, which frees a place.
    drop(a);
    server.wait_metric("wsrelay_rooms_active", 1).await;
    let _c = join(server.addr, "/rooms/c").await;
    assert_eq!(server.metric("wsrelay_rooms_active").await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_follows_the_config_unless_the_client_says_otherwise() {
    let mut config = test_config();
    config.relay.echo_to_sender = false;
    let server = start(config).await;
    let mut quiet = join(server.addr, "/").await;
    let mut loud = join(server.addr, "/?echo=true").await;
    quiet.send(Message::text("from quiet")).await.unwrap();
    loud.send(Message::text("from loud")).await.unwrap();
    // Each hears the other; only `loud` hears itself.
    assert_eq!(recv(&mut quiet).await.as_text(), Some("from loud"));
    let mut heard =
        [recv(&mut loud).await, recv(&mut loud).await].map(|m| m.as_text().unwrap().to_owned());
    heard.sort();
    assert_eq!(heard, ["from loud", "from quiet"]);
    server.stop().await;

    // With echo on by default, `?echo=false` opts out.
    let server = start(test_config()).await;
    let mut opted_out = join(server.addr, "/?echo=false").await;
    let mut other = join(server.addr, "/").await;
    opted_out.send(Message::text("mine")).await.unwrap();
    other.send(Message::text("theirs")).await.unwrap();
    assert_eq!(recv(&mut opted_out).await.as_text(), Some("theirs"));
    // Two senders: their messages may arrive in either order.
    let mut heard =
        [recv(&mut other).await, recv(&mut other).await].map(|m| m.as_text().unwrap().to_owned());
    heard.sort();
    assert_eq!(heard, ["mine", "theirs"]);
    assert!(status(&server, "/?echo=maybe").await.contains(" 400 "));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_client_may_do() {
    let server = start(test_config()).await;
    let mut subscriber = join(server.addr, "/?role=subscriber").await;
    let mut publisher = join(server.addr, "/?role=publisher").await;
    let mut both = join(server.addr, "/?role=both").await;

    publisher.send(Message::text("published")).await.unwrap();
    assert_eq!(recv(&mut subscriber).await.as_text(), Some("published"));
    assert_eq!(recv(&mut both).await.as_text(), Some("published"));

    // A subscriber may not send: 1008, counted; the others carry on.
    subscriber.send(Message::text("not allowed")).await.unwrap();
    assert_eq!(recv_close(&mut subscriber).await, 1008);
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"not_permitted\"}",
            1,
        )
        .await;
    both.send(Message::text("from both")).await.unwrap();
    assert_eq!(recv(&mut both).await.as_text(), Some("from both"));
    assert!(status(&server, "/?role=admin").await.contains(" 400 "));

    // The publisher heard nothing at all: the first thing it gets is the
    // shutdown's Close.
    let first = tokio::spawn(async move { recv(&mut publisher).await });
    server.stop().await;
    let first = within(first).await.unwrap();
    assert_eq!(
        first.as_close().map(|(c, _)| u16::from(c)),
        Some(1001),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_room_labels_are_opt_in() {
    let mut config = rooms_config();
    config.metrics.per_room_labels = true;
    let server = start(config).await;
    let mut a = [
        join(server.addr, "/rooms/a").await,
        join(server.addr, "/rooms/a").await,
    ];
    let mut b = join(server.addr, "/rooms/b?echo=false").await;
    a[0].send(Message::text("in a")).await.unwrap();
    b.send(Message::text("in b")).await.unwrap();
    for ws in &mut a {
        assert_eq!(recv(ws).await.as_text(), Some("in a"));
    }
    server
        .wait_metric("wsrelay_room_messages_total{room=\"a\"}", 1)
        .await;
    server
        .wait_metric("wsrelay_room_deliveries_total{room=\"a\"}", 2)
        .await;
    server
        .wait_metric("wsrelay_room_messages_total{room=\"b\"}", 1)
        .await;
    // b's only member does not hear itself.
    assert_eq!(
        server
            .metric("wsrelay_room_deliveries_total{room=\"b\"}")
            .await,
        0
    );
    server.stop().await;

    // Off (the default): no per-room series at all.
    let server = start(rooms_config()).await;
    let mut ws = join(server.addr, "/rooms/a").await;
    ws.send(Message::text("x")).await.unwrap();
    recv(&mut ws).await;
    server
        .wait_metric("wsrelay_messages_delivered_total", 1)
        .await;
    assert!(!server.metrics().await.contains("wsrelay_room_"));
    server.stop().await;
}
