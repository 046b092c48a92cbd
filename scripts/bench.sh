#!/usr/bin/env bash
# Runs the fan-out scenarios S1-S4 and the scale series against wsrelay and
# the shared ceiling relay, alternating them run by run, and writes
# docs/BENCHMARKS.md with medians and ratios.
#
#   scripts/bench.sh            # 3 runs per figure (about 12 minutes)
#   RUNS=5 scripts/bench.sh     # more runs, steadier medians
#
# The relay under test runs on CPU 0 and the load generator on CPU 1
# (taskset), over loopback. Needs ../shared/ceiling beside the project.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
RUNS="${RUNS:-3}"
CEILING_DIR="${CEILING_DIR:-$root/../shared/ceiling}"
CEILING_TARGET="${CEILING_TARGET:-/tmp/ceiling-target}"
out="$(mktemp -d)"
trap 'pkill -P $$ 2>/dev/null || true' EXIT

echo "== building wsrelay and the ceiling (release)"
cargo build --release --quiet
cargo build --release --quiet --manifest-path "$CEILING_DIR/Cargo.toml" --target-dir "$CEILING_TARGET"
WSRELAY="$root/target/release/wsrelay"
CEILING="$CEILING_TARGET/release/ceiling"

# A throwaway certificate for S4.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
printf 'server:\n  listen: "127.0.0.1:18443"\n  tls: { cert_file: %s, key_file: %s }\nmetrics:\n  enabled: false\nlog:\n  level: warn\n' \
    "$out/cert.pem" "$out/key.pem" > "$out/wss.yaml"
# For S3 after traffic: pings every 2 s, so the two pings `bench idle`
# waits for after the traffic come soon (an idle client gives its buffers
# back at a ping, the relay returns freed memory at the next).
printf 'server:\n  listen: "127.0.0.1:18443"\nmetrics:\n  enabled: false\nclient:\n  ping_interval: 2s\nlog:\n  level: warn\n' \
    > "$out/pings.yaml"

# start SERVER: starts it pinned to CPU 0; sets PID and URL.
start() {
    case "$1" in
        ceiling) taskset -c 0 "$CEILING" --listen 127.0.0.1:19100 2>/dev/null & PID=$!; URL=ws://127.0.0.1:19100/ ;;
        wsrelay) taskset -c 0 "$WSRELAY" --listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19090 --log-level warn & PID=$!; URL=ws://127.0.0.1:18443/ ;;
        # Not pinned: one worker thread per CPU (two here).
        wsrelay-2w) "$WSRELAY" --listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19090 --log-level warn & PID=$!; URL=ws://127.0.0.1:18443/ ;;
        wsrelay-tls) taskset -c 0 "$WSRELAY" --config-file "$out/wss.yaml" & PID=$!; URL=wss://127.0.0.1:18443/ ;;
        wsrelay-pings) taskset -c 0 "$WSRELAY" --config-file "$out/pings.yaml" & PID=$!; URL=ws://127.0.0.1:18443/ ;;
    esac
    local port="${URL##*:}"
    port="${port%/}"
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }

# run NAME SERVER MODE ARGS...: one bench run, JSON to $out/NAME.SERVER.N.json
run() {
    local name=$1 server=$2 mode=$3 i=$4; shift 4
    start "$server"
    local extra=()
    [ "$server" = wsrelay-tls ] && extra=(--ca-file "$out/cert.pem")
    taskset -c 1 "$WSRELAY" bench "$mode" --url "$URL" --pid "$PID" --json "${extra[@]}" "$@" \
        > "$out/$name.$server.$i.json" || echo "   (run reported loss or failed; kept for the report)"
    stop
}

S1=(-n 1000 -p 1 -w 64 -s 64 --warmup 2s -d 5s)
S2=(-n 100 -p 10 -r 2000 -s 1024 --warmup 2s -d 5s)
# Low rate: every message wakes every subscriber, one frame per write.
LOW=(-n 1000 -p 1 -r 100 -s 64 --warmup 2s -d 5s)
# Four publishers at a fixed load, for one worker against two.
WORKERS=(-n 1000 -p 4 -r 2000 -s 64 --warmup 2s -d 5s)
for i in $(seq 1 "$RUNS"); do
    echo "== round $i of $RUNS"
    for server in ceiling wsrelay; do
        run S1 "$server" fanout "$i" "${S1[@]}"
        run S2 "$server" fanout "$i" "${S2[@]}"
        run S3 "$server" idle "$i" -n 10000 -d 3s
        run LOW "$server" fanout "$i" "${LOW[@]}"
    done
    run W1 wsrelay fanout "$i" "${WORKERS[@]}"
    run W2 wsrelay-2w fanout "$i" "${WORKERS[@]}"
    run S4 wsrelay-tls fanout "$i" "${S1[@]}"
    run S1-burst wsrelay fanout "$i" "${S1[@]}" --burst 1000
    run S3-traffic wsrelay-pings idle "$i" -n 10000 -d 1s --traffic 50 --size 900
    for server in ceiling wsrelay; do
        run S1-100 "$server" fanout "$i" -n 100 -p 1 -w 64 -s 64 --warmup 2s -d 5s
        run S1-10000 "$server" fanout "$i" -n 10000 -p 1 -w 64 -s 64 --warmup 2s -d 5s
    done
