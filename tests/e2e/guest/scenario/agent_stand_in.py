"""Stands in for the agent process in the restart scenario: creates and starts containers
through agent.runtime, reports their pids, then idles like a running agent until stopped.

Usage: python3 -m scenario.agent_stand_in <runtime root> <jobs JSON> <ready file>
"""

from __future__ import annotations

import json
import os
import sys
import time

from agent.runtime.runtime import Runtime


def main() -> int:
    root, jobs, ready = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    with open("/proc/self/attr/current", "rb") as fh:
        context = fh.read().rstrip(b"\0\n").decode()
    report: dict[str, object] = {
        "agent_pid": os.getpid(),
        "context": context,
        "pids": {},
        "error": None,
    }
    try:
        rt = Runtime(root)
        pids: dict[str, int] = {}
        for job in jobs:
            rt.create(job["id"], job["bundle"])
            rt.start(job["id"])
            pids[job["id"]] = int(rt.state(job["id"])["pid"])
        report["pids"] = pids
    except Exception as exc:  # reported to the scenario, which fails with it
        report["error"] = f"{type(exc).__name__}: {exc}"
    tmp = f"{ready}.tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh)
    os.replace(tmp, ready)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    raise SystemExit(main())
