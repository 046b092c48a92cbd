#!/usr/bin/env bash
# The README's test command: every test, on a fresh machine.
#
# The cluster tests start their own redis-server and nats-server (Debian
# packages of those names) on free loopback ports; this installs whichever
# is missing, then runs `cargo test` with any arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: the cluster tests need ${missing[*]}; install them and retry" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "scripts/test.sh: installing ${missing[*]} for the cluster tests" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

exec cargo test "$@"
