#!/usr/bin/env bash
# Builds the release archive for one target, exactly as both release
# workflows (.github/workflows/release.yml, .gitea/workflows/release.yml) do:
#
#   scripts/package.sh TARGET VERSION [OUT_DIR]
#
# writes OUT_DIR/wsrelay-VERSION-TARGET.tar.gz (default OUT_DIR: dist), one
# top-level directory holding the binary, README.md and wsrelay.example.yaml,
# and beside it wsrelay-VERSION-TARGET.tar.gz.sha256 in `sha256sum` format.
# The build is `cargo build --release --locked` (fat LTO, stripped) with the
# default features. CARGO, when set, names the cargo to run.
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: scripts/package.sh TARGET VERSION [OUT_DIR]" >&2
    exit 2
fi
target="$1"
version="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${3:-dist}" && cd "${3:-dist}" && pwd)"

cd "$root"
"${CARGO:-cargo}" build --release --locked --target "$target"

name="wsrelay-$version-$target"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$name"
cp "target/$target/release/wsrelay" README.md wsrelay.example.yaml "$stage/$name/"
tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
cd "$out"
if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$name.tar.gz" > "$name.tar.gz.sha256"
else
    shasum -a 256 "$name.tar.gz" > "$name.tar.gz.sha256"
fi
echo "$out/$name.tar.gz"
