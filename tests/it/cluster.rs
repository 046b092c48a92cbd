//! Clusters of relays joined through a real `redis-server` or `nats-server`
//! (started by each test on a free port): cross-node delivery exactly once
//! and in order, echo control, interest-based subscriptions, malformed
//! broker messages, and broker and node failures.
//!
//! Most scenarios run against both brokers (`on_both_brokers!`); the
//! rest need one broker's particular behaviour. Before anything is published
//! across nodes a test waits for `wsrelay_cluster_subscriptions` on the
//! receiving nodes: a node reports a room subscribed only once the broker
//! has applied it, so nothing published afterwards can miss it.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::common::broker::{Broker, Kind};
use crate::common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_websockets::Message;
use wsrelay::client::ClientStream;
use wsrelay::config::Config;

pub(crate) const CONNECTED: &str = "wsrelay_cluster_connected";
pub(crate) const SUBSCRIPTIONS: &str = "wsrelay_cluster_subscriptions";
const RECEIVED: &str = "wsrelay_cluster_received_messages_total";
const MALFORMED: &str = "wsrelay_cluster_malformed_messages_total";
const BUFFER_FULL: &str = "wsrelay_cluster_dropped_messages_total{reason=\"buffer_full\"}";
const BUFFERED: &str = "wsrelay_cluster_buffered_messages";
const INBOUND_OVERFLOW: &str =
    "wsrelay_cluster_dropped_messages_total{reason=\"inbound_overflow\"}";

/// A node's config: rooms on, joined to `broker` as `node`.
pub(crate) fn node_config(broker: &Broker, node: &str) -> Config {
    let mut c = test_config();
    c.rooms.enabled = true;
    c.cluster.backend = broker.kind.backend();
    c.cluster.url = broker.url();
    c.cluster.node_id = node.to_owned();
    c
}

/// A node's config file, for a node run as its own process: rooms on,
/// joined to `broker` as `node`, with `extra` YAML appended.
fn node_yaml(broker: &Broker, node: &str, extra: &str) -> String {
    let backend = broker.kind.name();
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n\
         rooms:\n  enabled: true\ncluster:\n  backend: {backend}\n  url: \"{}\"\n  node_id: {node}\n{extra}",
        broker.url()
    )
}

/// Three nodes on `broker`, each connected to it.
async fn three_nodes(broker: &Broker) -> [TestServer; 3] {
    let nodes = [
        start(node_config(broker, "a")).await,
        start(node_config(broker, "b")).await,
        start(node_config(broker, "c")).await,
    ];
    for n in &nodes {
        n.wait_metric(CONNECTED, 1).await;
    }
    nodes
}

/// Sends a message, text or binary by `text`.
pub(crate) async fn send(ws: &mut ClientStream, text: bool, body: &str) {
    let m = match text {
        true => Message::text(body.to_owned()),
        false => Message::binary(body.as_bytes().to_vec()),
    };
    ws.send(m).await.expect("send");
}

/// The next data message as (is it text, body).
pub(crate) async fn next_data(ws: &mut ClientStream) -> (bool, String) {
    let m = recv(ws).await;
    assert!(m.is_text() || m.is_binary(), "not a data message: {m:?}");
    let body = String::from_utf8(m.as_payload().to_vec()).expect("utf-8 body");
    (m.is_text(), body)
}

