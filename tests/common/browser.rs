//! A real browser for `tests/it/browser.rs`: headless Debian Chromium driven
//! through chromedriver (WebDriver over plain http on 127.0.0.1), one
//! browser per test, killed on drop.
//!
//! Chromium and chromedriver are looked for at [`CHROMIUM`] and
//! [`CHROMEDRIVER`] (the Debian packages `chromium` and `chromium-driver`,
//! which `scripts/test.sh` installs). When either is missing,
//! [`Browser::launch`] prints a `SKIPPED:` line and returns `None`, unless
//! `WSRELAY_REQUIRE_BROWSER=1` (set by `scripts/test.sh`), which makes it a
//! failure instead.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::{PATIENCE, TempDir};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Set to `1`, a missing browser fails the test instead of skipping it.
pub const REQUIRE_BROWSER: &str = "WSRELAY_REQUIRE_BROWSER";

/// Starting chromedriver and Chromium on a loaded 2-core machine.
const LAUNCH_PATIENCE: Duration = Duration::from_secs(60);

/// Chromedriver's own bound on an async script; every page script resolves
/// on its own well before this (see [`Browser::run`]), so it only matters
/// if the page hangs.
const WEBDRIVER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Helpers every page script gets (see [`Browser::run`]).
const PRELUDE: &str = r#"
// A WebSocket that records what happens to it from its creation on, so no
// event is missed between one await and the next (or between scripts).
// Binary messages arrive as ArrayBuffers. `onData`, if given, gets every
// message instead of the inbox that `next()` reads.
function sock(url, protocols, onData) {
  const ws = protocols === undefined ? new WebSocket(url) : new WebSocket(url, protocols);
  ws.binaryType = "arraybuffer";
  const s = { ws, inbox: [], waiting: [], close: null };
  s.opened = new Promise((resolve, reject) => {
    ws.addEventListener("open", () => resolve(s));
    ws.addEventListener("close", (e) =>
      reject(new Error(`closed before open: code ${e.code} ${e.reason}`)));
  });
  s.opened.catch(() => {}); // a refused socket is inspected through `closed`
  s.closed = new Promise((resolve) => ws.addEventListener("close", (e) => {
    s.close = { code: e.code, reason: e.reason, wasClean: e.wasClean };
    for (const w of s.waiting.splice(0)) {
      w.reject(new Error(`closed while awaiting a message: ${JSON.stringify(s.close)}`));
    }
    resolve(s.close);
  }));
  ws.addEventListener("message", (e) => {
    if (onData) return onData(e.data);
    const w = s.waiting.shift();
    if (w) w.resolve(e.data); else s.inbox.push(e.data);
  });
  s.next = () => s.inbox.length > 0 ? Promise.resolve(s.inbox.shift())
    : s.close ? Promise.reject(new Error(`closed: ${JSON.stringify(s.close)}`))
    : new Promise((resolve, reject) => s.waiting.push({ resolve, reject }));
  return s;
}
// A received payload as JSON: {text} for a string, {binary: hex} for an
// ArrayBuffer (its length only when large), {other} for anything else.
function describe(data) {
  if (typeof data === "string") return { text: data };
  if (data instanceof ArrayBuffer) {
    if (data.byteLength > 1024) return { binary_length: data.byteLength };
    return { binary: Array.from(new Uint8Array(data), (b) => b.toString(16).padStart(2, "0")).join("") };
  }
  return { other: Object.prototype.toString.call(data) };
}
"#;

