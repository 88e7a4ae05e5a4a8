"""The v2 and systemd drivers with real resource controllers. They need a host whose
``/sys/fs/cgroup`` is cgroup2 (and, for systemd, PID 1 = systemd with a system bus), so
they skip on the v1 CI host and run inside the systemd + cgroup v2 qemu guest."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.cgroups import CgroupError, Manager, cgroups_path_for, new_manager
from agent.runtime.cgroups.detect import pid1_is_systemd, systemd_bus_answers
from agent.runtime.cgroups.fs import CGROUP2_SUPER_MAGIC, statfs_type

ROOT = Path("/sys/fs/cgroup")


def _unified_with_memory() -> bool:
    try:
        is_v2 = statfs_type(str(ROOT)) == CGROUP2_SUPER_MAGIC
    except CgroupError:
        return False
    return is_v2 and "memory" in (ROOT / "cgroup.controllers").read_text().split()


def _skip_reason(driver: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not _unified_with_memory():
        return "needs /sys/fs/cgroup as cgroup2 with the memory controller (qemu guest)"
    if driver == "systemd" and not (pid1_is_systemd() and systemd_bus_answers()):
        return "needs systemd as PID 1 and a system bus (qemu guest)"
    return None


pytestmark = pytest.mark.privileged
DRIVERS = [
    pytest.param(
        d, marks=pytest.mark.skipif(_skip_reason(d) is not None, reason=str(_skip_reason(d)))
    )
    for d in ("v2", "systemd")
]
GATED = "import sys; sys.stdin.readline()\n"
HOG = "chunks = []\nwhile True:\n    chunks.append(bytearray(4 * 1024 * 1024))\n"


@contextlib.contextmanager
def container(driver: str) -> Iterator[Manager]:
    mgr = new_manager(cgroups_path_for("test", f"t{uuid.uuid4().hex[:12]}", driver=driver))
    assert mgr.driver == driver
    try:
        mgr.ensure_parent()
        mgr.create()
        yield mgr
    finally:
        with contextlib.suppress(CgroupError):
            mgr.kill_all()
        deadline = time.monotonic() + 5
        while Path(mgr.path()).exists() and mgr.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        mgr.destroy()
        mgr.remove_parent_if_empty()


@contextlib.contextmanager
def gated(code: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", GATED + code], stdin=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_limits_are_written_and_the_memory_limit_oom_kills(driver: str) -> None:
    limit = 48 << 20
    with container(driver) as mgr, gated(HOG) as proc:
        mgr.set(
            {
                "cpu": {"shares": 512, "quota": 50_000, "period": 100_000},
                "memory": {"limit": limit, "swap": limit},
                "pids": {"limit": 16},
            }
        )
        mgr.apply(proc.pid)
        cgroup = Path(mgr.path())
        assert (cgroup / "memory.max").read_text().strip() == str(limit)
        assert (cgroup / "cpu.weight").read_text().strip() == "59"
        assert (cgroup / "cpu.max").read_text().split()[0] == "50000"
        assert (cgroup / "pids.max").read_text().strip() == "16"
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == -signal.SIGKILL
        stats = mgr.stats()
        assert stats.oom_kill >= 1
        assert stats.memory_limit == limit
    assert not Path(mgr.path()).exists()
