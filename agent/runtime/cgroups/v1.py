"""cgroup v1 driver: one directory per controller hierarchy (``<root>/<controller>/<path>``).

Hierarchies that are not mounted are skipped when creating; asking for a limit that needs
one of them is an error naming the field.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from typing import Any

from agent.runtime.cgroups.base import (
    SHARES_DEFAULT,
    CgroupError,
    CgroupStats,
    Manager,
    ResourceLimits,
)
from agent.runtime.cgroups.fs import CgroupFS
from agent.runtime.cgroups.paths import parse_fs_path

logger = logging.getLogger(__name__)

CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "freezer", "devices")
# memory.limit_in_bytes reads back as PAGE_COUNTER_MAX * PAGE_SIZE when unlimited.
_UNLIMITED_FLOOR = 1 << 62
_FREEZE_TIMEOUT = 5.0


class V1Manager(Manager):
    """A container cgroup on cgroup v1 (``cgroups_path`` is absolute, e.g.
    ``/machine.slice/machine-p.slice/corral-x.scope``)."""

    driver = "v1"

    def __init__(
        self, cgroups_path: str, *, root: str = "/sys/fs/cgroup", fs: CgroupFS | None = None
    ) -> None:
        self.cgroups_path = parse_fs_path(cgroups_path)
        self.fs = fs or CgroupFS(root)

    # -- paths -------------------------------------------------------------------------

    def _rel(self, controller: str, path: str | None = None) -> str:
        return f"{controller}{path or self.cgroups_path}"

    def _mounted(self) -> list[str]:
        return [c for c in CONTROLLERS if self.fs.exists(c)]

    def path(self, controller: str | None = None) -> str:
        controller = controller or "memory"
        if controller not in CONTROLLERS:
            raise CgroupError("path", "controller", f"{controller!r} is not a v1 controller")
        return self.fs.abspath(self._rel(controller))

    # -- lifecycle ---------------------------------------------------------------------

    def create(self) -> None:
        self._create_path(self.cgroups_path)

    def _create_path(self, path: str) -> None:
        """``mkdir -p`` in every hierarchy, initialising what v1 does not inherit."""
        parts = [p for p in path.split("/") if p]
        for controller in self._mounted():
            current = ""
            for part in parts:
                parent, current = current, f"{current}/{part}"
                created = self.fs.mkdir(self._rel(controller, current))
                if created:
                    self._init_dir(controller, parent, current)

    def _init_dir(self, controller: str, parent: str, path: str) -> None:
        if controller == "cpuset":
            # A new cpuset starts with empty cpus/mems and refuses tasks until both are set.
            for name in ("cpuset.cpus", "cpuset.mems"):
                rel = f"cpuset{path}/{name}"
                if not self.fs.read(rel).strip():
                    self.fs.write(
                        rel, self.fs.read(f"cpuset{parent}/{name}").strip(), step="create"
                    )
        elif controller == "memory":
            rel = f"memory{path}/memory.use_hierarchy"
            # Always 1 on recent kernels (and read-only there); older ones default to 0.
            if self.fs.exists(rel) and self.fs.read(rel).strip() != "1":
                self.fs.write(rel, "1", step="create")

    def apply(self, pid: int) -> None:
        if pid <= 0:
            raise CgroupError("apply", "pid", f"{pid} is not a process id")
        for controller in self._mounted():
            self.fs.write(f"{self._rel(controller)}/cgroup.procs", str(pid), step="apply")

    def ensure_parent(self, resources: dict[str, Any] | None = None) -> None:
        parent = _parent(self.cgroups_path)
        if parent == "/":
            raise CgroupError("ensure_parent", "cgroupsPath", "the container has no parent slice")
        self._create_path(parent)
        res = dict(resources or {})
        res.setdefault("cpu", {})
        res["cpu"] = {"shares": SHARES_DEFAULT, **res["cpu"]}
        self._set(ResourceLimits.from_oci(res), parent)

    def remove_parent_if_empty(self) -> bool:
        return _remove_if_empty(self.fs, self._mounted(), _parent(self.cgroups_path))

    def destroy(self) -> None:
        for controller in CONTROLLERS:
            if self.fs.exists(self._rel(controller)):
                self.fs.rmdir_tree(self._rel(controller), timeout=self.destroy_timeout)

    # -- resources ---------------------------------------------------------------------

    def set(self, resources: dict[str, Any]) -> None:
        self._set(ResourceLimits.from_oci(resources), self.cgroups_path)
        if resources.get("devices"):
            self._set_devices(resources["devices"])

    def _set(self, lim: ResourceLimits, path: str) -> None:
        def write(controller: str, name: str, value: object, field: str) -> None:
            if not self.fs.exists(controller):
                raise CgroupError("set", field, f"the {controller} controller is not mounted")
            self.fs.write(f"{controller}{path}/{name}", str(value))

        if lim.cpu_shares is not None:
            write("cpu", "cpu.shares", lim.cpu_shares, "cpu.shares")
        # Period before quota: the kernel checks quota/period against the parent's.
        if lim.cpu_period is not None:
            write("cpu", "cpu.cfs_period_us", lim.cpu_period, "cpu.period")
        if lim.cpu_quota is not None:
            write("cpu", "cpu.cfs_quota_us", lim.cpu_quota, "cpu.quota")
        if lim.cpus is not None:
            write("cpuset", "cpuset.cpus", lim.cpus, "cpu.cpus")
        if lim.mems is not None:
            write("cpuset", "cpuset.mems", lim.mems, "cpu.mems")
        self._set_memory(lim, path)
        if lim.pids_limit:  # 0 means "not set" in OCI, -1 unlimited
            write("pids", "pids.max", "max" if lim.pids_limit < 0 else lim.pids_limit, "pids.limit")
        if lim.blkio_weight is not None:
            self._set_blkio_weight(lim.blkio_weight, path)

    def _set_memory(self, lim: ResourceLimits, path: str) -> None:
        """memsw (memory+swap, the same sum OCI uses) must stay >= the limit at every
        moment, so the order of the two writes depends on the direction of the change."""
        if lim.memory_limit is None and lim.memory_swap is None:
            return
        if not self.fs.exists("memory"):
            raise CgroupError("set", "memory.limit", "the memory controller is not mounted")
        base = f"memory{path}"
        writes: list[tuple[str, int]] = []
        if lim.memory_limit is not None:
            writes.append(("memory.limit_in_bytes", lim.memory_limit))
        if lim.memory_swap is not None:
            if self.fs.exists(f"{base}/memory.memsw.limit_in_bytes"):
                writes.append(("memory.memsw.limit_in_bytes", lim.memory_swap))
            elif lim.memory_swap not in (-1, lim.memory_limit):
                # Without swap accounting only "no swap" or "unlimited" can be honoured.
                raise CgroupError("set", "memory.swap", "swap accounting is off in this kernel")
        try:
            for name, value in writes:
                self.fs.write(f"{base}/{name}", str(value))
        except CgroupError as exc:
            # Raising both: the new limit exceeds the old memsw, so memsw goes first.
            if exc.errno != errno.EINVAL or len(writes) != 2:
                raise
            for name, value in reversed(writes):
                self.fs.write(f"{base}/{name}", str(value))

    def _set_blkio_weight(self, weight: int, path: str) -> None:
        for name in ("blkio.weight", "blkio.bfq.weight"):
            if self.fs.exists(f"blkio{path}/{name}"):
                self.fs.write(f"blkio{path}/{name}", str(weight))
                return
        # No CFQ/BFQ scheduler on this host's disks: the kernel has nothing to weight.
        logger.warning("cgroup %s: blockIO.weight ignored, no blkio weight file", path)

    def _set_devices(self, rules: list[dict[str, Any]]) -> None:
        """OCI device rules in order, starting from deny-all when the first rule is one."""
        base = f"devices{self.cgroups_path}"
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict) or not isinstance(rule.get("allow"), bool):
                raise CgroupError("set", f"devices[{i}].allow", "must be a boolean")
            kind = rule.get("type", "a")
            major, minor = rule.get("major", -1), rule.get("minor", -1)
            access = rule.get("access", "rwm")
            if kind not in ("a", "b", "c") or not set(access) <= set("rwm"):
                raise CgroupError("set", f"devices[{i}]", f"bad type {kind!r} or access {access!r}")
            maj = "*" if major in (None, -1) else str(int(major))
            mnr = "*" if minor in (None, -1) else str(int(minor))
            line = "a" if kind == "a" else f"{kind} {maj}:{mnr} {access}"
            name = "devices.allow" if rule["allow"] else "devices.deny"
            self.fs.write(f"{base}/{name}", line)

    # -- observation -------------------------------------------------------------------

    def stats(self) -> CgroupStats:
        mem = f"memory{self.cgroups_path}"
        if not self.fs.exists(mem):
            raise CgroupError("stats", self.cgroups_path, "cgroup does not exist")
        limit = self.fs.read_int(f"{mem}/memory.limit_in_bytes", -1)
        oom = self.fs.read_keyed(f"{mem}/memory.oom_control")
        return CgroupStats(
            cpu_usage_ns=self.fs.read_int(f"cpuacct{self.cgroups_path}/cpuacct.usage"),
            memory_current=self.fs.read_int(f"{mem}/memory.usage_in_bytes"),
            memory_peak=self.fs.read_int(f"{mem}/memory.max_usage_in_bytes"),
            memory_limit=None if limit < 0 or limit >= _UNLIMITED_FLOOR else limit,
            pids_current=self.fs.read_int(f"pids{self.cgroups_path}/pids.current"),
            # v1 counts OOM kills only; an OOM situation without a kill is seen only
            # through an eventfd, so both fields report the kills.
            oom_events=oom.get("oom_kill", 0),
            oom_kill=oom.get("oom_kill", 0),
        )

    def oom_kills(self) -> int:
        return self.fs.read_keyed(f"memory{self.cgroups_path}/memory.oom_control").get(
            "oom_kill", 0
        )

    def oom_file(self) -> str | None:
        return self.fs.abspath(f"memory{self.cgroups_path}/memory.oom_control")

    def dirs(self) -> list[str] | None:
        return [self.fs.abspath(self._rel(c)) for c in self._mounted()]

    def pids(self) -> list[int]:
        controller = "pids" if self.fs.exists("pids") else "memory"
        return sorted(_procs_recursive(self.fs, self._rel(controller)))

    def freeze(self) -> None:
        self._freezer("FROZEN")

    def thaw(self) -> None:
        self._freezer("THAWED")

    def _freezer(self, state: str) -> None:
        rel = f"{self._rel('freezer')}/freezer.state"
        step = "freeze" if state == "FROZEN" else "thaw"
        deadline = time.monotonic() + _FREEZE_TIMEOUT
        while True:
            self.fs.write(rel, state, step=step)
            if self.fs.read(rel).strip() == state:
                return
            if time.monotonic() >= deadline:
                raise CgroupError(step, "freezer.state", f"still {self.fs.read(rel).strip()}")
            time.sleep(0.005)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process: frozen first so none can fork past the loop (v1 has no
        ``cgroup.kill``), then thawed so the signal is delivered."""
        if not self.fs.exists(self._rel("freezer")):
            _signal_all(self.pids(), sig)
            return
        self.freeze()
        try:
            _signal_all(self.pids(), sig)
        finally:
            self.thaw()


def _procs_recursive(fs: CgroupFS, rel: str) -> set[int]:
    try:
        pids = {int(line) for line in fs.read(f"{rel}/cgroup.procs").split()}
    except FileNotFoundError:
        return set()
    for child in fs.subdirs(rel):
        pids |= _procs_recursive(fs, f"{rel}/{child}")
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _remove_if_empty(fs: CgroupFS, controllers: list[str], path: str) -> bool:
    removed = True
    for controller in controllers:
        try:
            os.rmdir(fs.abspath(f"{controller}{path}"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise CgroupError(
                    "destroy", path, exc.strerror or "rmdir", errno=exc.errno
                ) from exc
            removed = False
    return removed


def _parent(path: str) -> str:
    """The parent of an absolute cgroup path (``/a/b`` -> ``/a``, ``/a`` -> ``/``)."""
    return path.rsplit("/", 1)[0] or "/"
