//! Shared history: three relays on a real `redis-server`, or a real
//! `nats-server -js`, with history on, where the broker numbers every
//! room's messages for all nodes. A client
//! resumes on any node, every node sees the broker's one order, the epoch
//! moves when the broker loses its data, and an outage keeps local relay
//! going while refusing recovery.

use futures_util::SinkExt;
use tokio_websockets::Message;
use wsrelay::client::ClientStream;

use crate::cluster::{CONNECTED, SUBSCRIPTIONS, next_data, node_config, send};
use crate::common::broker::{Broker, Kind};
use crate::common::*;
use crate::history::{Event, joined, next_event, positioned};

const HISTORY_READS: &str = "wsrelay_cluster_history_reads_total";
const PUBLISHED: &str = "wsrelay_cluster_published_messages_total";
const BROKER_ERROR: &str = "wsrelay_cluster_dropped_messages_total{reason=\"broker_error\"}";

/// A node with history on (1 000 messages per room), on `broker`.
async fn node(broker: &Broker, name: &str) -> TestServer {
    let mut config = node_config(broker, name);
    config.rooms.history.size = 1000;
    let node = start(config).await;
    node.wait_metric(CONNECTED, 1).await;
    node
}

/// The next `n` messages of a position-aware client, with their positions.
async fn messages(ws: &mut ClientStream, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match next_event(ws).await {
            Event::Message(position, text) => got.push((position, text)),
            e => panic!("expected a message, got {e:?}"),
        }
    }
    got
}

/// Sends `m{from}`..`m{to-1}` as text.
async fn publish(ws: &mut ClientStream, range: std::ops::Range<usize>) {
    for i in range {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
}

fn epoch_of(notice: &serde_json::Value) -> String {
    notice["epoch"].as_str().expect("an epoch").to_owned()
}

on_both_brokers!(a_client_resumes_on_another_node_exactly_once);
/// A client publishing on node A, a subscriber on node B that drops
/// mid-stream and resumes on node C: every message exactly once, with
/// contiguous positions. Twenty more clients resuming on C at once from a
/// position C never held cost one broker read, not twenty.
async fn a_client_resumes_on_another_node_exactly_once(kind: Kind) {
    let broker = Broker::start_with_history(kind);
    let (a, b, c) = (
        node(&broker, "a").await,
        node(&broker, "b").await,
        node(&broker, "c").await,
    );
    let mut subscriber = positioned(&b, "/rooms/r").await;
    let notice = joined(&mut subscriber).await;
    assert_eq!(notice["position"], 0);
    let epoch = epoch_of(&notice);
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    // The publisher does not want its own messages back.
    let mut publisher = join(a.addr, "/rooms/r?role=publisher").await;
    publish(&mut publisher, 0..100).await;
    let first = messages(&mut subscriber, 50).await;
    let expected = |range: std::ops::Range<usize>| -> Vec<(u64, String)> {
        range.map(|i| (i as u64 + 1, format!("m{i}"))).collect()
    };
    assert_eq!(first, expected(0..50));
    // Dropped without a goodbye, then more is published while it is away.
    drop(subscriber);
    publish(&mut publisher, 100..200).await;

    let reads_before = c.metric(HISTORY_READS).await;
    let resume = format!("/rooms/r?since=50&epoch={epoch}");
    let mut storm = Vec::new();
    for _ in 0..20 {
        storm.push(positioned(&c, &resume));
    }
    let mut resumed = Vec::new();
    for client in futures_util::future::join_all(storm).await {
        resumed.push(client);
    }
    publish(&mut publisher, 200..300).await;
    for ws in &mut resumed {
        let notice = joined(ws).await;
        assert_eq!(notice["recovered"], true, "{notice}");
        assert_eq!(epoch_of(&notice), epoch);
        assert_eq!(messages(ws, 250).await, expected(50..300));
    }
    // One for the range, one when the room is subscribed, maybe one for a
    // gap the subscription raced with: not one per client.
    let reads = c.metric(HISTORY_READS).await - reads_before;
    assert!(reads <= 3, "{reads} broker reads for one range");
}

on_both_brokers!(every_node_sees_the_brokers_one_order);
/// Three publishers on three nodes at once: every subscriber, on every
/// node, gets the same messages in the same order with positions 1, 2, 3,
/// ... (the broker's order); each publisher's own messages keep theirs.
async fn every_node_sees_the_brokers_one_order(kind: Kind) {
    const PER_NODE: usize = 200;
    let broker = Broker::start_with_history(kind);
    let nodes = [
        node(&broker, "a").await,
        node(&broker, "b").await,
        node(&broker, "c").await,
    ];
    let mut subscribers = Vec::new();
    for n in &nodes {
        let mut ws = positioned(n, "/rooms/r").await;
        joined(&mut ws).await;
        subscribers.push(ws);
        n.wait_metric(SUBSCRIPTIONS, 1).await;
    }
    let mut publishers = Vec::new();
    for n in &nodes {
        publishers.push(join(n.addr, "/rooms/r?role=publisher").await);
    }
    let sending = publishers
        .iter_mut()
        .zip(["a", "b", "c"])
        .map(|(ws, name)| async move {
            for i in 0..PER_NODE {
                ws.send(Message::text(format!("{name}{i}"))).await.unwrap();
            }
        });
    futures_util::future::join_all(sending).await;
    let mut seen = Vec::new();
    for ws in &mut subscribers {
        seen.push(messages(ws, 3 * PER_NODE).await);
    }
    let positions: Vec<u64> = seen[0].iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (1..=3 * PER_NODE as u64).collect::<Vec<_>>());
    assert_eq!(seen[0], seen[1], "nodes a and b disagree");
    assert_eq!(seen[0], seen[2], "nodes a and c disagree");
    for name in ["a", "b", "c"] {
        let own: Vec<&str> = seen[0]
            .iter()
            .map(|(_, t)| t.as_str())
            .filter(|t| t.starts_with(name))
            .collect();
        let sent: Vec<String> = (0..PER_NODE).map(|i| format!("{name}{i}")).collect();
        assert_eq!(own, sent, "{name}'s messages out of order");
    }
}