/// Chromedriver and the headless Chromium it started.
pub struct Browser {
    client: Option<fantoccini::Client>,
    driver: Child,
    /// Chromium's profile (`profile/`) and chromedriver's log.
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium on
    /// `about:blank`. Returns `None`, after printing `SKIPPED: {test}: ...`,
    /// when they are not installed and [`REQUIRE_BROWSER`] is not `1`.
    pub async fn launch(test: &str) -> Option<Self> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).is_file())
            .collect();
        if !missing.is_empty() {
            let why = "chromium/chromedriver not installed (scripts/test.sh installs them)";
            assert!(
                std::env::var(REQUIRE_BROWSER).as_deref() != Ok("1"),
                "{test}: {why}: no {} and {REQUIRE_BROWSER}=1",
                missing.join(", ")
            );
            // Straight to stderr, in one write: libtest captures `eprintln!`
            // of a test that passes, and a skip should be seen.
            let line = format!("SKIPPED: {test}: {why}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            return None;
        }

        let dir = TempDir::new("browser");
        let profile = dir.0.join("profile");
        std::fs::create_dir(&profile).expect("create the Chromium profile directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.0.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, with the Chromium processes it starts,
            // so that drop can kill them all by the group's id. (Chromium's
            // crash handler daemonizes out of it, and exits by itself once
            // Chromium is gone; --disable-crashpad-for-testing would keep it
            // in, but with it this Chromium's WebSockets fail with 1006.)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut browser = Self {
            client: None,
            driver,
            dir,
        };
        let driver_url = format!("http://127.0.0.1:{port}");
        browser.wait_ready(&driver_url).await;

        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Chromium 142+ blocks a public or opaque-origin page (here
            // about:blank) from loopback addresses unless the user grants
            // "local network access": ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS,
            // seen by the page as 1006. The relay under test is on 127.0.0.1.
            "--disable-features=LocalNetworkAccessChecks",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        capabilities.insert(
            "timeouts".into(),
            json!({ "script": WEBDRIVER_SCRIPT_TIMEOUT.as_millis() as u64 }),
        );
        let mut builder = fantoccini::ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let client = match tokio::time::timeout(LAUNCH_PATIENCE, builder.connect(&driver_url)).await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("chromedriver did not start Chromium: {e}{}", browser.log()),
            Err(_) => panic!(
                "Chromium did not start within {LAUNCH_PATIENCE:?}{}",
                browser.log()
            ),
        };
        super::within(client.goto("about:blank"))
            .await
            .unwrap_or_else(|e| panic!("open about:blank: {e}"));
        browser.client = Some(client);
        Some(browser)
    }

    /// Polls chromedriver's `/status` until it reports ready.
    async fn wait_ready(&mut self, driver_url: &str) {
        // A real HTTP client: chromedriver answers `Connection: close` but
        // keeps the socket open, so reading to EOF would hang.
        let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let uri: http::Uri = format!("{driver_url}/status").parse().expect("status URL");
        let deadline = tokio::time::Instant::now() + LAUNCH_PATIENCE;
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited ({status}){}", self.log());
            }
            let attempt = async {
                let response = http.get(uri.clone()).await.map_err(|e| e.to_string())?;
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(String::from_utf8_lossy(&body.to_bytes()).into_owned())
            };
            let last = match tokio::time::timeout(PATIENCE, attempt).await {
                Ok(Ok(body)) => {
                    let ready = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["value"]["ready"].as_bool());
                    if ready == Some(true) {
                        return;
                    }
                    body
                }
                Ok(Err(e)) => e,
                Err(_) => "GET /status timed out".into(),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver not ready within {LAUNCH_PATIENCE:?}: {last}{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The tail of chromedriver's log, for failure messages.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.0.join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("\nchromedriver log (last lines):\n{tail}")
    }

    /// Runs `body` on the page as the body of an async JavaScript function
    /// and returns what it returns (as JSON). The body sees `args` (the
    /// given arguments), `progress` (an object it may fill in: it is
    /// reported, or `progress.report()` if that is a function, should the
    /// script time out) and the helpers `sock(url, protocols, onData)` and
    /// `describe(data)` from [`PRELUDE`]. Page state, such as properties
    /// set on `window`, survives from one call to the next.
    ///
    /// The script fails the test if it throws or has not finished within
    /// `limit`; the limit only bounds how long a broken build takes to fail.
    pub async fn run(&self, limit: Duration, body: &str, args: Vec<Value>) -> Value {
        let limit_ms = limit.as_millis();
        let script = format!(
            r#"
const done = arguments[arguments.length - 1];
const args = Array.prototype.slice.call(arguments, 0, arguments.length - 1);
const progress = {{}};
const report = () => typeof progress.report === "function" ? progress.report() : progress;
const limit = setTimeout(
  () => done({{ error: "page script timed out after {limit_ms} ms", progress: report() }}),
  {limit_ms});
{PRELUDE}
(async () => {{
{body}
}})().then(
  (value) => {{ clearTimeout(limit); done({{ ok: value === undefined ? null : value }}); }},
  (e) => {{ clearTimeout(limit); done({{ error: String(e && e.stack || e), progress: report() }}); }});
"#
        );
        let client = self.client.as_ref().expect("a browser session");
        let answer = tokio::time::timeout(limit + PATIENCE, client.execute_async(&script, args))
            .await
            .unwrap_or_else(|_| panic!("the browser did not answer within {:?}", limit + PATIENCE))
            .unwrap_or_else(|e| panic!("WebDriver execute_async failed: {e}"));
        match answer {
            Value::Object(mut o) if o.contains_key("ok") => o.remove("ok").unwrap_or(Value::Null),
            other => panic!("page script failed: {other:#}"),
        }
    }

    /// Ends the session (chromedriver closes Chromium) and then drops the
    /// rest; a test that panics skips this and drop kills everything.
    pub async fn quit(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(PATIENCE, client.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the id of the process group made for
        // chromedriver above; it holds only chromedriver and its Chromium.
        unsafe {
            libc::kill(-(self.driver.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
