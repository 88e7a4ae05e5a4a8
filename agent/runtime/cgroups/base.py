"""The cgroup ``Manager`` interface shared by the v1, v2 and systemd drivers, and its stats.

A manager owns exactly one container cgroup (named by the OCI ``linux.cgroupsPath``). The
runtime calls it in its linear start sequence: ``create`` -> ``set`` -> ``apply(pid)``, and
``destroy`` after it has killed the processes itself (the manager never kills).
"""

from __future__ import annotations

import abc
import errno as errno_mod
import math
from dataclasses import dataclass
from typing import Any, Literal

Driver = Literal["v1", "v2", "systemd"]
DRIVERS: tuple[Driver, ...] = ("v1", "v2", "systemd")

# cgroup v1 cpu.shares and cgroup v2 cpu.weight ranges (kernel limits).
SHARES_MIN, SHARES_MAX, SHARES_DEFAULT = 2, 262_144, 1024
WEIGHT_MIN, WEIGHT_MAX, WEIGHT_DEFAULT = 1, 10_000, 100


class CgroupError(Exception):
    """A cgroup step failed. ``step`` names what was being done (``create``, ``set``,
    ``apply``...), ``field`` the resource or file involved, ``errno`` the OS error if any."""

    def __init__(self, step: str, field: str, detail: str, *, errno: int | None = None) -> None:
        self.step = step
        self.field = field
        self.detail = detail
        self.errno = errno
        code = f" [{errno_mod.errorcode.get(errno, errno)}]" if errno is not None else ""
        super().__init__(f"cgroup {step}: {field}: {detail}{code}")


@dataclass(frozen=True)
class CgroupStats:
    """A snapshot of one container cgroup. ``memory_limit`` is ``None`` when unlimited;
    ``memory_peak`` is 0 where the kernel does not track it."""

    cpu_usage_ns: int
    memory_current: int
    memory_peak: int
    memory_limit: int | None
    pids_current: int
    oom_events: int
    oom_kill: int


def shares_to_weight(shares: int) -> int:
    """cgroup v1 ``cpu.shares`` (2-262144) -> v2 ``cpu.weight`` (1-10000).

    The formula crun uses since 1.23: a quadratic in log space chosen so that the ends and
    the defaults meet, 2 -> 1, 1024 -> 100, 262144 -> 10000 (the older linear mapping
    ``1 + (shares - 2) * 9999 / 262142`` sent the v1 default 1024 to 39, i.e. a container
    with default shares ran at 40 % of a default v2 peer):
    ``weight = ceil(10 ** ((l*l + 125*l) / 612 - 7/34))`` with ``l = log2(shares)``.
    """
    if not SHARES_MIN <= shares <= SHARES_MAX:
        raise CgroupError("set", "cpu.shares", f"{shares} is outside {SHARES_MIN}-{SHARES_MAX}")
    log = math.log2(shares)
    exponent = (log * log + 125 * log) / 612.0 - 7.0 / 34.0
    # round() first: floating error must not push an exact 100.0 up to 101.
    return min(WEIGHT_MAX, max(WEIGHT_MIN, math.ceil(round(10**exponent, 6))))


def weight_to_shares(weight: int) -> int:
    """cgroup v2 ``cpu.weight`` (1-10000) -> v1 ``cpu.shares``: the inverse of
    :func:`shares_to_weight` (solve ``l*l + 125*l - 612*(log10(w) + 7/34) = 0`` for ``l``),
    so 1 -> 2, 100 -> 1024, 10000 -> 262144. Rounded down (with a tiny epsilon against
    float error) because the forward direction rounds up: then every weight survives the
    round trip weight -> shares -> weight exactly."""
    if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        raise CgroupError("set", "cpu.weight", f"{weight} is outside {WEIGHT_MIN}-{WEIGHT_MAX}")
    exponent = math.log10(weight) + 7.0 / 34.0
    log = (-125.0 + math.sqrt(125.0 * 125.0 + 4.0 * 612.0 * exponent)) / 2.0
    return min(SHARES_MAX, max(SHARES_MIN, math.floor(2**log + 1e-6)))


def blkio_weight_to_io_weight(weight: int) -> int:
    """v1 ``blkio.weight`` (10-1000) -> v2 ``io.weight`` (1-10000), the linear mapping
    crun and runc use: ``1 + (w - 10) * 9999 / 990``."""
    if not 10 <= weight <= 1000:
        raise CgroupError("set", "blockIO.weight", f"{weight} is outside 10-1000")
    return 1 + (weight - 10) * 9999 // 990