done
echo "== 19 000 connections"
run C19000 wsrelay fanout 1 -n 18999 -p 1 -w 64 -s 64 --warmup 2s -d 5s --drain-timeout 30s

echo "== writing docs/BENCHMARKS.md"
# The cluster, compression and history sections are written by
# scripts/bench-cluster.sh, bench-compression.sh and bench-history.sh: keep them.
kept_sections="$(sed -n -e '/<!-- cluster:begin/,/<!-- cluster:end -->/p' \
    -e '/<!-- compression:begin/,/<!-- compression:end -->/p' \
    -e '/<!-- history:begin/,/<!-- history:end -->/p' docs/BENCHMARKS.md 2>/dev/null || true)"
python3 - "$out" "$RUNS" > docs/BENCHMARKS.md <<'PY'
import glob, json, os, platform, statistics, subprocess, sys
out, runs = sys.argv[1], int(sys.argv[2])

def load(name, server):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}.{server}.*.json"))]

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")

def ns(rs): return med([r["server"]["cpu_ns_per_delivery"] for r in rs if r.get("server")])
def kernel_ns(rs): return med([r["server"].get("kernel_ns_per_delivery") for r in rs if r.get("server")])
def dps(rs): return med([r["deliveries_per_second"] for r in rs])
def lost(rs): return sum(r["lost"] + r["reorders"] + r["malformed"] for r in rs)
def lat(rs, k): return med([r["latency_us"][k] for r in rs])
def rss(rs): return med([r["server"]["rss_per_connection_bytes"] for r in rs if r.get("server")])

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
kernel = platform.release()
print("# Benchmarks\n")
print("Generated by `scripts/bench.sh`; do not edit by hand. Rerun it to refresh.\n")
print(f"- Machine: {os.cpu_count()} CPUs ({cpu}), Linux {kernel}; relay pinned to CPU 0, `wsrelay bench` to CPU 1, loopback.")
print(f"- Each figure is the median of {runs} runs; wsrelay and `../shared/ceiling` alternate run by run.")
print("- CPU time per delivery is the relay's user+system time from `/proc/PID/stat` over the measured window, divided by the deliveries that arrived in it.")
print("- Shared machine: single runs vary by 10-20 %; compare ratios from the same run.\n")

s1c, s1w = load("S1", "ceiling"), load("S1", "wsrelay")
print("## S1: 1000 subscribers, 1 publisher, 64 B text, window 64\n")
print("| relay | CPU ns / delivery | deliveries/s | lost, reordered, malformed |")
print("|---|---|---|---|")
print(f"| ceiling | {ns(s1c):.0f} | {dps(s1c):,.0f} | {lost(s1c)} |")
print(f"| wsrelay | {ns(s1w):.0f} | {dps(s1w):,.0f} | {lost(s1w)} |")
print(f"\n**wsrelay / ceiling: {ns(s1w)/ns(s1c):.2f} ×** (target ≤ 1.0 ×)\n")

s2c, s2w = load("S2", "ceiling"), load("S2", "wsrelay")
print("## S2: 100 subscribers, 10 publishers, 2000 msg/s in total, 1 KiB\n")
print("| relay | p50 µs | p99 µs | p99.9 µs | max µs | lost |")
print("|---|---|---|---|---|---|")
for name, rs in (("ceiling", s2c), ("wsrelay", s2w)):
    print(f"| {name} | {lat(rs,'p50'):.0f} | {lat(rs,'p99'):.0f} | {lat(rs,'p999'):.0f} | {lat(rs,'max'):.0f} | {lost(rs)} |")
print(f"\n**p99 wsrelay / ceiling: {lat(s2w,'p99')/lat(s2c,'p99'):.2f} ×** (target ≤ 1 ×)\n")

lowc, loww = load("LOW", "ceiling"), load("LOW", "wsrelay")
print("## Low rate: 100 msg/s into 1000 subscribers, 64 B\n")
print("Every message wakes every subscriber, and each writes one frame: the floor of one write per socket.\n")
print("| relay | CPU ns / delivery | lost |")
print("|---|---|---|")
print(f"| ceiling | {ns(lowc):.0f} | {lost(lowc)} |")
print(f"| wsrelay | {ns(loww):.0f} | {lost(loww)} |")
print(f"\n**wsrelay / ceiling: {ns(loww)/ns(lowc):.2f} ×** (target ≤ 1.2 ×)\n")