/// Every node's client publishes `PER_NODE` messages ("a:0", "a:1", ...,
/// text and binary alternating) and then "a:done"; every client must hear
/// every node's messages exactly once, in order, with their type, the
/// sender's own included (echo is on, and delivered locally only).
async fn delivers_exactly_once_in_order(kind: Kind) {
    const PER_NODE: usize = 300;
    let broker = Broker::start(kind);
    let nodes = three_nodes(&broker).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(join(n.addr, "/rooms/chat").await);
    }
    for n in &nodes {
        n.wait_metric(SUBSCRIPTIONS, 1).await;
    }
    let names = ["a", "b", "c"];
    // Publish from all three at once, interleaving the nodes' streams.
    for i in 0..=PER_NODE {
        for (name, ws) in names.iter().zip(clients.iter_mut()) {
            match i {
                PER_NODE => send(ws, true, &format!("{name}:done")).await,
                i => send(ws, i.is_multiple_of(2), &format!("{name}:{i}")).await,
            }
        }
    }
    for (me, ws) in names.iter().zip(clients.iter_mut()) {
        let mut next: HashMap<&str, usize> = HashMap::new();
        let mut done = 0;
        while done < names.len() {
            let (text, body) = next_data(ws).await;
            let (from, what) = body.split_once(':').expect("node:seq");
            let from = names.iter().find(|n| **n == from).expect("known node");
            let expected = next.entry(from).or_default();
            if what == "done" {
                assert_eq!(*expected, PER_NODE, "{me} got {from}:done early");
                done += 1;
                continue;
            }
            let seq: usize = what.parse().expect("sequence");
            assert_eq!(
                seq, *expected,
                "{me}: {from}'s messages out of order or repeated"
            );
            assert_eq!(text, seq.is_multiple_of(2), "{me}: {body} changed type");
            *expected += 1;
        }
    }
    // Each node received the other two nodes' messages once each.
    for n in &nodes {
        n.wait_metric(RECEIVED, 2 * (PER_NODE as u64 + 1)).await;
    }
}

on_both_brokers!(delivers_exactly_once_in_order);

/// A publisher with `?echo=false` never hears itself back through the
/// cluster, while its neighbour on the same node and a client on another
/// node hear it once.
async fn respects_echo_off_across_nodes(kind: Kind) {
    let broker = Broker::start(kind);
    let [a, b, _c] = three_nodes(&broker).await;
    let mut quiet = join(a.addr, "/rooms/r?echo=false").await;
    let mut neighbour = join(a.addr, "/rooms/r").await;
    let mut remote = join(b.addr, "/rooms/r").await;
    a.wait_metric(SUBSCRIPTIONS, 1).await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;

    send(&mut quiet, true, "from quiet").await;
    assert_eq!(next_data(&mut remote).await.1, "from quiet");
    assert_eq!(next_data(&mut neighbour).await.1, "from quiet");
    // The remote answer left b after "from quiet" reached it, so had the
    // cluster echoed "from quiet" back to a, it would arrive first.
    send(&mut remote, true, "from remote").await;
    assert_eq!(next_data(&mut quiet).await.1, "from remote");
    assert_eq!(next_data(&mut neighbour).await.1, "from remote");
}

on_both_brokers!(respects_echo_off_across_nodes);

/// A node subscribes to a room on the broker only while it has a local
/// subscriber there (a publish-only client does not count), and receives
/// nothing for rooms it has no interest in. Messages on the room's channel
/// that are not wsrelay messages are counted and dropped.
async fn subscribes_by_interest_and_drops_malformed(kind: Kind) {
    let broker = Broker::start(kind);
    let [a, b, _c] = three_nodes(&broker).await;
    let mut publisher = join(a.addr, "/rooms/news?role=publisher").await;
    let mut other_publisher = join(a.addr, "/rooms/other?role=publisher").await;
    let _b_publisher = join(b.addr, "/rooms/quiet?role=publisher").await;
    // Subscribers join after the publishers, so had publish-only clients
    // counted, "other" and "quiet" would be subscribed on the broker by the
    // time "elsewhere" and "news" are (a node applies interest changes in
    // order): this set is never seen then.
    let _a_listener = join(a.addr, "/rooms/elsewhere").await;
    let mut reader = join(b.addr, "/rooms/news").await;
    wait_broker_channels(&broker, &["wsrelay.room.elsewhere", "wsrelay.room.news"]).await;
    a.wait_metric(SUBSCRIPTIONS, 1).await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;

    // Nobody anywhere listens to "other": b, subscribed to "news" only,
    // must not receive it. It reaches the broker first, on the same
    // ordered connection as "hello", so it would be counted first.
    send(&mut other_publisher, true, "to other").await;
    a.wait_metric("wsrelay_cluster_published_messages_total", 1)
        .await;
    send(&mut publisher, true, "hello").await;
    assert_eq!(next_data(&mut reader).await.1, "hello");
    assert_eq!(b.metric(RECEIVED).await, 1);

    // Garbage on the room's channel: counted, dropped, relay goes on.
    let channel = "wsrelay.room.news";
    publish_raw(&broker, channel, &[b"not a wsrelay message".to_vec()]).await;
    b.wait_metric(MALFORMED, 1).await;
    send(&mut publisher, false, "still fine").await;
    assert_eq!(next_data(&mut reader).await, (false, "still fine".into()));

    // The last subscriber leaves: b unsubscribes.
    drop(reader);
    b.wait_metric(SUBSCRIPTIONS, 0).await;
    if kind == Kind::Redis {
        assert_eq!(redis_subscribers(&broker, channel).await, 0);
    }
}

