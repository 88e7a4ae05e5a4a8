"""The real v2 driver on this host's cgroup2 mount (``/sys/fs/cgroup/unified``).

That hierarchy has no resource controllers here (they are bound to v1), but the cgroup2
core is real: creating, moving processes, ``cgroup.freeze``, ``cgroup.kill``, ``cpu.stat``,
destroying, and starting a child straight inside the cgroup with ``clone3`` and the fd of
:meth:`open_fd` (``CLONE_INTO_CGROUP``). Limits are proven in the qemu guest.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.runtime.cgroups import V2Manager, cgroups_path_for, new_manager
from agent.runtime.cgroups.fs import CGROUP2_SUPER_MAGIC, statfs_type

UNIFIED = "/sys/fs/cgroup/unified"


def _is_cgroup2(path: str) -> bool:
    try:
        return statfs_type(path) == CGROUP2_SUPER_MAGIC
    except Exception:
        return False


pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not _is_cgroup2(UNIFIED), reason="no cgroup2 mount at " + UNIFIED),
]

CLONE_INTO_CGROUP = 0x200000000
SYS_CLONE3 = 435  # x86_64 and aarch64 share the generic number


class CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@contextlib.contextmanager
def v2_cgroup() -> Iterator[V2Manager]:
    machine = Path(UNIFIED, "machine.slice")
    existed = machine.exists()
    mgr = new_manager(
        cgroups_path_for("test", f"t{uuid.uuid4().hex[:12]}", driver="v2"),
        driver="v2",
        root=UNIFIED,
    )
    assert isinstance(mgr, V2Manager)
    try:
        mgr.ensure_parent()
        mgr.create()
        yield mgr
    finally:
        if Path(mgr.path()).exists():
            mgr.kill_all()
            deadline = time.monotonic() + 5
            while mgr.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
        mgr.destroy()
        mgr.remove_parent_if_empty()
        if not existed:
            with contextlib.suppress(OSError):
                machine.rmdir()


@contextlib.contextmanager
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_apply_pids_stats_and_destroy_on_real_cgroup2() -> None:
    with v2_cgroup() as mgr, spinner() as proc:
        mgr.apply(proc.pid)
        assert mgr.pids() == [proc.pid]
        assert f"0::{mgr.cgroups_path}\n" in Path(f"/proc/{proc.pid}/cgroup").read_text()
        # Poll: on a loaded machine the spinner may wait for a CPU.
        assert wait_for(lambda: mgr.stats().cpu_usage_ns > 20_000_000)
        stats = mgr.stats()
        assert stats.memory_limit is None  # no memory controller on this hierarchy
    assert not Path(mgr.path()).exists()


def test_freeze_and_thaw_on_real_cgroup2() -> None:
    with v2_cgroup() as mgr, spinner() as proc:
        mgr.apply(proc.pid)
        mgr.freeze()
        usage = mgr.stats().cpu_usage_ns
        time.sleep(0.2)
        assert mgr.stats().cpu_usage_ns == usage
        mgr.thaw()
        assert wait_for(lambda: mgr.stats().cpu_usage_ns > usage)


def test_kill_all_uses_cgroup_kill() -> None:
    with v2_cgroup() as mgr, spinner() as proc:
        mgr.apply(proc.pid)
        mgr.kill_all()
        assert proc.wait(timeout=5) == -signal.SIGKILL


def test_open_fd_lets_clone3_start_a_child_inside_the_cgroup() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    with v2_cgroup() as mgr:
        fd = mgr.open_fd()
        try:
            args = CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=fd)
            pid = libc.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
            if pid == 0:  # the child: exec at once, never return into pytest
                try:
                    os.execv("/bin/sleep", ["sleep", "30"])  # noqa: S606 - fixed path
                finally:
                    os._exit(127)
            if pid < 0:
                pytest.skip(f"clone3 unavailable: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)
        try:
            assert mgr.pids() == [pid]
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