w1, w2 = load("W1", "wsrelay"), load("W2", "wsrelay-2w")
print("## One worker and two: 4 publishers, 2000 msg/s in total into 1000 subscribers, 64 B\n")
print("One worker: the relay pinned to CPU 0. Two: not pinned (one worker thread per CPU); the bench on CPU 1 in both.\n")
print("| workers | CPU ns / delivery | deliveries/s | lost |")
print("|---|---|---|---|")
print(f"| 1 | {ns(w1):.0f} | {dps(w1):,.0f} | {lost(w1)} |")
print(f"| 2 | {ns(w2):.0f} | {dps(w2):,.0f} | {lost(w2)} |")
print(f"\n**two / one: {ns(w2)/ns(w1):.2f} ×** (target ≤ 1.15 ×)\n")

s3c, s3w = load("S3", "ceiling"), load("S3", "wsrelay")
print("## S3: 10 000 idle connections\n")
print("| relay | RSS per connection |")
print("|---|---|")
print(f"| ceiling | {rss(s3c):,.0f} B |")
print(f"| wsrelay | {rss(s3w):,.0f} B |")
print("\nTarget: at most 1536 B.\n")
s3t = load("S3-traffic", "wsrelay-pings")
after = med([r.get("rss_per_connection_after_traffic_bytes") for r in s3t])
fresh = med([r["server"]["rss_per_connection_bytes"] for r in s3t if r.get("server")])
print("After traffic (`bench idle --traffic 50 --size 900` against a relay pinging every 2 s: each of the 10 000 receives")
print("50 messages of 900 B, then all are idle through two pings):")
print(f"{after:,.0f} B per connection against {fresh:,.0f} B fresh in the same runs ({after/fresh:.2f} ×). An idle client gives its")
print("buffers back at a ping, and the relay hands freed memory back to the system (`malloc_trim`) at the next.\n")

s4 = load("S4", "wsrelay-tls")
print("## S4: S1 over wss://\n")
print("| transport | CPU ns / delivery | deliveries/s | lost |")
print("|---|---|---|---|")
print(f"| ws:// | {ns(s1w):.0f} | {dps(s1w):,.0f} | {lost(s1w)} |")
print(f"| wss:// | {ns(s4):.0f} | {dps(s4):,.0f} | {lost(s4)} |")
print(f"\n**wss / ws: {ns(s4)/ns(s1w):.2f} ×** (target ≤ 1.7 ×)\n")

s1b = load("S1-burst", "wsrelay")
print("## S1 in bursts: each publish is one write of 1 000 messages\n")
print("As a browser calling `send()` in a loop: `--burst 1000`, so the window is 1 000 and the relay parses")
print("1 000 frames from a few reads. No subscriber may be evicted for it (issue #8).\n")
print("| sender | CPU ns / delivery | deliveries/s | lost, reordered, malformed | disconnected |")
print("|---|---|---|---|---|")
print(f"| window 64 (S1) | {ns(s1w):.0f} | {dps(s1w):,.0f} | {lost(s1w)} | {sum(sum(r['disconnects'].values()) for r in s1w)} |")
print(f"| bursts of 1 000 | {ns(s1b):.0f} | {dps(s1b):,.0f} | {lost(s1b)} | {sum(sum(r['disconnects'].values()) for r in s1b)} |")
print(f"\n**bursts / S1: {ns(s1b)/ns(s1w):.2f} ×** (target ≤ 1.1 ×)\n")

print("## Scale: S1 at 100, 1000 and 10 000 subscribers\n")
print("CPU per delivery split into user space and the kernel (the relay's system time: its writes, and on loopback the")
print("receiving side's network stack, which runs on the writer's CPU). The ceiling program, same runs, for comparison.\n")
print("| subscribers | wsrelay CPU ns / delivery | of which user / kernel | vs 1000 | ceiling CPU ns / delivery | of which user / kernel | ceiling vs 1000 | wsrelay lost |")
print("|---|---|---|---|---|---|---|---|")
series = {s: [load("S1-100", s), load("S1", s), load("S1-10000", s)] for s in ("wsrelay", "ceiling")}
for i, n in enumerate(("100", "1000", "10 000")):
    w, c = series["wsrelay"][i], series["ceiling"][i]
    print(f"| {n} | {ns(w):.0f} | {ns(w)-kernel_ns(w):.0f} / {kernel_ns(w):.0f} | {ns(w)/ns(series['wsrelay'][1]):.2f} × | "
          f"{ns(c):.0f} | {ns(c)-kernel_ns(c):.0f} / {kernel_ns(c):.0f} | {ns(c)/ns(series['ceiling'][1]):.2f} × | {lost(w)} |")
