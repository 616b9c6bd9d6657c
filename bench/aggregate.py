#!/usr/bin/env python3
"""Folds the measurements of one bench/run (JSON lines, one per run) into its result file: the
machine, the settings, every run as measured, and per case the median (and min, max) of every
numeric figure over its repeats.

    bench/aggregate.py RECORDS.jsonl RESULT.json --stamp ... (see bench/run)
"""
import argparse
import json
import os
import platform
import statistics
import subprocess


def sh(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None


def machine():
    lscpu = sh("lscpu") or ""
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), None)
    mem_kb = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), None)
    return {
        "cores": os.cpu_count(),
        "cpu_model": model or platform.processor() or "unknown",
        "mem_total_kb": mem_kb,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "rustc": sh("rustc", "--version"),
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
    }


def numeric_fields(record, prefix=""):
    """Numeric leaves of a record, nested keys joined with '.'."""
    out = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[key] = v
        elif isinstance(v, dict) and k != "receiver":
            out.update(numeric_fields(v, key + "."))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("records")
    ap.add_argument("result")
    ap.add_argument("--stamp", required=True)
    ap.add_argument("--quick", type=int, default=0)
    ap.add_argument("--repeats", type=int, required=True)
    ap.add_argument("--seconds", type=int, required=True)
    ap.add_argument("--hub-sha", default=None)
    ap.add_argument("--total-seconds", type=int, default=None)
    ap.add_argument("--build-seconds", type=int, default=None)
    ap.add_argument("--command", default="bench/run")
    ap.add_argument("--stores", default="")
    a = ap.parse_args()

    runs = [json.loads(l) for l in open(a.records) if l.strip()]
    groups = {}
    for r in runs:
        groups.setdefault((r["section"], r["case"]), []).append(r)
    summary = {}
    for (section, case), rs in groups.items():
        fields = {}
        for r in rs:
            for k, v in numeric_fields(r).items():
                if k == "repeat":
                    continue
                fields.setdefault(k, []).append(v)
        first = rs[0]
        summary.setdefault(section, {})[case] = {
            "n": len(rs),
            "labels": {k: v for k, v in first.items() if isinstance(v, str) and k not in ("section", "case")},
            "median": {k: statistics.median(v) for k, v in fields.items()},
            "min": {k: min(v) for k, v in fields.items()},
            "max": {k: max(v) for k, v in fields.items()},
        }
    result = {
        "benchmark": "bench/run",
        "time_utc": a.stamp,
        "command": a.command,
        "git_commit": sh("git", "rev-parse", "HEAD"),
        "git_dirty": bool(sh("git", "status", "--porcelain", "--", "hub", "device-protocol", "bench/tools")),
        "hub_binary_sha256_16": a.hub_sha,
        "machine": machine(),
        "settings": {
            "quick": bool(a.quick),
            "repeats": a.repeats,
            "seconds_per_ingest_run": a.seconds,
            "stores": [int(s) for s in a.stores.split(",") if s],
            "total_seconds": a.total_seconds,
            "build_seconds": a.build_seconds,
        },
        "summary": summary,
        "runs": runs,
    }
    with open(a.result, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
