//! The built `wsrelay` binary as operators run it: signals, bad config,
//! busy ports, the `client` subcommand, and memory under a stalled client.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::SinkExt;
use tokio_websockets::Message;

const BASE_CONFIG: &str =
    "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n";

fn relay_with(dir: &TempDir, extra: &str) -> RelayProcess {
    let file = dir.file("wsrelay.yaml", &format!("{BASE_CONFIG}{extra}"));
    spawn_relay(&file)
}

fn url(relay: &RelayProcess) -> String {
    format!("ws://{}/", relay.addr)
}

async fn graceful_shutdown_on(signal: &str) {
    let dir = TempDir::new(signal);
    let mut relay = relay_with(&dir, "shutdown:\n  timeout: 10s\n");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            within(wsrelay::client::connect(&url(&relay), None))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    relay.signal(signal);
    for ws in &mut clients {
        assert_eq!(recv_close(ws).await, 1001, "after {signal}");
        // Answer the close, as a well-behaved client does.
        within(ws.close()).await.unwrap();
    }
    let code = tokio::task::spawn_blocking(move || relay.wait_exit(PATIENCE))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "exit code after {signal}");
    // Everyone answered, so the relay did not wait out its 10 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_going_away_and_exits_zero() {
    graceful_shutdown_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_sends_going_away_and_exits_zero() {
    graceful_shutdown_on("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_a_client_ignores_the_close() {
    let dir = TempDir::new("ignore");
    let mut relay = relay_with(&dir, "shutdown:\n  timeout: 1s\n");
    // Completes the handshake and then neither reads nor answers.
    let _deaf = RawClient::connect(relay.addr).await;
    let started = Instant::now();
    relay.signal("TERM");
    let code = tokio::task::spawn_blocking(move || relay.wait_exit(PATIENCE))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_secs(1),
        "gave up before the timeout: {took:?}"
    );
    // And not much after it: the deaf client is dropped at the timeout.
    // (A force path that did not work would still exit, after one more
    // second of waiting for the tasks: about 2 s.)
    assert!(
        took < Duration::from_millis(1900),
        "shutdown overran its timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let dir = TempDir::new("twice");
    let mut relay = relay_with(&dir, "shutdown:\n  timeout: 10m\n");
    let _deaf = RawClient::connect(relay.addr).await;
    relay.signal("TERM");
    // Wait until the relay is draining, then insist.
    relay.wait_log("shutting down");
    relay.signal("TERM");
    let code = tokio::task::spawn_blocking(move || relay.wait_exit(PATIENCE))
        .await
        .unwrap();
    assert_eq!(code, Some(143));
}

/// Runs `wsrelay --config-file FILE` expecting a start-up failure; returns stderr.
fn failed_start(file: &std::path::Path, want_code: i32) -> String {
    let out = binary()
        .arg("--config-file")
        .arg(file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(want_code), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_names_the_file_the_key_and_the_line() {
    let dir = TempDir::new("badconfig");
    let cases = [
        (
            "unknown.yaml",
            "server:\n  listen: \"127.0.0.1:0\"\n  lisen: x\n",
            "server.lisen",
            "line 3",
        ),
        (
            "duration.yaml",
            "shutdown:\n  timeout: whenever\n",
            "shutdown.timeout",
            "line 2",
        ),
        (
            "address.yaml",
            "metrics:\n  enabled: true\n  listen: \"localhost\"\n",
            "metrics.listen",
            "line 3",
        ),
        (
            "format.yaml",
            "log:\n  format: xml\n",
            "log.format",
            "line 2",
        ),
        (
            "queue.yaml",
            "client:\n  queue_messages: many\n",
            "client.queue_messages",
            "line 2",
        ),
        ("top.yaml", "serverr:\n  listen: x\n", "serverr", "line 1"),
        (
            "jwt.yaml",
            "auth:\n  tokens: []\n  jwt:\n    algorithm: RS256\n    secret: x\n",
            "auth.jwt",
            "line 4",
        ),
        (
            "proxies.yaml",
            "server:\n  trusted_proxies: [\"10.0.0.0/8\", \"proxy.local\"]\n",
            "server.trusted_proxies",
            "line 2",
        ),
        (
            "overflow.yaml",
            "client:\n  on_overflow: block\n",
            "client.on_overflow",
            "line 2",
        ),
    ];
    for (name, text, key, line) in cases {
        let file = dir.file(name, text);
        let err = failed_start(&file, 2);
        for needle in [file.display().to_string().as_str(), key, line] {
            assert!(err.contains(needle), "{name}: {needle:?} not in {err}");
        }
    }
    let file = dir.file("yaml.yaml", "server: [unclosed\n  listen: x\n");
    let err = failed_start(&file, 2);
    assert!(err.contains("yaml.yaml") && err.contains("line"), "{err}");

    let missing = dir.0.join("missing.yaml");
    let err = failed_start(&missing, 2);
    assert!(err.contains("missing.yaml"), "{err}");
}

#[test]
fn a_missing_jwt_key_file_is_named() {
    let dir = TempDir::new("jwtkey");
    let key = dir.0.join("absent-key.pem");
    let file = dir.file(
        "jwt.yaml",
        &format!(
            "{BASE_CONFIG}auth:\n  jwt:\n    algorithm: ES256\n    public_key_file: {}\n",
            key.display()
        ),
    );
    let err = failed_start(&file, 1);
    assert!(err.contains("absent-key.pem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_busy_port_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new("busy");
    let file = dir.file(
        "busy.yaml",
        &format!("server:\n  listen: \"{addr}\"\nmetrics:\n  enabled: false\n"),
    );
    let err = failed_start(&file, 1);
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_and_version_work_everywhere() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["client", "--help"],
        &["help"],
    ] {
        let out = binary().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let out = binary().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_subcommand_round_trip() {
    let server = start(test_config()).await;
    let mut peer = server.client().await;
    let mut child = spawn_client(&[&server.url]);
    server.wait_metric("wsrelay_connections_active", 2).await;

    // stdin line → text message to everyone.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all("hello from stdin ✓\n".as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert_eq!(recv(&mut peer).await.as_text(), Some("hello from stdin ✓"));

    // Message from elsewhere → its own line on stdout (after the echo of ours).
    peer.send(Message::text("hello to stdout")).await.unwrap();
    let lines = stdout_lines(&mut child, 2).await;
    assert_eq!(lines, ["hello from stdin ✓", "hello to stdout"]);

    // End of stdin: the client closes with 1000 and exits 0.
    drop(stdin);
    let status = within(tokio::task::spawn_blocking(move || child.wait()))
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"client_close\"}",
            1,
        )
        .await;
    server.stop().await;
}

/// The server closing (here: shutting down) ends the client with exit 0
/// even while its stdin stays open and silent, as a terminal's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_exits_when_the_server_closes_though_stdin_is_open() {
    let server = start(test_config()).await;
    let mut child = binary()
        .args(["client", &server.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held open, never written.
    let _stdin = child.stdin.take().unwrap();
    server.wait_metric("wsrelay_connections_active", 1).await;
    server.stop().await;
    let out = within(tokio::task::spawn_blocking(move || {
        child.wait_with_output()
    }))
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1001"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_a_client_never_reads_whatever_the_policy() {
    const MESSAGES: usize = 4000;
    const SIZE: usize = 64 * 1024;
    const WINDOW: usize = 8;
    for policy in ["disconnect", "drop_oldest", "drop_newest"] {
        let dir = TempDir::new("rss");
        // A lag of 64 messages of 64 KiB: 4 MiB, and the room's log holds
        // at most 2¼ times that. No write timeout: the policy alone must
        // bound the memory.
        let relay = relay_with(
            &dir,
            &format!(
                "client:\n  queue_messages: 64\n  on_overflow: {policy}\n  write_timeout: 0s\n"
            ),
        );
        let _stalled = RawClient::connect(relay.addr).await;
        let mut publisher = within(wsrelay::client::connect(&url(&relay), None))
            .await
            .unwrap();
        let rss_before = relay.rss_bytes();

        publish_windowed(&mut publisher, SIZE, MESSAGES, WINDOW).await;
        // 250 MiB went through while one client read nothing; the relay held
        // at most the room's log, one write batch, a drop_newest window and
        // socket buffers for it.
        let grown = relay.rss_bytes().saturating_sub(rss_before);
        assert!(
            grown < 48 << 20,
            "{policy}: RSS grew by {} MiB",
            grown >> 20
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = TempDir::new("jsonlog");
    let file = dir.file(
        "json.yaml",
        &format!("{BASE_CONFIG}log:\n  format: json\n  level: debug\n"),
    );
    let mut child = binary()
        .arg("--config-file")
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Every line up to "relay listening" (the last start-up line) is one
    // JSON object.
    let mut listening = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("a log line");
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(event["level"], "INFO", "{line}");
        if event["message"] == "relay listening" {
            listening = Some(event);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let event = listening.expect("a relay listening line");
    let addr: std::net::SocketAddr = event["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_problem() {
    let dir = TempDir::new("check");
    let good = dir.file("good.yaml", "client:\n  queue_messages: 7\n");
    let out = binary()
        .args(["check-config"])
        .arg(&good)
        .args(["--metrics-listen", "127.0.0.1:9999"])
        .env("WSRELAY_LISTEN", "127.0.0.1:7777")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The output is itself a valid config: the file, the environment and
    // the flag applied, every default filled in.
    let printed = String::from_utf8(out.stdout).unwrap();
    let effective = wsrelay::config::Config::parse(&printed, Path::new("stdout")).unwrap();
    let mut want = wsrelay::config::Config::default();
    want.client.queue_messages = 7;
    want.server.listen = "127.0.0.1:7777".parse().unwrap();
    want.metrics.listen = "127.0.0.1:9999".parse().unwrap();
    assert_eq!(effective, want);
    assert!(printed.contains("write_timeout:"), "{printed}");

    // Precedence: flag over environment over file over default.
    let file = dir.file("listen.yaml", "server:\n  listen: \"127.0.0.1:5555\"\n");
    let listen_with = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = binary();
        cmd.arg("check-config")
            .arg(&file)
            .env_remove("WSRELAY_LISTEN");
        if let Some(env) = env {
            cmd.env("WSRELAY_LISTEN", env);
        }
        if let Some(flag) = flag {
            cmd.args(["--listen", flag]);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        wsrelay::config::Config::parse(&text, Path::new("stdout"))
            .unwrap()
            .server
            .listen
            .to_string()
    };
    assert_eq!(listen_with(None, None), "127.0.0.1:5555");
    assert_eq!(listen_with(Some("127.0.0.1:6666"), None), "127.0.0.1:6666");
    assert_eq!(
        listen_with(Some("127.0.0.1:6666"), Some("127.0.0.1:7777")),
        "127.0.0.1:7777"
    );

    // Files the relay would load are loaded too.
    let missing_cert = dir.file(
        "tls.yaml",
        "server:\n  tls:\n    cert_file: /nonexistent/cert.pem\n    key_file: /nonexistent/key.pem\n",
    );
    let bad_key = dir.file("key.yaml", "client:\n  write_timeout: soon\n");
    // Parses as a duration, but no timer could run that long: refused here,
    // not a panic on every connection later.
    let endless = dir.file(
        "endless.yaml",
        "limits:\n  handshake_timeout: 500000000000y\n",
    );
    for (file, needles) in [
        (&missing_cert, &["tls.yaml", "/nonexistent/cert.pem"][..]),
        (
            &bad_key,
            &["key.yaml", "client.write_timeout", "line 2"][..],
        ),
        (
            &endless,
            &[
                "endless.yaml",
                "limits.handshake_timeout",
                "line 2",
                "10 years",
            ][..],
        ),
    ] {
        let out = binary().arg("check-config").arg(file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn cluster_url_and_node_id_come_from_flags_or_the_environment() {
    let dir = TempDir::new("cluster-flags");
    let empty = dir.file("empty.yaml", "");
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = binary();
        cmd.arg("check-config").arg(&empty).args(args);
        cmd.env_remove("WSRELAY_CLUSTER_URL")
            .env_remove("WSRELAY_NODE_ID");
        cmd.envs(env.iter().copied());
        cmd.output().unwrap()
    };
    let parsed = |out: &std::process::Output| {
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        wsrelay::config::Config::parse(&text, Path::new("stdout"))
            .unwrap()
            .cluster
    };
    // The scheme picks the backend when the file does not.
    let c = parsed(&check(&["--cluster-url", "nats://broker:4222"], &[]));
    assert_eq!(c.backend, wsrelay::config::ClusterBackend::Nats);
    assert_eq!(c.url, "nats://broker:4222");
    let c = parsed(&check(
        &["--node-id", "flag-node"],
        &[
            ("WSRELAY_CLUSTER_URL", "rediss://:pw@broker:6380"),
            ("WSRELAY_NODE_ID", "env-node"),
        ],
    ));
    assert_eq!(c.backend, wsrelay::config::ClusterBackend::Redis);
    assert_eq!(c.node_id, "flag-node");
    // Bad values exit 2 and name the flag.
    for (args, needle) in [
        (&["--cluster-url", "http://broker"][..], "--cluster-url"),
        (&["--node-id", "a b"][..], "--node-id"),
    ] {
        let out = check(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_turns_readyz_503_keeps_accepting_then_spreads_the_closes() {
    const CLIENTS: usize = 29;
    let dir = TempDir::new("drain");
    let mut relay = relay_with(&dir, "shutdown:\n  drain_delay: 3s\n  timeout: 4s\n");
    let metrics = relay.metrics_addr.expect("metrics listener");
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(
            within(wsrelay::client::connect(&url(&relay), None))
                .await
                .unwrap(),
        );
    }
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);

    relay.signal("TERM");
    wait_http(metrics, "/readyz", |status, _| status == 503).await;
    // Not ready, but still accepting during the drain delay: a client the
    // load balancer had already sent is served.
    clients.push(
        within(wsrelay::client::connect(&url(&relay), None))
            .await
            .unwrap(),
    );
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);

    // Every client gets 1001; the closes come in batches, not at once.
    let mut closing = tokio::task::JoinSet::new();
    for mut ws in clients {
        closing.spawn(async move {
            assert_eq!(recv_close(&mut ws).await, 1001);
            let at = Instant::now();
            within(ws.close()).await.unwrap();
            at
        });
    }
    let closed_at: Vec<Instant> = closing.join_all().await;
    let first = closed_at.iter().min().unwrap();
    let last = closed_at.iter().max().unwrap();
    // Batches over half of the 4 s timeout (with these 30 clients, 10 of
    // 3, 0.2 s apart): the last comes 1.8 s after the first. A client task
    // scheduled late can shorten what is measured here, so half of that is
    // asked for; closes sent at once would be milliseconds apart.
    assert!(
        *last - *first >= Duration::from_millis(900),
        "closes spread over only {:?}",
        *last - *first
    );
    let code = tokio::task::spawn_blocking(move || relay.wait_exit(PATIENCE))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// check-config's output goes to terminals and CI logs: the secrets in it
/// are shown as `***`, everything else as it is.
#[test]
fn check_config_hides_secrets() {
    let dir = TempDir::new("check-secrets");
    let file = dir.file(
        "secrets.yaml",
        "api:\n  enabled: true\n  keys: [api-key-1]\n\
         auth:\n  tokens: [client-token-1]\n  jwt:\n    algorithm: HS256\n    secret: jwt-secret-1\n\
         cluster:\n  backend: redis\n  url: \"redis://user:broker-pass-1@127.0.0.1:6379\"\n",
    );
    let out = binary().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    for secret in [
        "api-key-1",
        "client-token-1",
        "jwt-secret-1",
        "broker-pass-1",
    ] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    assert_eq!(printed.matches("***").count(), 4, "{printed}");
    assert!(printed.contains("127.0.0.1:6379"), "{printed}");
}