def spread(rs): return max(ns(r) for r in rs) / min(ns(r) for r in rs)
user = [ns(r) - kernel_ns(r) for r in series["wsrelay"]]
print(f"\n**most / least: wsrelay {spread(series['wsrelay']):.2f} ×** (target ≤ 1.3 ×), the ceiling {spread(series['ceiling']):.2f} ×; "
      f"wsrelay's user-space share alone {max(user)/min(user):.2f} ×.")
c = load("C19000", "wsrelay")
if c:
    r = c[0]
    print(f"\n19 000 concurrent connections (18 999 subscribers + 1 publisher): {r['received_deliveries']:,} of "
          f"{r['expected_deliveries']:,} deliveries, lost {r['lost']}, disconnects {r['disconnects'] or 'none'}, "
          f"{r['deliveries_per_second']:,.0f} deliveries/s.\n")

print("## What each optimisation changed\n")
print("Measured while building it, S1 and S3 as above, same-run ceiling in brackets (single runs, noisy):\n")
print("| step | S1 CPU ns / delivery | S3 B / connection |")
print("|---|---|---|")
print("| first version: tokio-websockets stream per client, one task, hub of `Message`s | 590 (ceiling 320) | 11 836 |")
print("| current-thread runtime when the process has one CPU | 505 (245) | |")
print("| encode once: the hub carries the finished server frame; batches packed into one buffer, one `writev` | 420 (290) | |")
print("| one bulk receive per batch (one permit release, not one per frame); shutdown wake-up through the hub instead of a shared token | 405-460 (290-320) | |")
print("| client served on its own task after the upgrade (handshake state freed) | | 9 057 |")
print("| own strict frame reader: per-thread read buffer, bytes kept only for partial frames | 303-354 (275-301) | 3 832 |")
print("| own client queue (`VecDeque` behind a mutex, one lock per batch, pings as a flag) instead of tokio mpsc + oneshot; old vs new binary alternating, medians of 3 | 365 -> 250 | 3 956 -> 2 243 |")
print("| one log per room: a publish appends once and wakes only members asleep, each writer takes from its cursor; old vs new binary alternating, medians of 3 | 241 -> 127 (295) | 2 427 -> 2 451 |")
print("| the client's state held once in its task (one `Session` owned by the future, not an `async fn`'s arguments and locals; rare reader state boxed): future 1 160 -> 560 B; old (before the room log) vs new binary alternating, medians of 3 | 240 -> 119 | 2 440 -> 1 972 |")
print("| leaner idle client: the stream out of hyper's `Upgraded` box, pongs, a `drop_newest` window and an operator's Close frame boxed until used: future 560 -> 496 B; previous vs new binary alternating, medians of 3 | 125 -> 125 | 1 955 -> 1 752 |")
print()
print("## Commands\n")
print("```sh")
print("taskset -c 0 target/release/wsrelay --listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19090 --log-level warn &")
print("taskset -c 0 /tmp/ceiling-target/release/ceiling --listen 127.0.0.1:19100 &")
print("# S1")
print("taskset -c 1 target/release/wsrelay bench fanout --url ws://127.0.0.1:18443/ --pid $PID -n 1000 -p 1 -w 64 -s 64 --warmup 2s -d 5s")
print("# S2")
print("taskset -c 1 target/release/wsrelay bench fanout --url ws://127.0.0.1:18443/ --pid $PID -n 100 -p 10 -r 2000 -s 1024 --warmup 2s -d 5s")
print("# S3")
print("taskset -c 1 target/release/wsrelay bench idle --url ws://127.0.0.1:18443/ --pid $PID -n 10000 -d 3s")
print("# S4: as S1 with --url wss://127.0.0.1:18443/ --ca-file cert.pem against a relay with server.tls set")
print("# S1 in bursts: as S1 with --burst 1000")
print("# S3 after traffic: as S3 with -d 1s --traffic 50 --size 900, the relay with client.ping_interval: 2s")
print("# Low rate: -n 1000 -p 1 -r 100 -s 64 --warmup 2s -d 5s")
print("# One worker and two: -n 1000 -p 4 -r 2000 -s 64 --warmup 2s -d 5s, the relay pinned to CPU 0, then not pinned")
print("```")
PY
if [ -n "$kept_sections" ]; then
    printf '\n%s\n' "$kept_sections" >> docs/BENCHMARKS.md
fi
cat docs/BENCHMARKS.md