on_both_brokers!(echo_off_holds_when_the_broker_numbers_messages);
/// A sender with echo off on a node where the broker numbers messages:
/// its own come back to its node only to take their place; it gets the
/// others', and a subscriber beside it gets all of them.
async fn echo_off_holds_when_the_broker_numbers_messages(kind: Kind) {
    let broker = Broker::start_with_history(kind);
    let (a, b) = (node(&broker, "a").await, node(&broker, "b").await);
    let mut quiet = join(a.addr, "/rooms/r?echo=false").await;
    let mut beside = positioned(&a, "/rooms/r").await;
    joined(&mut beside).await;
    let mut other = join(b.addr, "/rooms/r").await;
    a.wait_metric(SUBSCRIPTIONS, 1).await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    send(&mut quiet, true, "mine").await;
    assert_eq!(messages(&mut beside, 1).await, [(1, "mine".into())]);
    send(&mut other, true, "theirs").await;
    assert_eq!(next_data(&mut quiet).await.1, "theirs");
    assert_eq!(messages(&mut beside, 1).await, [(2, "theirs".into())]);
}

on_both_brokers!(a_broker_that_lost_its_data_moves_the_epoch);
/// The broker restarted with its data lost: the room's epoch moves. A client
/// told positions is closed with 1012 as its node learns the new epoch
/// (reading the room again once it is subscribed anew), and resuming
/// from the old epoch gets `recovered: false`.
async fn a_broker_that_lost_its_data_moves_the_epoch(kind: Kind) {
    let mut broker = Broker::start_with_history(kind);
    let (a, b) = (node(&broker, "a").await, node(&broker, "b").await);
    let mut watcher = positioned(&b, "/rooms/r").await;
    let old = epoch_of(&joined(&mut watcher).await);
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    let mut publisher = join(a.addr, "/rooms/r?role=publisher").await;
    publish(&mut publisher, 0..3).await;
    assert_eq!(messages(&mut watcher, 3).await.last().unwrap().0, 3);

    broker.restart();
    assert_eq!(recv_close(&mut watcher).await, 1012);
    a.wait_metric(CONNECTED, 1).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut back = positioned(&b, &format!("/rooms/r?since=3&epoch={old}")).await;
    let notice = joined(&mut back).await;
    assert_eq!(notice["recovered"], false, "{notice}");
    assert_ne!(epoch_of(&notice), old);
    assert_eq!(notice["position"], 0);
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    publish(&mut publisher, 3..4).await;
    assert_eq!(messages(&mut back, 1).await, [(1, "m3".into())]);
}

