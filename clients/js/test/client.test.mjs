// wsrelay.js in Node against the real relay (the binary at $WSRELAY_BIN,
// default ../../target/debug/wsrelay), with the ws package as its
// WebSocket. Run by tests/it/js_client.rs, or: npm test.

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { PROTOCOL, RelayClient } from "../wsrelay.js";

const BIN = process.env.WSRELAY_BIN ?? new URL("../../../target/debug/wsrelay", import.meta.url).pathname;
const relays = [];
after(() => relays.forEach((r) => r.kill()));

/** Where each started relay's metrics and API listen, by its ws:// base URL. */
const sides = new Map();

/** Starts a relay with `extra` YAML; resolves to its ws:// base URL. */
function relay(extra = "") {
  const dir = mkdtempSync(join(tmpdir(), "wsrelay-js-"));
  const file = join(dir, "wsrelay.yaml");
  writeFileSync(
    file,
    `server:\n  listen: "127.0.0.1:0"\nmetrics:\n  listen: "127.0.0.1:0"\n` +
      `api:\n  enabled: true\n  listen: "127.0.0.1:0"\n  keys: ["k"]\n` +
      `rooms:\n  enabled: true\n  history:\n    size: 10000\n${extra}`,
  );
  const child = spawn(BIN, ["--config-file", file], { stdio: ["ignore", "pipe", "pipe"] });
  relays.push(child);
  return new Promise((resolve, reject) => {
    let log = "";
    const look = (chunk) => {
      log += chunk;
      const m = log.match(/relay listening url=(ws:\/\/[0-9.:]+)\//);
      if (m) {
        sides.set(m[1], {
          metrics: log.match(/metrics listening url=(\S+)/)[1],
          api: log.match(/api listening url=(http:\/\/[0-9.:]+)\//)[1],
        });
        resolve(m[1]);
      }
    };
    child.stdout.on("data", look);
    child.stderr.on("data", look);
    child.on("exit", (code) => reject(new Error(`relay exited with ${code}: ${log}`)));
  });
}

/** One of the relay's metrics. */
async function metric(base, name) {
  const text = await (await fetch(sides.get(base).metrics)).text();
  return Number(text.match(new RegExp(`^${name} (\\d+)`, "m"))[1]);
}

/** Calls the relay's HTTP API. */
async function relayApi(base) {
  return (method, path, body) =>
    fetch(sides.get(base).api + path, { method, body, headers: { authorization: "Bearer k" } });
}

/** A plain socket that publishes into `url`. */
async function publisher(url) {
  const ws = new WebSocket(`${url}?echo=false&role=publisher`);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return ws;
}

/** Resolves when `check()` holds, polling on the event loop; bounded. */
async function until(check, what, limit = 20_000) {
  const started = Date.now();
  while (!check()) {
    if (Date.now() - started > limit) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A client that records what it is handed. */
function recording(url, options = {}) {
  const seen = { messages: [], joins: [], resets: [], errors: [] };
  const client = new RelayClient(url, {
    WebSocket,
    backoff: { initial: 20, max: 200 },
    onMessage: (data, at) => seen.messages.push({ data, ...at }),
    onJoin: (j) => seen.joins.push(j),
    onReset: (r) => seen.resets.push(r),
    onError: (e) => seen.errors.push(e),
    ...options,
  });
  return { client, seen };
}

test("a stream with forced disconnects arrives whole: every message once, in order", async () => {
  const base = await relay();
  const url = `${base}/rooms/stream`;
  const { client, seen } = recording(url);
  await until(() => seen.joins.length === 1, "the first join");
  const pub = await publisher(url);
  const total = 3000;
  // Publish in the background while the client is made to drop twice.
  const sending = (async () => {
    for (let i = 0; i < total; i++) {
      pub.send(`m${i}`);
      if (i % 100 === 99) await new Promise((r) => setImmediate(r));
    }
  })();
  await until(() => seen.messages.length >= 500, "500 messages");
  client.reconnect();
  await until(() => seen.messages.length >= 1500, "1500 messages");
  client.reconnect();
  await sending;
  await until(() => seen.messages.length >= total, `${total} messages`);
  await new Promise((r) => setTimeout(r, 100)); // anything extra would show up here
  assert.deepEqual(
    seen.messages.map((m) => m.data),
    Array.from({ length: total }, (_, i) => `m${i}`),
  );
  assert.deepEqual(
    seen.messages.map((m) => m.position),
    Array.from({ length: total }, (_, i) => i + 1),
  );
  assert.equal(seen.joins.length, 3);
  assert.deepEqual(seen.joins.map((j) => j.recovered), [null, true, true]);
  assert.deepEqual(seen.resets, []);
  assert.equal(client.position, total);
  client.close();
  pub.close();
});

test("when the history rolled past it, the client says so and carries on live", async () => {
  const base = await relay();
  const url = `${base}/rooms/short`;
  const first = recording(url);
  await until(() => first.seen.joins.length === 1, "the first join");
  const pub = await publisher(url);
  pub.send("before");
  await until(() => first.seen.messages.length === 1, "the first message");
  const { epoch, position } = first.client;
  first.client.close();
  // Away for longer than the history keeps (10 000 messages): 10 001 go by,
  // then the application resumes from where it stored its place.
  for (let i = 0; i < 10_001; i++) pub.send(`while away ${i}`);
  pub.send("last");
  while ((await metric(base, "wsrelay_messages_total")) < 10_003) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const { client, seen } = recording(url, { epoch, position });
  await until(() => seen.resets.length === 1, "the reset", 30_000);
  assert.equal(seen.joins.at(-1).recovered, false);
  assert.equal(seen.resets[0].epoch, epoch, "the same room: only what it missed is gone");
  pub.send("after");
  await until(() => seen.messages.at(-1)?.data === "after", "the next live message");
  // Nothing of what was missed was handed over as if it were complete.
  assert.equal(seen.messages.length, 1);
  assert.ok(seen.messages[0].position > 10_002, `position ${seen.messages[0].position}`);
  client.close();
  pub.close();
});

test("a token goes as a subprotocol beside wsrelay.v1; a server that speaks otherwise is an error", async () => {
  const base = await relay('auth:\n  tokens: ["s3cret"]\n');
  const { client, seen } = recording(`${base}/rooms/private`, { token: "s3cret", rewind: 5 });
  await until(() => seen.joins.length === 1, "the join");
  assert.equal(seen.errors.length, 0);
  assert.equal(client.state, "open");
  client.close();

  // A server that selects wsrelay.v1 but does not send the join notice.
  const { WebSocketServer } = await import("ws");
  const impostor = new WebSocketServer({ port: 0, handleProtocols: () => PROTOCOL });
  impostor.on("connection", (ws) => ws.send("hello"));
  await new Promise((r) => impostor.once("listening", r));
  const other = recording(`ws://127.0.0.1:${impostor.address().port}/`);
  await until(() => other.seen.errors.length === 1, "the error");
  assert.match(other.seen.errors[0].message, /unexpected frame/);
  assert.equal(other.client.state, "closed");
  impostor.close();
});

test("reconnect() while waiting to retry opens one socket, close() closes it, and an operator's close ends the client", async () => {
  const base = await relay();
  const url = `${base}/rooms/one`;
  const { client, seen } = recording(url, { backoff: { initial: 5000, max: 5000 } });
  let closedBy = null;
  client.options.onClose = (c) => (closedBy = c);
  await until(() => seen.joins.length === 1, "the first join");
  // Three in a row: each replaces the last, none waits for the backoff.
  client.reconnect();
  client.reconnect();
  client.reconnect();
  // Only the last one's join counts: the others' sockets were let go.
  await until(() => seen.joins.length === 2, "the join after reconnect()", 3000);
  const pub = await publisher(url);
  pub.send("once");
  await until(() => seen.messages.length === 1, "the message");
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(seen.messages.length, 1, "one socket: the message once");
  // The relay's own count comes down to this client's one socket and the
  // publisher's (the sockets let go close as the relay reads their ends).
  let active;
  for (let i = 0; i < 1000 && (active = await metric(base, "wsrelay_connections_active")) !== 2; i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(active, 2);
  client.close();
  pub.close();

  // Closed by the relay with 1000: no reconnect.
  const second = recording(`${base}/rooms/kicked`);
  second.client.options.onClose = (c) => (closedBy = c);
  await until(() => second.seen.joins.length === 1, "the join");
  const api = await relayApi(base);
  await api("DELETE", "/api/v1/rooms/kicked/connections", "bye");
  await until(() => closedBy !== null, "the close");
  assert.deepEqual(closedBy, { code: 1000, reason: "bye" });
  assert.equal(second.client.state, "closed");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(second.seen.joins.length, 1, "it did not come back");
});

test("a client closed before its first attempt never connects", async () => {
  const base = await relay();
  const { client, seen } = recording(`${base}/rooms/never`);
  client.close();
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(seen.joins.length, 0);
  assert.equal(await metric(base, "wsrelay_connections_total"), 0);
});

test("maxAttempts: a client that can never join gives up and says so", async () => {
  const base = await relay();
  // 404: no such path with rooms on.
  const { client, seen } = recording(`${base}/nowhere`, { maxAttempts: 3 });
  await until(() => seen.errors.length === 1, "giving up");
  assert.match(seen.errors[0].message, /gave up after 3 attempts/);
  assert.equal(client.state, "closed");
});

test("a rewind the relay would refuse throws at once instead of retrying for ever", () => {
  for (const rewind of ["abc", -5, "1.5s", "", "5xyz", "5 parsecs"]) {
    assert.throws(() => new RelayClient("ws://127.0.0.1:1/rooms/r", { WebSocket, rewind }), TypeError, String(rewind));
  }
  for (const rewind of [5, "5", "30s", "1h 30m", "500ms", "2 days"]) {
    new RelayClient("ws://127.0.0.1:1/rooms/r", { WebSocket, rewind }).close();
  }
});

test("positions the relay did not send (its own, with echo off) show as skipped", async () => {
  const base = await relay();
  const url = `${base}/rooms/skips`;
  const { client, seen } = recording(`${url}?echo=false`);
  await until(() => seen.joins.length === 1, "the join");
  const api = await relayApi(base);
  client.send("mine");
  // Its own message is in the room's history before the other's is sent.
  let kept = 0;
  const started = Date.now();
  while (kept === 0) {
    assert.ok(Date.now() - started < 20_000, "its own message was never kept");
    const page = await (await api("GET", "/api/v1/rooms/skips/history")).json();
    kept = page.messages.length;
    if (kept === 0) await new Promise((r) => setTimeout(r, 5));
  }
  const other = await publisher(url);
  other.send("theirs");
  await until(() => seen.messages.length === 1, "the other's message");
  assert.deepEqual(
    seen.messages.map((m) => [m.data, m.position, m.skipped]),
    [["theirs", 2, 1]],
  );
  other.close();
  client.close();
});

test("the types check under --strict, with ws in Node and in a browser", async () => {
  const { execFileSync } = await import("node:child_process");
  const tsc = new URL("../node_modules/.bin/tsc", import.meta.url).pathname;
  execFileSync(tsc, [
    "--strict", "--noEmit", "--module", "nodenext", "--moduleResolution", "nodenext",
    "--target", "es2022", "--lib", "es2022,dom",
    new URL("types.ts", import.meta.url).pathname,
  ], { stdio: "pipe" });
});
