#!/usr/bin/env bash
# Fan-out across the nodes of a cluster, for each backend with history off
# and on, beside the same load on a single relay, and subscribers resuming
# on the other node mid-stream (shared history, each backend); writes the
# "Cluster" section of docs/BENCHMARKS.md (scripts/bench.sh keeps that
# section when it rewrites the rest).
#
#   scripts/bench-cluster.sh            # 3 runs per figure (about 10 minutes)
#   RUNS=5 scripts/bench-cluster.sh
#
# Three relays (a, b, c) share one redis-server or nats-server; the
# publishers connect to a, the subscribers are split over b and c, so every
# subscriber's copy crosses the broker. Latency is measured at the
# subscribers. Five processes share this machine's two CPUs, so nothing is
# pinned. Needs redis-server and nats-server (scripts/test.sh installs them).
RUNS="${RUNS:-3}"
. "$(dirname "$0")/bench_lib.sh"

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# wait_connected METRICS_PORT: until the node reports its broker connection.
wait_connected() {
    for _ in $(seq 1 200); do
        curl -fs "http://127.0.0.1:$1/metrics" | grep -q '^wsrelay_cluster_connected 1' && return 0
        sleep 0.05
    done
    echo "node on metrics port $1 never connected to the broker" >&2
    return 1
}

PIDS=()
# start_cluster SETUP: broker plus nodes a, b, c (or just a for "single");
# SETUP is a backend, with "-h" for rooms.history.size 1000.
start_cluster() {
    local backend=${1%-h} history=0 url="" nodes=(a)
    if [ "$1" != "$backend" ]; then history=1000; fi
    case "$backend" in
        redis)
            redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
            PIDS+=($!); url=redis://127.0.0.1:16379; wait_port 16379 ;;
        nats)
            # With history, JetStream keeps it (a fresh store each run).
            local js=()
            if [ "$history" != 0 ]; then
                rm -rf "$out/jetstream"
                js=(-js -sd "$out/jetstream")
            fi
            nats-server -a 127.0.0.1 -p 14222 "${js[@]}" >/dev/null 2>&1 &
            PIDS+=($!); url=nats://127.0.0.1:14222; wait_port 14222 ;;
    esac
    if [ "$backend" != single ]; then nodes=(a b c); fi
    local i=0
    for node in "${nodes[@]}"; do
        {
            printf 'server:\n  listen: "127.0.0.1:%d"\nmetrics:\n  listen: "127.0.0.1:%d"\n' $((18501 + i)) $((19501 + i))
            printf 'rooms:\n  enabled: true\n  history:\n    size: %d\nlog:\n  level: warn\n' "$history"
            if [ "$backend" != single ]; then
                printf 'cluster:\n  backend: %s\n  url: "%s"\n  node_id: %s\n' "$backend" "$url" "$node"
            fi
        } > "$out/$node.yaml"
        "$WSRELAY" --config-file "$out/$node.yaml" &
        PIDS+=($!)
        wait_port $((18501 + i))
        if [ "$backend" != single ]; then wait_connected $((19501 + i)); fi
        i=$((i + 1))
    done
    PUB=ws://127.0.0.1:18501/rooms/bench
    SUBS=()
    if [ "$backend" != single ]; then
        SUBS=(--subscriber-url ws://127.0.0.1:18502/rooms/bench,ws://127.0.0.1:18503/rooms/bench)
    fi
}

# Nodes first, broker last, so no node logs a lost broker on the way out.
stop_cluster() {
    local n
    for ((n = ${#PIDS[@]} - 1; n >= 0; n--)); do
        kill "${PIDS[n]}" 2>/dev/null || true
        wait "${PIDS[n]}" 2>/dev/null || true
    done
    PIDS=()
}

# run NAME SETUP I ARGS...: one bench run, JSON to $out/NAME.SETUP.I.json
run() {
    local name=$1 backend=$2 i=$3; shift 3
    start_cluster "$backend"
    "$WSRELAY" bench fanout --url "$PUB" "${SUBS[@]}" --json "$@" \
        > "$out/$name.$backend.$i.json" || echo "   (run reported loss or failed; kept for the report)"
    stop_cluster
}

S2=(-n 100 -p 10 -r 2000 -s 1024 --warmup 2s -d 5s)
T=(-n 100 -p 4 -r 10000 -s 64 --warmup 2s -d 5s --allow-loss)
R=(-n 100 -p 2 -r 1000 -s 64 --warmup 2s -d 10s --reconnect 1s)
# Offered far beyond what the broker carries: what gets through, and what
# waits for the broker too long is dropped from the outbox (counted).
C=(-n 10 -p 4 -r 200000 -s 64 --warmup 1s -d 5s --allow-loss)
SETUPS=(single redis redis-h nats nats-h)
for i in $(seq 1 "$RUNS"); do
    echo "== round $i of $RUNS"
    for setup in "${SETUPS[@]}"; do
        run S2 "$setup" "$i" "${S2[@]}"
        run T "$setup" "$i" "${T[@]}"
    done
    for setup in redis-h nats-h; do run R "$setup" "$i" "${R[@]}"; done
    for setup in redis redis-h nats nats-h; do run C "$setup" "$i" "${C[@]}"; done
done

echo "== writing the cluster section of docs/BENCHMARKS.md"
python3 - "$out" "$RUNS" <<'PY'
import glob, json, re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])

def load(name, backend):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}.{backend}.*.json"))]

