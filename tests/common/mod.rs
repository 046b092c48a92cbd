//! Shared test helpers: a real relay on 127.0.0.1:0, real clients, metrics.
//!
//! Every wait here is on an event (a message, a metric value, a closed
//! socket, a log line); the timeouts only bound how long a broken build
//! takes to fail.

#![allow(dead_code)] // each test binary uses a different subset

pub mod broker;
pub mod browser;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_websockets::Message;
use wsrelay::client::ClientStream;
use wsrelay::config::Config;
use wsrelay::server::Server;

/// Upper bound for any single wait; generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A config for tests: both listeners on 127.0.0.1:0, short shutdown.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c.shutdown.timeout = Duration::from_secs(2);
    c
}

/// A relay running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The HTTP API, when the config enables it.
    pub api_addr: Option<SocketAddr>,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Starts the real server with `config` and returns once it is listening.
pub async fn start(config: Config) -> TestServer {
    let server = Server::bind(&config).await.expect("bind test server");
    let addr = server.local_addr();
    let metrics_addr = server.metrics_addr().expect("metrics enabled in tests");
    let url = server.url();
    let api_addr = server.api_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        metrics_addr,
        api_addr,
        url,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    /// A connected WebSocket client (the hub has it once this returns).
    pub async fn client(&self) -> ClientStream {
        within(wsrelay::client::connect(&self.url, None))
            .await
            .expect("connect")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.metrics_addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The value of one series, e.g. `wsrelay_connections_total` or
    /// `wsrelay_disconnections_by_reason_total{reason="reset"}`.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self.metrics().await;
        metric_value(&text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    /// Waits until a series has the expected value.
    pub async fn wait_metric(&self, series: &str, want: u64) {
        wait_metric_at(self.metrics_addr, series, want).await;
    }

    /// Starts shutting the server down without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the server down and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(&mut self.task).await.expect("server task");
    }
}

/// A client connected to `path_and_query` (`/rooms/lobby?echo=false`) on
/// the relay at `addr`; the hub has it once this returns.
pub async fn join(addr: SocketAddr, path_and_query: &str) -> ClientStream {
    let url = format!("ws://{addr}{path_and_query}");
    within(wsrelay::client::connect(&url, None))
        .await
        .unwrap_or_else(|e| panic!("{path_and_query}: {e}"))
}

/// Polls `GET path` on `addr` (a relay in this process or another) until
/// `done(status, body)` holds; returns that body. Fails the test, showing
/// the last answer, if it does not within [`PATIENCE`].
pub async fn wait_http(
    addr: SocketAddr,
    path: &str,
    mut done: impl FnMut(u16, &str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = http_get(addr, path).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} still answers {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a series on the metrics listener at `addr` has the
/// expected value.
pub async fn wait_metric_at(addr: SocketAddr, series: &str, want: u64) {
    wait_http(addr, "/metrics", |status, text| {
        assert_eq!(status, 200, "{text}");
        metric_value(text, series) == Some(want)
    })
    .await;
}

/// Parses one series' value out of a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Bounds a future by [`PATIENCE`], failing the test if it takes longer.
pub async fn within<F: std::future::IntoFuture>(f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f).await.expect("timed out")
}

/// The next message a client receives (pings and pongs skipped).
pub async fn recv(ws: &mut ClientStream) -> Message {
    within(async {
        loop {
            let m = ws
                .next()
                .await
                .expect("stream ended")
                .expect("receive failed");
            if !m.is_ping() && !m.is_pong() {
                return m;
            }
        }
    })
    .await
}

/// A binary payload of `size` bytes (at least 8) carrying sequence number `seq`.
pub fn numbered(seq: usize, size: usize) -> bytes::Bytes {
    let mut v = vec![b'x'; size.max(8)];
    v[..8].copy_from_slice(&(seq as u64).to_be_bytes());
    v.into()
}

/// The sequence number of a [`numbered`] payload.
pub fn sequence(payload: &[u8]) -> usize {
    let head: [u8; 8] = payload[..8].try_into().expect("a numbered payload");
    u64::from_be_bytes(head) as usize
}

/// Publishes `count` [`numbered`] binary messages of `size` bytes, keeping
/// at most `window` of its own in flight (each echo frees a slot), so the
/// publisher paces itself to the relay and never becomes a slow consumer.
/// Checks each echo; returns once all have come back.
pub async fn publish_windowed(ws: &mut ClientStream, size: usize, count: usize, window: usize) {
    for i in 0..count + window {
        if i < count {
            ws.send(Message::binary(numbered(i, size))).await.unwrap();
        }
        if i >= window {
            let echo = recv(ws).await;
            assert!(echo.is_binary(), "echo {}: {echo:?}", i - window);
            assert_eq!(echo.as_payload().len(), size);
            assert_eq!(sequence(echo.as_payload()), i - window);
        }
    }
}

/// The close code a client receives, reading past any data messages.
pub async fn recv_close(ws: &mut ClientStream) -> u16 {
    loop {
        let m = recv(ws).await;
        if let Some((code, _)) = m.as_close() {
            return code.into();
        }
    }
}

/// Reads until the server closes the connection; returns what it sent.
pub async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = within(s.read_to_end(&mut out)).await;
    out
}

/// A one-shot HTTP/1.1 GET over a raw socket: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, "", b"").await
}

