//! The relay as a real browser sees it: pages in headless Chromium open
//! `new WebSocket(...)`s to the relay and report, as JSON, what arrived and
//! how each socket closed. Covered: text and binary relayed with their
//! types intact; an oversized message closing only its own socket with a
//! clean 1009; a token offered as a `bearer.<token>` subprotocol (alone or
//! beside an application protocol); SIGTERM giving open pages a clean 1001;
//! a burst of 20 000 synchronous sends reaching 20 readers complete and in
//! order (the relay paused while the page sends, so that they arrive as one
//! burst: Chromium alone hands them over too gradually to make one);
//! permessage-deflate negotiated (`ws.extensions`) and relayed both ways.
//!
//! Each test starts its own chromedriver on a free port, which starts
//! Chromium (`tests/common/browser.rs`). The browser is looked for at
//! `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium` and `chromium-driver`); without them each test prints
//! `SKIPPED: <test>: ...` to stderr and passes, unless
//! `WSRELAY_REQUIRE_BROWSER=1` (as `scripts/test.sh`, which installs them,
//! sets it), when it fails. Page scripts wait on WebSocket events; their
//! time limits only bound how long a broken build takes to fail.

use std::time::Duration;

use crate::common::browser::Browser;
use crate::common::*;
use serde_json::{Value, json};

/// A page script's limit, for all but the 20 000-message burst.
const SCRIPT_LIMIT: Duration = Duration::from_secs(30);

