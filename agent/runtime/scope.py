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
    remove (a shim moves into its scope only once its container has run SCOPE_DELAY)."""
    layouts = ("", "/unified", "/systemd", "/memory", "/pids", "/cpu", "/cpu,cpuacct")
    return any(
        os.path.isdir(f"{root}{layout}{path}")
        for path in (shim_cgroup(container_id), SHIM_SLICE)
        for layout in layouts
    )