/// A one-shot HTTP/1.1 request with `extra` header lines and a body:
/// (status, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = within(TcpStream::connect(addr)).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413, 401) before reading all of a large body.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = within(s.read_to_end(&mut raw)).await;
    parse_response(&String::from_utf8_lossy(&raw))
}

fn parse_response(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// [`UPGRADE_REQUEST`] for `target` (path and query), with `extra` header
/// lines.
pub fn upgrade_request(target: &str, extra: &str) -> String {
    UPGRADE_REQUEST
        .replacen("GET / ", &format!("GET {target} "), 1)
        .replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1)
}

/// Sends an upgrade request for `target` (path and query) with `extra`
/// header lines from the address `source`; returns the response head and
/// the socket.
pub async fn handshake_to(
    addr: SocketAddr,
    source: &str,
    target: &str,
    extra: &str,
) -> (String, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = within(socket.connect(addr)).await.unwrap();
    s.write_all(upgrade_request(target, extra).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if within(s.read(&mut byte)).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}

/// [`handshake_to`] for `/`.
pub async fn handshake(addr: SocketAddr, source: &str, extra: &str) -> (String, TcpStream) {
    handshake_to(addr, source, "/", extra).await
}

/// The series counting refused handshakes for `reason`.
pub fn rejected(reason: &str) -> String {
    format!("wsrelay_rejected_connections_total{{reason=\"{reason}\"}}")
}

/// A WebSocket client written by hand, for sending frames no well-behaved
/// library would send.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A valid upgrade request for `/`.
pub const UPGRADE_REQUEST: &str = "GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n\
     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl RawClient {
    /// Connects and completes the upgrade.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_to(addr, "/").await
    }

    /// Connects to `path` and completes the upgrade.
    pub async fn connect_to(addr: SocketAddr, path: &str) -> Self {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        Self::upgrade(stream, path).await
    }

    /// Connects with a small receive buffer, for a client meant to stall:
    /// it falls behind its room's log after little data.
    pub async fn connect_stalling(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(32 * 1024).unwrap();
        let stream = within(socket.connect(addr)).await.expect("connect");
        Self::upgrade(stream, "/").await
    }

    async fn upgrade(stream: TcpStream, path: &str) -> Self {
        Self::upgrade_with(stream, path, "").await.0
    }

    /// Connects to `path` with `extra` header lines; returns the client
    /// and the 101's head.
    pub async fn connect_with(addr: SocketAddr, path: &str, extra: &str) -> (Self, String) {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        Self::upgrade_with(stream, path, extra).await
    }

    async fn upgrade_with(mut stream: TcpStream, path: &str, extra: &str) -> (Self, String) {
        stream
            .write_all(upgrade_request(path, extra).as_bytes())
            .await
            .unwrap();
        let mut c = Self {
            stream,
            buf: Vec::new(),
        };
        let head = c.read_until_blank_line().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        (c, head)
    }

    async fn read_until_blank_line(&mut self) -> String {
        within(async {
            loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                    return String::from_utf8_lossy(&head).into_owned();
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed during handshake");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame from the server: (opcode, payload), or None at EOF.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let (b0, payload) = self.read_whole_frame().await?;
        Some((b0 & 0x0f, payload))
    }

    /// The next frame from the server: (its first byte: FIN, RSV bits and
    /// opcode; payload), or None at EOF.
    pub async fn read_whole_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        within(async {
            loop {
                if self.buf.len() >= 2 {
                    let (len, header) = match self.buf[1] & 0x7f {
                        126 if self.buf.len() >= 4 => {
                            (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                        }
                        127 if self.buf.len() >= 10 => (
                            u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                            10,
                        ),
                        126 | 127 => (usize::MAX, 0),
                        n => (n as usize, 2),
                    };
                    if len != usize::MAX && self.buf.len() >= header + len {
                        let b0 = self.buf[0];
                        let frame: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
                        return Some((b0, frame));
                    }
                }
                // Into the buffer itself: a 64 KiB array in this future
                // would be copied about the test thread's stack.
                self.buf.reserve(65536);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Reads to the end of the connection: true if it ended with FIN (a
    /// clean EOF), false if with a reset. Data before the end is skipped.
    pub async fn ends_with_fin(&mut self) -> bool {
        within(async {
            let mut chunk = [0u8; 65536];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return true,
                    Ok(_) => {}
                    Err(e) => {
                        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                        return false;
                    }
                }
            }
        })
        .await
    }

    /// Reads until a Close frame and returns its code.
    pub async fn read_close(&mut self) -> u16 {
        loop {
            match self.read_frame().await {
                Some((0x8, payload)) if payload.len() >= 2 => {
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                Some((0x8, _)) => return 1005,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// A client frame: FIN and opcode, masked unless `masked` is false.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => v.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            v.push(mask_bit | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(mask_bit | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

/// The `wsrelay` binary built for these tests, running as a child process.
pub struct RelayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Log lines after start-up, read on a background thread.
    pub logs: std::sync::mpsc::Receiver<String>,
}

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsrelay"))
}

/// `wsrelay client ARGS...` with its stdin and stdout piped to the test.
pub fn spawn_client(args: &[&str]) -> Child {
    binary()
        .arg("client")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsrelay client")
}

/// The next `n` lines `child` prints (its stdout is taken).
pub async fn stdout_lines(child: &mut Child, n: usize) -> Vec<String> {
    let stdout = child.stdout.take().expect("a piped stdout");
    within(tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(n)
            .collect::<Result<Vec<_>, _>>()
    }))
    .await
    .unwrap()
    .expect("read the client's stdout")
}

/// Starts `wsrelay --config-file FILE` and waits for its "listening" lines.
pub fn spawn_relay(config_file: &Path) -> RelayProcess {
    spawn_relay_with(binary(), config_file)
}

/// [`spawn_relay`] confined to one CPU with `taskset`, where the relay runs
/// on its current-thread runtime (one worker).
pub fn spawn_relay_on_one_cpu(config_file: &Path) -> RelayProcess {
    let mut taskset = Command::new("taskset");
    taskset.args(["-c", "0"]).arg(env!("CARGO_BIN_EXE_wsrelay"));
    spawn_relay_with(taskset, config_file)
}

fn spawn_relay_with(mut command: Command, config_file: &Path) -> RelayProcess {
    let mut child = command
        .arg("--config-file")
        .arg(config_file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsrelay");
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    let mut metrics_addr = None;
    while addr.is_none() {
        let line = logs.recv_timeout(PATIENCE).expect("wsrelay did not start");
        let found = line
            .split("addr=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next()?.parse().ok());
        if line.contains("relay listening") {
            addr = found;
        } else if line.contains("metrics listening") {
            metrics_addr = found;
        }
    }
    RelayProcess {
        child,
        addr: addr.unwrap(),
        metrics_addr,
        logs,
    }
}

impl RelayProcess {
    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        loop {
            match self.logs.recv_timeout(PATIENCE) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("wsrelay did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wsrelay-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `wsrelay bench` measures: the relay at `url`, no TLS, no process
/// to sample.
pub fn bench_target(url: &str) -> wsrelay::bench::Target {
    wsrelay::bench::Target {
        url: url.to_owned(),
        ca_file: None,
        sources: Vec::new(),
        connect_concurrency: 16,
        pid: None,
        progress: false,
        deflate: false,
    }
}
