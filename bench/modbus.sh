# The Modbus section of bench/run (`bench/run --only modbus`), sourced by it: its helpers
# (start_hub, record, memory, log...) and settings (repeats, secs, warmup) are bench/run's.
#
# Against a local pymodbus server (tests/py/modbus_server.py, one Python process, every unit with
# the 14-point meter map that the e2e tests read in 8 requests a poll), over Modbus TCP, the
# release hub polls:
#
#   flat out   4 buses (TCP connections) of 10 devices each, every device polled every 10 ms
#              (the shortest interval): more than a bus can be answered, so each bus asks as fast
#              as it is answered: points read per second, the hub's CPU per point, and the
#              server's CPU beside it (what limits the rate)
#   100 x 1 s  10 buses of 10 devices each (as behind 10 Modbus TCP gateways), every device polled
#              every second: the hub's RSS (VmRSS, VmHWM), its CPU, and poll jitter: the p50 and
#              p99 of how late polls started against their schedule, from the hub's own histogram
#              hub_modbus_poll_lateness_seconds (each the upper bound of its bucket)
#
# Needs pymodbus: the Python of the e2e venv ($E2E_PYTHON, else $target/e2e-venv/bin/python; tests/run
# makes it from tests/py/requirements.txt).

modbus_python=${E2E_PYTHON:-$target/e2e-venv/bin/python}
"$modbus_python" -c 'import pymodbus' 2> /dev/null || {
  echo "bench/run: the modbus section needs pymodbus: run tests/run once (it makes $target/e2e-venv), or set E2E_PYTHON" >&2
  exit 1
}

modbus_points='points = [
  { name = "voltage", table = "input", address = 0, type = "f32" },
  { name = "current", table = "input", address = 2, type = "f32", word_order = "little" },
  { name = "frequency", table = "input", address = 4, type = "u16", scale = 0.01 },
  { name = "temperature", table = "input", address = 5, type = "i16", scale = 0.1 },
  { name = "energy", table = "input", address = 10, type = "u64" },
  { name = "model", table = "holding", address = 0, type = "string", length = 8 },
  { name = "setpoint", table = "holding", address = 10, type = "i16", scale = 0.1 },
  { name = "serial", table = "holding", address = 11, type = "u32", word_order = "little", byte_order = "little" },
  { name = "balance", table = "holding", address = 20, type = "i32" },
  { name = "constant", table = "holding", address = 30, type = "f64" },
  { name = "running", table = "coil", address = 0, type = "bool" },
  { name = "alarm", table = "coil", address = 1, type = "bool" },
  { name = "relay", table = "coil", address = 2, type = "bool" },
  { name = "door", table = "discrete", address = 0, type = "bool" },
]'

# modbus_config FILE PORT BUSES DEVICES_PER_BUS INTERVAL: a hub config polling units 1.. of the
# server on PORT, spread over BUSES connections.
modbus_config() {
  local file=$1 mport=$2 buses=$3 per=$4 interval=$5 b d unit
  : > "$file"
  for b in $(seq "$buses"); do
    printf '[[modbus]]\nname = "bus-%s"\ntransport = "tcp"\naddress = "127.0.0.1:%s"\ntimeout = "1s"\n\n' "$b" "$mport" >> "$file"
    for d in $(seq "$per"); do
      unit=$(( (b - 1) * per + d ))
      printf '[[modbus.devices]]\nid = "meter-%s"\nunit = %s\ninterval = "%s"\n%s\n\n' "$unit" "$unit" "$interval" "$modbus_points" >> "$file"
    done
  done
}

