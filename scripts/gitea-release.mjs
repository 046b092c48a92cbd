// Publishes every file in a directory to the Gitea release of a tag,
// through Gitea's REST API with the Actions job token. Creates the release
// if the tag has none; a file of the same name already attached (a re-run)
// is replaced. Node 18+ (fetch, FormData), nothing to install.
//
//   node scripts/gitea-release.mjs DIR
//
// Environment: GITEA_SERVER_URL (https://gitea.example.com), GITEA_REPOSITORY
// (owner/name), GITEA_TAG (v1.2.3), GITEA_TOKEN (the job's secrets.GITEA_TOKEN,
// with `contents: write`). A tag with a `-` (v1.2.3-rc1) makes a pre-release.
import { readdir, readFile } from "node:fs/promises";
import { basename, join } from "node:path";

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`gitea-release: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const dir = process.argv[2];
if (!dir) {
  console.error("usage: node scripts/gitea-release.mjs DIR");
  process.exit(2);
}
const server = required("GITEA_SERVER_URL").replace(/\/+$/, "");
const repository = required("GITEA_REPOSITORY");
const tag = required("GITEA_TAG");
const token = required("GITEA_TOKEN");
const api = `${server}/api/v1/repos/${repository}`;
const auth = { Authorization: `token ${token}` };

async function call(method, path, { json, form, ok = [200, 201, 204] } = {}) {
  const headers = { ...auth, Accept: "application/json" };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(`${api}${path}`, { method, headers, body });
  if (!ok.includes(response.status)) {
    const text = await response.text();
    throw new Error(`${method} ${api}${path}: HTTP ${response.status}: ${text.slice(0, 500)}`);
  }
  return response.status === 204 ? null : { status: response.status, body: await response.json().catch(() => null) };
}

try {
  const files = (await readdir(dir, { withFileTypes: true }))
    .filter((entry) => entry.isFile())
    .map((entry) => join(dir, entry.name))
    .sort();
  if (files.length === 0) {
    throw new Error(`nothing to publish in ${dir}`);
  }

  const found = await call("GET", `/releases/tags/${encodeURIComponent(tag)}`, { ok: [200, 404] });
  let release;
  if (found.status === 200) {
    release = found.body;
    console.log(`gitea-release: release ${tag} exists (id ${release.id})`);
  } else {
    release = (
      await call("POST", "/releases", {
        json: { tag_name: tag, name: tag, draft: false, prerelease: tag.includes("-") },
      })
    ).body;
    console.log(`gitea-release: created release ${tag} (id ${release.id})`);
  }

  const attached = new Map((release.assets ?? []).map((asset) => [asset.name, asset.id]));
  for (const file of files) {
    const name = basename(file);
    if (attached.has(name)) {
      await call("DELETE", `/releases/${release.id}/assets/${attached.get(name)}`);
      console.log(`gitea-release: replaced the earlier ${name}`);
    }
    const form = new FormData();
    form.append("attachment", new Blob([await readFile(file)]), name);
    await call("POST", `/releases/${release.id}/assets?name=${encodeURIComponent(name)}`, { form });
    console.log(`gitea-release: attached ${name}`);
  }
} catch (error) {
  const cause = error.cause ? ` (${error.cause.code ?? error.cause.message})` : "";
  console.error(`gitea-release: ${error.message}${cause}`);
  process.exit(1);
}