def med(values):
    return statistics.median(values) if values else float("nan")

def lat(rs, k): return med([r["latency_us"][k] for r in rs])
def dps(rs): return med([r["deliveries_per_second"] for r in rs])
def loss(rs): return med([r["loss_percent"] for r in rs])

names = {"single": "one relay (no cluster)", "redis": "3 nodes, Redis 7.0", "redis-h": "3 nodes, Redis 7.0, history on (kept by Redis)",
         "nats": "3 nodes, NATS 2.9", "nats-h": "3 nodes, NATS 2.9, history on (kept by JetStream)"}
setups = ("single", "redis", "redis-h", "nats", "nats-h")
lines = ["<!-- cluster:begin (scripts/bench-cluster.sh writes this section) -->",
         "## Cluster: publishers on node a, subscribers on nodes b and c\n",
         f"`scripts/bench-cluster.sh`: three relays joined through one local broker; `wsrelay bench fanout --url <a> --subscriber-url <b>,<c>`, "
         f"so every subscriber's copy crosses the broker, latency measured at the subscribers. Medians of {runs} runs, backends alternating run by run; "
         "five processes share the two CPUs unpinned, so compare rows, not these figures with the pinned ones above. "
         "\"one relay\" is the same load with everyone on a single relay, where the publishers' own copies are measured too (104 or 110 receivers instead of 100: hence its higher deliveries/s). "
         "\"history on\" is `rooms.history.size: 1000`: with Redis each publish is then one script on the broker that numbers, keeps and publishes it, and every node, the publisher's own included, delivers it when it comes back; with NATS each publish goes to a JetStream stream (file storage), which numbers and keeps it and republishes it to the nodes, the publisher's own included.\n",
         "### S2 across nodes: 100 subscribers, 10 publishers, 2000 msg/s in total, 1 KiB\n",
         "| setup | p50 µs | p99 µs | p99.9 µs | deliveries/s | loss % |",
         "|---|---|---|---|---|---|"]
for b in setups:
    rs = load("S2", b)
    lines.append(f"| {names[b]} | {lat(rs,'p50'):.0f} | {lat(rs,'p99'):.0f} | {lat(rs,'p999'):.0f} | {dps(rs):,.0f} | {loss(rs):.3f} |")
lines += ["", "### Throughput across nodes: 100 subscribers, 4 publishers, 10 000 msg/s offered, 64 B\n",
          "| setup | deliveries/s | loss % | p50 µs | p99 µs |", "|---|---|---|---|---|"]
for b in setups:
    rs = load("T", b)
    lines.append(f"| {names[b]} | {dps(rs):,.0f} | {loss(rs):.3f} | {lat(rs,'p50'):.0f} | {lat(rs,'p99'):.0f} |")
lines += ["", "### Into one room as fast as the broker takes it: 10 subscribers, 4 publishers, 200 000 msg/s offered, 64 B\n",
          "What reaches the subscribers across the broker when the publishers offer far more than it carries; the rest is dropped from the "
          "publishing node's outbox (`wsrelay_cluster_dropped_messages_total{reason=\"buffer_full\"}`). With history on, Redis runs the "
          "numbering script for every message, and JetStream stores each one and acknowledges it to the publishing node.\n",
          "| setup | messages/s reaching each subscriber | loss % | p50 ms |", "|---|---|---|---|"]
for b in ("redis", "redis-h", "nats", "nats-h"):
    rs = load("C", b)
    lines.append(f"| {names[b]} | {med([r['deliveries_per_second'] / 10 for r in rs]):,.0f} | {loss(rs):.1f} | {lat(rs,'p50')/1000:.1f} |")
lines += ["", "### Subscribers resuming on another node: history on\n",
          "`wsrelay bench fanout -n 100 -p 2 -r 1000 -s 64 -d 10s --reconnect 1s --url <a> --subscriber-url <b>,<c>`: 100 position-aware subscribers, "
          "each dropping its connection (no close frame) after a random 0.5 to 1.5 s and resuming with `?since=&epoch=` on the other subscriber node "
          "(b to c, c to b), while two publishers on a send 1 000 msg/s in total. Every subscriber checks that it got every message exactly once, in order.\n",
          "| broker | run | reconnects | not recovered | deliveries: received of expected | lost, repeated or reordered | latency p50 / p99 |",
          "|---|---|---|---|---|---|---|"]
for b, broker in (("redis-h", "Redis 7.0"), ("nats-h", "NATS 2.9 JetStream")):
    for i, r in enumerate(load("R", b), 1):
        lines.append(f"| {broker} | {i} | {r['reconnect']['reconnects']:,} | {r['reconnect']['not_recovered']} | "
                     f"{r['received_deliveries']:,} of {r['expected_deliveries']:,} | {r['lost']}, {r['reorders']} | "
                     f"{r['latency_us']['p50']/1000:.1f} / {r['latency_us']['p99']/1000:.1f} ms |")
lines.append("<!-- cluster:end -->")
section = "\n".join(lines) + "\n"

path = "docs/BENCHMARKS.md"
text = open(path).read()
pattern = re.compile(r"<!-- cluster:begin.*?<!-- cluster:end -->\n", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
print(section)
PY
