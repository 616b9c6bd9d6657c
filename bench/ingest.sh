#!/usr/bin/env bash
# Ingest throughput, measured with the real release hub and firmware-sim, beside a baseline taken in
# the same run: the same publisher into mosquitto alone (its PUBACK), with mosquitto_sub reading
# everything. Prints a table; the JSON lines of each run go to bench/results/.
#
# The offered load (50 devices x 400/s) is above what one 2-core machine sustains, on purpose: the
# figure is the saturated rate, readings acknowledged by the hub (durable) per second over the run
# and its drain. Devices that could not drain their backlog in time make firmware-sim exit 1; that
# is expected here and not an error of the benchmark.
#
#   bench/ingest.sh            # 20 s per run
#   SECONDS_PER_RUN=60 bench/ingest.sh
#
# Needs: mosquitto, mosquitto-clients, socat (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_RUN:-20}
cargo build --release --locked -p hub -p firmware-sim >&2
hub=target/release/hub
sim=target/release/firmware-sim
work=$(mktemp -d)
out=bench/results
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

start_hub() { # start_hub DIR ARGS... -> sets HUB_PID, waits for "hub ready"
  local dir=$1; shift
  mkdir -p "$dir"
  (cd "$dir" && exec "$OLDPWD/$hub" --api-listen 127.0.0.1:0 "$@" > stdout.log 2> stderr.log) &
  HUB_PID=$!; pids+=("$HUB_PID")
  for _ in $(seq 100); do grep -q "hub ready" "$dir/stdout.log" 2>/dev/null && return; sleep 0.1; done
  echo "hub did not start" >&2; cat "$dir/stderr.log" >&2; exit 1
}
rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

echo "| run | devices | offered/s | durable and acked/s | ratio | hub peak RSS |" > "$work/table"
echo "| --- | --- | --- | --- | --- | --- |" >> "$work/table"

# 1. Baseline: mosquitto alone, the publisher counting mosquitto's PUBACKs, a subscriber reading all.
mport=$(port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\n' "$mport" > "$work/m.conf"
mosquitto -c "$work/m.conf" > /dev/null 2>&1 & pids+=($!)
sleep 0.5
mosquitto_sub -p "$mport" -t 'devices/#' -q 1 > /dev/null & pids+=($!)
sleep 0.3
base=$($sim --broker "127.0.0.1:$mport" --acks broker --qos 1 --devices 50 --rate 400 --duration "$secs" --prefix base-)
echo "$base" > "$out/ingest-baseline-mosquitto.json"
base_rate=$(field "$base" rate)
echo "| mosquitto alone (QoS 1, broker PUBACK) | 50 | 20000 | $(printf %.0f "$base_rate") | 1.00 | - |" >> "$work/table"

# 2. The hub behind that mosquitto: a reading counts when the hub has made it durable and acked it.
start_hub "$work/hub-ext" --mqtt-broker "mqtt://127.0.0.1:$mport"
r=$($sim --broker "127.0.0.1:$mport" --transport json --devices 50 --rate 400 --duration "$secs" --drain-timeout 10 --prefix ext- || true)
echo "$r" > "$out/ingest-hub-mosquitto-json.json"
rate=$(field "$r" acked); rate=$(python3 -c "print($rate/$(field "$r" seconds))")
echo "| hub behind mosquitto, JSON QoS 1, hub acks | 50 | 20000 | $(printf %.0f "$rate") | $(python3 -c "print(f'{$rate/$base_rate:.2f}')") | $(( $(rss_kb "$HUB_PID") / 1024 )) MB |" >> "$work/table"
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null || true

# 3. The hub with its own MQTT endpoint: JSON and binary.
eport=$(port)
start_hub "$work/hub-emb" --mqtt-listen "127.0.0.1:$eport"
for transport in json binary; do
  r=$($sim --broker "127.0.0.1:$eport" --transport "$transport" --devices 50 --rate 400 --duration "$secs" --drain-timeout 10 --prefix "emb-$transport-" || true)
  echo "$r" > "$out/ingest-hub-embedded-$transport.json"
  rate=$(field "$r" acked); rate=$(python3 -c "print($rate/$(field "$r" seconds))")
  echo "| hub, its MQTT endpoint, $transport QoS 1, hub acks | 50 | 20000 | $(printf %.0f "$rate") | $(python3 -c "print(f'{$rate/$base_rate:.2f}')") | $(( $(rss_kb "$HUB_PID") / 1024 )) MB |" >> "$work/table"
done
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null || true

# 4. A serial line: how many frames a second the hub takes from one port, against what a 115200
#    baud line (8N1: 11520 bytes/s) can carry at the frame size measured on the wire.
socat -x pty,raw,echo=0,link="$work/tty-hub" pty,raw,echo=0,link="$work/tty-dev" 2> "$work/socat.hex" & pids+=($!)
for _ in $(seq 50); do [ -e "$work/tty-dev" ] && break; sleep 0.1; done
printf '[[serial]]\npath = "%s"\n' "$work/tty-hub" > "$work/serial.toml"
start_hub "$work/hub-serial" --mqtt-listen "127.0.0.1:$(port)" --config "$work/serial.toml"
r=$($sim --transport serial --serial "$work/tty-dev" --rate 20000 --duration "$secs" --drain-timeout 10 --prefix serial- || true)
echo "$r" > "$out/ingest-hub-serial.json"
frames=$(field "$r" acked); rate=$(python3 -c "print($frames/$(field "$r" seconds))")
# socat -x logs every transfer as "< ... length=N ..." for data written to its second address
# (the device's end, towards the hub) and "> ..." for the other way.
bytes=$(grep -E '^< ' "$work/socat.hex" | sed -E 's/.*length=([0-9]+).*/\1/' | awk '{s+=$1} END {print s+0}')
per_frame=$(python3 -c "print($bytes/max($frames,1))")
line=$(python3 -c "print(11520/$per_frame)")
echo "| hub, one serial port (pty, not rate-limited), binary frames | 1 | as fast as it goes | $(printf %.0f "$rate") frames/s ($(printf %.1f "$per_frame") B/frame on the wire) | $(python3 -c "print(f'{$rate/$line:.1f}x a 115200 line ({$line:.0f} frames/s)')") | $(( $(rss_kb "$HUB_PID") / 1024 )) MB |" >> "$work/table"

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), ${secs}s per run"
cat "$work/table"