# modbus_window SERVER_PID: waits `warmup`, then measures `secs`; prints the window's figures.
modbus_window() {
  "$modbus_python" - "$HUB_PID" "$1" "$HUB_API" "$HUB_DATA" "$warmup" "$secs" <<'EOF'
import json, os, ssl, sys, time, urllib.request
hub, server, api, data, warmup, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
tick = os.sysconf("SC_CLK_TCK")
ctx = ssl.create_default_context(cafile=f"{data}/tls/ca.crt")
token = open(f"{data}/admin.token").read().strip()

def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick

def scrape():
    req = urllib.request.Request(f"https://localhost:{api}/metrics", headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(req, context=ctx).read().decode()
    out = {"points": 0.0, "polls": 0.0, "errors": 0.0, "buckets": {}}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        family = name.split("{")[0]
        if family == "hub_modbus_points_total":
            out["points"] += float(value)
        elif family == "hub_modbus_polls_total":
            out["polls"] += float(value)
        elif family == "hub_modbus_errors_total":
            out["errors"] += float(value)
        elif family == "hub_modbus_poll_lateness_seconds_bucket":
            le = name.split('le="')[1].split('"')[0]
            out["buckets"][le] = out["buckets"].get(le, 0.0) + float(value)
    return out

def memory(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"):
            out[k] = int(v.split()[0])
    return out

def quantile(buckets, q):
    """The upper bound of the bucket holding quantile q, in ms (None past the last bound)."""
    total = buckets.get("+Inf", 0.0)
    if total <= 0:
        return None
    for le, n in sorted(((float(k), v) for k, v in buckets.items() if k != "+Inf")):
        if n >= q * total:
            return le * 1000
    return None

time.sleep(warmup)
t0, a, hub0, srv0 = time.monotonic(), scrape(), cpu(hub), cpu(server)
peak = 0
while time.monotonic() - t0 < secs:
    time.sleep(0.5)
    peak = max(peak, memory(hub)["VmRSS"])
t1, b, hub1, srv1 = time.monotonic(), scrape(), cpu(hub), cpu(server)
seconds = t1 - t0
points = b["points"] - a["points"]
late = {k: b["buckets"].get(k, 0.0) - a["buckets"].get(k, 0.0) for k in b["buckets"]}
m = memory(hub)
print(json.dumps({
    "seconds": seconds,
    "points_per_s": points / seconds,
    "polls_per_s": (b["polls"] - a["polls"]) / seconds,
    "errors": b["errors"] - a["errors"],
    "hub_cpu_cores": (hub1 - hub0) / seconds,
    "hub_cpu_us_per_point": (hub1 - hub0) / points * 1e6 if points else None,
    "server_cpu_cores": (srv1 - srv0) / seconds,
    "lateness_p50_ms": quantile(late, 0.50),
    "lateness_p99_ms": quantile(late, 0.99),
    "VmRSS_kb": m["VmRSS"], "VmHWM_kb": m["VmHWM"], "peak_VmRSS_kb": peak, "threads": m["Threads"],
}))
EOF
}

for r in $(seq "$repeats"); do
  for case_ in "flat out:4:10:10ms" "100 x 1 s:10:10:1s"; do
    IFS=: read -r name buses per interval <<< "$case_"
    units=$(( buses * per ))
    log "modbus: $name ($buses buses x $per devices every $interval), repeat $r/$repeats"
    mport=$(port)
    "$modbus_python" tests/py/modbus_server.py --tcp "127.0.0.1:$mport" --units "1-$units" \
      < /dev/null > "$work/modbus-server.log" 2>&1 &
    server_pid=$!; pids+=("$server_pid")
    for _ in $(seq 100); do grep -q ready "$work/modbus-server.log" && break; sleep 0.1; done
    modbus_config "$work/modbus.toml" "$mport" "$buses" "$per" "$interval"
    BENCH_HUB_CONFIG=$work/modbus.toml start_hub "$work/modbus"
    out=$(modbus_window "$server_pid")
    record modbus "$name" "$r" "$out" buses="$buses" devices="$units" interval="$interval" points_per_poll=14
    stop_hub; stop_pid "$server_pid"; rm -rf "$work/modbus"
  done
done
