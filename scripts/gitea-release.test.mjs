// Runs scripts/gitea-release.mjs against a stand-in for Gitea's release API
// on 127.0.0.1 (the endpoints, status codes and multipart field Gitea's API
// documents), twice: the first run creates the release and attaches every
// file, the second (a re-run of the job) replaces them. Also checks that a
// missing token or directory is refused before any request.
//
//   node scripts/gitea-release.test.mjs
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const script = join(dirname(fileURLToPath(import.meta.url)), "gitea-release.mjs");
const base = "/api/v1/repos/team/wsrelay";
const requests = [];
const releases = new Map(); // tag -> { id, tag_name, prerelease, assets: [{ id, name, body }] }
let nextId = 1;

function parseMultipart(body, contentType) {
  const boundary = /boundary=(.+)$/.exec(contentType)[1];
  const text = body.toString("latin1");
  const part = text.split(`--${boundary}`).find((p) => p.includes('name="attachment"'));
  assert.ok(part, "the file goes in the multipart field `attachment`");
  const content = part.slice(part.indexOf("\r\n\r\n") + 4, part.lastIndexOf("\r\n"));
  return Buffer.from(content, "latin1");
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const url = new URL(req.url, "http://gitea");
    requests.push({ method: req.method, path: url.pathname, auth: req.headers.authorization });
    const send = (status, json) => {
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(json === undefined ? "" : JSON.stringify(json));
    };
    if (req.headers.authorization !== "token job-token") return send(401, { message: "token" });
    let m;
    if (req.method === "GET" && (m = url.pathname.match(`^${base}/releases/tags/(.+)$`))) {
      const release = releases.get(decodeURIComponent(m[1]));
      return release ? send(200, release) : send(404, { message: "not found" });
    }
    if (req.method === "POST" && url.pathname === `${base}/releases`) {
      const { tag_name, prerelease } = JSON.parse(body);
      const release = { id: nextId++, tag_name, prerelease, assets: [] };
      releases.set(tag_name, release);
      return send(201, release);
    }
    if ((m = url.pathname.match(`^${base}/releases/(\\d+)/assets(?:/(\\d+))?$`))) {
      const release = [...releases.values()].find((r) => r.id === Number(m[1]));
      if (!release) return send(404, { message: "no release" });
      if (req.method === "DELETE" && m[2]) {
        release.assets = release.assets.filter((a) => a.id !== Number(m[2]));
        return send(204);
      }
      if (req.method === "POST" && !m[2]) {
        const asset = {
          id: nextId++,
          name: url.searchParams.get("name"),
          body: parseMultipart(body, req.headers["content-type"]).toString(),
        };
        release.assets.push(asset);
        return send(201, { id: asset.id, name: asset.name });
      }
    }
    send(404, { message: `unexpected ${req.method} ${url.pathname}` });
  });
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${server.address().port}`;

function publish(dir, env) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...(dir ? [dir] : [])], {
      env: { PATH: process.env.PATH, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.on("close", (code) => resolve({ code, out }));
  });
}

const dist = await mkdtemp(join(tmpdir(), "gitea-release-"));
const files = {
  "wsrelay-v1.2.3-x86_64-unknown-linux-gnu.tar.gz": "linux archive",
  "wsrelay-v1.2.3-x86_64-unknown-linux-gnu.tar.gz.sha256": "abc  linux",
  SHA256SUMS: "abc  linux\n",
};
for (const [name, content] of Object.entries(files)) await writeFile(join(dist, name), content);
const env = {
  GITEA_SERVER_URL: `${url}/`,
  GITEA_REPOSITORY: "team/wsrelay",
  GITEA_TAG: "v1.2.3",
  GITEA_TOKEN: "job-token",
};

// Refused before any request: no token, no directory.
assert.equal((await publish(dist, { ...env, GITEA_TOKEN: "" })).code, 2);
assert.equal((await publish(undefined, env)).code, 2);
assert.equal(requests.length, 0);

// First run: one release, every file attached with its content.
let run = await publish(dist, env);
assert.equal(run.code, 0, run.out);
assert.equal(releases.size, 1);
const release = releases.get("v1.2.3");
assert.equal(release.prerelease, false);
const attached = () => Object.fromEntries(release.assets.map((a) => [a.name, a.body]));
assert.deepEqual(attached(), files);
assert.ok(requests.every((r) => r.auth === "token job-token"));

// A re-run replaces each file rather than attaching it twice.
await writeFile(join(dist, "SHA256SUMS"), "def  linux\n");
run = await publish(dist, env);
assert.equal(run.code, 0, run.out);
assert.equal(releases.size, 1);
assert.equal(release.assets.length, 3);
assert.equal(attached().SHA256SUMS, "def  linux\n");
assert.match(run.out, /replaced the earlier SHA256SUMS/);

// A tag with a pre-release suffix makes a pre-release; an API error fails the run.
run = await publish(dist, { ...env, GITEA_TAG: "v2.0.0-rc1" });
assert.equal(run.code, 0, run.out);
assert.equal(releases.get("v2.0.0-rc1").prerelease, true);
run = await publish(dist, { ...env, GITEA_TOKEN: "wrong" });
assert.notEqual(run.code, 0);
assert.match(run.out, /HTTP 401/);

server.close();
console.log("gitea-release: publishes, re-publishes, marks pre-releases and fails on API errors: ok");
