#!/usr/bin/env bash
# Rooms' history on against off, same run: S1 (1 000 subscribers, 64 B,
# window 64) against a relay keeping 1 000 messages per room and one
# keeping none; then a reconnect storm (`bench storm`: 5 000 clients drop,
# 100 messages go by, all resume at once) and the fan-out's reconnect mode
# (1 000 subscribers each dropping and resuming about once a second while
# 1 000 msg/s go by). Writes the "History" section of
# docs/BENCHMARKS.md (scripts/bench.sh keeps that section when it rewrites
# the rest).
#
#   scripts/bench-history.sh          # 5 runs per figure (about 6 minutes)
#   RUNS=9 scripts/bench-history.sh
#
# As in scripts/bench.sh: the relay on CPU 0, the bench on CPU 1, loopback.
RUNS="${RUNS:-5}"
. "$(dirname "$0")/bench_lib.sh"

for size in 0 1000; do
    printf 'server:\n  listen: "127.0.0.1:18443"\nmetrics:\n  enabled: false\nlog:\n  level: warn\nrooms:\n  enabled: true\n  prefix: /rooms/\n  history:\n    size: %s\n' \
        "$size" > "$out/$size.yaml"
done

# run NAME SIZE I BENCH-ARGS...: one bench run against a fresh relay keeping
# SIZE messages of history; JSON to $out/NAME.SIZE.I.json.
run() {
    local name=$1 size=$2 i=$3; shift 3
    start_relay "$out/$size.yaml"
    taskset -c 1 "$WSRELAY" bench "$@" --url ws://127.0.0.1:18443/rooms/bench --pid "$PID" --json \
        > "$out/$name.$size.$i.json" || echo "   (run reported loss or failed; kept for the report)"
    stop_relay
}

S1=(fanout -n 1000 -p 1 -w 64 -s 64 --warmup 2s -d 5s)
for i in $(seq 1 "$RUNS"); do
    echo "== round $i of $RUNS"
    for size in 0 1000; do
        run S1 "$size" "$i" "${S1[@]}"
    done
    run STORM 1000 "$i" storm -n 5000 -m 100 -s 64
    run RECONNECT 1000 "$i" fanout -n 1000 -p 1 -r 1000 -s 64 --warmup 2s -d 10s --reconnect 1s
done

echo "== writing the history section of docs/BENCHMARKS.md"
python3 - "$out" "$RUNS" <<'PY'
import glob, sys
sys.path.insert(0, "scripts")
from bench_report import dps, lost, med, ns, replace_section, rss
from bench_report import load as load_runs
out, runs = sys.argv[1], int(sys.argv[2])

def load(name, variant): return load_runs(out, name, variant)

off, on = load("S1", 0), load("S1", 1000)
lines = ["<!-- history:begin (scripts/bench-history.sh writes this section) -->",
         "## History: S1 with rooms.history on and off\n",
         f"`scripts/bench-history.sh`: medians of {runs} runs, relay pinned to CPU 0 and the bench to CPU 1, "
         "the two relays alternating run by run. S1: 1 000 subscribers, 1 publisher, 64 B text, window 64; "
         "\"on\" keeps the latest 1 000 messages of the room (`rooms.history.size: 1000`).\n",
         "| history | CPU ns / delivery | deliveries/s | lost, reordered, malformed |",
         "|---|---|---|---|"]
for name, rs in (("off", off), ("on, 1 000 messages", on)):
    lines.append(f"| {name} | {ns(rs):.0f} | {dps(rs):,.0f} | {lost(rs)} |")
def singles(rs): return ", ".join("%.0f" % r["server"]["cpu_ns_per_delivery"] for r in rs if r.get("server"))
lines += ["", f"**on / off: {ns(on)/ns(off):.2f} ×** (target within 10 %). Single runs: "
          f"off {singles(off)}; on {singles(on)} ns.\n"]
storms = load("STORM", 1000)
mib = lambda b: b / 1048576
lines += ["### Reconnect storm: 5 000 clients resume 100 missed messages each, all at once\n",
          "`wsrelay bench storm -n 5000 -m 100`: 5 000 position-aware clients of one room (history 1 000) drop together, "
          "100 messages of 64 B are published, and all 5 000 reconnect at once with `?since=` (256 handshakes in flight). "
          "Caught up: every client had its 100 messages; the relay's RSS sampled every 5 ms.\n",
          "| run | recovered | lost, out of order | all caught up | per client p50 / p99 | relay RSS before → peak |",
          "|---|---|---|---|---|---|"]
for i, r in enumerate(storms, 1):
    lines.append(f"| {i} | {r['recovered']:,} of {r['clients']:,} | {r['lost']}, {r['out_of_order']} | {r['caught_up_seconds']:.2f} s | "
                 f"{r['caught_up_us']['p50']/1000:.0f} / {r['caught_up_us']['p99']/1000:.0f} ms | "
                 f"{mib(r['rss_before_bytes']):.1f} → {mib(r['peak_rss_bytes']):.1f} MiB |")
lines += ["", "Copying the 100 messages per client would take 5 000 × 100 × 64 B = 31 MiB more; the replayed frames are the room's log's own, shared.\n"]
recon = load("RECONNECT", 1000)
lines += ["### Subscribers dropping and resuming mid-stream\n",
          "`wsrelay bench fanout -n 1000 -p 1 -r 1000 --reconnect 1s`: 1 000 position-aware subscribers, each dropping its connection "
          "(no close frame) after a random 0.5 to 1.5 s and resuming with `?since=&epoch=` from the last position it had, "
          "while one publisher sends 1 000 msg/s of 64 B for 12 s. Every subscriber checks that it got every message exactly once, in order. "
          "Latency is of live messages only (a replayed one waited while its client was away).\n",
          "| run | reconnects | not recovered | deliveries: received of expected | lost, repeated or reordered | latency p50 / p99 | relay CPU ns / delivery |",
          "|---|---|---|---|---|---|---|"]
for i, r in enumerate(recon, 1):
    lines.append(f"| {i} | {r['reconnect']['reconnects']:,} | {r['reconnect']['not_recovered']} | "
                 f"{r['received_deliveries']:,} of {r['expected_deliveries']:,} | {r['lost']}, {r['reorders']} | "
                 f"{r['latency_us']['p50']/1000:.1f} / {r['latency_us']['p99']/1000:.1f} ms | {r['server']['cpu_ns_per_delivery']:.0f} |")
lines += ["<!-- history:end -->"]
section = "\n".join(lines) + "\n"

replace_section("docs/BENCHMARKS.md", "history", section)
print(section)
PY