on_both_brokers!(an_outage_keeps_local_relay_and_refuses_recovery_until_it_ends);
/// The broker down: clients on one node keep hearing each other, nobody
/// resumes there (`recovered: false`, never a wrong replay), and once it
/// is back the nodes relay to each other and clients resume again.
async fn an_outage_keeps_local_relay_and_refuses_recovery_until_it_ends(kind: Kind) {
    let mut broker = Broker::start_with_history(kind);
    let (a, b) = (node(&broker, "a").await, node(&broker, "b").await);
    let mut local = join(a.addr, "/rooms/r").await;
    let mut watcher = positioned(&a, "/rooms/r").await;
    let epoch = epoch_of(&joined(&mut watcher).await);
    a.wait_metric(SUBSCRIPTIONS, 1).await;
    send(&mut local, true, "before").await;
    assert_eq!(messages(&mut watcher, 1).await, [(1, "before".into())]);

    broker.kill();
    a.wait_metric(CONNECTED, 0).await;
    send(&mut local, true, "during").await;
    assert_eq!(next_data(&mut local).await.1, "before");
    assert_eq!(next_data(&mut local).await.1, "during");
    // Its positions moved to an epoch of the node's own: it resumes, and
    // gets nothing numbered in that epoch first.
    let next = recv(&mut watcher).await;
    assert_eq!(
        next.as_close().map(|(code, _)| u16::from(code)),
        Some(1012),
        "{next:?}"
    );
    let mut refused = positioned(&a, &format!("/rooms/r?since=1&epoch={epoch}")).await;
    assert_eq!(joined(&mut refused).await["recovered"], false);

    broker.restart();
    for n in [&a, &b] {
        n.wait_metric(CONNECTED, 1).await;
    }
    // What waited in a's outbox reached the broker ("before" and
    // "during": two published), numbered: b serves it from there; a's
    // own clients had it already.
    a.wait_metric(PUBLISHED, 2).await;
    let mut there = positioned(&b, "/rooms/r?rewind=10").await;
    let notice = joined(&mut there).await;
    assert_eq!(notice["replay"], 1, "{notice}");
    assert_eq!(messages(&mut there, 1).await, [(1, "during".into())]);
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    a.wait_metric(SUBSCRIPTIONS, 1).await;
    let epoch = epoch_of(&notice);
    send(&mut local, true, "after").await;
    assert_eq!(next_data(&mut local).await.1, "after");
    assert_eq!(messages(&mut there, 1).await, [(2, "after".into())]);
    let mut back = positioned(&b, &format!("/rooms/r?since=1&epoch={epoch}")).await;
    assert_eq!(joined(&mut back).await["recovered"], true);
    assert_eq!(messages(&mut back, 1).await, [(2, "after".into())]);
    // On a, where "during" was delivered before it was numbered, its
    // clients then did not get it again (above), and a client resuming
    // there gets it, as on any node.
    let mut across = positioned(&a, &format!("/rooms/r?since=0&epoch={epoch}")).await;
    assert_eq!(joined(&mut across).await["recovered"], true);
    assert_eq!(
        messages(&mut across, 2).await,
        [(1, "during".into()), (2, "after".into())]
    );
}

