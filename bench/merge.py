#!/usr/bin/env python3
"""Merges bench/run results into one for bench/report.py.

    bench/merge.py FULL.json PART.json... > merged.json

FULL is a full run; each PART (a run with --only) replaces the sections it measured, so a section
re-measured after a change does not need the whole 35-minute run again. The report then lists,
for every section, the run it comes from (time, commit, command): figures from different runs on
the same machine, never mixed within a section.
"""
import json
import sys


def origin(res, sections):
    return {
        "sections": sorted(sections),
        "time_utc": res["time_utc"],
        "git_commit": res["git_commit"],
        "git_dirty": res["git_dirty"],
        "command": res["command"],
    }


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    full = json.load(open(sys.argv[1]))
    parts = [origin(full, full["summary"])]
    for path in sys.argv[2:]:
        part = json.load(open(path))
        if part["machine"]["cpu_model"] != full["machine"]["cpu_model"]:
            sys.exit(f"bench/merge.py: {path} ran on another machine")
        sections = set(part["summary"])
        full["summary"].update(part["summary"])
        full["runs"] = [r for r in full["runs"] if r["section"] not in sections] + part["runs"]
        for p in parts:
            p["sections"] = [s for s in p["sections"] if s not in sections]
        parts.append(origin(part, sections))
    full["parts"] = [p for p in parts if p["sections"]]
    json.dump(full, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
