#!/usr/bin/env bash
# Query latency of the hub's REST API over a store of 2 M readings, measured with the real release
# hub and wrk (keep-alive HTTPS, the admin bearer token).
#
# 1. Builds the release hub and firmware-sim, starts the hub in a fresh temp data dir on free ports.
# 2. Fills the store with firmware-sim (binary transport, --backfill 24h), in two shapes:
#    "typical": 100 devices x 10,000 readings over the last 24 h (one every 8.64 s);
#    "dense":   1 device x 1,000,000 readings over the last 24 h (about 11.6 a second).
#    Then checks that the hub has them all (GET /api/v1/devices/{id} -> counters.readings).
# 3. Measures, each with 1 connection (sequential latency) and 4 (throughput), each run repeated
#    (3 times by default) and the median of each figure reported:
#      latest             GET /devices/typical-0/latest
#      downsample typical GET /devices/typical-0/readings?metric=temperature&from=-24h&bucket=5m&agg=avg,min,max&limit=300
#      downsample dense   the same on dense-0 (a million readings folded into 288 buckets)
#      raw page           GET /devices/typical-0/readings?limit=100
#    (`metric` is required with `bucket`, and `limit=300` returns the whole day's 288-289 buckets
#    in one page instead of the default 100.) wrk waits up to 60 s for an answer (its default of
#    2 s counts a slow query as an error and leaves no latency). A percentile needs enough
#    samples: the table shows p99 only for runs of 100 requests or more, p99.9 for 1,000 or more
#    (the JSON keeps them all, with the request counts).
# 4. Prints a markdown table and writes everything as JSON to bench/results/api-latency-<time>.json:
#    the machine, the fill rates, the store file size and bytes per reading, the hub's RSS (VmRSS,
#    VmHWM) after the fill and after the queries, and every run.
#
#   bench/api-latency.sh
#   bench/api-latency.sh --seconds 5 --repeats 1 --typical-readings 1000 --dense-readings 100000   # quick
#
# Needs: wrk (Debian/Ubuntu: apt-get install wrk), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

typical_devices=100
typical_readings=10000
dense_readings=1000000
secs=15
repeats=3
conns_list="1 4"
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<EOF
Options (defaults in brackets):
  --typical-devices N    devices of the typical shape [$typical_devices]
  --typical-readings N   readings per typical device [$typical_readings]
  --dense-readings N     readings of the dense device [$dense_readings]
  --seconds N            length of each wrk run [$secs]
  --repeats N            runs per query and connection count [$repeats]
  --connections "A B"    connection counts to measure [$conns_list]
EOF
}
while [ $# -gt 0 ]; do
  case $1 in
    --typical-devices) typical_devices=$2; shift 2 ;;
    --typical-readings) typical_readings=$2; shift 2 ;;
    --dense-readings) dense_readings=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --connections) conns_list=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "api-latency: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$typical_devices" "$typical_readings" "$dense_readings" "$secs" "$repeats"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "api-latency: $n is not a positive integer" >&2; exit 2; }
done

need() { command -v "$1" > /dev/null || { echo "api-latency: needs $1 ($2)" >&2; exit 1; }; }
need wrk "Debian/Ubuntu: apt-get install wrk; or build it from its sources"
need curl "apt-get install curl"
need python3 "apt-get install python3"

