"""Which cgroup driver this host needs: ``systemd``, ``v2`` or ``v1``."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from agent.runtime.cgroups.base import DRIVERS, CgroupError, Driver
from agent.runtime.cgroups.fs import CGROUP2_SUPER_MAGIC, statfs_type

logger = logging.getLogger(__name__)

ENV_VAR = "CORRAL_CGROUP_DRIVER"


def pid1_is_systemd(proc: str = "/proc") -> bool:
    """PID 1 is systemd (what ``sd_booted()`` means, checked on the process itself)."""
    try:
        with open(f"{proc}/1/comm", encoding="utf-8") as fh:
            return fh.read().strip() == "systemd"
    except OSError:
        return False


@functools.cache
def host_is_systemd() -> bool:
    """PID 1 is systemd and answers on the system bus; probed once per process (the D-Bus
    round trip costs milliseconds and the answer does not change while we run)."""
    return pid1_is_systemd() and systemd_bus_answers()


def systemd_bus_answers() -> bool:
    """The system bus is up and systemd answers on it (``Peer.Ping`` on systemd1)."""
    from agent.runtime.cgroups.dbus import system_bus_ping

    return system_bus_ping()


def detect_driver(
    *,
    override: str | None = None,
    root: str = "/sys/fs/cgroup",
    env: dict[str, str] | None = None,
    is_systemd: Callable[[], bool] | None = None,
) -> Driver:
    """The driver for this host. ``override`` (agent config) wins, then the environment
    variable ``CORRAL_CGROUP_DRIVER``; otherwise systemd when PID 1 is systemd and the system
    bus answers, v2 when ``root`` is a cgroup2 mount (statfs magic), else v1."""
    environ = os.environ if env is None else env
    forced = override or environ.get(ENV_VAR) or None
    if forced is not None:
        if forced not in DRIVERS:
            raise CgroupError("detect", ENV_VAR, f"{forced!r} is not one of {', '.join(DRIVERS)}")
        return forced
    check = is_systemd or host_is_systemd
    if check():
        return "systemd"
    if statfs_type(root) == CGROUP2_SUPER_MAGIC:
        return "v2"
    return "v1"