on_both_brokers!(the_bench_resumes_across_nodes_without_loss);
/// `bench fanout --reconnect` across three nodes: publishers on A,
/// subscribers on B and C that drop about every 100 ms and resume each time
/// on the other node. Nothing lost, nothing repeated, every resumption
/// recovered.
async fn the_bench_resumes_across_nodes_without_loss(kind: Kind) {
    let broker = Broker::start_with_history(kind);
    let (a, b, c) = (
        node(&broker, "a").await,
        node(&broker, "b").await,
        node(&broker, "c").await,
    );
    let url = |n: &TestServer| format!("ws://{}/rooms/feed", n.addr);
    let opts = wsrelay::bench::FanoutOptions {
        reconnect: Some(std::time::Duration::from_millis(100)),
        subscriber_urls: vec![url(&b), url(&c)],
        ..crate::bench::short_fanout(20, 2, Some(500.0))
    };
    let report = wsrelay::bench::fanout(&bench_target(&url(&a)), &opts)
        .await
        .unwrap();
    crate::history::assert_resumed_exactly_once(&report);
}

on_both_brokers!(the_api_publishes_through_the_broker_and_any_node_serves_the_history);
/// The HTTP API on a node where the broker numbers messages: a publish
/// goes through the broker (its answer has no position yet), reaches
/// subscribers on other nodes, and a node that never had the room serves
/// its history, read from the broker, with the broker's positions.
async fn the_api_publishes_through_the_broker_and_any_node_serves_the_history(kind: Kind) {
    let broker = Broker::start_with_history(kind);
    let with_api = |name: &str| {
        let mut config = node_config(&broker, name);
        config.rooms.history.size = 1000;
        config.api.enabled = true;
        config.api.listen = "127.0.0.1:0".parse().unwrap();
        config.api.keys = vec!["k".to_owned()];
        config
    };
    let (a, c) = (start(with_api("a")).await, start(with_api("c")).await);
    let b = node(&broker, "b").await;
    a.wait_metric(CONNECTED, 1).await;
    c.wait_metric(CONNECTED, 1).await;
    let mut subscriber = positioned(&b, "/rooms/news").await;
    let epoch = epoch_of(&joined(&mut subscriber).await);
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    let headers = "Authorization: Bearer k\r\nContent-Type: text/plain\r\n";
    for body in ["one", "two"] {
        let api = a.api_addr.unwrap();
        let (status, answer) = http_request(
            api,
            "POST",
            "/api/v1/rooms/news/messages",
            headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["delivered"], 0, "nobody on a: {answer}");
        assert!(answer.get("position").is_none(), "{answer}");
    }
    assert_eq!(
        messages(&mut subscriber, 2).await,
        [(1, "one".into()), (2, "two".into())]
    );
    let path = format!("/api/v1/rooms/news/history?since=0&epoch={epoch}");
    let (status, page) = http_request(
        c.api_addr.unwrap(),
        "GET",
        &path,
        "Authorization: Bearer k\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["epoch"], epoch.as_str(), "{page}");
    assert_eq!(page["complete"], true, "{page}");
    let got: Vec<(u64, &str)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["position"].as_u64().unwrap(), m["text"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [(1, "one"), (2, "two")]);
}

/// Redis flushed under the nodes (their connections stay up): the next
/// message comes in a new epoch. The nodes follow it: a client told
/// positions is closed with 1012, the others get the new messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_broker_moves_the_epoch_without_a_reconnect() {
    let broker = Broker::start(Kind::Redis);
    let (a, b) = (node(&broker, "a").await, node(&broker, "b").await);
    let mut watcher = positioned(&b, "/rooms/r").await;
    joined(&mut watcher).await;
    let mut plain = join(b.addr, "/rooms/r").await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    let mut publisher = join(a.addr, "/rooms/r?role=publisher").await;
    publish(&mut publisher, 0..3).await;
    assert_eq!(messages(&mut watcher, 3).await.last().unwrap().0, 3);
    let mut redis = crate::cluster::redis_connection(&broker).await;
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .unwrap();
    publish(&mut publisher, 3..5).await;
    assert_eq!(recv_close(&mut watcher).await, 1012);
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next_data(&mut plain).await.1);
    }
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
}

