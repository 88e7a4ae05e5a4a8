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