cargo build --release --locked -p hub -p firmware-sim >&2
root=$PWD
hub=$root/target/release/hub
sim=$root/target/release/firmware-sim
out=bench/results
mkdir -p "$out"
loadavg_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
result_file=$out/api-latency-$stamp.json
work=$(mktemp -d)
data=$work/data
HUB_PID=
cleanup() {
  if [ -n "$HUB_PID" ]; then kill "$HUB_PID" 2> /dev/null || true; wait "$HUB_PID" 2> /dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port=$(port)
mqtt_port=$(port)
api=https://127.0.0.1:$api_port

# The hub, fresh, with its embedded broker.
# No per-identity rate limit: the bench measures what the API can serve, not the limit (which
# would answer most of these requests 429 within a second).
(cd "$work" && HUB_API__RATE_LIMIT=0 exec "$hub" --data-dir "$data" --api-listen "127.0.0.1:$api_port" \
  --mqtt-listen "127.0.0.1:$mqtt_port" > hub.out 2> hub.err) &
HUB_PID=$!
for _ in $(seq 300); do grep -q "hub ready" "$work/hub.out" 2> /dev/null && break; sleep 0.1; done
grep -q "hub ready" "$work/hub.out" || { echo "api-latency: the hub did not start" >&2; cat "$work/hub.err" >&2; exit 1; }
token=$(cat "$data/admin.token")
ca=$data/tls/ca.crt
echo "hub up: api $api, mqtt 127.0.0.1:$mqtt_port" >&2

# Fill: binary transport, readings spread over the last 24 h, as fast as the hub acks them. The
# send window bounds what is in flight: 100 devices x 200 keeps the broker's queues (and so the ack
# delay) short enough that the devices do not time out and resend; one device needs a wide one.
fill() { # fill NAME PREFIX DEVICES COUNT RATE BURST WINDOW
  local name=$1 prefix=$2 devices=$3 count=$4 rate=$5 burst=$6 window=$7
  echo "filling $name: $devices device(s) x $count readings over 24 h ..." >&2
  if ! "$sim" --broker "127.0.0.1:$mqtt_port" --transport binary --devices "$devices" \
    --count "$count" --backfill 24h --rate "$rate" --burst "$burst" --window "$window" \
    --ack-timeout 10 --drain-timeout 600 --prefix "$prefix" > "$work/fill-$name.json" 2> "$work/fill-$name.err"; then
    echo "api-latency: firmware-sim could not deliver every reading ($name):" >&2
    cat "$work/fill-$name.json" "$work/fill-$name.err" >&2
    exit 1
  fi
  cat "$work/fill-$name.json" >&2
}
fill typical typical- "$typical_devices" "$typical_readings" 1000 10 200
fill dense dense- 1 "$dense_readings" 200000 200 1000

# Every reading is in the store, and the facts after the fill.
facts() { # facts WHEN -> one JSON object on stdout
  python3 - "$1" "$HUB_PID" "$data/store.redb" <<'EOF'
import json, os, sys
when, pid, store = sys.argv[1], sys.argv[2], sys.argv[3]
status = {}
with open(f"/proc/{pid}/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            status[key + "_kb"] = int(value.split()[0])
print(json.dumps({"when": when, "store_bytes": os.path.getsize(store), **status}))
EOF
}
python3 - "$api" "$ca" "$token" "$typical_devices" "$typical_readings" "$dense_readings" > "$work/counts.json" <<'EOF'
import http.client, json, ssl, sys
from urllib.parse import urlparse
api, ca, token, n_typical, per_typical, n_dense = sys.argv[1:7]
u = urlparse(api)
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=ca))
want = {f"typical-{i}": int(per_typical) for i in range(int(n_typical))}
want["dense-0"] = int(n_dense)
have, wrong = {}, []
for device, n in want.items():
    conn.request("GET", f"/api/v1/devices/{device}", headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    body = r.read()
    got = json.loads(body)["counters"]["readings"] if r.status == 200 else None
    have[device] = got
    if got != n:
        wrong.append(f"{device}: {got} readings, expected {n} (HTTP {r.status})")
if wrong:
    sys.exit("api-latency: the hub does not have every reading:\n  " + "\n  ".join(wrong[:20]))
print(json.dumps({"devices": len(have), "readings": sum(have.values())}))
EOF
echo "store holds $(cat "$work/counts.json")" >&2
facts after_fill > "$work/facts-fill.json"

# The measurements.
cat > "$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f,"mean_us":%.1f,"max_us":%.0f,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
queries=(
  "latest|/api/v1/devices/typical-0/latest"
  "downsample 24h/5m, typical device|/api/v1/devices/typical-0/readings?metric=temperature&from=-24h&bucket=5m&agg=avg,min,max&limit=300"
  "downsample 24h/5m, dense device|/api/v1/devices/dense-0/readings?metric=temperature&from=-24h&bucket=5m&agg=avg,min,max&limit=300"
  "raw page of 100|/api/v1/devices/typical-0/readings?limit=100"
)
: > "$work/runs.jsonl"
for q in "${queries[@]}"; do
  name=${q%%|*}
  path=${q#*|}
  # Once with curl, checking the certificate and the status, to see what a response holds.
  code=$(curl -sS --cacert "$ca" -H "Authorization: Bearer $token" -o "$work/body" -w '%{http_code}' "$api$path")
  if [ "$code" != 200 ]; then
    echo "api-latency: $path answered $code:" >&2; head -c 600 "$work/body" >&2; echo >&2; exit 1
  fi
  items=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(next(("%d %s" % (len(d[k]), k) for k in ("buckets", "readings", "metrics") if isinstance(d.get(k), (list, dict))), "one object"))' "$work/body")
  echo "$name: HTTP 200, $(wc -c < "$work/body") bytes, $items" >&2
  for c in $conns_list; do
    for r in $(seq "$repeats"); do
      wrk -t1 -c"$c" -d"${secs}s" --timeout 60s --latency -s "$work/report.lua" \
        -H "Authorization: Bearer $token" "$api$path" > "$work/wrk.out"
      line=$(sed -n 's/^WRKJSON //p' "$work/wrk.out")
      [ -n "$line" ] || { echo "api-latency: wrk said:" >&2; cat "$work/wrk.out" >&2; exit 1; }
      python3 -c 'import json,sys; print(json.dumps({"query":sys.argv[1],"path":sys.argv[2],"connections":int(sys.argv[3]),"repeat":int(sys.argv[4]),"response_bytes":int(sys.argv[5]),"response_items":sys.argv[6],"wrk":json.loads(sys.argv[7])}))' \
        "$name" "$path" "$c" "$r" "$(wc -c < "$work/body")" "$items" "$line" >> "$work/runs.jsonl"
      echo "  $c connection(s), run $r: $(python3 -c 'import json,sys; w=json.loads(sys.argv[1]); print("p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, %.0f req/s, errors %d" % (w["p50_us"]/1000, w["p99_us"]/1000, w["p999_us"]/1000, w["requests"]/(w["duration_us"]/1e6), sum(w["errors"].values())))' "$line")" >&2
    done
  done
done
facts after_queries > "$work/facts-queries.json"

# Summary: medians over the repeats, the table, the JSON file.
python3 - "$work" "$result_file" "$secs" "$repeats" "$typical_devices" "$typical_readings" "$dense_readings" "$loadavg_at_start" <<'EOF'
import json, os, platform, statistics, subprocess, sys
work, result_file, secs, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
typical_devices, typical_readings, dense_readings = map(int, sys.argv[5:8])
loadavg_at_start = sys.argv[8].split()
runs = [json.loads(l) for l in open(os.path.join(work, "runs.jsonl"))]
counts = json.load(open(os.path.join(work, "counts.json")))
after_fill = json.load(open(os.path.join(work, "facts-fill.json")))
after_queries = json.load(open(os.path.join(work, "facts-queries.json")))
fills = {n: json.load(open(os.path.join(work, f"fill-{n}.json"))) for n in ("typical", "dense")}

def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
def mem_total_kb():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            return int(line.split()[1])
def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None

groups = {}
for r in runs:
    groups.setdefault((r["query"], r["connections"]), []).append(r)
summary = []
for (query, conns), rs in groups.items():
    w = [r["wrk"] for r in rs]
    med = lambda f: statistics.median(f(x) for x in w)
    summary.append({
        "query": query, "path": rs[0]["path"], "connections": conns, "runs": len(rs),
        "response_bytes": rs[0]["response_bytes"], "response_items": rs[0]["response_items"],
        "median": {
            "p50_ms": med(lambda x: x["p50_us"]) / 1000,
            "p90_ms": med(lambda x: x["p90_us"]) / 1000,
            "p99_ms": med(lambda x: x["p99_us"]) / 1000,
            "p999_ms": med(lambda x: x["p999_us"]) / 1000,
            "max_ms": med(lambda x: x["max_us"]) / 1000,
            "requests_per_s": med(lambda x: x["requests"] / (x["duration_us"] / 1e6)),
            "requests_per_run": med(lambda x: x["requests"]),
        },
        "errors": sum(sum(x["errors"].values()) for x in w),
    })
store_bytes = after_fill["store_bytes"]
result = {
    "benchmark": "api-latency",
    "time_utc": os.path.basename(result_file)[len("api-latency-"):-len(".json")],
    "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
    "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "mem_total_kb": mem_total_kb(),
                "kernel": platform.release(), "arch": platform.machine(),
                "loadavg_at_start": loadavg_at_start,
                "loadavg_at_end": open("/proc/loadavg").read().split()[:3]},
    "tool": {"name": "wrk", "threads": 1, "seconds_per_run": secs, "repeats": repeats, "timeout_s": 60,
             "keep_alive": True, "tls": True, "auth": "bearer (admin token)"},
    "fill": {
        "transport": "binary (MQTT, embedded broker), hub acks", "backfill": "24h",
        "typical": {"devices": typical_devices, "readings_per_device": typical_readings, **fills["typical"]},
        "dense": {"devices": 1, "readings_per_device": dense_readings, **fills["dense"]},
    },
    "store": {"devices": counts["devices"], "readings": counts["readings"],
              "file_bytes_after_fill": store_bytes,
              "bytes_per_reading_after_fill": store_bytes / counts["readings"],
              "file_bytes_after_queries": after_queries["store_bytes"]},
    "hub_memory": {"after_fill": after_fill, "after_queries": after_queries},
    "results": summary, "runs": runs,
}
with open(result_file, "w") as f:
    json.dump(result, f, indent=2)

m = result["machine"]
print(f"\nmachine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_total_kb'] // 1024} MB RAM, "
      f"kernel {m['kernel']}, load average {' '.join(m['loadavg_at_start'])} at the start, "
      f"{' '.join(m['loadavg_at_end'])} at the end")
print(f"wrk -t1, keep-alive HTTPS, {secs} s per run, median of {repeats} run(s)")
for name in ("typical", "dense"):
    f = result["fill"][name]
    print(f"fill {name}: {f['devices']} x {f['readings_per_device']} readings in {f['seconds']:.1f} s "
          f"({f['acked'] / f['seconds']:.0f} readings/s acked)")
print(f"store: {counts['readings']:,} readings of {counts['devices']} devices, "
      f"store.redb {store_bytes / 1e6:.1f} MB = {store_bytes / counts['readings']:.1f} bytes/reading")
for label, facts in (("after the fill", after_fill), ("after the queries", after_queries)):
    print(f"hub memory {label}: VmRSS {facts['VmRSS_kb'] / 1024:.1f} MB, VmHWM {facts['VmHWM_kb'] / 1024:.1f} MB")
print()
print("| query | conns | p50 ms | p99 ms | p99.9 ms | req/s | requests/run | response | errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for s in summary:
    d = s["median"]
    n = d["requests_per_run"]
    p99 = f"{d['p99_ms']:.2f}" if n >= 100 else "-"
    p999 = f"{d['p999_ms']:.2f}" if n >= 1000 else "-"
    rate = f"{d['requests_per_s']:.0f}" if d["requests_per_s"] >= 10 else f"{d['requests_per_s']:.2f}"
    print(f"| {s['query']} | {s['connections']} | {d['p50_ms']:.2f} | {p99} | {p999} | {rate} | {n:.0f} | "
          f"{s['response_bytes']:,} B, {s['response_items']} | {s['errors']} |")
print(f"\nJSON: {result_file}")
failed = [f"{s['query']} ({s['connections']} conns): {s['errors']}" for s in summary if s["errors"]]
if failed:
    sys.exit("api-latency: some requests failed (timeouts or non-2xx), so their figures are not valid: "
             + "; ".join(failed))
EOF
