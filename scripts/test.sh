#!/usr/bin/env bash
# The README's test command: every test, on a fresh machine.
#
# The cluster tests start their own redis-server and nats-server (Debian
# packages of those names) on free loopback ports, and tests/it/browser.rs
# drives /usr/bin/chromium through /usr/bin/chromedriver (packages chromium
# and chromium-driver); this installs whichever is missing, then runs
# `cargo test` with any arguments given. WSRELAY_REQUIRE_BROWSER=1 makes
# the browser tests fail, rather than skip, should the browser be missing.
# With node and npm present it installs the JavaScript client's test
# dependencies (the ws package, TypeScript and the ws types for its type
# check: clients/js/package-lock.json) too.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
# The paths tests/common/browser.rs looks at.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: the cluster and browser tests need ${missing[*]}; install them and retry" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    # Ubuntu has no chromium deb (a snap stub instead): there the browser
    # tests say SKIPPED, and only the brokers are installed.
    installable=()
    for package in "${missing[@]}"; do
        if apt-cache policy "$package" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            installable+=("$package")
        else
            echo "scripts/test.sh: no apt package $package here" >&2
        fi
    done
    if [ "${#installable[@]}" -gt 0 ]; then
        echo "scripts/test.sh: installing ${installable[*]} for the cluster and browser tests" >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${installable[@]}" >/dev/null
    fi
fi

# The JavaScript client's tests run in Node with the ws package
# (tests/it/js_client.rs); where node is installed, they must run.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    npm ci --prefix clients/js --no-audit --no-fund --loglevel=error
    export WSRELAY_REQUIRE_NODE=1
else
    echo "scripts/test.sh: no node here: the JavaScript client's Node tests will say SKIPPED" >&2
fi

# Where the browser is installed, a browser test that cannot run fails.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    export WSRELAY_REQUIRE_BROWSER=1
else
    echo "scripts/test.sh: no Debian chromium here: the browser tests will say SKIPPED" >&2
fi
exec cargo test "$@"
