//! Rooms' history against the real relay: rewinds, the position-aware
//! mode (`wsrelay.v1`), recovery with `?since=&epoch=`, and the HTTP API's
//! positions and history.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::Value;
use tokio_websockets::Message;
use wsrelay::client::{ClientStream, Dialer};

use crate::common::*;

fn history_config(size: usize) -> wsrelay::config::Config {
    let mut c = test_config();
    c.rooms.enabled = true;
    c.rooms.history.size = size;
    c
}

/// A position-aware client (`wsrelay.v1`) at `path_and_query`.
pub(crate) async fn positioned(server: &TestServer, path_and_query: &str) -> ClientStream {
    let url = format!("ws://{}{path_and_query}", server.addr);
    let dialer = within(Dialer::new(&url, None)).await.unwrap();
    let dialer = dialer.with_protocols(&["wsrelay.v1"]).unwrap();
    within(dialer.connect(None)).await.unwrap()
}

/// What a position-aware client reads.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// The join notice, parsed.
    Joined(Value),
    /// A message and its position.
    Message(u64, String),
}

pub(crate) async fn next_event(ws: &mut ClientStream) -> Event {
    let m = recv(ws).await;
    let text = m.as_text().expect("a text frame").to_owned();
    if let Some(json) = text.strip_prefix('#') {
        return Event::Joined(serde_json::from_str(json).unwrap());
    }
    let position = text
        .strip_prefix('@')
        .unwrap_or_else(|| panic!("a position frame, not {text:?}"))
        .parse()
        .unwrap();
    let m = recv(ws).await;
    Event::Message(position, m.as_text().expect("text").to_owned())
}

pub(crate) async fn joined(ws: &mut ClientStream) -> Value {
    match next_event(ws).await {
        Event::Joined(v) => v,
        e => panic!("expected the join notice, got {e:?}"),
    }
}

/// Publishes `texts` from `publisher` and waits for its own copies, so
/// every one is in the room's log when this returns.
async fn publish(publisher: &mut ClientStream, texts: impl IntoIterator<Item = String>) {
    let texts: Vec<String> = texts.into_iter().collect();
    for t in &texts {
        publisher.send(Message::text(t.clone())).await.unwrap();
    }
    for t in &texts {
        assert_eq!(recv(publisher).await.as_text(), Some(t.as_str()));
    }
}

