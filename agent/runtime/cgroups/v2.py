"""cgroup v2 driver: one unified hierarchy; controllers are enabled top-down through
``cgroup.subtree_control`` and the container cgroup is a leaf."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from agent.runtime.cgroups.base import (
    WEIGHT_DEFAULT,
    CgroupError,
    CgroupStats,
    Manager,
    ResourceLimits,
    blkio_weight_to_io_weight,
    shares_to_weight,
)
from agent.runtime.cgroups.fs import CgroupFS
from agent.runtime.cgroups.paths import parse_fs_path

logger = logging.getLogger(__name__)

# What a container needs; only those the parent offers in cgroup.controllers are enabled.
WANTED_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")
_FREEZE_TIMEOUT = 5.0


class V2Manager(Manager):
    """A container cgroup on the unified hierarchy rooted at ``root``."""

    driver = "v2"

    def __init__(
        self, cgroups_path: str, *, root: str = "/sys/fs/cgroup", fs: CgroupFS | None = None
    ) -> None:
        self.cgroups_path = parse_fs_path(cgroups_path)
        self.fs = fs or CgroupFS(root)

    @property
    def _rel(self) -> str:
        return self.cgroups_path.lstrip("/")

    def path(self, controller: str | None = None) -> str:
        # One hierarchy: the controller does not change the directory.
        return self.fs.abspath(self._rel)

    # -- lifecycle ---------------------------------------------------------------------

    def create(self) -> None:
        self._create_path(self.cgroups_path)

    def _create_path(self, path: str) -> None:
        """``mkdir -p``, enabling the wanted controllers in each parent's subtree_control
        before its child exists (a controller only reaches a child through its parent)."""
        parts = [p for p in path.split("/") if p]
        current = ""
        for part in parts:
            self._enable_controllers(current)
            current = f"{current}/{part}".lstrip("/")
            self.fs.mkdir(current)

    def _enable_controllers(self, rel: str) -> None:
        prefix = f"{rel}/" if rel else ""
        available = set(self.fs.read(f"{prefix}cgroup.controllers").split())
        enabled = set(self.fs.read(f"{prefix}cgroup.subtree_control").split())
        missing = [c for c in WANTED_CONTROLLERS if c in available and c not in enabled]
        if missing:
            self.fs.write(
                f"{prefix}cgroup.subtree_control",
                " ".join(f"+{c}" for c in missing),
                step="create",
            )

    def apply(self, pid: int) -> None:
        if pid <= 0:
            raise CgroupError("apply", "pid", f"{pid} is not a process id")
        self.fs.write(f"{self._rel}/cgroup.procs", str(pid), step="apply")

    def ensure_parent(self, resources: dict[str, Any] | None = None) -> None:
        parent = self.cgroups_path.rsplit("/", 1)[0]
        if not parent:
            raise CgroupError("ensure_parent", "cgroupsPath", "the container has no parent slice")
        self._create_path(parent)
        limits = ResourceLimits.from_oci(resources)
        rel = parent.lstrip("/")
        if limits.cpu_shares is None and self.fs.exists(f"{rel}/cpu.weight"):
            # Equal weight for every project unless told otherwise.
            self.fs.write(f"{rel}/cpu.weight", str(WEIGHT_DEFAULT))
        self._set(limits, rel)

    def remove_parent_if_empty(self) -> bool:
        parent = self.cgroups_path.rsplit("/", 1)[0].lstrip("/")
        if not parent or self.fs.subdirs(parent):
            return False
        try:
            self.fs.rmdir_tree(parent, timeout=0.0)
        except CgroupError:
            return False
        return True

    def destroy(self) -> None:
        self.fs.rmdir_tree(self._rel, timeout=self.destroy_timeout)

    # -- resources ---------------------------------------------------------------------

    def set(self, resources: dict[str, Any]) -> None:
        self._set(ResourceLimits.from_oci(resources), self._rel)

    def _set(self, lim: ResourceLimits, rel: str) -> None:
        def write(name: str, value: object, field: str) -> None:
            if not self.fs.exists(f"{rel}/{name}"):
                raise CgroupError("set", field, f"{name} is missing (controller not enabled?)")
            self.fs.write(f"{rel}/{name}", str(value))

        if lim.cpu_shares is not None:
            write("cpu.weight", shares_to_weight(lim.cpu_shares), "cpu.shares")
        if lim.cpu_quota is not None or lim.cpu_period is not None:
            write("cpu.max", self._cpu_max(lim, rel), "cpu.quota")
        if lim.cpus is not None:
            write("cpuset.cpus", lim.cpus, "cpu.cpus")
        if lim.mems is not None:
            write("cpuset.mems", lim.mems, "cpu.mems")
        if lim.memory_limit is not None:
            write("memory.max", _max(lim.memory_limit), "memory.limit")
        if lim.memory_swap is not None:
            self._set_swap(lim, rel)
        if lim.pids_limit:  # 0 means "not set" in OCI, -1 unlimited
            write("pids.max", _max(lim.pids_limit), "pids.limit")
        if lim.blkio_weight is not None:
            if self.fs.exists(f"{rel}/io.weight"):
                weight = blkio_weight_to_io_weight(lim.blkio_weight)
                write("io.weight", f"default {weight}", "blockIO.weight")
            else:
                logger.warning("cgroup %s: blockIO.weight ignored, no io.weight file", rel)

    def _cpu_max(self, lim: ResourceLimits, rel: str) -> str:
        """``cpu.max`` is "<quota|max> <period>"; a missing half keeps its current value."""
        current = self.fs.read(f"{rel}/cpu.max").split() if self.fs.exists(f"{rel}/cpu.max") else []
        quota = current[0] if current else "max"
        period = current[1] if len(current) > 1 else "100000"
        if lim.cpu_quota is not None:
            quota = "max" if lim.cpu_quota <= 0 else str(lim.cpu_quota)
        if lim.cpu_period is not None:
            period = str(lim.cpu_period)
        return f"{quota} {period}"

    def _set_swap(self, lim: ResourceLimits, rel: str) -> None:
        """OCI swap is memory+swap; ``memory.swap.max`` is swap alone, so write the
        difference (-1 stays unlimited). Without the file (swap accounting off) only a
        request for zero swap can be honoured."""
        swap = lim.memory_swap
        assert swap is not None
        if swap == -1:
            value = "max"
        else:
            assert lim.memory_limit is not None and lim.memory_limit >= 0  # from_oci checked
            value = str(swap - lim.memory_limit)
        if self.fs.exists(f"{rel}/memory.swap.max"):
            self.fs.write(f"{rel}/memory.swap.max", value)
        elif value not in ("0", "max"):
            raise CgroupError("set", "memory.swap", "swap accounting is off in this kernel")

    # -- observation -------------------------------------------------------------------

    def stats(self) -> CgroupStats:
        if not self.fs.exists(self._rel):
            raise CgroupError("stats", self.cgroups_path, "cgroup does not exist")
        cpu = self.fs.read_keyed(f"{self._rel}/cpu.stat")
        events = self.fs.read_keyed(f"{self._rel}/memory.events")
        limit = self.fs.read_int(f"{self._rel}/memory.max", -1)
        return CgroupStats(
            cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
            memory_current=self.fs.read_int(f"{self._rel}/memory.current"),
            memory_peak=self.fs.read_int(f"{self._rel}/memory.peak"),  # kernel >= 5.19
            memory_limit=None if limit < 0 else limit,
            pids_current=self.fs.read_int(f"{self._rel}/pids.current"),
            oom_events=events.get("oom", 0),
            oom_kill=events.get("oom_kill", 0),
        )

    def oom_kills(self) -> int:
        return self.fs.read_keyed(f"{self._rel}/memory.events").get("oom_kill", 0)

    def oom_file(self) -> str | None:
        return self.fs.abspath(f"{self._rel}/memory.events")

    def dirs(self) -> list[str] | None:
        return [self.fs.abspath(self._rel)]

    def pids(self) -> list[int]:
        return sorted(_procs_recursive(self.fs, self._rel))

    def freeze(self) -> None:
        self._freeze(True)

    def thaw(self) -> None:
        self._freeze(False)

    def _freeze(self, frozen: bool) -> None:
        """Write ``cgroup.freeze`` and wait for ``cgroup.events`` to say ``frozen``: the
        kernel freezes asynchronously and a caller that then reads state must see it done."""
        step = "freeze" if frozen else "thaw"
        self.fs.write(f"{self._rel}/cgroup.freeze", "1" if frozen else "0", step=step)
        deadline = time.monotonic() + _FREEZE_TIMEOUT
        while self.fs.read_keyed(f"{self._rel}/cgroup.events").get("frozen", 0) != int(frozen):
            if time.monotonic() >= deadline:
                raise CgroupError(step, "cgroup.events", f"frozen never became {int(frozen)}")
            time.sleep(0.005)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL everything at once through ``cgroup.kill`` (kernel >= 5.14); otherwise
        freeze, signal each process, thaw."""
        if sig == signal.SIGKILL and self.fs.exists(f"{self._rel}/cgroup.kill"):
            self.fs.write(f"{self._rel}/cgroup.kill", "1", step="kill")
            return
        self.freeze()
        try:
            for pid in self.pids():
                _kill(pid, sig)
        finally:
            self.thaw()

    def open_fd(self) -> int:
        return self.fs.open_dir(self._rel)


def _max(value: int) -> str:
    return "max" if value < 0 else str(value)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return


def _procs_recursive(fs: CgroupFS, rel: str) -> set[int]:
    try:
        pids = {int(line) for line in fs.read(f"{rel}/cgroup.procs").split()}
    except FileNotFoundError:
        return set()
    for child in fs.subdirs(rel):
        pids |= _procs_recursive(fs, f"{rel}/{child}")
    return pids