/// NATS JetStream numbers all rooms in one sequence: a room's positions
/// skip those of the other rooms. A client resumes on another node from
/// any position of its room, exactly once; from another room's position
/// it is told it did not recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_positions_skip_other_rooms_and_resume_exactly_once() {
    let broker = Broker::start_jetstream();
    let (a, b, c) = (
        node(&broker, "a").await,
        node(&broker, "b").await,
        node(&broker, "c").await,
    );
    let mut subscriber = positioned(&b, "/rooms/r").await;
    let epoch = epoch_of(&joined(&mut subscriber).await);
    let mut witness = positioned(&c, "/rooms/r").await;
    joined(&mut witness).await;
    let mut other_room = positioned(&c, "/rooms/s").await;
    joined(&mut other_room).await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    c.wait_metric(SUBSCRIPTIONS, 2).await;
    let mut to_r = join(a.addr, "/rooms/r?role=publisher").await;
    let mut to_s = join(a.addr, "/rooms/s?role=publisher").await;
    // Room s gets a message between any two of room r: each waited for
    // where it is heard, so the stream's order is known.
    let mut heard = Vec::new();
    let mut s_positions = Vec::new();
    let mut interleave = async |range: std::ops::Range<usize>| {
        for i in range {
            publish(&mut to_r, i..i + 1).await;
            heard.extend(messages(&mut witness, 1).await);
            to_s.send(Message::text(format!("s{i}"))).await.unwrap();
            s_positions.push(messages(&mut other_room, 1).await[0].0);
        }
    };
    interleave(0..5).await;
    let first = messages(&mut subscriber, 5).await;
    let positions: Vec<u64> = first.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        positions,
        [1, 3, 5, 7, 9],
        "room r's positions skip room s's"
    );
    drop(subscriber);
    interleave(5..10).await;
    let all = heard;
    let last = first.last().unwrap().0;
    let mut back = positioned(&a, &format!("/rooms/r?since={last}&epoch={epoch}")).await;
    let notice = joined(&mut back).await;
    assert_eq!(notice["recovered"], true, "{notice}");
    assert_eq!(messages(&mut back, 5).await, all[5..]);
    // Nothing more: the next one is a new message.
    publish(&mut to_r, 10..11).await;
    assert_eq!(messages(&mut back, 1).await[0].1, "m10");
    // A position of room s names nothing of room r.
    assert_eq!(s_positions[7], 16);
    let foreign = s_positions[7];
    let mut lost = positioned(&b, &format!("/rooms/r?since={foreign}&epoch={epoch}")).await;
    assert_eq!(joined(&mut lost).await["recovered"], false);
}

/// With shared history on and a NATS server without JetStream, the relay
/// says what is wrong and how to fix it (and relays locally meanwhile).
#[test]
fn on_nats_without_jetstream_the_relay_says_so() {
    let broker = Broker::start(Kind::Nats);
    let dir = TempDir::new("no-jetstream");
    let file = dir.file(
        "wsrelay.yaml",
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  enabled: false\n\
             rooms:\n  enabled: true\n  history:\n    size: 100\n\
             cluster:\n  backend: nats\n  url: {}\n",
            broker.url()
        ),
    );
    let mut relay = spawn_relay(&file);
    let said = std::iter::from_fn(|| relay.logs.recv_timeout(PATIENCE).ok())
        .find(|line| line.contains("JetStream"));
    let _ = relay.child.kill();
    let said = said.expect("a log line about JetStream");
    assert!(
        said.contains("ERROR") && said.contains("nats-server -js"),
        "{said}"
    );
}

