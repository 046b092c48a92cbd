#!/usr/bin/env bash
# permessage-deflate on against off, same run: wire bytes and relay CPU per
# delivery for 1 KiB JSON, S1 (64 B, below min_size) with compression
# enabled, and idle memory with the extension negotiated. Writes the
# "Compression" section of docs/BENCHMARKS.md (scripts/bench.sh keeps that
# section when it rewrites the rest).
#
#   scripts/bench-compression.sh          # 3 runs per figure (about 6 minutes)
#   RUNS=5 scripts/bench-compression.sh
#
# As in scripts/bench.sh: the relay on CPU 0, the bench on CPU 1, loopback.
# The clients offer permessage-deflate in every run, as browsers do; "off"
# is a relay with compression disabled, which declines it.
RUNS="${RUNS:-3}"
. "$(dirname "$0")/bench_lib.sh"

# off: declines the offers; on: the defaults (level 1); on6: level 6.
for mode in off on on6; do
    case "$mode" in
        off) compression='enabled: false' ;;
        on) compression='enabled: true' ;;
        on6) compression='enabled: true, level: 6' ;;
    esac
    printf 'server:\n  listen: "127.0.0.1:18443"\nmetrics:\n  listen: "127.0.0.1:19090"\nlog:\n  level: warn\ncompression: { %s }\n' \
        "$compression" > "$out/$mode.yaml"
done

# run NAME MODE BENCH-ARGS...: one bench run against a fresh relay with
# compression MODE (on/off); JSON to $out/NAME.MODE.N.json.
run() {
    local name=$1 mode=$2 i=$3; shift 3
    start_relay "$out/$mode.yaml"
    taskset -c 1 "$WSRELAY" bench "$@" --url ws://127.0.0.1:18443/ --pid "$PID" --json --deflate \
        > "$out/$name.$mode.$i.json" || echo "   (run reported loss or failed; kept for the report)"
    # The relay's own count of the time it spent compressing.
    curl -fs http://127.0.0.1:19090/metrics | grep -E '^wsrelay_compress(ed_messages|ion_seconds)_total ' \
        > "$out/$name.$mode.$i.metrics" || true
    stop_relay
}

# A fixed rate the bench sustains in every mode (it inflates every
# delivery on one CPU): each message then wakes every subscriber, and the
# relay's CPU per delivery is mostly one write per delivery. A slower
# reader lets writes batch and lowers it, so the compressing runs' figures
# are also read from the relay's own compression timer.
JSON=(fanout -n 1000 -p 1 -r 100 -s 1024 --payload json --warmup 2s -d 5s)
S1=(fanout -n 1000 -p 1 -w 64 -s 64 --warmup 2s -d 5s)
IDLE=(idle -n 10000 -d 3s)
for i in $(seq 1 "$RUNS"); do
    echo "== round $i of $RUNS"
    for mode in off on; do
        run JSON "$mode" "$i" "${JSON[@]}"
        run S1 "$mode" "$i" "${S1[@]}"
        run IDLE "$mode" "$i" "${IDLE[@]}"
    done
    run JSON on6 "$i" "${JSON[@]}"
done

echo "== writing the compression section of docs/BENCHMARKS.md"
python3 - "$out" "$RUNS" <<'PY'
import glob, sys
sys.path.insert(0, "scripts")
from bench_report import dps, lost, med, ns, replace_section, rss
from bench_report import load as load_runs
out, runs = sys.argv[1], int(sys.argv[2])

def load(name, variant): return load_runs(out, name, variant)
def wire(rs): return med([r["wire_bytes_per_delivery"] for r in rs])
def deflated(rs): return med([r["connect"]["deflated"] for r in rs])

def metric(name, mode, key):
    values = []
    for f in sorted(glob.glob(f"{out}/{name}.{mode}.*.metrics")):
        series = dict(l.split() for l in open(f) if l.strip())
        values.append(float(series.get(key, "nan")))
    return values

