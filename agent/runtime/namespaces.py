"""Namespaces: which to create, joining existing ones by path, and user-namespace id maps.

A new user namespace is created first and its maps are written by the parent (the shim), which
still has CAP_SETUID/CAP_SETGID in the host namespace; every other namespace is created after, so
it is owned by the container's user namespace.
"""

from __future__ import annotations

import os

from agent.runtime.config import Config, IdMap
from agent.runtime.errors import RuntimeFailure
from agent.runtime.linux import CLONE_NEWUSER, NAMESPACE_FLAGS, Linux

# Joining order: the user namespace first (it grants the rights to join the others), the mount
# namespace last (it changes our root, and paths of the others must still resolve).
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "mount")


def new_user_namespace(config: Config) -> bool:
    ns = config.namespace("user")
    return ns is not None and ns.path is None


def unshare_flags(config: Config) -> int:
    """Clone flags of the namespaces to create, without the user namespace."""
    flags = 0
    for ns in config.namespaces:
        if ns.path is None and ns.type != "user":
            flags |= NAMESPACE_FLAGS[ns.type]
    return flags


def join_namespaces(linux: Linux, config: Config) -> None:
    """setns(2) into every namespace given by path, in :data:`JOIN_ORDER`."""
    by_type = {ns.type: ns.path for ns in config.namespaces if ns.path}
    for ns_type in JOIN_ORDER:
        path = by_type.get(ns_type)
        if path is None:
            continue
        step = f"namespaces.join {ns_type}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeFailure.from_os(f"{step} open {path}", exc) from None
        try:
            linux.setns(fd, NAMESPACE_FLAGS[ns_type])
        except OSError as exc:
            raise RuntimeFailure.from_os(step, exc) from None
        finally:
            os.close(fd)


def unshare_user(linux: Linux) -> None:
    try:
        linux.unshare(CLONE_NEWUSER)
    except OSError as exc:
        raise RuntimeFailure.from_os("namespaces.unshare user", exc) from None


def unshare_rest(linux: Linux, config: Config) -> None:
    flags = unshare_flags(config)
    if not flags:
        return
    try:
        linux.unshare(flags)
    except OSError as exc:
        raise RuntimeFailure.from_os("namespaces.unshare", exc) from None


def format_id_map(maps: tuple[IdMap, ...]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)


def write_id_maps(linux: Linux, pid: int, config: Config) -> None:
    """Write uid_map and gid_map of ``pid`` (called by the parent, which may do it)."""
    for name, maps in (("uid_map", config.uid_mappings), ("gid_map", config.gid_mappings)):
        try:
            linux.write_file(f"/proc/{pid}/{name}", format_id_map(maps))
        except OSError as exc:
            raise RuntimeFailure.from_os(f"namespaces.{name}", exc) from None
