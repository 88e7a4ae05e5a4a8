"""The D-Bus seam of the systemd driver: a tiny client of systemd's Manager interface.

jeepney (pure Python, no libdbus, no parsing of ``busctl`` output) speaks the protocol over
the system bus socket; the driver only sees :class:`Bus`, so a unit test can record its
calls with a fake.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

logger = logging.getLogger(__name__)

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
JOB_TIMEOUT = 30.0


class DBusError(Exception):
    """An error reply: ``name`` is the D-Bus error name
    (``org.freedesktop.systemd1.UnitExists``, ``...NoSuchUnit``)."""

    def __init__(self, name: str, message: str = "") -> None:
        self.name = name
        self.message = message
        super().__init__(f"{name}: {message}" if message else name)


class Bus(Protocol):
    """What the systemd driver needs of the system bus."""

    def call(self, member: str, signature: str, body: tuple[Any, ...]) -> tuple[Any, ...]:
        """Call ``member`` of systemd's Manager interface and return the reply body;
        raises :class:`DBusError` on an error reply."""
        ...

    def call_job(self, member: str, signature: str, body: tuple[Any, ...]) -> str:
        """Call a Manager method that returns a job path, wait for the job's
        ``JobRemoved`` signal and return its result (``done``, ``failed``, ...)."""
        ...

    def manager_property(self, name: str) -> Any:
        """A property of the Manager object (``Version``...)."""
        ...


class JeepneyBus:
    """:class:`Bus` over a blocking jeepney connection to the system bus."""

    def __init__(self, *, timeout: float = 10.0, address: str = "SYSTEM") -> None:
        from jeepney import DBusAddress
        from jeepney.io.blocking import open_dbus_connection

        self._timeout = timeout
        self._conn: Any = open_dbus_connection(bus=address, auth_timeout=timeout)
        self._manager: Any = DBusAddress(SYSTEMD_PATH, SYSTEMD_BUS_NAME, MANAGER_IFACE)
        self._subscribed = False

    def close(self) -> None:
        self._conn.close()

    def _send(self, address: Any, member: str, signature: str, body: tuple[Any, ...]) -> Any:
        from jeepney import HeaderFields, MessageType, new_method_call

        msg = new_method_call(address, member, signature or None, body)
        reply = self._conn.send_and_get_reply(msg, timeout=self._timeout)
        if reply.header.message_type == MessageType.error:
            name = str(reply.header.fields.get(HeaderFields.error_name, "unknown"))
            text = str(reply.body[0]) if reply.body else ""
            raise DBusError(name, text)
        return reply.body

    def call(self, member: str, signature: str, body: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(self._send(self._manager, member, signature, body))

    def call_job(self, member: str, signature: str, body: tuple[Any, ...]) -> str:
        from jeepney import DBusAddress, MatchRule

        bus_daemon = DBusAddress(
            "/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus"
        )
        rule = MatchRule(
            type="signal", interface=MANAGER_IFACE, member="JobRemoved", path=SYSTEMD_PATH
        )
        if not self._subscribed:
            # systemd sends JobRemoved only while some client is subscribed.
            self.call("Subscribe", "", ())
            self._send(bus_daemon, "AddMatch", "s", (rule.serialise(),))
            self._subscribed = True
        with self._conn.filter(rule, bufsize=256) as queue:
            (job,) = self.call(member, signature, body)
            deadline = time.monotonic() + JOB_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DBusError("corral.JobTimeout", f"{member} job {job} did not finish")
                signal = self._conn.recv_until_filtered(queue, timeout=remaining)
                _id, path, _unit, result = signal.body
                if path == job:
                    return str(result)

    def manager_property(self, name: str) -> Any:
        from jeepney import DBusAddress

        props = DBusAddress(SYSTEMD_PATH, SYSTEMD_BUS_NAME, "org.freedesktop.DBus.Properties")
        (variant,) = self._send(props, "Get", "ss", (MANAGER_IFACE, name))
        return variant[1]


def system_bus_ping(timeout: float = 1.0) -> bool:
    """Whether the system bus is reachable and systemd answers ``Peer.Ping``."""
    try:
        from jeepney import DBusAddress, MessageType, new_method_call
        from jeepney.io.blocking import open_dbus_connection
    except ImportError:
        logger.warning("jeepney is not installed: the systemd cgroup driver is unavailable")
        return False
    try:
        with open_dbus_connection(bus="SYSTEM", auth_timeout=timeout) as conn:
            addr = DBusAddress(SYSTEMD_PATH, SYSTEMD_BUS_NAME, "org.freedesktop.DBus.Peer")
            reply = conn.send_and_get_reply(new_method_call(addr, "Ping"), timeout=timeout)
    except Exception as exc:  # any failure means "not usable"; the reason is logged
        logger.info("systemd not reachable on the system bus: %s", exc)
        return False
    if reply.header.message_type == MessageType.error:
        logger.info("systemd did not answer Ping on the system bus: %s", reply.body)
        return False
    return True