on_both_brokers!(subscribes_by_interest_and_drops_malformed);

/// A flood from the broker into a busy room on a node that cannot keep
/// up: the node's inbound queues hold at most one message per fan-out
/// worker (`inbound_bytes` of one byte), so most of the flood is dropped
/// oldest first and counted as `inbound_overflow`; every message is either
/// delivered or counted, the reader hears what was delivered in order, and
/// the newest message always gets through. (`inbound_messages` is left
/// above the flood so the NATS client, which holds that many per subject,
/// drops nothing itself: its slow-consumer reports may be lost, and the
/// sum would not add up.)
async fn an_inbound_flood_is_bounded_and_counted(kind: Kind) {
    const N: u64 = 5_000;
    const LISTENERS: usize = 50;
    let broker = Broker::start(kind);
    let mut config = node_config(&broker, "b");
    config.cluster.inbound_bytes = 1;
    config.cluster.inbound_messages = 2 * N as usize;
    let b = start(config).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut reader = join(b.addr, "/rooms/flood").await;
    // Listeners that never read make each delivery cost more; what they
    // get fits in their socket buffers.
    let mut listeners = Vec::new();
    for _ in 0..LISTENERS {
        listeners.push(join(b.addr, "/rooms/flood").await);
    }
    b.wait_metric(SUBSCRIPTIONS, 1).await;

    let messages: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            use wsrelay::backplane::envelope::{Header, encode};
            let header = Header {
                text: true,
                id: i,
                ..Header::default()
            };
            encode("a", "flood", header, i.to_string().as_bytes()).to_vec()
        })
        .collect();
    publish_raw(&broker, "wsrelay.room.flood", &messages).await;

    let counted = |text: &str, series| metric_value(text, series).unwrap_or(0);
    let text = wait_http(b.metrics_addr, "/metrics", |_, text| {
        counted(text, RECEIVED) + counted(text, INBOUND_OVERFLOW) == N
    })
    .await;
    let received = counted(&text, RECEIVED);
    assert!(received < N, "nothing was dropped: the bound did not hold");
    let mut last = None;
    for _ in 0..received {
        let seq: u64 = next_data(&mut reader).await.1.parse().unwrap();
        assert!(last < Some(seq), "{seq} after {last:?}");
        last = Some(seq);
    }
    assert_eq!(last, Some(N - 1), "the newest message was not delivered");
}

on_both_brokers!(an_inbound_flood_is_bounded_and_counted);

