#!/usr/bin/env python3
"""The upgrade in place to store schema 4, measured: a store of READINGS readings kept as rows (the
layout of schema 3 and older: `fill --write-path direct`) is opened by the hub on the log path,
which seals the rows into blocks in the background after a backup. The hub is killed with SIGKILL
once, midway, and started again; it goes on and finishes, and compacts the file once idle for a
minute. Prints one JSON object: time to "hub ready" at each start, the sealing's time, the peak
RSS of each run (VmHWM), the store file before, when sealed and after the compaction, and the
readings the hub counts before and after.

Usage: bench/upgrade.py [--readings N] [--kill-after SECONDS] (release binaries in target/release:
`cargo build --release -p hub -p hub-bench`).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import http.client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
HUB = os.environ.get("BENCH_HUB_EXE", os.path.join(TARGET, "release", "hub"))
FILL = os.path.join(TARGET, "release", "fill")


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Hub:
    def __init__(self, data):
        self.api, self.mqtt = port(), port()
        self.data = data
        self.log = open(os.path.join(data, "..", "hub.log"), "ab")
        self.log_path = self.log.name
        self.log_start = os.path.getsize(self.log_path)
        env = dict(os.environ, HUB_API__RATE_LIMIT="0", HUB_DATA__MAX_DISK="64GiB")
        t0 = time.monotonic()
        self.p = subprocess.Popen(
            [HUB, "--data-dir", data, "--api-listen", f"127.0.0.1:{self.api}",
             "--mqtt-listen", f"127.0.0.1:{self.mqtt}"],
            env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        for line in self.p.stdout:
            if "hub ready" in line:
                break
        self.ready_s = time.monotonic() - t0
        self.peak = None

    def text(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")

    def sample(self):
        rss = peak_rss_kb(self.p.pid)
        if rss is not None:
            self.peak = max(self.peak or 0, rss)

    def readings(self):
        ctx = ssl.create_default_context(cafile=os.path.join(self.data, "tls", "ca.crt"))
        token = open(os.path.join(self.data, "admin.token")).read().strip()
        c = http.client.HTTPSConnection("localhost", self.api, context=ctx, timeout=60)
        c.request("GET", "/api/v1/sync/status", headers={"Authorization": f"Bearer {token}"})
        body = json.loads(c.getresponse().read())
        return body["store"]["readings"]

    def kill(self):
        self.sample()
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self):
        self.sample()
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=60)


def wait_for(hub, words, deadline_s):
    t0 = time.monotonic()
    while words not in hub.text():
        hub.sample()
        if time.monotonic() - t0 > deadline_s:
            sys.exit(f"upgrade.py: no '{words}' in {deadline_s} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=10_000_000)
    ap.add_argument("--kill-after", type=float, default=None,
                    help="seconds after the sealing started (default: a third of a first run's estimate)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hub-upgrade-")
    data = os.path.join(work, "data")
    try:
        t0 = time.monotonic()
        fill = json.loads(subprocess.check_output(
            [FILL, "--dir", data, "--readings", str(args.readings), "--devices", "100",
             "--batch", "20000", "--write-path", "direct"]))
        fill_s = time.monotonic() - t0
        before = os.path.getsize(os.path.join(data, "store.redb"))

        first = Hub(data)
        count_before = first.readings()
        sealing_started = wait_for(first, "store upgrade: sealing", 600)
        kill_after = args.kill_after if args.kill_after is not None else 5.0
        time.sleep(kill_after)
        left_at_kill = first.text().count("store upgrade: sealing rows")
        first.kill()

        second = Hub(data)
        sealed_in = wait_for(second, "every old row is sealed", 3600)
        count_after = second.readings()
        done = [l for l in second.text().splitlines() if "every old row is sealed" in l]
        sealed_file = os.path.getsize(os.path.join(data, "store.redb"))
        # The file keeps its size (redb reuses the freed pages) until the hub, idle for a minute,
        # compacts it.
        compacted_in = wait_for(second, "store compacted while idle", 900)
        compacted = [l for l in second.text().splitlines() if "store compacted while idle" in l]
        second.stop()
        after = os.path.getsize(os.path.join(data, "store.redb"))
        backups = os.path.join(data, "backups")
        backup_bytes = sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, fs in os.walk(backups) for f in fs) if os.path.isdir(backups) else 0
        print(json.dumps({
            "tool": "upgrade",
            "readings": args.readings,
            "fill_seconds": fill_s,
            "store_bytes_before": before,
            "bytes_per_reading_before": before / args.readings,
            "first_start_ready_s": first.ready_s,
            "backup_and_count_s": sealing_started,
            "killed_after_s": kill_after,
            "progress_lines_before_kill": left_at_kill,
            "first_run_peak_rss_kb": first.peak,
            "second_start_ready_s": second.ready_s,
            "second_run_sealing_s": sealed_in,
            "second_run_peak_rss_kb": second.peak,
            "done_line": done[-1] if done else None,
            "readings_before": count_before,
            "readings_after": count_after,
            "store_bytes_when_sealed": sealed_file,
            "compacted_after_s": compacted_in,
            "compacted_line": compacted[-1] if compacted else None,
            "store_bytes_after": after,
            "bytes_per_reading_after": after / args.readings,
            "backup_bytes": backup_bytes,
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
