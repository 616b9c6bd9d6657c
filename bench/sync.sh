#!/usr/bin/env bash
# Sync catch-up, measured with the real release hub: a backlog is stored while the cloud is down
# (nothing listens at the sink's URL), the hub restarts (as after a reboot), then a local HTTP
# receiver (bench/receiver.py) comes up and the hub drains the backlog into it. Reports the catch-up rate (readings/s from the receiver's
# first batch to the sink's lag reaching 0), bytes per reading on the wire (request bodies as sent,
# compressed), and the hub's peak RSS while draining (VmRSS sampled every 0.1 s). Then the same
# with each compression on a smaller backlog, for bytes per reading. JSON lines go to bench/results/.
#
#   bench/sync.sh                 # 1,000,000 readings
#   BACKLOG=200000 bench/sync.sh
#
# Needs: mosquitto-clients not required; python3 (the receiver).
set -euo pipefail
cd "$(dirname "$0")/.."
backlog=${BACKLOG:-1000000}
cargo build --release --locked -p hub -p firmware-sim >&2
hub=$PWD/target/release/hub
sim=$PWD/target/release/firmware-sim
work=$(mktemp -d)
out=bench/results
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
status() { curl -s --cacert "$1/hub-data/tls/ca.crt" -H "Authorization: Bearer $(cat "$1/hub-data/admin.token")" "https://localhost:$2/api/v1/sync/status"; }
get() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

run() { # run NAME COMPRESSION READINGS -> prints a table row
  local name=$1 compression=$2 readings=$3
  local dir=$work/$name rport api mport
  rport=$(port); api=$(port); mport=$(port)
  mkdir -p "$dir"
  cat > "$dir/hub.toml" <<TOML
[sync]
hub_id = "bench"
[[sync.http]]
name = "cloud"
url = "http://127.0.0.1:$rport/ingest"
compression = "$compression"
retry_min = "100ms"
retry_max = "500ms"
TOML
  (cd "$dir" && exec "$hub" --config hub.toml --api-listen "127.0.0.1:$api" --mqtt-listen "127.0.0.1:$mport" > stdout.log 2> stderr.log) &
  local hub_pid=$!; pids+=("$hub_pid")
  for _ in $(seq 100); do grep -q "hub ready" "$dir/stdout.log" 2>/dev/null && break; sleep 0.1; done
  # The backlog: 100 devices, as fast as the hub takes them (acked only once durable).
  local per=$(( readings / 100 ))
  "$sim" --broker "127.0.0.1:$mport" --devices 100 --count "$per" --rate 2000 --burst 20 \
    --drain-timeout 600 --prefix "b-" > "$dir/sim.json"
  local stored
  stored=$(status "$dir" "$api" | get 'd["store"]["readings"]')
  local ingest_rss
  ingest_rss=$(awk '/VmRSS/ {print $2}' "/proc/$hub_pid/status")
  # The gateway reboots with the backlog on disk: the drain is measured in a fresh process, so its
  # memory is the drain's own, not what ingest left behind.
  kill "$hub_pid"; wait "$hub_pid" 2>/dev/null || true
  : > "$dir/stdout.log"
  (cd "$dir" && exec "$hub" --config hub.toml --api-listen "127.0.0.1:$api" --mqtt-listen "127.0.0.1:$mport" > stdout.log 2> stderr2.log) &
  hub_pid=$!; pids+=("$hub_pid")
  for _ in $(seq 100); do grep -q "hub ready" "$dir/stdout.log" 2>/dev/null && break; sleep 0.1; done
  local before
  before=$(awk '/VmRSS/ {print $2}' "/proc/$hub_pid/status")
  # The cloud comes up.
  python3 bench/receiver.py "$rport" & local rpid=$!; pids+=("$rpid")
  local start peak=0 rss lag
  start=$(date +%s.%N)
  while :; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$hub_pid/status")
    (( rss > peak )) && peak=$rss
    lag=$(status "$dir" "$api" | get 'd["sinks"][0]["follower"]["lag_readings"]')
    [ "$lag" = 0 ] && break
    sleep 0.1
  done
  local end seconds
  end=$(date +%s.%N)
  seconds=$(python3 -c "print($end - $start)")
  local s
  s=$(status "$dir" "$api")
  local delivered bytes received
  delivered=$(echo "$s" | get 'd["sinks"][0]["delivered"]')
  bytes=$(echo "$s" | get 'd["sinks"][0]["bytes"]')
  received=$(curl -s "http://127.0.0.1:$rport/stats")
  echo "{\"run\":\"$name\",\"compression\":\"$compression\",\"stored\":$stored,\"delivered\":$delivered,\"seconds\":$seconds,\"body_bytes\":$bytes,\"rss_after_ingest_kb\":$ingest_rss,\"rss_before_drain_kb\":$before,\"peak_rss_kb\":$peak,\"receiver\":$received}" > "$out/sync-$name.json"
  printf '| %s | %s | %s | %.0f | %.1f | %.1f | %d MB | %d MB | %d MB |\n' "$name" "$compression" "$delivered" \
    "$(python3 -c "print($delivered/$seconds)")" "$seconds" "$(python3 -c "print($bytes/max($delivered,1))")" $(( ingest_rss / 1024 )) $(( before / 1024 )) $(( peak / 1024 ))
  kill "$rpid" "$hub_pid"; wait "$hub_pid" 2>/dev/null || true
}

echo "| run | compression | readings delivered | catch-up readings/s | seconds | body bytes/reading | hub RSS after ingest | hub RSS restarted, before the drain | hub peak RSS while draining |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
run "backlog-$backlog" gzip "$backlog"
if [ -z "${ONLY_BACKLOG:-}" ]; then
  for c in none gzip zstd; do run "small-$c" "$c" 100000; done
fi
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
