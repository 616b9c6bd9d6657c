#!/usr/bin/env bash
# ARM builds with cargo alone (.cargo/config.toml has the linkers and qemu runners).
#
#   deploy/arm.sh          the aarch64 (gnu) release binary and its .deb; a smoke test of that
#                          binary under qemu-aarch64; the binary sizes; the native idle RSS
#   deploy/arm.sh --all    also armv7 (gnueabihf) and the static aarch64 musl binary, each smoke-tested
#
# The smoke test starts the hub in a temp data dir on free ports, waits for "hub ready", publishes
# a reading to the hub's MQTT endpoint, reads it back over HTTPS with the first-run admin token and CA,
# and stops the hub with SIGTERM, which must end it with exit code 0. Each release build takes
# 7 minutes or more on 2 cores: this is not part of CI.
#
# Needs: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf
#   libc6-dev-armhf-cross qemu-user clang lld mosquitto-clients curl
#   rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl
set -euo pipefail
cd "$(dirname "$0")/.."

all=false
case "${1:-}" in
  "") ;;
  --all) all=true ;;
  *) echo "usage: deploy/arm.sh [--all]" >&2; exit 2 ;;
esac

AARCH64=aarch64-unknown-linux-gnu
ARMV7=armv7-unknown-linux-gnueabihf
MUSL=aarch64-unknown-linux-musl
# How long a hub under qemu may take to make its CA and start listening.
READY_TIMEOUT_S=120

need=(aarch64-linux-gnu-gcc qemu-aarch64 mosquitto_pub curl python3)
targets=("$AARCH64")
if $all; then
  need+=(arm-linux-gnueabihf-gcc qemu-arm clang)
  targets+=("$ARMV7" "$MUSL")
fi
for cmd in "${need[@]}"; do
  command -v "$cmd" >/dev/null || { echo "missing $cmd: see the comment at the top of $0" >&2; exit 1; }
done
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || { echo "missing target: rustup target add $t" >&2; exit 1; }
done

target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# smoke NAME COMMAND...: runs the hub given by COMMAND through the smoke test described on top.
smoke() {
  local name=$1
  shift
  local dir=$tmp/smoke-$name log=$tmp/smoke-$name.log
  mkdir -p "$dir"
  "$@" --data-dir "$dir/data" --api-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 > "$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local ready=
  for _ in $(seq $((READY_TIMEOUT_S * 10))); do
    ready=$(grep -m1 '^hub ready:' "$log" || true)
    [ -n "$ready" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$ready" ] || { cat "$log" >&2; echo "smoke $name: no 'hub ready' within ${READY_TIMEOUT_S}s" >&2; return 1; }
  echo "smoke $name: $ready"
  # "hub ready: api=https://127.0.0.1:PORT mqtt=127.0.0.1:PORT data=..."
  local api_port mqtt_port
  api_port=$(sed -E 's|.*api=https://[^ ]*:([0-9]+) .*|\1|' <<<"$ready")
  mqtt_port=$(sed -E 's|.* mqtt=[^ ]*:([0-9]+) .*|\1|' <<<"$ready")
  local device=smoke-$name
  mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t "devices/$device/telemetry" \
    -m '{"seq":1,"metrics":{"temp":21.5}}'
  local latest=
  for _ in $(seq 100); do
    latest=$(curl -sf --cacert "$dir/data/tls/ca.crt" \
      -H "Authorization: Bearer $(cat "$dir/data/admin.token")" \
      "https://localhost:$api_port/api/v1/devices/$device/latest" || true)
    grep -q '21.5' <<<"$latest" && break
    sleep 0.2
  done
  grep -q '21.5' <<<"$latest" || { cat "$log" >&2; echo "smoke $name: the reading did not come back: $latest" >&2; return 1; }
  echo "smoke $name: GET /api/v1/devices/$device/latest -> $latest"
  kill -TERM "$pid"
  local status=0
  wait "$pid" || status=$?
  [ "$status" = 0 ] || { cat "$log" >&2; echo "smoke $name: exit code $status after SIGTERM" >&2; return 1; }
  echo "smoke $name: SIGTERM -> exit code 0"
}

# size FILE: bytes and MiB, and whether the file still has symbols.
size() {
  local bytes
  bytes=$(stat -c %s "$1")
  printf '%-34s %9d bytes (%s MiB) %s\n' "$2" "$bytes" "$(awk "BEGIN {printf \"%.1f\", $bytes / 1048576}")" \
    "$(file -b "$1" | grep -o -E 'static-pie linked|statically linked|dynamically linked|not stripped|stripped' | paste -sd, -)"
}

# glibc FILE OBJDUMP: the newest glibc symbol version the binary needs.
glibc() {
  "$2" -T "$1" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1
}

echo "== aarch64 (gnu): release build and .deb"
deb=$(deploy/package.sh --target "$AARCH64" | sed -n 's/^package: //p')
echo "package: $deb"
bin_aarch64=$target_dir/$AARCH64/release/hub
smoke aarch64 qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin_aarch64"

failed=()
if $all; then
  echo "== armv7 (gnueabihf): release build"
  cargo build --release --locked -p hub --target "$ARMV7"
  smoke armv7 qemu-arm -L /usr/arm-linux-gnueabihf "$target_dir/$ARMV7/release/hub" || failed+=(armv7)
  echo "== aarch64 musl (static): release build"
  if cargo build --release --locked -p hub --target "$MUSL"; then
    smoke musl qemu-aarch64 "$target_dir/$MUSL/release/hub" || failed+=(musl)
  else
    failed+=(musl)
  fi
fi

echo "== x86_64: release build"
cargo build --release --locked -p hub
bin_native=$target_dir/release/hub

echo "== native idle RSS (qemu's own memory makes an ARM figure meaningless)"
dir=$tmp/idle
mkdir -p "$dir"
"$bin_native" --data-dir "$dir/data" --api-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 > "$dir/log" 2>&1 &
pid=$!
pids+=("$pid")
for _ in $(seq 300); do grep -q '^hub ready:' "$dir/log" && break; sleep 0.1; done
grep -q '^hub ready:' "$dir/log" || { cat "$dir/log" >&2; echo "native hub not ready" >&2; exit 1; }
sleep 5
rss=$(awk '/^VmRSS/ {print $2, $3}' "/proc/$pid/status")
threads=$(awk '/^Threads/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"
wait "$pid" || true

echo
echo "== sizes (the release profile strips)"
size "$bin_native" "x86_64-unknown-linux-gnu"
size "$bin_aarch64" "$AARCH64"
if $all; then
  [ -f "$target_dir/$ARMV7/release/hub" ] && size "$target_dir/$ARMV7/release/hub" "$ARMV7"
  [ -f "$target_dir/$MUSL/release/hub" ] && size "$target_dir/$MUSL/release/hub" "$MUSL"
fi
printf '%-34s %9d bytes\n' "$(basename "$deb")" "$(stat -c %s "$deb")"
echo "aarch64 gnu binary needs glibc >= $(glibc "$bin_aarch64" aarch64-linux-gnu-objdump | sed 's/GLIBC_//')"
if $all && [ -f "$target_dir/$ARMV7/release/hub" ]; then
  echo "armv7 gnu binary needs glibc >= $(glibc "$target_dir/$ARMV7/release/hub" arm-linux-gnueabihf-objdump | sed 's/GLIBC_//')"
fi
echo "native idle RSS after 5 s: $rss, $threads threads"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (see above)" >&2
  exit 1
fi