fn texts(range: std::ops::Range<usize>) -> impl Iterator<Item = String> {
    range.map(|i| format!("m{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_replays_the_latest_messages_then_goes_live_without_a_seam() {
    let server = start(history_config(100)).await;
    let mut publisher = join(server.addr, "/rooms/r").await;
    publish(&mut publisher, texts(0..10)).await;

    // By count, a plain client: raw payloads, the last three, then live.
    let mut plain = join(server.addr, "/rooms/r?rewind=3").await;
    publish(&mut publisher, texts(10..11)).await;
    for want in ["m7", "m8", "m9", "m10"] {
        assert_eq!(recv(&mut plain).await.as_text(), Some(want));
    }
    // More than the room has: all of it.
    let mut all = join(server.addr, "/rooms/r?rewind=1000").await;
    for i in 0..11 {
        assert_eq!(
            recv(&mut all).await.as_text(),
            Some(format!("m{i}").as_str())
        );
    }

    // Position-aware: told where it stands, then each message after its position.
    let mut aware = positioned(&server, "/rooms/r?rewind=2").await;
    let notice = joined(&mut aware).await;
    assert_eq!(notice["type"], "joined");
    assert_eq!(notice["position"], 9);
    assert_eq!(notice["replay"], 2);
    assert!(notice.get("recovered").is_none(), "{notice}");
    assert_eq!(
        next_event(&mut aware).await,
        Event::Message(10, "m9".into())
    );
    assert_eq!(
        next_event(&mut aware).await,
        Event::Message(11, "m10".into())
    );
    publish(&mut publisher, texts(11..12)).await;
    assert_eq!(
        next_event(&mut aware).await,
        Event::Message(12, "m11".into())
    );

    server.wait_metric("wsrelay_replays_total", 3).await;
    server
        .wait_metric("wsrelay_replayed_messages_total", 3 + 11 + 2)
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_by_age_replays_only_messages_that_young() {
    let server = start(history_config(100)).await;
    let mut publisher = join(server.addr, "/rooms/r").await;
    publish(&mut publisher, texts(0..5)).await;
    // The age is the feature's input here, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish(&mut publisher, texts(5..8)).await;
    let mut client = join(server.addr, "/rooms/r?rewind=2s").await;
    publish(&mut publisher, texts(8..9)).await;
    for want in ["m5", "m6", "m7", "m8"] {
        assert_eq!(recv(&mut client).await.as_text(), Some(want));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_after_its_last_position_exactly_once() {
    let server = start(history_config(100)).await;
    let mut publisher = join(server.addr, "/rooms/r").await;
    publish(&mut publisher, texts(0..5)).await;

    let mut client = positioned(&server, "/rooms/r").await;
    let notice = joined(&mut client).await;
    assert_eq!(notice["position"], 5);
    assert_eq!(notice["replay"], 0);
    let epoch = notice["epoch"].as_str().unwrap().to_owned();
    publish(&mut publisher, texts(5..8)).await;
    for (position, i) in (6..=8).zip(5..) {
        assert_eq!(
            next_event(&mut client).await,
            Event::Message(position, format!("m{i}"))
        );
    }
    drop(client);
    // Missed while away.
    publish(&mut publisher, texts(8..12)).await;

    let mut back = positioned(&server, &format!("/rooms/r?since=8&epoch={epoch}")).await;
    let notice = joined(&mut back).await;
    assert_eq!(notice["recovered"], true, "{notice}");
    assert_eq!(notice["position"], 8);
    assert_eq!(notice["replay"], 4);
    assert_eq!(notice["epoch"], epoch.as_str());
    publish(&mut publisher, texts(12..13)).await;
    for (position, i) in (9..=13).zip(8..) {
        assert_eq!(
            next_event(&mut back).await,
            Event::Message(position, format!("m{i}"))
        );
    }
    // Caught up already: recovered, nothing to replay.
    let mut current = positioned(&server, &format!("/rooms/r?since=13&epoch={epoch}")).await;
    let notice = joined(&mut current).await;
    assert_eq!(
        (notice["recovered"].clone(), notice["replay"].clone()),
        (true.into(), 0.into())
    );
    server
        .wait_metric("wsrelay_recoveries_total{result=\"recovered\"}", 2)
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_resume_is_told_so_and_goes_live() {
    let server = start(history_config(5)).await;
    let mut publisher = join(server.addr, "/rooms/r").await;
    publish(&mut publisher, texts(0..20)).await;
    let epoch = {
        let mut c = positioned(&server, "/rooms/r").await;
        joined(&mut c).await["epoch"].as_str().unwrap().to_owned()
    };
    let not_recovered = |notice: &Value, position: u64| {
        assert_eq!(notice["recovered"], false, "{notice}");
        assert_eq!(notice["position"], position, "{notice}");
        assert_eq!(notice["replay"], 0, "{notice}");
    };

    // The history (5 messages) rolled past position 3.
    let mut rolled = positioned(&server, &format!("/rooms/r?since=3&epoch={epoch}")).await;
    not_recovered(&joined(&mut rolled).await, 20);
    publish(&mut publisher, texts(20..21)).await;
    assert_eq!(
        next_event(&mut rolled).await,
        Event::Message(21, "m20".into())
    );
    // Within the history, but another epoch.
    let mut wrong = positioned(&server, "/rooms/r?since=18&epoch=Zz9Zz9Zz").await;
    not_recovered(&joined(&mut wrong).await, 21);
    // A position the room never had.
    let mut future = positioned(&server, &format!("/rooms/r?since=99&epoch={epoch}")).await;
    not_recovered(&joined(&mut future).await, 21);
    // Within the history and the epoch: recovered.
    let mut fine = positioned(&server, &format!("/rooms/r?since=18&epoch={epoch}")).await;
    assert_eq!(joined(&mut fine).await["recovered"], true);

    server
        .wait_metric("wsrelay_recoveries_total{result=\"failed\"}", 3)
        .await;
    server.stop().await;
}

/// The history expires a ttl after the room's newest message: then nobody
/// resumes and a rewind replays nothing. (The wait is the feature's input;
/// nothing has to happen within it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_ttl_nothing_is_resumed_or_replayed() {
    let mut config = history_config(5);
    config.rooms.history.ttl = Duration::from_secs(1);
    let server = start(config).await;
    let mut publisher = join(server.addr, "/rooms/r").await;
    let mut client = positioned(&server, "/rooms/r").await;
    let epoch = joined(&mut client).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    publish(&mut publisher, texts(0..3)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut late = positioned(&server, &format!("/rooms/r?since=2&epoch={epoch}")).await;
    let notice = joined(&mut late).await;
    assert_eq!(notice["recovered"], false, "{notice}");
    assert_eq!(
        (notice["position"].as_u64(), notice["replay"].as_u64()),
        (Some(3), Some(0))
    );
    let mut rewind = join(server.addr, "/rooms/r?rewind=10").await;
    publish(&mut publisher, texts(3..4)).await;
    assert_eq!(
        recv(&mut rewind).await.as_text(),
        Some("m3"),
        "nothing replayed"
    );
    server
        .wait_metric("wsrelay_recoveries_total{result=\"failed\"}", 1)
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_start_parameters_get_400() {
    let server = start(history_config(10)).await;
    for query in [
        "rewind=lots",
        "since=5",
        "epoch=abc",
        "since=x&epoch=abc",
        "rewind=3&since=1&epoch=abc",
    ] {
        let (head, _) =
            handshake_to(server.addr, "127.0.0.1", &format!("/rooms/r?{query}"), "").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{query}: {head}");
    }
    // Our client says why, as the relay put it.
    let url = format!("ws://{}/rooms/r?rewind=lots", server.addr);
    let Err(refused) = within(wsrelay::client::connect(&url, None)).await else {
        panic!("a bad rewind was accepted");
    };
    let said = refused.to_string();
    assert!(
        said.contains("HTTP 400") && said.contains("rewind must be a number"),
        "{said}"
    );
    server.stop().await;
}

/// A subscriber that drops and resumes 100 times while 10 000 messages go
/// by ends with every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_reconnecting_100_times_misses_nothing_and_repeats_nothing() {
    const MESSAGES: usize = 10_000;
    let server = start(history_config(MESSAGES)).await;
    let mut publisher = join(server.addr, "/rooms/r?echo=false").await;
    let mut client = positioned(&server, "/rooms/r").await;
    let notice = joined(&mut client).await;
    let epoch = notice["epoch"].as_str().unwrap().to_owned();
    let sender = tokio::spawn(async move {
        for i in 0..MESSAGES {
            publisher
                .send(Message::text(format!("m{i}")))
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
        publisher
    });
    let mut got = Vec::with_capacity(MESSAGES);
    let mut last = 0;
    let mut reconnects = 0;
    while got.len() < MESSAGES {
        match next_event(&mut client).await {
            Event::Message(position, text) => {
                assert_eq!(position, last + 1, "no gap, no repeat");
                last = position;
                got.push(text);
            }
            Event::Joined(v) => panic!("unexpected {v}"),
        }
        if got.len() % 99 == 0 && reconnects < 100 {
            drop(client);
            client = positioned(&server, &format!("/rooms/r?since={last}&epoch={epoch}")).await;
            let notice = joined(&mut client).await;
            assert_eq!(notice["recovered"], true, "{notice}");
            assert_eq!(notice["position"], last);
            reconnects += 1;
        }
    }
    assert_eq!(reconnects, 100);
    let want: Vec<String> = texts(0..MESSAGES).collect();
    assert!(got == want, "every message once, in order");
    within(sender).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_positions_and_serves_the_history() {
    let mut config = history_config(3);
    config.api.enabled = true;
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    config.api.keys = vec!["k".to_owned()];
    let server = start(config).await;
    let api = server.api_addr.unwrap();
    let post = |body: &'static str, ct: &'static str| async move {
        let headers = format!("Authorization: Bearer k\r\nContent-Type: {ct}\r\n");
        http_request(
            api,
            "POST",
            "/api/v1/rooms/news/messages",
            &headers,
            body.as_bytes(),
        )
        .await
    };
    // Nobody in the room: with history on it is kept all the same.
    let (status, body) = post("one", "text/plain").await;
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["delivered"], 0);
    assert_eq!(first["position"], 1);
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for (body, ct) in [
        ("two", "text/plain"),
        ("\u{1}\u{2}", "application/octet-stream"),
        ("four", "text/plain"),
    ] {
        post(body, ct).await;
    }
    let (status, body) = http_request(
        api,
        "GET",
        "/api/v1/rooms/news/history?since=1",
        "Authorization: Bearer k\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["epoch"], epoch.as_str());
    assert_eq!(page["position"], 4);
    // Three kept (2, 3, 4): nothing after 1 was lost.
    assert_eq!(page["complete"], true, "{page}");
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0]["position"], 2);
    assert_eq!(messages[0]["text"], "two");
    assert_eq!(messages[1]["binary"], "AQI=");
    // From the start: message 1 is gone.
    let (_, body) = http_request(
        api,
        "GET",
        "/api/v1/rooms/news/history?since=0&limit=1",
        "Authorization: Bearer k\r\n",
        b"",
    )
    .await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["complete"], false, "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    // A page rendered from message 4 resumes from there.
    let mut client = positioned(&server, &format!("/rooms/news?since=4&epoch={epoch}")).await;
    assert_eq!(joined(&mut client).await["recovered"], true);
    // An operator closing the room's clients closes them and keeps the
    // room's history and epoch: they can come back and resume.
    let (status, body) = http_request(
        api,
        "DELETE",
        "/api/v1/rooms/news/connections",
        "Authorization: Bearer k\r\n",
        b"bye",
    )
    .await;
    assert_eq!((status, body.trim()), (200, r#"{"closed":1}"#));
    assert_eq!(recv_close(&mut client).await, 1000);
    let mut back = positioned(&server, &format!("/rooms/news?since=4&epoch={epoch}")).await;
    assert_eq!(joined(&mut back).await["recovered"], true);
    server.stop().await;
}

/// `wsrelay client --rewind 2 --positions`: the notice, then each replayed
/// message after its position, one per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_subcommand_rewinds_and_prints_positions() {
    let server = start(history_config(10)).await;
    let mut publisher = join(server.addr, "/rooms/r").await;
    publish(&mut publisher, texts(0..3)).await;
    let url = format!("ws://{}/rooms/r", server.addr);
    let mut child = spawn_client(&["--rewind", "2", "--positions", &url]);
    let lines = stdout_lines(&mut child, 5).await;
    let notice: Value = serde_json::from_str(lines[0].strip_prefix('#').unwrap()).unwrap();
    assert_eq!(
        (notice["position"].clone(), notice["replay"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(lines[1..], ["@2", "m1", "@3", "m2"]);
    let _ = child.kill();
    let _ = child.wait();
    server.stop().await;
}

/// `wsrelay bench storm`: clients that drop together and come back
/// together all resume, and the bench's checker sees every missed message
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_storm_resumes_every_client() {
    let server = start(history_config(100)).await;
    let mut target = bench_target(&format!("ws://{}/rooms/storm", server.addr));
    target.connect_concurrency = 32;
    let opts = wsrelay::bench::storm::StormOptions {
        clients: 50,
        missed: 20,
        size: 64,
    };
    let report = wsrelay::bench::storm::storm(&target, &opts).await.unwrap();
    assert_eq!(
        (report.recovered, report.not_recovered),
        (50, 0),
        "{report}"
    );
    assert_eq!((report.lost, report.out_of_order), (0, 0), "{report}");
    assert_eq!(report.caught_up_us.samples, 50);
    assert!(!report.saw_loss());
    server
        .wait_metric("wsrelay_recoveries_total{result=\"recovered\"}", 50)
        .await;
    server.stop().await;
}

/// A storm whose clients the history cannot take back (it holds 10 of
/// the 20 they missed) ends, and reports them as not recovered and what
/// they lost, instead of waiting for messages that never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_storm_reports_clients_it_could_not_recover() {
    let server = start(history_config(10)).await;
    let target = bench_target(&format!("ws://{}/rooms/storm", server.addr));
    let opts = wsrelay::bench::storm::StormOptions {
        clients: 20,
        missed: 20,
        size: 64,
    };
    let report = within(wsrelay::bench::storm::storm(&target, &opts))
        .await
        .unwrap();
    assert_eq!(
        (report.recovered, report.not_recovered),
        (0, 20),
        "{report}"
    );
    assert_eq!(report.lost, 20 * 20, "{report}");
    assert!(report.saw_loss());
    server.stop().await;
}

/// Options for a short reconnect-mode fan-out: 20 subscribers that each
/// drop and resume about every 100 ms while two publishers send.
fn reconnecting_fanout(rate: f64) -> wsrelay::bench::FanoutOptions {
    wsrelay::bench::FanoutOptions {
        reconnect: Some(Duration::from_millis(100)),
        ..crate::bench::short_fanout(20, 2, Some(rate))
    }
}

/// `bench fanout --reconnect`: subscribers drop and resume mid-stream many
/// times each, and the bench's checker finds nothing lost or repeated; the
/// relay counted every resumption as recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_reconnect_mode_resumes_without_loss() {
    let server = start(history_config(10_000)).await;
    let target = bench_target(&format!("ws://{}/rooms/feed", server.addr));
    let report = wsrelay::bench::fanout(&target, &reconnecting_fanout(500.0))
        .await
        .unwrap();
    let reconnects = assert_resumed_exactly_once(&report);
    server
        .wait_metric("wsrelay_recoveries_total{result=\"recovered\"}", reconnects)
        .await;
    server.stop().await;
}

/// What a reconnect-mode fan-out of 20 subscribers must report when
/// recovery works: at least one reconnect each, every one recovered, every
/// delivery exactly once and in order; returns the reconnects.
pub(crate) fn assert_resumed_exactly_once(report: &wsrelay::bench::FanoutReport) -> u64 {
    let reconnect = report.reconnect.clone().unwrap();
    assert!(reconnect.reconnects >= 20, "{report}");
    assert_eq!(reconnect.not_recovered, 0, "{report}");
    assert_eq!(
        report.received_deliveries, report.expected_deliveries,
        "{report}"
    );
    assert_eq!(
        (report.lost, report.reorders, report.malformed),
        (0, 0, 0),
        "{report}"
    );
    assert!(!report.saw_loss(), "{report}");
    reconnect.reconnects
}

/// The reconnect mode's checker is not blind: with one message of history
/// at 2 000 msg/s, resumptions fail, and the report says what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_reconnect_mode_reports_what_recovery_lost() {
    let server = start(history_config(1)).await;
    let target = bench_target(&format!("ws://{}/rooms/feed", server.addr));
    let mut opts = reconnecting_fanout(2_000.0);
    // Lost messages never arrive: do not wait long for them.
    opts.drain_timeout = Duration::from_secs(2);
    let report = wsrelay::bench::fanout(&target, &opts).await.unwrap();
    let reconnect = report.reconnect.clone().unwrap();
    assert!(reconnect.not_recovered > 0, "{report}");
    assert!(report.lost > 0, "{report}");
    assert!(report.saw_loss());
    server
        .wait_metric(
            "wsrelay_recoveries_total{result=\"failed\"}",
            reconnect.not_recovered,
        )
        .await;
    server.stop().await;
}

/// A lone client of a quiet room (history on, nothing published) that
/// drops and comes back resumes: the room kept its epoch for the ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_client_of_a_quiet_room_resumes() {
    let server = start(history_config(10)).await;
    let epoch = {
        let mut alone = positioned(&server, "/rooms/quiet").await;
        let notice = joined(&mut alone).await;
        assert_eq!(notice["position"], 0);
        notice["epoch"].as_str().unwrap().to_owned()
    };
    server.wait_metric("wsrelay_connections_active", 0).await;
    let mut back = positioned(&server, &format!("/rooms/quiet?since=0&epoch={epoch}")).await;
    let notice = joined(&mut back).await;
    assert_eq!(notice["recovered"], true, "{notice}");
    assert_eq!(notice["epoch"], epoch.as_str());
    server.stop().await;
}
