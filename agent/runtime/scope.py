"""Where each container's shim keeps its own cgroup (a scope, as conmon has): in one module
of its own so that ``delete`` can find and remove it without importing the shim."""

from __future__ import annotations

import os

SHIM_SLICE = "/corral.slice"  # shims live in <slice>/shim-<id>.scope, like conmon's scopes


def shim_cgroup(container_id: str) -> str:
    return f"{SHIM_SLICE}/shim-{container_id}.scope"


def shim_cgroups_may_exist(container_id: str, root: str = "/sys/fs/cgroup") -> bool:
    """Whether the shim's scope, or the shims' slice it leaves behind empty, exists under
    any layout (v2 or systemd unified, v1 controllers, the v1 ``name=systemd`` hierarchy):
    a cheap probe, so that ``delete`` loads a cgroup driver only when there is one to
    remove (a shim moves into its scope only once its container has run SCOPE_DELAY).
    A slice still holding other shims' scopes or processes is not ours to remove: on a
    host running containers it always exists, and loading the driver for nothing would
    cost every CLI ``delete`` ~20 ms of imports."""
    layouts = ("", "/unified", "/systemd", "/memory", "/pids", "/cpu", "/cpu,cpuacct")
    for layout in layouts:
        if os.path.isdir(f"{root}{layout}{shim_cgroup(container_id)}"):
            return True
        if os.path.isdir(f"{root}{layout}{SHIM_SLICE}") and _unused(f"{root}{layout}{SHIM_SLICE}"):
            return True
    return False


def _unused(path: str) -> bool:
    """No child cgroup and no process in the cgroup directory ``path`` (True if unsure)."""
    try:
        with os.scandir(path) as entries:
            if any(entry.is_dir(follow_symlinks=False) for entry in entries):
                return False
        with open(f"{path}/cgroup.procs") as procs:
            return not procs.read().strip()
    except OSError:
        return True  # let the driver look
