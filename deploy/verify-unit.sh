#!/usr/bin/env bash
# Checks deploy/hub.service with `systemd-analyze verify`. verify refuses a unit whose ExecStart
# binary does not exist, so unless /usr/bin/hub is installed it checks a copy whose ExecStart
# names BINARY (default: the release build) instead; every other line is the unit's own.
# verify exits 0 after a warning such as "Unknown key", so any output counts as a failure here.
# Usage: deploy/verify-unit.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/hub}
if [ -z "${1:-}" ] && [ -n "${CARGO_TARGET_DIR:-}" ]; then
  binary=$CARGO_TARGET_DIR/release/hub
fi
verify() {
  local out
  out=$(systemd-analyze verify "$1" 2>&1) || { echo "$out" >&2; return 1; }
  [ -z "$out" ] || { echo "$out" >&2; echo "systemd-analyze verify warned: failing" >&2; return 1; }
}
if [ -z "${1:-}" ] && [ -x /usr/bin/hub ]; then
  verify deploy/hub.service
  echo "deploy/hub.service: verified as is (/usr/bin/hub is installed)"
  exit 0
fi
[ -x "$binary" ] || { echo "no executable $binary: build it first (cargo build --release -p hub)" >&2; exit 1; }
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# The copy keeps the unit's name: verify derives the unit's name from the file name.
sed "s|^ExecStart=/usr/bin/hub |ExecStart=$binary |" deploy/hub.service > "$dir/hub.service"
grep -q "^ExecStart=$binary " "$dir/hub.service" || { echo "ExecStart not rewritten" >&2; exit 1; }
verify "$dir/hub.service"
echo "deploy/hub.service: verified (ExecStart pointed at $binary)"