/// Publishes raw messages on a broker channel, as a foreign client would,
/// all at once (one Redis pipeline; NATS publishes then one flush).
async fn publish_raw(broker: &Broker, channel: &str, payloads: &[Vec<u8>]) {
    match broker.kind {
        Kind::Redis => {
            let mut con = redis_connection(broker).await;
            let mut pipe = redis::pipe();
            for p in payloads {
                pipe.cmd("PUBLISH").arg(channel).arg(&p[..]).ignore();
            }
            within(pipe.exec_async(&mut con)).await.unwrap();
        }
        Kind::Nats => {
            let client = within(async_nats::connect(broker.url())).await.unwrap();
            for p in payloads {
                client
                    .publish(channel.to_owned(), p.clone().into())
                    .await
                    .unwrap();
            }
            within(client.flush()).await.unwrap();
        }
    }
}

/// Waits until the channels (Redis) or subjects (NATS) with subscribers on
/// the broker, those of the relay's prefix, are exactly `want` (sorted).
async fn wait_broker_channels(broker: &Broker, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut channels: Vec<String> = match broker.kind {
            Kind::Redis => {
                let mut con = redis_connection(broker).await;
                within(redis::cmd("PUBSUB").arg("CHANNELS").query_async(&mut con))
                    .await
                    .unwrap()
            }
            Kind::Nats => {
                // HTTP/1.0, so the answer is not chunked.
                let monitor = ("127.0.0.1", broker.monitor_port);
                let mut s = within(tokio::net::TcpStream::connect(monitor))
                    .await
                    .unwrap();
                s.write_all(b"GET /subsz?subs=1&limit=100000 HTTP/1.0\r\n\r\n")
                    .await
                    .unwrap();
                let mut raw = String::new();
                within(s.read_to_string(&mut raw)).await.unwrap();
                let (_, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
                let subs: serde_json::Value = serde_json::from_str(body).unwrap();
                let list = subs["subscriptions_list"].as_array().cloned();
                let subjects = list.unwrap_or_default().into_iter();
                subjects
                    .filter_map(|s| s["subject"].as_str().map(str::to_owned))
                    .collect()
            }
        };
        channels.retain(|c| c.starts_with("wsrelay."));
        channels.sort();
        if channels == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker channels are {channels:?}, not {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A connection to the test's Redis, as a foreign client.
pub(crate) async fn redis_connection(broker: &Broker) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(broker.url()).unwrap();
    within(client.get_multiplexed_async_connection())
        .await
        .unwrap()
}

/// How many connections Redis says are subscribed to `channel`.
async fn redis_subscribers(broker: &Broker, channel: &str) -> u64 {
    let mut con = redis_connection(broker).await;
    let counts: Vec<(String, u64)> = within(
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut con),
    )
    .await
    .unwrap();
    counts[0].1
}

/// Waits until a relay's `/readyz` body starts with `want` (always a 200).
async fn wait_ready_body(metrics: SocketAddr, want: &str) {
    wait_http(metrics, "/readyz", |status, body| {
        let matched = body.starts_with(want);
        if matched {
            assert_eq!(status, 200, "{body}");
        }
        matched
    })
    .await;
}

/// A message published through the HTTP API on one node reaches the
/// room's subscribers on the others.
async fn api_publish_reaches_other_nodes(kind: Kind) {
    let broker = Broker::start(kind);
    let mut config = node_config(&broker, "a");
    config.api.enabled = true;
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    config.api.keys = vec!["backend-key".into()];
    let a = start(config).await;
    let b = start(node_config(&broker, "b")).await;
    a.wait_metric(CONNECTED, 1).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut reader = join(b.addr, "/rooms/news").await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    let (status, body) = http_request(
        a.api_addr.expect("api enabled"),
        "POST",
        "/api/v1/rooms/news/messages",
        "Authorization: Bearer backend-key\r\nContent-Type: text/plain\r\n",
        b"from the backend",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        next_data(&mut reader).await,
        (true, "from the backend".into())
    );
    // The node's stats say which cluster it is in and that it is connected.
    let (status, body) = http_request(
        a.api_addr.expect("api enabled"),
        "GET",
        "/api/v1/stats",
        "Authorization: Bearer backend-key\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("JSON stats");
    assert_eq!(
        stats["cluster"],
        serde_json::json!({"backend": kind.name(), "node_id": "a", "connected": true, "buffered": 0}),
        "{body}"
    );
}

on_both_brokers!(api_publish_reaches_other_nodes);

/// A message larger than the NATS server's `max_payload` is refused by
/// the broker, counted, and delivered on its own node only; the link stays
/// up and the next message crosses as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_is_counted_and_the_rest_flows() {
    let broker = Broker::start_nats_with("max_payload: 1024\n");
    let a = start(node_config(&broker, "a")).await;
    let b = start(node_config(&broker, "b")).await;
    a.wait_metric(CONNECTED, 1).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut a1 = join(a.addr, "/rooms/r").await;
    let mut b1 = join(b.addr, "/rooms/r").await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    let big = "x".repeat(2000);
    send(&mut a1, true, &big).await;
    assert_eq!(next_data(&mut a1).await.1, big);
    a.wait_metric(
        "wsrelay_cluster_dropped_messages_total{reason=\"broker_error\"}",
        1,
    )
    .await;
    send(&mut a1, true, "small").await;
    assert_eq!(next_data(&mut b1).await.1, "small");
    assert_eq!(a.metric(CONNECTED).await, 1);
}

/// The broker dies mid-stream: each node keeps relaying locally, says it
/// is degraded, buffers what it would publish (dropping and counting the
/// oldest beyond `cluster.buffer_messages`). The broker comes back on the
/// same port: the nodes reconnect and re-subscribe by themselves, and
/// cross-node relay resumes.
async fn broker_outage_keeps_local_relay_and_recovers(kind: Kind) {
    let mut broker = Broker::start(kind);
    let mut config = node_config(&broker, "a");
    config.cluster.buffer_messages = 4;
    let a = start(config).await;
    let b = start(node_config(&broker, "b")).await;
    a.wait_metric(CONNECTED, 1).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut a1 = join(a.addr, "/rooms/r").await;
    let mut a2 = join(a.addr, "/rooms/r").await;
    let mut b1 = join(b.addr, "/rooms/r").await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    wait_ready_body(a.metrics_addr, "ready").await;
    send(&mut a1, true, "before").await;
    assert_eq!(next_data(&mut b1).await.1, "before");
    assert_eq!(next_data(&mut a2).await.1, "before");
    assert_eq!(next_data(&mut a1).await.1, "before");

    broker.kill();
    a.wait_metric(CONNECTED, 0).await;
    b.wait_metric(CONNECTED, 0).await;
    wait_ready_body(a.metrics_addr, "degraded").await;
    // Local relay is untouched: ten messages within node a.
    for i in 0..10 {
        send(&mut a1, true, &format!("local {i}")).await;
    }
    for i in 0..10 {
        assert_eq!(next_data(&mut a2).await.1, format!("local {i}"));
        assert_eq!(next_data(&mut a1).await.1, format!("local {i}"));
    }
    // Four wait for the broker; the six oldest were dropped and counted.
    a.wait_metric(BUFFER_FULL, 6).await;
    assert_eq!(a.metric(BUFFERED).await, 4);

    broker.restart();
    a.wait_metric(CONNECTED, 1).await;
    b.wait_metric(CONNECTED, 1).await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    wait_ready_body(a.metrics_addr, "ready").await;
    a.wait_metric(BUFFERED, 0).await;
    // The buffered messages may have reached the broker before b
    // re-subscribed, so skip whatever of them b got; "after" must follow.
    send(&mut a1, true, "after").await;
    loop {
        let (_, body) = next_data(&mut b1).await;
        if body == "after" {
            break;
        }
        assert!(
            ["local 6", "local 7", "local 8", "local 9"].contains(&body.as_str()),
            "b got {body}"
        );
    }
    send(&mut b1, true, "and back").await;
    assert_eq!(next_data(&mut a2).await.1, "after");
    assert_eq!(next_data(&mut a2).await.1, "and back");
}

on_both_brokers!(broker_outage_keeps_local_relay_and_recovers);

/// A node that cannot reach the broker at start-up still starts, relays
/// locally, and joins the cluster once the broker appears.
async fn node_starts_without_broker_and_joins_later(kind: Kind) {
    let mut broker = Broker::start(kind);
    broker.kill();
    let a = start(node_config(&broker, "a")).await;
    let mut a1 = join(a.addr, "/rooms/r").await;
    let mut a2 = join(a.addr, "/rooms/r").await;
    send(&mut a1, true, "local only").await;
    assert_eq!(next_data(&mut a2).await.1, "local only");
    assert_eq!(a.metric(CONNECTED).await, 0);

    broker.restart();
    a.wait_metric(CONNECTED, 1).await;
    a.wait_metric(SUBSCRIPTIONS, 1).await;
    let b = start(node_config(&broker, "b")).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut b1 = join(b.addr, "/rooms/r").await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    send(&mut a1, true, "clustered").await;
    assert_eq!(next_data(&mut b1).await.1, "clustered");
}

on_both_brokers!(node_starts_without_broker_and_joins_later);

/// One node is killed (SIGKILL, a real process): the other two keep
/// relaying between each other, connected to the broker.
async fn survives_a_node_kill(kind: Kind) {
    let broker = Broker::start(kind);
    let dir = TempDir::new("cluster-node");
    let yaml = node_yaml(&broker, "c", "");
    let mut c = spawn_relay(&dir.file("c.yaml", &yaml));
    let a = start(node_config(&broker, "a")).await;
    let b = start(node_config(&broker, "b")).await;
    a.wait_metric(CONNECTED, 1).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut a1 = join(a.addr, "/rooms/r").await;
    let mut b1 = join(b.addr, "/rooms/r").await;
    let mut c1 = join(c.addr, "/rooms/r").await;
    for node in [&a, &b] {
        node.wait_metric(SUBSCRIPTIONS, 1).await;
    }
    let c_metrics = c.metrics_addr.expect("c's metrics");
    wait_ready_body(c_metrics, "ready").await;
    // Connected is not yet subscribed: wait for c's room to be applied.
    wait_metric_at(c_metrics, SUBSCRIPTIONS, 1).await;
    send(&mut c1, true, "from c").await;
    assert_eq!(next_data(&mut a1).await.1, "from c");
    assert_eq!(next_data(&mut b1).await.1, "from c");

    c.child.kill().expect("kill node c");
    c.child.wait().expect("reap node c");
    send(&mut a1, true, "a after c died").await;
    assert_eq!(next_data(&mut b1).await.1, "a after c died");
    send(&mut b1, false, "b after c died").await;
    assert_eq!(next_data(&mut a1).await, (true, "a after c died".into()));
    assert_eq!(next_data(&mut a1).await, (false, "b after c died".into()));
    assert_eq!(a.metric(CONNECTED).await, 1);
    assert_eq!(b.metric(CONNECTED).await, 1);
}

on_both_brokers!(survives_a_node_kill);

/// `wsrelay bench fanout --subscriber-url`: publishers on one node,
/// subscribers spread over the other two, every message accounted for
/// (the bench probes until the other nodes have subscribed, so nothing is
/// published before they hear it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_fans_out_across_nodes() {
    let broker = Broker::start(Kind::Redis);
    let [a, b, c] = three_nodes(&broker).await;
    let url = |n: &TestServer| format!("ws://{}/rooms/bench", n.addr);
    let target = wsrelay::bench::Target {
        url: url(&a),
        ca_file: None,
        sources: Vec::new(),
        connect_concurrency: 16,
        pid: None,
        progress: false,
        deflate: false,
    };
    let opts = wsrelay::bench::FanoutOptions {
        subscribers: 10,
        publishers: 2,
        rate: Some(400.0),
        window: 16,
        burst: 1,
        size: 100,
        payload: wsrelay::bench::payload::Kind::Random,
        binary: true,
        warmup: std::time::Duration::from_millis(200),
        duration: std::time::Duration::from_secs(1),
        drain_timeout: std::time::Duration::from_secs(10),
        subscriber_urls: vec![url(&b), url(&c)],
        reconnect: None,
    };
    let report = wsrelay::bench::fanout(&target, &opts).await.unwrap();
    assert!(report.published > 0);
    assert!(!report.saw_loss(), "{report:?}");
    assert_eq!(report.received_deliveries, report.expected_deliveries);
    assert!(report.latency_us.p50 > 0.0, "{report:?}");
    // The subscribers' copies came through the broker.
    assert!(b.metric(RECEIVED).await >= report.published);
    assert!(c.metric(RECEIVED).await >= report.published);
}

