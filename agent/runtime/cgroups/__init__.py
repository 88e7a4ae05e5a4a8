"""cgroup drivers behind one ``Manager`` interface: v1 (per-controller hierarchies),
v2 (unified) and systemd (transient scopes over D-Bus), plus the project slice layout.

    mgr = new_manager(cgroups_path_for(project, cid, driver=detect_driver()))
    mgr.ensure_parent(); mgr.create(); mgr.set(oci_resources); mgr.apply(pid)
"""

from __future__ import annotations

from agent.runtime.cgroups.base import (
    CgroupError,
    CgroupStats,
    Driver,
    Manager,
    ResourceLimits,
    blkio_weight_to_io_weight,
    shares_to_weight,
    weight_to_shares,
)
from agent.runtime.cgroups.detect import detect_driver
from agent.runtime.cgroups.paths import cgroups_path_for, expand_slice, parse_systemd_path
from agent.runtime.cgroups.systemd import SystemdManager
from agent.runtime.cgroups.v1 import V1Manager
from agent.runtime.cgroups.v2 import V2Manager

__all__ = [
    "CgroupError",
    "CgroupStats",
    "Driver",
    "Manager",
    "ResourceLimits",
    "SystemdManager",
    "V1Manager",
    "V2Manager",
    "blkio_weight_to_io_weight",
    "cgroups_path_for",
    "detect_driver",
    "expand_slice",
    "new_manager",
    "parse_systemd_path",
    "shares_to_weight",
    "weight_to_shares",
]


def new_manager(
    cgroups_path: str, *, driver: str | None = None, root: str = "/sys/fs/cgroup"
) -> Manager:
    """A manager for the cgroup at ``cgroups_path`` (the OCI ``linux.cgroupsPath``) with
    ``driver`` (default: :func:`detect_driver`), files below ``root``."""
    chosen = driver or detect_driver(root=root)
    if chosen == "v1":
        return V1Manager(cgroups_path, root=root)
    if chosen == "v2":
        return V2Manager(cgroups_path, root=root)
    if chosen == "systemd":
        return SystemdManager(cgroups_path, root=root)
    raise CgroupError("new_manager", "driver", f"{chosen!r} is not one of v1, v2, systemd")
