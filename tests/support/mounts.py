"""Mounts that processes under test leave below a directory: agents pin their containers'
network namespaces under their state dir, and a test that ends with containers still there
(or kills its agents) leaves those pins mounted. Unmounted before the directory is removed,
as a reboot would drop them on a real host."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

MNT_DETACH = 2


def mount_points_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` in our mount namespace, deepest first."""
    root = str(Path(directory).resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            found.append(point)
    return sorted(found, key=lambda p: -p.count("/"))


def unmount_under(directory: Path) -> list[str]:
    """Lazily unmount everything at or below ``directory``; returns what was unmounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for point in mount_points_under(directory):
        if libc.umount2(os.fsencode(point), MNT_DETACH) == 0:
            done.append(point)
    return done
