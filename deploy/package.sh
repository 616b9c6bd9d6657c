#!/usr/bin/env bash
# Builds the Debian package of the hub with cargo-deb (release profile) and prints its path.
# Safe to run again: cargo-deb is installed only when missing, and the build is incremental.
#
#   deploy/package.sh                 the .deb for this machine
#   deploy/package.sh --target T      the .deb for target T (deploy/arm.sh uses this)
#   deploy/package.sh --check         then, as root, installs it, checks what landed (files, the
#                                     user, the unit, a start as user hub that sends READY=1 and
#                                     STOPPING=1), removes and purges it. Refuses when a hub
#                                     package is installed already: it would remove it.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
deb_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=true ;;
    --target) deb_args+=(--target "$2"); shift ;;
    *) echo "usage: deploy/package.sh [--target TRIPLE] [--check]" >&2; exit 2 ;;
  esac
  shift
done

if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi

# The release profile strips already (strip = true), so cargo-deb need not find a strip for the
# target; --locked builds what Cargo.lock says.
out=$(cargo deb -p hub --locked --no-strip "${deb_args[@]}")
deb=$(printf '%s\n' "$out" | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb did not say where the package is: $out" >&2; exit 1; }
echo "package: $deb"
dpkg-deb --info "$deb" | grep -E '^ (Package|Version|Architecture|Depends|Installed-Size):'
dpkg-deb --contents "$deb" | awk '{print "  " $1, $6}'

$check || exit 0

[ "$(id -u)" = 0 ] || { echo "--check installs the package: run it as root" >&2; exit 1; }
if dpkg-query -W -f '${Status}' hub 2>/dev/null | grep -q 'install ok'; then
  echo "a hub package is installed already; --check would remove it" >&2
  exit 1
fi
tmp=$(mktemp -d)
hub_pid=
cleanup() {
  [ -n "$hub_pid" ] && kill -KILL "$hub_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== dpkg -i"
dpkg -i "$deb"
for f in /usr/bin/hub /lib/systemd/system/hub.service /etc/hub/hub.toml; do
  [ -e "$f" ] || fail "$f is missing"
  ls -l "$f"
done
ls -ld /var/lib/hub
dpkg-query -W -f '${Conffiles}\n' hub | grep -q '/etc/hub/hub.toml' || fail "hub.toml is not a conffile"
id hub
id -nG hub | grep -qw dialout || fail "hub is not in dialout"
/usr/bin/hub --version
runuser -u hub -- env HUB_DATA__DIR=/var/lib/hub /usr/bin/hub --config /etc/hub/hub.toml check-config
# is-enabled reads the unit files, so it answers where systemd does not run, too.
if command -v systemctl >/dev/null; then
  [ "$(systemctl is-enabled hub.service)" = enabled ] || fail "hub.service is not enabled"
  echo "hub.service: enabled"
fi
deploy/verify-unit.sh

echo "== a start as the service does it: user hub, the state directory, a notify socket"
# Free ports (port 0) so that nothing else on this machine is disturbed.
chmod 0755 "$tmp"
python3 - "$tmp/notify.sock" > "$tmp/notify.log" <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
s.settimeout(60)
for _ in range(2):
    print(s.recv(256).decode(), flush=True)
PY
listener=$!
for _ in $(seq 50); do [ -S "$tmp/notify.sock" ] && break; sleep 0.1; done
# setpriv and env exec, so $! is the hub itself: the signal and the exit code are its own.
setpriv --reuid=hub --regid=hub --init-groups -- env NOTIFY_SOCKET="$tmp/notify.sock" HUB_DATA__DIR=/var/lib/hub \
  HUB_API__LISTEN=127.0.0.1:0 HUB_MQTT__LISTEN=127.0.0.1:0 \
  /usr/bin/hub --config /etc/hub/hub.toml > "$tmp/hub.log" 2>&1 &
hub_pid=$!
for _ in $(seq 300); do grep -q 'READY=1' "$tmp/notify.log" && break; sleep 0.1; done
grep -q 'READY=1' "$tmp/notify.log" || { cat "$tmp/hub.log"; fail "no READY=1"; }
grep 'hub ready' "$tmp/hub.log"
kill -TERM "$hub_pid"
status=0
wait "$hub_pid" || status=$?
hub_pid=
wait "$listener" || true
cat "$tmp/notify.log"
grep -q 'STOPPING=1' "$tmp/notify.log" || fail "no STOPPING=1"
[ "$status" = 0 ] || { cat "$tmp/hub.log"; fail "the hub exited $status after SIGTERM"; }
ls -l /var/lib/hub

echo "== dpkg -r"
dpkg -r hub
[ ! -e /usr/bin/hub ] || fail "/usr/bin/hub is still there"
[ ! -e /lib/systemd/system/hub.service ] || fail "the unit is still there"
[ -d /var/lib/hub ] || fail "remove deleted the data"
[ ! -e /etc/systemd/system/multi-user.target.wants/hub.service ] || fail "hub.service is still enabled"
echo "== dpkg --purge"
dpkg --purge hub
[ ! -e /etc/hub ] || fail "/etc/hub is still there"
[ ! -e /var/lib/hub ] || fail "/var/lib/hub is still there"
echo "package check passed: $deb"
