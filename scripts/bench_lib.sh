# What scripts/bench-compression.sh, bench-history.sh and bench-cluster.sh
# share: strict mode, the project root as the working directory, a fresh
# $out directory for the runs' JSON, child processes stopped on exit, a
# release build in $WSRELAY; and a relay pinned to CPU 0 on 127.0.0.1:18443,
# started fresh for each run. Sourced, after the script sets RUNS.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="$(mktemp -d)"
trap 'pkill -P $$ 2>/dev/null || true' EXIT

echo "== building wsrelay (release)"
cargo build --release --quiet
WSRELAY="$root/target/release/wsrelay"

# start_relay CONFIG: starts the relay with CONFIG on CPU 0, sets PID, and
# returns once it accepts connections.
start_relay() {
    taskset -c 0 "$WSRELAY" --config-file "$1" & PID=$!
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/18443) 2>/dev/null && return 0
        sleep 0.05
    done
}

stop_relay() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}
