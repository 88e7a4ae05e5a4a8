"""Where containers live in the cgroup tree: one sub-slice per project under a parent slice.

Both forms of the OCI ``linux.cgroupsPath`` name the same directory, so a host that moves
from cgroupfs to systemd management keeps its layout:

* cgroupfs (v1, v2): ``/machine.slice/machine-<project>.slice/corral-<id>.scope``
* systemd: ``machine-<project>.slice:corral:<id>`` (slice, unit prefix, name)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.runtime.cgroups.base import DRIVERS, CgroupError

UNIT_PREFIX = "corral"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_SLICE_RE = re.compile(r"^[A-Za-z0-9_.:\\-]+\.slice$")


def escape_unit_part(name: str) -> str:
    """systemd unit-name escaping of one component: ``-`` means nesting in a slice name,
    so a literal dash becomes ``\\x2d`` (what ``systemd-escape`` prints)."""
    return name.replace("-", "\\x2d")


def cgroups_path_for(
    project: str, container_id: str, *, driver: str, parent_slice: str = "machine.slice"
) -> str:
    """The OCI ``cgroupsPath`` for ``container_id`` of ``project`` under ``parent_slice``.

    Every project gets its own slice (``<parent>-<project>.slice``) with equal CPU weight by
    default, so CPU is shared per project first and per container second.
    """
    for field, value in (("project", project), ("container_id", container_id)):
        if not _NAME_RE.match(value):
            raise CgroupError("path", field, f"{value!r} must match {_NAME_RE.pattern}")
    if not _SLICE_RE.match(parent_slice):
        raise CgroupError("path", "parent_slice", f"{parent_slice!r} must end in .slice")
    if driver not in DRIVERS:
        raise CgroupError("path", "driver", f"{driver!r} is not one of {', '.join(DRIVERS)}")
    base = parent_slice.removesuffix(".slice")
    project_slice = f"{base}-{escape_unit_part(project)}.slice"
    if driver == "systemd":
        return f"{project_slice}:{UNIT_PREFIX}:{container_id}"
    scope = f"{UNIT_PREFIX}-{escape_unit_part(container_id)}.scope"
    return f"{expand_slice(project_slice)}/{scope}"


def expand_slice(slice_name: str) -> str:
    """``a-b-c.slice`` -> ``/a.slice/a-b.slice/a-b-c.slice`` (systemd's slice nesting);
    ``-.slice`` is the root slice and expands to ``""``."""
    if slice_name == "-.slice":
        return ""
    if not slice_name.endswith(".slice") or "/" in slice_name:
        raise CgroupError("path", "slice", f"{slice_name!r} is not a slice unit name")
    stem = slice_name.removesuffix(".slice")
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise CgroupError("path", "slice", f"{slice_name!r} has an empty component")
    parts = stem.split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


@dataclass(frozen=True)
class SystemdPath:
    """A parsed systemd ``slice:prefix:name`` cgroups path."""

    slice: str
    unit: str

    @property
    def cgroup(self) -> str:
        """The unit's cgroup relative to the cgroup root, e.g.
        ``/machine.slice/machine-p.slice/corral-x.scope``."""
        return f"{expand_slice(self.slice)}/{self.unit}"


def parse_systemd_path(cgroups_path: str) -> SystemdPath:
    """Parse ``slice:prefix:name`` (an empty slice means ``system.slice``, as in runc)."""
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise CgroupError("path", "cgroupsPath", f"{cgroups_path!r} is not slice:prefix:name")
    slice_name, prefix, name = parts
    if not name or not _NAME_RE.match(name) or (prefix and not _NAME_RE.match(prefix)):
        raise CgroupError("path", "cgroupsPath", f"{cgroups_path!r} has a bad prefix or name")
    slice_name = slice_name or "system.slice"
    expand_slice(slice_name)  # validates
    if name.endswith(".slice"):
        raise CgroupError("path", "cgroupsPath", "a container must be a scope, not a slice")
    unit = name if name.endswith(".scope") else f"{prefix}-{escape_unit_part(name)}.scope"
    return SystemdPath(slice=slice_name, unit=unit)


def parse_fs_path(cgroups_path: str) -> str:
    """Validate a cgroupfs ``cgroupsPath``: absolute, no ``..``, not the root."""
    if not cgroups_path.startswith("/"):
        raise CgroupError("path", "cgroupsPath", f"{cgroups_path!r} must be absolute")
    parts = [p for p in cgroups_path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise CgroupError("path", "cgroupsPath", f"{cgroups_path!r} must name a sub-cgroup")
    return "/" + "/".join(parts)