def compress_ns(name, mode, rs):
    """Compression time per message and per delivery, medians over runs."""
    secs = metric(name, mode, "wsrelay_compression_seconds_total")
    msgs = metric(name, mode, "wsrelay_compressed_messages_total")
    per_msg = med([s * 1e9 / m for s, m in zip(secs, msgs) if m > 0])
    per_del = med([s * 1e9 / r["received_deliveries"] for s, r in zip(secs, rs) if r["received_deliveries"]])
    return per_msg, per_del

jo, jn, j6 = load("JSON", "off"), load("JSON", "on"), load("JSON", "on6")
so, sn = load("S1", "off"), load("S1", "on")
io, inn = load("IDLE", "off"), load("IDLE", "on")
lines = ["<!-- compression:begin (scripts/bench-compression.sh writes this section) -->",
         "## Compression: permessage-deflate on and off\n",
         f"`scripts/bench-compression.sh`: medians of {runs} runs, relay pinned to CPU 0 and the bench to CPU 1, the two modes alternating run by run. "
         "Every client offers permessage-deflate (`bench --deflate`), as browsers do; \"off\" is a relay with `compression.enabled: false`, which declines it. "
         "Compression level 1, `min_size` 256 (the defaults). Wire bytes are what the clients read from their sockets after the handshake, frame headers included.\n",
         "### 1 000 subscribers, 1 KiB JSON (a trade feed: `--payload json`), 100 msg/s\n",
         "Relay CPU per delivery is mostly one write per delivery at this rate; it falls when clients read more slowly "
         "(their writes batch), and the bench reads more slowly when it inflates. The relay's own compression timer "
         "(`wsrelay_compression_seconds_total`) gives what compressing costs, unaffected by that.\n",
         "| compression | connections that negotiated | wire B / delivery | relay CPU ns / delivery | of which compressing, ns / delivery | compressing, µs / message | deliveries/s | lost, reordered, malformed |",
         "|---|---|---|---|---|---|---|---|"]
for name, mode, rs in (("off", "off", jo), ("on (level 1, the default)", "on", jn), ("on, level 6", "on6", j6)):
    per_msg, per_del = compress_ns("JSON", mode, rs) if mode != "off" else (0.0, 0.0)
    lines.append(f"| {name} | {deflated(rs):,.0f} | {wire(rs):,.0f} | {ns(rs):.0f} | {per_del:.1f} | {per_msg/1000:.1f} | {dps(rs):,.0f} | {lost(rs)} |")
lines += ["",
          f"**Wire bytes off / on: {wire(jo)/wire(jn):.2f} ×** at level 1, {wire(jo)/wire(j6):.2f} × at level 6 (target ≥ 3 ×). "
          f"**CPU on / off: {ns(jn)/ns(jo):.2f} ×** at level 1, {ns(j6)/ns(jo):.2f} × at level 6 (target ≤ 1.2 ×).\n",
          "### S1 with compression enabled: 1 000 subscribers, 64 B (below `min_size`), window 64\n",
          "| compression | CPU ns / delivery | deliveries/s | lost |", "|---|---|---|---|"]
for name, rs in (("off", so), ("on", sn)):
    lines.append(f"| {name} | {ns(rs):.0f} | {dps(rs):,.0f} | {lost(rs)} |")
lines += ["", f"**on / off: {ns(sn)/ns(so):.2f} ×** (target within 5 %).\n",
          "### Idle memory: 10 000 connections\n",
          "| compression | connections that negotiated | RSS per connection |", "|---|---|---|"]
for name, rs in (("off", io), ("on", inn)):
    lines.append(f"| {name} | {deflated(rs):,.0f} | {rss(rs):,.0f} B |")
lines += ["", f"**negotiated − not: {rss(inn) - rss(io):+,.0f} B** per connection (target within 64 B).",
          "<!-- compression:end -->"]
section = "\n".join(lines) + "\n"

replace_section("docs/BENCHMARKS.md", "compression", section)
print(section)
PY
