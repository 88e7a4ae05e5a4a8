"""The agent's cgroup v2 and systemd drivers, each enforcing a memory and a pids limit on
real processes and reporting stats, on a real systemd + unified-hierarchy host."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from scenario.common import Context, Skip, import_or_skip, run

Probe = Callable[[Any], None]

PROJECT = "guestproj"
MEMORY_LIMIT = 48 << 20
PIDS_LIMIT = 12

# Waits for a byte on stdin, then allocates (and writes) 256 MiB in 8 MiB steps.
HOG = (
    "import sys\nsys.stdin.readline()\nchunks = []\n"
    "for _ in range(32):\n    chunks.append(b'x' * (8 << 20))\nprint('survived', flush=True)\n"
)
# Waits, forks sleeping children until fork fails, prints "<count> <errno>", waits, cleans up.
FORKER = (
    "import os, sys, time\nsys.stdin.readline()\nkids, err = [], 0\n"
    "for _ in range(40):\n    try:\n        pid = os.fork()\n"
    "    except OSError as exc:\n        err = exc.errno\n        break\n"
    "    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n    kids.append(pid)\n"
    "print(len(kids), err, flush=True)\nsys.stdin.readline()\n"
    "for k in kids:\n    os.kill(k, 9)\nfor k in kids:\n    os.waitpid(k, 0)\n"
)


def _waiting_python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as fh:
        return fh.read().strip().split("::", 1)[-1]


def _manager(cg: Any, driver: str, container_id: str) -> Any:
    path = cg.cgroups_path_for(PROJECT, container_id, driver=driver)
    try:
        return cg.new_manager(path, driver=driver)
    except cg.CgroupError as exc:
        if exc.step == "new_manager":
            raise Skip(
                f"agent.runtime.cgroups.new_manager has no {driver} driver yet: {exc}"
            ) from exc
        raise


def _memory_limit_enforced(ctx: Context, mgr: Any) -> str:
    # A sleeper first, like a container's init: it keeps the cgroup (and a systemd scope,
    # which systemd collects once empty) alive after the hog is killed, so stats can be read.
    sleeper = subprocess.Popen(["sleep", "300"])
    hog = _waiting_python(HOG)
    try:
        mgr.apply(sleeper.pid)
        mgr.apply(hog.pid)
        where = _cgroup_of(hog.pid)
        ctx.log(f"sleeper pid {sleeper.pid} and memory hog pid {hog.pid} in {where}")
        _release(hog)
        out, _ = hog.communicate(timeout=120)
        stats = mgr.stats()
        ctx.log(f"pids in the cgroup after the hog ended: {mgr.pids()}")
    finally:
        for proc in (hog, sleeper):
            proc.kill()
            proc.wait()
    ctx.log(f"memory: hog rc={hog.returncode} out={out.strip()!r} stats={stats}")
    assert hog.returncode == -9, f"256 MiB under a 48 MiB limit ended with rc {hog.returncode}"
    assert stats.memory_limit == MEMORY_LIMIT, f"stats.memory_limit={stats.memory_limit}"
    assert stats.oom_kill >= 1, f"no OOM kill counted: {stats}"
    return where


def _pids_limit_enforced(ctx: Context, mgr: Any, probe: Probe | None) -> tuple[int, int]:
    forker = _waiting_python(FORKER)
    try:
        mgr.apply(forker.pid)
        _release(forker)
        assert forker.stdout is not None
        count, err = (int(x) for x in forker.stdout.readline().split())
        stats = mgr.stats()
        ctx.log(f"pids: forked {count} children then errno {err}; stats={stats}")
        if probe is not None:
            probe(mgr)  # while the cgroup still has processes (systemd collects empty scopes)
        _release(forker)
        forker.communicate(timeout=60)
    finally:
        forker.kill()
        forker.wait()
    assert err == 11, f"fork stopped with errno {err}, wanted EAGAIN (11)"
    assert count == PIDS_LIMIT - 1, f"{count} forks under pids.max={PIDS_LIMIT}"
    assert stats.pids_current == PIDS_LIMIT, f"stats.pids_current={stats.pids_current}"
    return count, stats.pids_current


def _driver_scenario(ctx: Context, driver: str, probe: Probe | None = None) -> tuple[str, Any]:
    cg = import_or_skip("agent.runtime.cgroups")
    limits = {"memory": {"limit": MEMORY_LIMIT}, "pids": {"limit": PIDS_LIMIT}}
    mem = _manager(cg, driver, f"{driver}-mem")
    pids = _manager(cg, driver, f"{driver}-pids")
    try:
        for mgr in (mem, pids):
            mgr.ensure_parent()
            mgr.create()
            mgr.set(limits)
            ctx.log(f"{mgr.cgroups_path} -> {mgr.path()}")
        where = _memory_limit_enforced(ctx, mem)
        count, current = _pids_limit_enforced(ctx, pids, probe)
    finally:
        for mgr in (mem, pids):
            mgr.destroy()
    detail = (
        f"{driver}: 256 MiB hog OOM-killed under memory.max={MEMORY_LIMIT >> 20}MiB in {where}; "
        f"{count} forks then EAGAIN under pids.max={PIDS_LIMIT} (pids_current={current})"
    )
    return detail, mem


def v2_driver(ctx: Context) -> str:
    detail, mgr = _driver_scenario(ctx, "v2")
    assert mgr.driver == "v2", f"manager driver is {mgr.driver}"
    return detail


def _bus_diagnosis() -> str:
    """Why the system bus does not answer, for the log."""
    states = run(["systemctl", "is-active", "dbus.socket", "dbus.service"]).stdout.split()
    try:
        from jeepney.io.blocking import open_dbus_connection

        with open_dbus_connection(bus="SYSTEM", timeout=5):
            opened = "connection opened"
    except Exception as exc:  # the reason is what we want to see
        opened = f"{type(exc).__name__}: {exc}"
    return f"dbus.socket/dbus.service {states}; jeepney: {opened}"


def systemd_driver(ctx: Context) -> str:
    cg = import_or_skip("agent.runtime.cgroups")
    # multi-user.target may still be starting dbus when the scenarios begin: wait for it.
    deadline = time.monotonic() + 30
    while not cg.detect.systemd_bus_answers():
        if time.monotonic() > deadline:
            ctx.log(f"bus diagnosis: {_bus_diagnosis()}")
            raise AssertionError("systemd does not answer on the system bus within 30 s")
        time.sleep(1)
    expected_slice = f"machine-{PROJECT}.slice"
    seen: dict[str, str] = {}

    def probe(mgr: Any) -> None:
        unit = mgr.path().rstrip("/").rsplit("/", 1)[-1]
        props = "Slice,Transient,ActiveState,MemoryMax,TasksMax,ControlGroup"
        out = run(["systemctl", "show", "-p", props, unit]).stdout
        for line in out.splitlines():
            key, found, value = line.partition("=")
            if found:
                seen[key] = value
        seen["unit"] = unit
        ctx.log(f"systemctl show {unit}: {sorted(seen.items())}")

    detail, _ = _driver_scenario(ctx, "systemd", probe)
    assert seen.get("Transient") == "yes", f"{seen.get('unit')} is not transient: {seen}"
    assert seen.get("Slice") == expected_slice, f"scope is in {seen.get('Slice')}"
    assert seen.get("TasksMax") == str(PIDS_LIMIT), f"systemd TasksMax={seen.get('TasksMax')}"
    return f"{detail}; transient scope {seen['unit']} in {expected_slice}"
