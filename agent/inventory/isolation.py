"""Collectors for the kernel isolation features containers are built from.

Namespaces (listed, and actually tried in a child), cgroups (version by filesystem magic,
hierarchies, usable controllers), overlayfs and seccomp.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.inventory import _sys
from agent.inventory._base import (
    Section,
    host_path,
    mountinfo,
    parse_key_values,
    read_int,
    read_text,
    unknown,
)
from agent.inventory.system import load_kernel_config

NOBODY_UID = 65534
PROBED_NAMESPACES = ["mnt", "uts", "ipc", "net", "pid", "cgroup", "time"]


def collect_namespaces() -> Section:
    """Namespace types the kernel exposes, and which of them can really be created."""
    try:
        listed = sorted(p.name for p in host_path("/proc/self/ns").iterdir())
    except OSError as exc:
        return unknown(f"/proc/self/ns is not readable: {exc.strerror}")
    types = sorted({n.removesuffix("_for_children") for n in listed})
    result: dict[str, Any] = {"listed": types}
    try:
        result["unshare"] = _sys.probe_unshare([n for n in PROBED_NAMESPACES if n in types])
    except OSError as exc:
        result["unshare"] = unknown(f"probe failed: {exc}")
    result["user"] = _user_namespaces("user" in types)
    return result


def _user_namespaces(listed: bool) -> dict[str, Any]:
    max_ns = read_int("/proc/sys/user/max_user_namespaces")
    clone = read_int("/proc/sys/kernel/unprivileged_userns_clone")  # Debian/Ubuntu patch only
    out: dict[str, Any] = {
        "listed": listed,
        "max_user_namespaces": max_ns,
        "unprivileged_userns_clone": clone,
    }
    for label, uid in (("root", None), ("unprivileged", NOBODY_UID)):
        try:
            out[f"{label}_can_create"] = _sys.probe_unshare(["user"], drop_to_uid=uid)["user"]
        except OSError as exc:
            out[f"{label}_can_create"] = None
            out[f"{label}_error"] = str(exc)
    return out


def collect_cgroups() -> Section:
    """cgroup mode (v1 / hybrid / v2) from statfs magic, hierarchies and usable controllers."""
    root = host_path("/sys/fs/cgroup")
    try:
        magic = _sys.statfs_type(str(root))
    except OSError as exc:
        return unknown(f"statfs of /sys/fs/cgroup failed: {exc.strerror}")
    mounts = [m for m in mountinfo() if m["fstype"] in ("cgroup", "cgroup2")]
    if magic == _sys.CGROUP2_SUPER_MAGIC:
        return _cgroup_v2(root, mounts)
    if magic not in (_sys.TMPFS_MAGIC, _sys.CGROUP_SUPER_MAGIC):
        return unknown(f"/sys/fs/cgroup has unexpected filesystem magic {magic:#x}")
    return _cgroup_v1(root, mounts)


def _proc_cgroups() -> dict[str, dict[str, int]]:
    out = {}
    for line in (read_text("/proc/cgroups") or "").splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 4:
            out[parts[0]] = {"hierarchy": int(parts[1]), "enabled": int(parts[3])}
    return out


def _cgroup_v1(root: Path, mounts: list[dict[str, str]]) -> Section:
    known = _proc_cgroups()
    hierarchies = []
    usable: set[str] = set()
    unified_controllers: list[str] | None = None
    for m in mounts:
        if m["fstype"] == "cgroup2":
            text = read_text(Path(m["mount_point"]) / "cgroup.controllers")
            unified_controllers = (text or "").split()
            continue
        opts = m["super_options"].split(",")
        controllers = sorted(o for o in opts if o in known)
        writable = os.access(m["mount_point"], os.W_OK)
        hierarchies.append(
            {
                "mount_point": m["mount_point"],
                "controllers": controllers,
                "name": next((o[5:] for o in opts if o.startswith("name=")), None),
                "writable": writable,
            }
        )
        if writable:
            usable.update(c for c in controllers if known[c]["enabled"])
    return {
        "version": 1,
        "mode": "hybrid" if unified_controllers is not None else "legacy",
        "filesystem": "tmpfs",
        "hierarchies": hierarchies,
        "unified_controllers": unified_controllers,
        "controllers_enabled": sorted(c for c, v in known.items() if v["enabled"]),
        "controllers_usable": sorted(usable),
    }


def _cgroup_v2(root: Path, mounts: list[dict[str, str]]) -> Section:
    available = (read_text(root / "cgroup.controllers") or "").split()
    delegated = (read_text(root / "cgroup.subtree_control") or "").split()
    writable = os.access(root, os.W_OK)
    return {
        "version": 2,
        "mode": "unified",
        "filesystem": "cgroup2",
        "hierarchies": [
            {"mount_point": m["mount_point"], "controllers": available} for m in mounts
        ],
        "controllers_enabled": available,
        "subtree_control": delegated,
        "controllers_usable": sorted(available) if writable else [],
    }


def collect_overlay() -> Section:
    """Whether overlayfs is registered now, or could be loaded as a module."""
    registered = any(
        line.split()[-1] == "overlay"
        for line in (read_text("/proc/filesystems") or "").splitlines()
        if line.strip()
    )
    release = os.uname().release
    module = None
    base = host_path(f"/lib/modules/{release}/kernel/fs/overlayfs")
    if base.is_dir():
        module = next((str(p) for p in base.iterdir() if p.name.startswith("overlay.ko")), None)
    loaded = load_kernel_config()
    config = loaded[1].get("CONFIG_OVERLAY_FS", "n") if loaded else None
    return {
        "registered": registered,
        "module": module,
        "kernel_config": config,
        "available": registered or module is not None or config in ("y", "m"),
    }


def collect_seccomp() -> Section:
    """Seccomp support: the Seccomp field in /proc/self/status and the kernel config."""
    status = parse_key_values(read_text("/proc/self/status") or "")
    loaded = load_kernel_config()
    config = loaded[1] if loaded else {}
    actions = (read_text("/proc/sys/kernel/seccomp/actions_avail") or "").split()
    field = status.get("Seccomp")
    return {
        "status_field": field,
        "config_seccomp": config.get("CONFIG_SECCOMP") if loaded else None,
        "config_seccomp_filter": config.get("CONFIG_SECCOMP_FILTER") if loaded else None,
        "actions_avail": actions,
        "supported": field is not None
        and (config.get("CONFIG_SECCOMP_FILTER") == "y" or bool(actions) or not loaded),
    }
