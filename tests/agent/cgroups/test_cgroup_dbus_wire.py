"""The real D-Bus client (``JeepneyBus``) on the wire: a private ``dbus-daemon`` and a small
stand-in for systemd's Manager object that answers like systemd does (job paths, then a
``JobRemoved`` signal; error replies by name). Proves signatures, variants, job waiting and
error mapping without systemd on this host; the real systemd is exercised in the guest."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.cgroups import CgroupError, SystemdManager
from agent.runtime.cgroups.dbus import (
    MANAGER_IFACE,
    SYSTEMD_BUS_NAME,
    SYSTEMD_PATH,
    DBusError,
    JeepneyBus,
)

jeepney = pytest.importorskip("jeepney")
from jeepney import (  # noqa: E402
    DBusAddress,
    HeaderFields,
    MessageType,
    new_error,
    new_method_call,
    new_method_return,
    new_signal,
)
from jeepney.io.blocking import open_dbus_connection  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class FakeSystemd:
    """Owns org.freedesktop.systemd1 on the private bus and records decoded calls."""

    def __init__(self, address: str, version: str = "252.22-1~deb12u1") -> None:
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.version = version
        self.units: set[str] = set()
        self.conn = open_dbus_connection(bus=address)
        bus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
        self.conn.send_and_get_reply(
            new_method_call(bus, "RequestName", "su", (SYSTEMD_BUS_NAME, 4))
        )
        self.jobs = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                msg = self.conn.receive(timeout=0.1)
            except TimeoutError:
                continue
            except OSError:
                return
            if msg.header.message_type != MessageType.method_call:
                continue
            member = msg.header.fields[HeaderFields.member]
            signature = msg.header.fields.get(HeaderFields.signature, "")
            self.calls.append((member, signature, msg.body))
            self._answer(msg, member)

    def _answer(self, msg: Any, member: str) -> None:
        send = self.conn.send_message
        if member == "Get":
            send(new_method_return(msg, "v", (("s", self.version),)))
        elif member in ("StartTransientUnit", "StopUnit"):
            unit = msg.body[0]
            if member == "StopUnit" and unit not in self.units:
                send(new_error(msg, "org.freedesktop.systemd1.NoSuchUnit", "s", ("no unit",)))
                return
            if member == "StartTransientUnit" and unit in self.units:
                send(new_error(msg, "org.freedesktop.systemd1.UnitExists", "s", ("exists",)))
                return
            (self.units.add if member == "StartTransientUnit" else self.units.discard)(unit)
            self.jobs += 1
            job = f"{SYSTEMD_PATH}/job/{self.jobs}"
            send(new_method_return(msg, "o", (job,)))
            emitter = DBusAddress(SYSTEMD_PATH, interface=MANAGER_IFACE)
            send(new_signal(emitter, "JobRemoved", "uoss", (self.jobs, job, unit, "done")))
        else:  # Subscribe, SetUnitProperties, AttachProcessesToUnit, AddMatch replies
            send(new_method_return(msg))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.conn.close()


@pytest.fixture
def private_bus(tmp_path: Path) -> Iterator[str]:
    socket = tmp_path / "bus"
    config = tmp_path / "bus.conf"
    config.write_text(CONFIG.format(socket=socket))
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        assert address.startswith("unix:"), address
        yield address
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        if daemon.stdout is not None:
            daemon.stdout.close()


@pytest.fixture
def systemd(private_bus: str) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(private_bus)
    try:
        yield fake
    finally:
        fake.close()


def test_start_set_attach_and_stop_go_over_the_wire(private_bus: str, systemd: FakeSystemd) -> None:
    bus = JeepneyBus(address=private_bus, timeout=5)
    try:
        mgr = SystemdManager("machine-alpha.slice:corral:c1", bus=bus, fs_driver="v2")
        mgr.set({"memory": {"limit": 64 << 20}, "cpu": {"cpus": "1"}})
        mgr.apply(4242)
        mgr.apply(4343)
        mgr.set({"pids": {"limit": 10}})
        bus.call_job("StopUnit", "ss", ("corral-c1.scope", "replace"))
    finally:
        bus.close()
    calls = {member: body for member, _, body in systemd.calls}
    assert calls["Get"] == (MANAGER_IFACE, "Version")
    unit, mode, props, aux = calls["StartTransientUnit"]
    assert (unit, mode, aux) == ("corral-c1.scope", "replace", [])
    decoded = dict(props)
    assert decoded["PIDs"] == ("au", [4242])
    assert decoded["Delegate"] == ("b", True)
    assert decoded["Slice"] == ("s", "machine-alpha.slice")
    assert decoded["MemoryMax"] == ("t", 64 << 20)
    assert decoded["AllowedCPUs"] == ("ay", b"\x02")
    assert calls["AttachProcessesToUnit"] == ("corral-c1.scope", "/", [4343])
    assert calls["SetUnitProperties"] == ("corral-c1.scope", True, [("TasksMax", ("t", 10))])
    assert "Subscribe" in calls
    assert systemd.units == set()


def test_error_replies_become_dbus_errors_by_name(private_bus: str, systemd: FakeSystemd) -> None:
    bus = JeepneyBus(address=private_bus, timeout=5)
    try:
        with pytest.raises(DBusError) as info:
            bus.call_job("StopUnit", "ss", ("corral-gone.scope", "replace"))
        assert info.value.name == "org.freedesktop.systemd1.NoSuchUnit"
        # The driver treats a missing unit as already destroyed...
        mgr = SystemdManager("machine-alpha.slice:corral:gone", bus=bus, fs_driver="v2")
        mgr.files.destroy = lambda: None  # type: ignore[method-assign]
        mgr.destroy()
        # ...but a scope that already exists on start is joined, not an error.
        systemd.units.add("corral-c2.scope")
        joined = SystemdManager("machine-alpha.slice:corral:c2", bus=bus, fs_driver="v2")
        joined.apply(99)
        assert systemd.calls[-1][0] == "AttachProcessesToUnit"
    finally:
        bus.close()


def test_an_unreachable_bus_is_a_connect_error_naming_the_bus(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/no-bus"
    mgr = SystemdManager("machine-alpha.slice:corral:c1", fs_driver="v2", bus_address=address)
    with pytest.raises(CgroupError) as info:
        mgr.apply(4242)
    assert (info.value.step, info.value.field) == ("connect", "system bus")