/// A Redis that stops answering but keeps its connections open (SIGSTOP)
/// is found out by the next subscribe's timeout, reported like a dead one,
/// and reconnected to once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_is_reported_and_left_like_a_dead_one() {
    let broker = Broker::start(Kind::Redis);
    let node = start(node_config(&broker, "a")).await;
    node.wait_metric(CONNECTED, 1).await;
    broker.pause();
    // A new room needs a SUBSCRIBE, which Redis will not answer.
    let _member = join(node.addr, "/rooms/hung").await;
    node.wait_metric(CONNECTED, 0).await;
    wait_ready_body(node.metrics_addr, "degraded").await;
    broker.resume();
    node.wait_metric(CONNECTED, 1).await;
    node.wait_metric(SUBSCRIPTIONS, 1).await;
    node.stop().await;
}

/// A node leaving (SIGTERM, as in a rolling restart) first sends what its
/// clients published to the other nodes. Redis is frozen (SIGSTOP) so the
/// node's first message hangs in flight and the rest wait in its outbox
/// when the signal comes; once Redis goes on, all of them must arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_sends_its_last_messages_first() {
    const N: usize = 50;
    let broker = Broker::start(Kind::Redis);
    let dir = TempDir::new("cluster-leave");
    let yaml = node_yaml(&broker, "a", "shutdown:\n  timeout: 10s\n");
    let mut a = spawn_relay(&dir.file("a.yaml", &yaml));
    let a_metrics = a.metrics_addr.expect("a's metrics");
    let b = start(node_config(&broker, "b")).await;
    wait_metric_at(a_metrics, CONNECTED, 1).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut subscriber = join(b.addr, "/rooms/r").await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    let mut publisher = join(a.addr, "/rooms/r").await;
    // The publisher also receives: its node subscribes first, and a
    // SUBSCRIBE caught by the pause would time out and reconnect.
    wait_metric_at(a_metrics, SUBSCRIPTIONS, 1).await;

    broker.pause();
    // A publisher's own copy is written by its task after the publish, so
    // hearing it means the message is in the outbox (or taken from it).
    send(&mut publisher, true, "last 0").await;
    assert_eq!(next_data(&mut publisher).await.1, "last 0");
    // Taken into a batch that Redis does not answer...
    wait_metric_at(a_metrics, BUFFERED, 0).await;
    // ...so the others wait in the outbox.
    for i in 1..N {
        send(&mut publisher, true, &format!("last {i}")).await;
        assert_eq!(next_data(&mut publisher).await.1, format!("last {i}"));
    }
    wait_metric_at(a_metrics, BUFFERED, N as u64 - 1).await;
    drop(publisher);
    a.signal("TERM");
    let line = a.wait_log("sending what waits for the cluster broker");
    assert!(line.contains(&format!("waiting={}", N - 1)), "{line}");
    broker.resume();
    for i in 0..N {
        assert_eq!(next_data(&mut subscriber).await.1, format!("last {i}"));
    }
    let code = tokio::task::spawn_blocking(move || a.wait_exit(PATIENCE))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}