@dataclass(frozen=True)
class ResourceLimits:
    """The subset of OCI ``linux.resources`` the drivers apply, validated once.

    ``memory_swap`` follows OCI: memory *plus* swap (``-1`` = unlimited); each driver turns
    it into its own file (v1 ``memsw`` is the same sum, v2 ``memory.swap.max`` is swap only).
    """

    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpus: str | None = None
    mems: str | None = None
    memory_limit: int | None = None
    memory_swap: int | None = None
    pids_limit: int | None = None
    blkio_weight: int | None = None

    @classmethod
    def from_oci(cls, resources: dict[str, Any] | None) -> ResourceLimits:
        """Parse and validate an OCI ``linux.resources`` dict; errors name the OCI field."""
        res = resources or {}
        if not isinstance(res, dict):
            raise CgroupError("set", "resources", "must be an object")
        cpu = _section(res, "cpu")
        memory = _section(res, "memory")
        pids = _section(res, "pids")
        blkio = _section(res, "blockIO")
        limits = cls(
            cpu_shares=_int(cpu, "cpu.shares", "shares", SHARES_MIN, SHARES_MAX),
            cpu_quota=_int(cpu, "cpu.quota", "quota", -1, None),
            cpu_period=_int(cpu, "cpu.period", "period", 1000, 1_000_000),
            cpus=_cpulist(cpu, "cpu.cpus", "cpus"),
            mems=_cpulist(cpu, "cpu.mems", "mems"),
            memory_limit=_int(memory, "memory.limit", "limit", -1, None),
            memory_swap=_int(memory, "memory.swap", "swap", -1, None),
            pids_limit=_int(pids, "pids.limit", "limit", -1, None),
            blkio_weight=_int(blkio, "blockIO.weight", "weight", 10, 1000),
        )
        limits._check_swap()
        return limits

    def _check_swap(self) -> None:
        if self.memory_swap is None or self.memory_swap == -1:
            return
        if self.memory_limit is None or self.memory_limit == -1:
            raise CgroupError("set", "memory.swap", "needs memory.limit (swap is limit+swap)")
        if self.memory_swap < self.memory_limit:
            raise CgroupError("set", "memory.swap", "must be at least memory.limit")


def _section(res: dict[str, Any], key: str) -> dict[str, Any]:
    value = res.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CgroupError("set", key, "must be an object")
    return value


def _int(section: dict[str, Any], name: str, key: str, low: int, high: int | None) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupError("set", name, f"must be an integer, got {value!r}")
    if value == -1 and low == -1:
        return -1
    if value < max(low, 0) or (high is not None and value > high):
        bound = f"{max(low, 0)}-{high}" if high is not None else f">= {max(low, 0)} or -1"
        raise CgroupError("set", name, f"{value} is outside {bound}")
    return value


def _cpulist(section: dict[str, Any], name: str, key: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not all(c in "0123456789,-" for c in value):
        raise CgroupError("set", name, f"must look like 0-3,5, got {value!r}")
    return value


class Manager(abc.ABC):
    """One container's cgroup. Implementations: ``V1Manager``, ``V2Manager``,
    ``SystemdManager``; obtain one with :func:`agent.runtime.cgroups.new_manager`."""

    driver: Driver
    cgroups_path: str
    # How long destroy() retries EBUSY while the kernel finishes reaping the last process.
    destroy_timeout: float = 1.0

    @abc.abstractmethod
    def create(self) -> None:
        """Create the cgroup (and its parents); idempotent."""

    @abc.abstractmethod
    def apply(self, pid: int) -> None:
        """Move process ``pid`` (and so its future children) into the cgroup."""

    @abc.abstractmethod
    def set(self, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` (cpu, memory, pids, blockIO)."""

    @abc.abstractmethod
    def ensure_parent(self, resources: dict[str, Any] | None = None) -> None:
        """Create the project slice this container lives in and set its own resources
        (default: equal CPU weight, so no project dominates a host)."""

    @abc.abstractmethod
    def stats(self) -> CgroupStats:
        """Read usage counters and limits."""

    def oom_kills(self) -> int:
        """Processes the OOM killer took so far: what the shim reads at every exit, where
        the rest of :meth:`stats` would be files read for nothing."""
        return self.stats().oom_kill

    def oom_file(self) -> str | None:
        """The file (``key value`` lines) whose ``oom_kill`` line :meth:`oom_kills` reads,
        for a reader that is not Python (the native monitor); None where there is none."""
        return None

    def dirs(self) -> list[str] | None:
        """Every directory of the cgroup, one per hierarchy, for a process that moves itself
        in by writing ``cgroup.procs`` (the native monitor); None when the cgroup is not
        plain files (systemd's units: move with :meth:`apply`)."""
        return None

    @abc.abstractmethod
    def pids(self) -> list[int]:
        """Every process in the cgroup and below it, sorted."""

    @abc.abstractmethod
    def freeze(self) -> None:
        """Freeze every process of the cgroup; returns once the kernel reports frozen."""

    @abc.abstractmethod
    def thaw(self) -> None:
        """Undo :meth:`freeze`."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Remove the cgroup directories child-first; idempotent; kills nothing."""

    @abc.abstractmethod
    def path(self, controller: str | None = None) -> str:
        """Absolute directory of the cgroup (for v1: of ``controller``, default ``memory``)."""

    @abc.abstractmethod
    def kill_all(self, sig: int = 9) -> None:
        """Send ``sig`` (default SIGKILL) to every process of the cgroup, so that none can
        escape by forking meanwhile (``cgroup.kill`` on v2, freeze-signal-thaw on v1)."""

    def remove_parent_if_empty(self) -> bool:
        """Remove the project slice once its last container is gone; ``False`` when it is
        still in use (or the driver leaves slices to their manager, like systemd)."""
        return False

    def open_fd(self) -> int:
        """An ``O_DIRECTORY`` fd of the cgroup for ``clone3(CLONE_INTO_CGROUP)``: the child
        starts inside it, skipping the 10-15 ms first move of cgroup v1. v2 only."""
        raise CgroupError(
            "open_fd",
            self.cgroups_path,
            f"not available with the {self.driver} driver (CLONE_INTO_CGROUP needs cgroup v2)",
        )
