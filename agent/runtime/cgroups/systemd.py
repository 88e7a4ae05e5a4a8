"""systemd driver: each container is a transient scope unit in its project's slice, created
over D-Bus (``StartTransientUnit``) with ``Delegate=yes``; limits are unit properties.

systemd owns the unit's cgroup, so limits go through it (they survive a ``daemon-reload``);
files are still read for stats, pids and freezing, through the cgroupfs driver of the same
directory (v2 on a unified host; v1 on a legacy one, where systemd mirrors the tree).
A scope cannot exist without a process, so the unit is started by :meth:`apply`.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.runtime.cgroups.base import (
    WEIGHT_DEFAULT,
    CgroupError,
    CgroupStats,
    Manager,
    ResourceLimits,
)
from agent.runtime.cgroups.dbus import Bus, DBusError, JeepneyBus
from agent.runtime.cgroups.fs import CGROUP2_SUPER_MAGIC, CgroupFS, statfs_type
from agent.runtime.cgroups.paths import parse_systemd_path
from agent.runtime.cgroups.systemd_props import (
    ATTACH_SINCE,
    START_SIGNATURE,
    UNIFIED_NAMES_SINCE,
    Property,
    accounting_properties,
    parse_version,
    unit_properties,
)
from agent.runtime.cgroups.v1 import V1Manager
from agent.runtime.cgroups.v2 import V2Manager

logger = logging.getLogger(__name__)


def _caused_by(exc: CgroupError, *suffixes: str) -> bool:
    """Whether ``exc`` wraps a D-Bus error whose name ends in one of ``suffixes``."""
    cause = exc.__cause__
    return isinstance(cause, DBusError) and cause.name.endswith(suffixes)


class SystemdManager(Manager):
    """A container as a transient scope (``cgroups_path`` = ``slice:prefix:name``)."""

    driver = "systemd"

    def __init__(
        self,
        cgroups_path: str,
        *,
        root: str = "/sys/fs/cgroup",
        bus: Bus | None = None,
        fs: CgroupFS | None = None,
        fs_driver: str | None = None,
        bus_address: str = "SYSTEM",
    ) -> None:
        self.cgroups_path = cgroups_path
        self.unit_path = parse_systemd_path(cgroups_path)
        self._bus = bus
        self._bus_address = bus_address
        self._version: int | None = None
        self._pending: list[Property] = []
        self._started = False
        if fs_driver is None:
            fs_driver = "v2" if statfs_type(root) == CGROUP2_SUPER_MAGIC else "v1"
        self.files: V1Manager | V2Manager
        if fs_driver == "v2":
            self.files = V2Manager(self.unit_path.cgroup, root=root, fs=fs)
        else:
            self.files = V1Manager(self.unit_path.cgroup, root=root, fs=fs)

    @property
    def unit(self) -> str:
        return self.unit_path.unit

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            try:
                self._bus = JeepneyBus(address=self._bus_address)
            except Exception as exc:  # socket missing, auth refused...
                raise CgroupError("connect", "system bus", str(exc)) from exc
        return self._bus

    @property
    def version(self) -> int:
        if self._version is None:
            self._version = parse_version(self._call_property("Version"))
        return self._version

    def _call_property(self, name: str) -> Any:
        try:
            return self.bus.manager_property(name)
        except DBusError as exc:
            raise CgroupError("connect", name, str(exc)) from exc

    def _job(self, step: str, member: str, signature: str, body: tuple[Any, ...]) -> None:
        try:
            result = self.bus.call_job(member, signature, body)
        except DBusError as exc:
            raise CgroupError(step, str(body[0]), f"{member}: {exc}") from exc
        if result != "done":
            raise CgroupError(step, str(body[0]), f"{member} job finished with {result!r}")

    def path(self, controller: str | None = None) -> str:
        return self.files.path(controller)

    # -- lifecycle ---------------------------------------------------------------------

    def create(self) -> None:
        """Nothing to do yet: systemd refuses an empty scope, so :meth:`apply` starts it."""
        self.unit_path.cgroup  # noqa: B018 - validates the slice name early

    def apply(self, pid: int) -> None:
        if pid <= 0:
            raise CgroupError("apply", "pid", f"{pid} is not a process id")
        if self._started:
            self._attach(pid)
            return
        props: list[Property] = [
            ("Description", ("s", f"corral container {self.unit_path.unit}")),
            ("Slice", ("s", self.unit_path.slice)),
            ("Delegate", ("b", True)),
            ("PIDs", ("au", [pid])),
            *accounting_properties(self.version),
            *self._pending,
        ]
        try:
            self._job(
                "apply", "StartTransientUnit", START_SIGNATURE, (self.unit, "replace", props, [])
            )
        except CgroupError as exc:
            if not _caused_by(exc, ".UnitExists"):
                raise
            # The agent restarted and the scope is still there: join it instead.
            self._started = True
            self._attach(pid)
            self._set_properties(self._pending)
        self._started = True
        self._pending = []

    def _attach(self, pid: int) -> None:
        if self.version < ATTACH_SINCE:
            self.files.apply(pid)
            return
        try:
            self.bus.call("AttachProcessesToUnit", "ssau", (self.unit, "/", [pid]))
        except DBusError as exc:
            raise CgroupError("apply", self.unit, f"AttachProcessesToUnit: {exc}") from exc

    def ensure_parent(self, resources: dict[str, Any] | None = None) -> None:
        lim = ResourceLimits.from_oci(resources)
        props = unit_properties(lim, self.version)
        if lim.cpu_shares is None:
            name = "CPUWeight" if self.version >= UNIFIED_NAMES_SINCE else "CPUShares"
            props.insert(0, (name, ("t", WEIGHT_DEFAULT if name == "CPUWeight" else 1024)))
        slice_name = self.unit_path.slice
        start = [("Description", ("s", f"corral project {slice_name}")), *props]
        try:
            self._job(
                "ensure_parent",
                "StartTransientUnit",
                START_SIGNATURE,
                (slice_name, "replace", start, []),
            )
        except CgroupError as exc:
            if not _caused_by(exc, ".UnitExists"):
                raise
            try:
                self.bus.call("SetUnitProperties", "sba(sv)", (slice_name, True, props))
            except DBusError as err:
                raise CgroupError("ensure_parent", slice_name, str(err)) from err

    def destroy(self) -> None:
        """``StopUnit`` (a no-op for a unit that is already gone), then remove whatever
        sub-cgroups the container made inside its delegated scope."""
        try:
            self._job("destroy", "StopUnit", "ss", (self.unit, "replace"))
        except CgroupError as exc:
            if not _caused_by(exc, ".NoSuchUnit", ".UnitNotLoaded"):
                raise
        self._started = False
        self.files.destroy()

    # -- resources ---------------------------------------------------------------------

    def set(self, resources: dict[str, Any]) -> None:
        lim = ResourceLimits.from_oci(resources)
        props = unit_properties(lim, self.version)
        if not self._started:
            self._pending = [p for p in self._pending if p[0] not in {n for n, _ in props}]
            self._pending += props
            return
        self._set_properties(props)

    def _set_properties(self, props: list[Property]) -> None:
        if not props:
            return
        try:
            self.bus.call("SetUnitProperties", "sba(sv)", (self.unit, True, props))
        except DBusError as exc:
            raise CgroupError("set", self.unit, f"SetUnitProperties: {exc}") from exc

    # -- observation (files of the unit's cgroup) -------------------------------------

    def stats(self) -> CgroupStats:
        return self.files.stats()

    def oom_kills(self) -> int:
        return self.files.oom_kills()

    def oom_file(self) -> str | None:
        return self.files.oom_file()

    def pids(self) -> list[int]:
        return self.files.pids()

    def freeze(self) -> None:
        self.files.freeze()

    def thaw(self) -> None:
        self.files.thaw()

    def kill_all(self, sig: int = 9) -> None:
        self.files.kill_all(sig)

    def open_fd(self) -> int:
        return self.files.open_fd()
