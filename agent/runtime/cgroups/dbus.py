"""The D-Bus seam of the systemd driver: a tiny client of systemd's Manager interface.

jeepney (pure Python, no libdbus) speaks the protocol over the system bus socket; the driver
only sees :class:`Bus`, so its calls can be recorded by a fake in unit tests.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

logger = logging.getLogger(__name__)

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"


class Bus(Protocol):
    """What the systemd driver needs of the system bus."""

    def call(self, member: str, signature: str, body: tuple[Any, ...]) -> tuple[Any, ...]:
        """Call ``member`` of systemd's Manager interface and return the reply body."""

    def call_job(self, member: str, signature: str, body: tuple[Any, ...]) -> str:
        """Call a Manager method that returns a job and wait for the job to finish;
        returns its result (``done``, ``failed``, ...)."""

    def manager_property(self, name: str) -> Any:
        """A property of the Manager object (``Version``...)."""


def system_bus_ping(timeout: float = 1.0) -> bool:
    """Whether the system bus is reachable and systemd answers ``Peer.Ping``."""
    try:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection
    except ImportError:
        logger.warning("jeepney is not installed: the systemd cgroup driver is unavailable")
        return False
    try:
        with open_dbus_connection(bus="SYSTEM", timeout=timeout) as conn:
            addr = DBusAddress(SYSTEMD_PATH, SYSTEMD_BUS_NAME, "org.freedesktop.DBus.Peer")
            conn.send_and_get_reply(new_method_call(addr, "Ping"), timeout=timeout)
    except Exception as exc:  # any failure means "not usable", with the reason logged
        logger.info("systemd not reachable on the system bus: %s", exc)
        return False
    return True