/// The JetStream stream deleted under the nodes (their connections stay
/// up): the next publish finds no stream, the link starts again and makes
/// the stream anew, in a new epoch. A client told positions is closed with
/// 1012; the others go on with what is published after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_a_deleted_stream_moves_the_epoch() {
    let broker = Broker::start_jetstream();
    let (a, b) = (node(&broker, "a").await, node(&broker, "b").await);
    let mut watcher = positioned(&b, "/rooms/r").await;
    let old = epoch_of(&joined(&mut watcher).await);
    let mut plain = join(b.addr, "/rooms/r").await;
    b.wait_metric(SUBSCRIPTIONS, 1).await;
    let mut publisher = join(a.addr, "/rooms/r?role=publisher").await;
    publish(&mut publisher, 0..3).await;
    assert_eq!(messages(&mut watcher, 3).await.last().unwrap().0, 3);
    for _ in 0..3 {
        next_data(&mut plain).await;
    }
    let client = within(async_nats::connect(broker.url())).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    within(jetstream.delete_stream("wsrelay-history"))
        .await
        .unwrap();
    // Published into no stream: lost, and the link on a starts again and
    // makes the stream anew.
    publish(&mut publisher, 3..4).await;
    a.wait_metric(BROKER_ERROR, 1).await;
    // The next one is numbered by the new stream: b notices the stream
    // changed at once (its sequence is below what b heard), starts its
    // link again and reads the room in the new epoch.
    publish(&mut publisher, 4..5).await;
    assert_eq!(recv_close(&mut watcher).await, 1012);
    // From then on b hears the room in the new epoch (m4 may or may not
    // reach it: it was numbered while b changed over).
    publish(&mut publisher, 5..6).await;
    let mut got = next_data(&mut plain).await.1;
    if got == "m4" {
        got = next_data(&mut plain).await.1;
    }
    assert_eq!(got, "m5");
    let mut fresh = positioned(&b, "/rooms/r").await;
    assert_ne!(epoch_of(&joined(&mut fresh).await), old);
}

/// On NATS a client that joined a room before its first message (position
/// 0) resumes on another node while the stream has dropped nothing since;
/// and the stream's limits follow `rooms.history` even when it exists
/// already (made by nodes with other settings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_an_empty_rooms_joiner_resumes_elsewhere_and_limits_follow_the_config() {
    let broker = Broker::start_jetstream();
    let (a, b) = (node(&broker, "a").await, node(&broker, "b").await);
    let mut early = positioned(&a, "/rooms/r").await;
    let notice = joined(&mut early).await;
    assert_eq!(notice["position"], 0);
    let epoch = epoch_of(&notice);
    drop(early);
    // Another room's message first: room r's positions do not start at 1.
    let mut other = join(a.addr, "/rooms/s?role=publisher").await;
    send(&mut other, true, "s0").await;
    let mut publisher = join(a.addr, "/rooms/r?role=publisher").await;
    publish(&mut publisher, 0..2).await;
    a.wait_metric(PUBLISHED, 3).await;
    let mut back = positioned(&b, &format!("/rooms/r?since=0&epoch={epoch}")).await;
    let notice = joined(&mut back).await;
    assert_eq!(notice["recovered"], true, "{notice}");
    let got = messages(&mut back, 2).await;
    assert_eq!(
        got.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["m0", "m1"]
    );
    assert!(
        got[0].0 > 1,
        "room r's first position skips room s's: {got:?}"
    );

    // A node with another rooms.history.size sets the stream's limit.
    let mut config = node_config(&broker, "c");
    config.rooms.history.size = 7;
    let c = start(config).await;
    c.wait_metric(CONNECTED, 1).await;
    let client = within(async_nats::connect(broker.url())).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let stream = within(jetstream.get_stream("wsrelay-history"))
        .await
        .unwrap();
    assert_eq!(stream.cached_info().config.max_messages_per_subject, 7);
}

