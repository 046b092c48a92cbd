#!/usr/bin/env bash
# Soak test: churn under fan-out load against a release relay on loopback,
# then checks that nothing leaked. Bounded (SOAK_SECONDS) and not in CI.
#
#   scripts/soak.sh                       # 600 s of churn at 300 connections/s
#   SOAK_SECONDS=60 SOAK_RATE=100 scripts/soak.sh
#
# Load (pinned to CPU 1): `wsrelay bench fanout` with 100 subscribers and
# 2 publishers at 1000 msg/s of 512 B, and `wsrelay bench churn`, whose
# connections end in turn with a clean close, a dropped socket, a TCP reset,
# half a handshake and a protocol violation. The relay runs on CPU 0.
#
# Prints a Markdown report (the figures in docs/RELIABILITY.md come from it)
# and exits 1 if a check fails: after the load the active-connections gauge
# must be 0 and the open file count back to its idle baseline, and RSS at
# the end of the load must be within 10 % of RSS one minute in (the same
# load, so growth in between would be a leak).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
SOAK_SECONDS="${SOAK_SECONDS:-600}"
SOAK_RATE="${SOAK_RATE:-300}"
PORT=18543
METRICS=19543
work="$(mktemp -d)"
trap 'pkill -P $$ 2>/dev/null || true' EXIT

cargo build --release --quiet
RELAY="$root/target/release/wsrelay"
printf 'server:\n  listen: "127.0.0.1:%s"\nmetrics:\n  listen: "127.0.0.1:%s"\nclient:\n  ping_interval: "5s"\n  idle_timeout: "10s"\nlog:\n  level: error\n' \
    "$PORT" "$METRICS" > "$work/soak.yaml"

taskset -c 0 "$RELAY" --config-file "$work/soak.yaml" & PID=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
fds() { find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
metric() { curl -s "127.0.0.1:$METRICS/metrics" | awk -v s="$1" '$1 == s {print $2}'; }

sleep 1
FDS0=$(fds)
RSS0=$(rss_kib)
echo "idle: rss ${RSS0} KiB, ${FDS0} open files" >&2

URL="ws://127.0.0.1:$PORT/"
taskset -c 1 "$RELAY" bench fanout --url "$URL" -n 100 -p 2 -r 1000 -s 512 \
    --warmup 0s -d "${SOAK_SECONDS}s" --json > "$work/fanout.json" & FANOUT=$!
taskset -c 1 "$RELAY" bench churn --url "$URL" -r "$SOAK_RATE" -d "${SOAK_SECONDS}s" \
    --json > "$work/churn.json" & CHURN=$!

echo "| t (s) | RSS (KiB) | open files | active clients |" > "$work/samples.md"
echo "|---|---|---|---|" >> "$work/samples.md"
RSS_1MIN=""
start=$(date +%s)
while kill -0 "$CHURN" 2>/dev/null; do
    sleep 30
    t=$(( $(date +%s) - start ))
    kill -0 "$CHURN" 2>/dev/null || break
    rss=$(rss_kib)
    [ -z "$RSS_1MIN" ] && [ "$t" -ge 60 ] && RSS_1MIN=$rss
    RSS_LAST=$rss
    echo "| $t | $rss | $(fds) | $(metric wsrelay_connections_active) |" | tee -a "$work/samples.md" >&2
done
wait "$CHURN" && CHURN_OK=yes || CHURN_OK=no
wait "$FANOUT" && FANOUT_OK=yes || FANOUT_OK=no

# Everyone is gone once the relay has seen every close.
for _ in $(seq 1 200); do
    [ "$(metric wsrelay_connections_active)" = 0 ] && break
    sleep 0.1
done
sleep 1
ACTIVE=$(metric wsrelay_connections_active)
FDS_END=$(fds)
RSS_END=$(rss_kib)
RSS_1MIN="${RSS_1MIN:-$RSS0}"
RSS_LAST="${RSS_LAST:-$RSS_END}"

python3 - "$work" "$SOAK_SECONDS" "$SOAK_RATE" "$RSS0" "$RSS_1MIN" "$RSS_LAST" "$RSS_END" "$FDS0" "$FDS_END" "$ACTIVE" \
    "$CHURN_OK" "$FANOUT_OK" "$(curl -s "127.0.0.1:$METRICS/metrics")" <<'EOF'
import json, sys
work, secs, rate, rss0, rss1, rss_last, rss_end, fds0, fds_end, active, churn_ok, fanout_ok, metrics = sys.argv[1:]
rss0, rss1, rss_last, rss_end = map(int, (rss0, rss1, rss_last, rss_end))
churn = json.load(open(f"{work}/churn.json"))
fan = json.load(open(f"{work}/fanout.json"))
growth = (rss_last - rss1) / rss1 * 100
checks = [
    ("active clients after the load", active, active == "0"),
    ("open files after the load vs idle", f"{fds_end} vs {fds0}", fds_end == fds0),
    ("RSS end of load vs 1 min in", f"{rss_last} vs {rss1} KiB ({growth:+.1f} %)", abs(growth) <= 10),
    ("churn connections that went wrong", churn["failed"], churn["failed"] == 0 and churn_ok == "yes"),
    ("fan-out messages lost", fan["lost"], fan["lost"] == 0 and fanout_ok == "yes"),
]
print(f"## Soak: {secs} s, churn at {rate} connections/s under fan-out load\n")
print(f"- churn: {churn['started']} connections in {churn['seconds']:.0f} s; ended: "
      + ", ".join(f"{n} {e}" for e, n in churn["ended"].items()))
print(f"- fan-out: {fan['subscribers']} subscribers, {fan['publishers']} publishers, "
      f"{fan['received_deliveries']} deliveries, lost {fan['lost']}, p99 {fan['latency_us']['p99']:.0f} µs")
print(f"- relay RSS: idle {rss0} KiB, 1 min in {rss1} KiB, end of load {rss_last} KiB, "
      f"after every client left {rss_end} KiB")
reasons = [l for l in metrics.splitlines() if l.startswith(("wsrelay_disconnections_by_reason_total", "wsrelay_rejected_connections_total")) and not l.endswith(" 0")]
print("- relay counters: " + "; ".join(r.replace("wsrelay_", "") for r in reasons))
print()
print(open(f"{work}/samples.md").read())
print("| check | value | ok |\n|---|---|---|")
for name, value, ok in checks:
    print(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
sys.exit(0 if all(ok for _, _, ok in checks) else 1)
EOF
