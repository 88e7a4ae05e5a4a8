"""Helpers shared by the privileged runtime tests (bundles, cgroup checks)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.runtime.spec import (
    DEFAULT_CAPABILITIES,
    MASKED_PATHS,
    READONLY_PATHS,
    SECCOMP_DENY,
    base_mounts,
)

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
CGROUP_PARENT = "/corral-test.slice"


def make_config(rootfs: Path, args: list[str], **overrides: Any) -> dict[str, Any]:
    """An OCI config like the one ``spec.to_oci`` writes, for a given rootfs."""
    caps = list(DEFAULT_CAPABILITIES)
    config: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "args": args,
            "env": ["PATH=/bin", "HOME=/root"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
                "ambient": [],
            },
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs)},
        "hostname": "ctr-test",
        "mounts": base_mounts(),
        "linux": {
            "namespaces": [
                {"type": t} for t in ("pid", "ipc", "uts", "mount", "network", "cgroup")
            ],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": list(SECCOMP_DENY), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                ],
            },
        },
    }
    for key, value in overrides.items():
        if key in ("process", "linux"):
            config[key].update(value)
        else:
            config[key] = value
    return config


BundleFactory = Callable[..., Path]


def cgroup_dirs(path: str) -> list[Path]:
    """Every v1 hierarchy directory of ``path`` that exists."""
    base = Path("/sys/fs/cgroup")
    return [
        base / c / path.lstrip("/")
        for c in os.listdir(base)
        if (base / c / path.lstrip("/")).exists()
    ]


# A Python snippet that gives the command it execs a private mount namespace in which
# /sys/fs/cgroup shows only the cgroup v1 hierarchies: Debian's crun 1.8.1 refuses this host's
# "hybrid" layout (a cgroup2 mount at /sys/fs/cgroup/unified). The cgroups are the host's;
# only the view differs, and it disappears with the command.
V1_VIEW = """
import os, sys, tempfile
from pathlib import Path
from agent.runtime.linux import LINUX, CLONE_NEWNS, MS_BIND, MS_MOVE, MS_PRIVATE, MS_REC
LINUX.unshare(CLONE_NEWNS)
LINUX.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
mounts = [l.split() for l in Path("/proc/self/mounts").read_text().splitlines()]
v1 = [m[1] for m in mounts if m[2] == "cgroup"]
stash = Path(tempfile.mkdtemp(prefix="cgstash-"))
for t in v1:
    (stash / Path(t).name).mkdir()
    LINUX.mount(t, str(stash / Path(t).name), None, MS_BIND, None)
LINUX.mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, "mode=755,size=64k")
for t in v1:
    n = Path(t).name
    Path("/sys/fs/cgroup", n).mkdir()
    LINUX.mount(str(stash / n), "/sys/fs/cgroup/" + n, None, MS_MOVE, None)
    (stash / n).rmdir()
stash.rmdir()
os.execvp(sys.argv[1], sys.argv[1:])
"""


def in_v1_view(argv: list[str]) -> list[str]:
    import sys

    return [sys.executable, "-c", V1_VIEW, *argv]