/// The config of a relay run as its own process, for signals: both
/// listeners on free loopback ports.
const RELAY_CONFIG: &str =
    "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_stays_text_and_binary_stays_binary_among_a_pages_sockets() {
    let Some(browser) =
        Browser::launch("text_stays_text_and_binary_stays_binary_among_a_pages_sockets").await
    else {
        return;
    };
    let server = start(test_config()).await;
    let sent = json!([
        [0, { "text": "hello from socket 0" }],
        [1, { "binary": "000102037f80feff" }],
        [2, { "text": "ünïcödé ✓, and a NUL: \u{0}" }],
        // 300 bytes: past the 7-bit length of a frame header.
        [0, { "binary": (0..300).map(|i| format!("{:02x}", i % 251)).collect::<String>() }],
    ]);
    let received = browser
        .run(
            SCRIPT_LIMIT,
            r#"
const [url, sent] = args;
const socks = [sock(url), sock(url), sock(url)];
await Promise.all(socks.map((s) => s.opened));
const received = socks.map(() => []);
progress.received = received;
const bytes = (hex) => new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
for (const [from, message] of sent) {
  socks[from].ws.send("text" in message ? message.text : bytes(message.binary));
  // Every socket, the sender too (echo is on), gets it before the next.
  for (const [i, s] of socks.entries()) received[i].push(describe(await s.next()));
}
return received;
"#,
            vec![json!(server.url), sent.clone()],
        )
        .await;
    let expected: Vec<Value> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[1].clone())
        .collect();
    assert_eq!(received, json!([expected, expected, expected]));
    browser.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_only_its_socket_with_a_clean_1009() {
    let Some(browser) =
        Browser::launch("oversized_message_closes_only_its_socket_with_a_clean_1009").await
    else {
        return;
    };
    let mut config = test_config();
    config.limits.max_message_size = 1 << 20;
    let server = start(config).await;
    let result = browser
        .run(
            SCRIPT_LIMIT,
            r#"
const [url, sizes] = args;
const [a, b] = [sock(url), sock(url)];
await Promise.all([a, b].map((s) => s.opened));
// Each too-big message on a socket of its own. The bigger ones are still
// being sent when the relay has read enough to refuse them: a Close that
// arrived then would make Chromium call the close unclean.
const bigs = [];
for (const size of sizes) {
  const big = sock(url);
  await big.opened;
  big.ws.send(new Uint8Array(size));
  const closed = await big.closed;
  bigs.push({ code: closed.code, wasClean: closed.wasClean, reason: closed.reason });
}
// The other sockets are still served: a message from one reaches both.
a.ws.send("still here");
const after = [describe(await a.next()), describe(await b.next())];
return {
  bigs,
  after,
  others: [a, b].map((s) => ({ readyState: s.ws.readyState, close: s.close })),
};
"#,
            vec![json!(server.url), json!([2 << 20, 8 << 20, 32 << 20])],
        )
        .await;
    let clean = json!({ "code": 1009, "wasClean": true, "reason": "message too big" });
    assert_eq!(result["bigs"], json!([clean, clean, clean]), "{result:#}");
    assert_eq!(
        result["after"],
        json!([{ "text": "still here" }, { "text": "still here" }]),
        "{result:#}"
    );
    let open = json!({ "readyState": 1, "close": null });
    assert_eq!(result["others"], json!([open, open]), "{result:#}");
    browser.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_the_subprotocol_alone_or_beside_an_application_protocol() {
    let Some(browser) =
        Browser::launch("token_in_the_subprotocol_alone_or_beside_an_application_protocol").await
    else {
        return;
    };
    const TOKEN: &str = "browser-token-42";
    let mut config = test_config();
    config.auth.tokens = vec![TOKEN.to_owned()];
    let server = start(config).await;
    let result = browser
        .run(
            SCRIPT_LIMIT,
            r#"
const [url, token] = args;
const socks = {
  bearerOnly: sock(url, ["bearer." + token]),
  beside: sock(url, ["wsrelay", "bearer." + token]),
  wrong: sock(url, ["wsrelay", "bearer.not-" + token]),
  wrongOnly: sock(url, ["bearer.not-" + token]),
  none: sock(url),
};
const result = {};
for (const [name, s] of Object.entries(socks)) {
  result[name] = await s.opened.then(
    () => ({ opened: true, protocol: s.ws.protocol }),
    async () => ({ opened: false, code: (await s.closed).code }));
}
progress.result = result;
if (result.bearerOnly.opened && result.beside.opened) {
  // Both are live relay clients, not just accepted handshakes.
  socks.bearerOnly.ws.send("from bearer only");
  result.relayed = describe(await socks.beside.next());
}
return result;
"#,
            vec![json!(server.url), json!(TOKEN)],
        )
        .await;
    assert_eq!(
        result["bearerOnly"],
        json!({ "opened": true, "protocol": format!("bearer.{TOKEN}") }),
        "{result:#}"
    );
    assert_eq!(
        result["beside"],
        json!({ "opened": true, "protocol": "wsrelay" }),
        "{result:#}"
    );
    // A refused handshake is 1006 to a page, whatever the HTTP status.
    let refused = json!({ "opened": false, "code": 1006 });
    for name in ["wrong", "wrongOnly", "none"] {
        assert_eq!(result[name], refused, "{name}: {result:#}");
    }
    assert_eq!(
        result["relayed"],
        json!({ "text": "from bearer only" }),
        "{result:#}"
    );
    // Refused for the token, not for something else.
    server.wait_metric(&rejected("auth"), 3).await;
    browser.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_a_pages_sockets_with_a_clean_1001() {
    let Some(browser) = Browser::launch("sigterm_closes_a_pages_sockets_with_a_clean_1001").await
    else {
        return;
    };
    let dir = TempDir::new("browser-sigterm");
    let file = dir.file(
        "wsrelay.yaml",
        &format!("{RELAY_CONFIG}shutdown:\n  timeout: 10s\n"),
    );
    let mut relay = spawn_relay(&file);
    let url = format!("ws://{}/", relay.addr);
    // The sockets live on the page (in `window.socks`) across both scripts.
    let opened = browser
        .run(
            SCRIPT_LIMIT,
            r#"
const [url] = args;
window.socks = [sock(url), sock(url), sock(url)];
await Promise.all(window.socks.map((s) => s.opened));
return window.socks.length;
"#,
            vec![json!(url)],
        )
        .await;
    assert_eq!(opened, json!(3));
    relay.signal("TERM");
    let closes = browser
        .run(
            SCRIPT_LIMIT,
            r#"
progress.report = () => window.socks.map((s) => s.close);
return await Promise.all(window.socks.map((s) => s.closed));
"#,
            vec![],
        )
        .await;
    for close in closes.as_array().expect("a list of closes") {
        assert_eq!(close["code"], json!(1001), "{closes:#}");
        assert_eq!(close["wasClean"], json!(true), "{closes:#}");
    }
    let code = tokio::task::spawn_blocking(move || relay.wait_exit(PATIENCE))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_synchronous_sends_reaches_every_reader_complete_and_in_order() {
    let Some(browser) =
        Browser::launch("a_burst_of_synchronous_sends_reaches_every_reader_complete_and_in_order")
            .await
    else {
        return;
    };
    const MESSAGES: u32 = 20_000;
    const READERS: u32 = 20;
    let dir = TempDir::new("browser-burst");
    let relay = spawn_relay(&dir.file("wsrelay.yaml", RELAY_CONFIG));
    let url = format!("ws://{}/", relay.addr);
    browser
        .run(
            SCRIPT_LIMIT,
            r#"
const [url, count, readerCount] = args;
// The sender does not hear itself; each reader checks every message as
// it arrives (keeping none) and is done at the last.
window.sender = sock(url + "?echo=false");
window.readers = [];
for (let i = 0; i < readerCount; i++) {
  const r = { next: 0 };
  r.done = new Promise((resolve, reject) => { r.resolve = resolve; r.reject = reject; });
  r.s = sock(url, undefined, (data) => {
    if (data !== String(r.next)) {
      r.reject(new Error(`reader ${i}: message ${r.next} was ${JSON.stringify(describe(data))}`));
    } else if (++r.next === count) {
      r.resolve();
    }
  });
  r.s.closed.then((c) =>
    r.reject(new Error(`reader ${i} closed after ${r.next} messages: ${JSON.stringify(c)}`)));
  readers.push(r);
}
await Promise.all([sender, ...readers.map((r) => r.s)].map((s) => s.opened));
"#,
            vec![json!(url), json!(MESSAGES), json!(READERS)],
        )
        .await;
    // Left running, the relay takes Chromium's sends about as fast as the
    // browser hands them to the network, a few at a time. Paused while the
    // page sends, it finds them all waiting when it resumes, the burst a
    // stall of its process (or a busy host) would make: it parses
    // thousands of messages from each read before any reader's writer runs.
    relay.signal("STOP");
    browser
        .run(
            SCRIPT_LIMIT,
            r#"
const [count] = args;
for (let i = 0; i < count; i++) sender.ws.send(String(i));
// bufferedAmount has no event: poll it until the browser has handed
// every message to the network.
while (sender.ws.bufferedAmount > 0) await new Promise((r) => setTimeout(r, 10));
"#,
            vec![json!(MESSAGES)],
        )
        .await;
    relay.signal("CONT");
    let result = browser
        .run(
            Duration::from_secs(120),
            r#"
progress.report = () => ({
  received: readers.map((r) => r.next),
  closes: [sender, ...readers.map((r) => r.s)].map((s) => s.close),
});
await Promise.all(readers.map((r) => r.done));
return progress.report();
"#,
            vec![],
        )
        .await;
    assert_eq!(
        result["received"],
        json!(vec![MESSAGES; READERS as usize]),
        "{result:#}"
    );
    assert_eq!(
        result["closes"],
        json!(vec![Value::Null; READERS as usize + 1]),
        "no socket may be closed: {result:#}"
    );
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_negotiates_permessage_deflate_and_its_messages_go_compressed() {
    let Some(browser) =
        Browser::launch("a_browser_negotiates_permessage_deflate_and_its_messages_go_compressed")
            .await
    else {
        return;
    };
    let mut config = test_config();
    config.compression.enabled = true;
    let server = start(config).await;
    // A page with compression and a plain client beside it.
    let mut plain = server.client().await;
    let big: String = (0..60)
        .map(|i| format!("{{\"id\":{i},\"status\":\"online\"}},"))
        .collect();
    let result = browser
        .run(
            SCRIPT_LIMIT,
            r#"
const [url, big] = args;
const a = sock(url), b = sock(url);
await Promise.all([a.opened, b.opened]);
a.ws.send(big);
a.ws.send("small");
const got = [];
for (const s of [a, b]) got.push(describe(await s.next()), describe(await s.next()));
return { extensions: [a.ws.extensions, b.ws.extensions], got };
"#,
            vec![json!(server.url), json!(big)],
        )
        .await;
    let ext = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    assert_eq!(result["extensions"], json!([ext, ext]));
    let expected = [json!({ "text": big }), json!({ "text": "small" })];
    assert_eq!(
        result["got"],
        json!([expected[0], expected[1], expected[0], expected[1]])
    );
    // The plain client got it plain; the relay compressed it once for both
    // pages (the small one is under min_size).
    assert_eq!(recv(&mut plain).await.as_text(), Some(big.as_str()));
    assert_eq!(recv(&mut plain).await.as_text(), Some("small"));
    assert_eq!(server.metric("wsrelay_compressed_messages_total").await, 1);
    browser.quit().await;
    server.stop().await;
}

/// clients/js in Chromium: a page joins a room with the client, which is
/// made to drop its connection twice while another socket on the page
/// publishes 2 000 messages; the client hands every one over once, in
/// order, resuming each time (`recovered: true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_client_resumes_in_a_browser_without_loss_or_repeats() {
    let Some(browser) =
        Browser::launch("the_javascript_client_resumes_in_a_browser_without_loss_or_repeats").await
    else {
        return;
    };
    let mut config = test_config();
    config.rooms.enabled = true;
    config.rooms.history.size = 5000;
    let server = start(config).await;
    let module = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/js/wsrelay.js"
    ))
    .expect("clients/js/wsrelay.js");
    let url = format!("ws://{}/rooms/page", server.addr);
    let outcome = browser
        .run(
            SCRIPT_LIMIT,
            r#"
const [url, source, total] = args;
// The module as the page would import it (a blob: URL stands in for its file).
const { RelayClient } = await import(URL.createObjectURL(new Blob([source], { type: "text/javascript" })));
const seen = { data: [], positions: [], joins: [] };
progress.seen = seen;
let joined;
const firstJoin = new Promise((r) => (joined = r));
const client = new RelayClient(url, {
  backoff: { initial: 20, max: 200 },
  onMessage: (data, at) => { seen.data.push(data); seen.positions.push(at.position); },
  onJoin: (j) => { seen.joins.push(j.recovered); joined(); },
});
await firstJoin;
const publisher = sock(url + "?echo=false&role=publisher");
await publisher.opened;
const until = async (n) => { while (seen.data.length < n) await new Promise((r) => setTimeout(r, 2)); };
for (let i = 0; i < total; i++) {
  publisher.ws.send("m" + i);
  if (i === 400 || i === 1200) {
    await until(i - 100);
    client.reconnect();
  }
}
await until(total);
await new Promise((r) => setTimeout(r, 100));
client.close();
const inOrder = seen.data.every((d, i) => d === "m" + i) && seen.positions.every((p, i) => p === i + 1);
return { count: seen.data.length, inOrder, joins: seen.joins, position: client.position };
"#,
            vec![json!(url), json!(module), json!(2000)],
        )
        .await;
    assert_eq!(
        outcome,
        json!({ "count": 2000, "inOrder": true, "joins": [null, true, true], "position": 2000 })
    );
    server
        .wait_metric("wsrelay_recoveries_total{result=\"recovered\"}", 2)
        .await;
    browser.quit().await;
    server.stop().await;
}