/// On NATS, a resume is refused where the stream may have dropped the
/// room's messages: a room at its per-room limit, and a position from
/// before the limit was raised (the lower one dropped messages the room is
/// now under the limit without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_no_resume_across_what_the_stream_may_have_dropped() {
    let broker = Broker::start_jetstream();
    let small = |name: &str| {
        let mut config = node_config(&broker, name);
        config.rooms.history.size = 3;
        config
    };
    let a = start(small("a")).await;
    a.wait_metric(CONNECTED, 1).await;
    let mut early = positioned(&a, "/rooms/r").await;
    let epoch = epoch_of(&joined(&mut early).await);
    drop(early);
    // Room s's message stays the stream's oldest (position 1).
    let mut other = join(a.addr, "/rooms/s?role=publisher").await;
    send(&mut other, true, "s0").await;
    a.wait_metric(PUBLISHED, 1).await;
    let mut publisher = join(a.addr, "/rooms/r?role=publisher").await;
    publish(&mut publisher, 0..10).await;
    a.wait_metric(PUBLISHED, 11).await;
    // Room r has positions 2 to 11; the stream keeps its newest 3.
    let since = |p: u64| format!("/rooms/r?since={p}&epoch={epoch}");
    let b = start(small("b")).await;
    b.wait_metric(CONNECTED, 1).await;
    for p in [0, 3] {
        let mut lost = positioned(&b, &since(p)).await;
        assert_eq!(joined(&mut lost).await["recovered"], false, "since {p}");
    }
    let mut fine = positioned(&b, &since(9)).await;
    assert_eq!(joined(&mut fine).await["recovered"], true);
    assert_eq!(messages(&mut fine, 2).await.last().unwrap().0, 11);
    // A node with a larger size raises the limit: the room is then under
    // it, but messages it lost before stay lost.
    let mut config = node_config(&broker, "c");
    config.rooms.history.size = 100;
    let c = start(config).await;
    c.wait_metric(CONNECTED, 1).await;
    let mut still_lost = positioned(&c, &since(3)).await;
    assert_eq!(joined(&mut still_lost).await["recovered"], false);
}

/// On NATS, a read of more than the 16 MiB one fetch takes goes on in
/// more fetches: a client resumes on a node that never had the room across
/// 24 messages of 900 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_a_large_backlog_is_read_in_several_fetches() {
    let broker = Broker::start_jetstream();
    let roomy = |name: &str| {
        let mut config = node_config(&broker, name);
        config.rooms.history.size = 100;
        config.rooms.history.max_bytes = 64 << 20;
        config
    };
    let (a, b) = (start(roomy("a")).await, start(roomy("b")).await);
    a.wait_metric(CONNECTED, 1).await;
    b.wait_metric(CONNECTED, 1).await;
    let mut early = positioned(&a, "/rooms/big").await;
    let epoch = epoch_of(&joined(&mut early).await);
    drop(early);
    let mut publisher = join(a.addr, "/rooms/big?role=publisher").await;
    let payload = "x".repeat(900 << 10);
    for i in 0..24 {
        publisher
            .send(Message::text(format!("{i}{payload}")))
            .await
            .unwrap();
    }
    a.wait_metric(PUBLISHED, 24).await;
    let mut back = positioned(&b, &format!("/rooms/big?since=0&epoch={epoch}")).await;
    let notice = joined(&mut back).await;
    assert_eq!(notice["recovered"], true, "{notice}");
    let got = messages(&mut back, 24).await;
    let firsts: Vec<String> = got
        .iter()
        .map(|(_, t)| t.trim_end_matches('x').to_owned())
        .collect();
    assert_eq!(firsts, (0..24).map(|i| i.to_string()).collect::<Vec<_>>());
}
