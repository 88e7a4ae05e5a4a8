"""The systemd driver's exact D-Bus calls, through a recording fake bus; cgroup files come
from the fake cgroup2 tree (see conftest). The real bus is exercised in the qemu guest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.runtime.cgroups import CgroupError, SystemdManager, cgroups_path_for, new_manager
from agent.runtime.cgroups.dbus import MANAGER_IFACE, DBusError
from agent.runtime.cgroups.systemd_props import (
    START_SIGNATURE,
    UINT64_MAX,
    cpu_mask,
    parse_version,
)

PATH = cgroups_path_for("alpha", "c1", driver="systemd")  # machine-alpha.slice:corral:c1
UNIT = "corral-c1.scope"
ACCOUNTING = [
    ("CPUAccounting", ("b", True)),
    ("MemoryAccounting", ("b", True)),
    ("TasksAccounting", ("b", True)),
]


class RecordingBus:
    """Records every call as (member, signature, body); ``fail`` maps a member to the
    error its next call raises. Like systemd, starting a scope creates its cgroup."""

    def __init__(self, version: str = "252.22-1~deb12u1", fs: Any = None) -> None:
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.version = version
        self.fs = fs
        self.fail: dict[str, DBusError] = {}
        self.job_result = "done"

    def call(self, member: str, signature: str, body: tuple[Any, ...]) -> tuple[Any, ...]:
        self.calls.append((member, signature, body))
        if member in self.fail:
            raise self.fail.pop(member)
        return ()

    def call_job(self, member: str, signature: str, body: tuple[Any, ...]) -> str:
        self.call(member, signature, body)
        if member == "StartTransientUnit" and self.fs is not None and body[0].endswith(".scope"):
            slice_ = dict(body[2])["Slice"][1]
            mgr = SystemdManager(f"{slice_}:corral:{body[0]}", fs=self.fs, fs_driver="v2")
            mgr.files.create()
        return self.job_result

    def manager_property(self, name: str) -> Any:
        self.calls.append(("Get", "ss", (MANAGER_IFACE, name)))
        return self.version

    def members(self) -> list[str]:
        return [member for member, _, _ in self.calls if member != "Get"]


def manager(bus: RecordingBus, fs: Any = None) -> SystemdManager:
    return SystemdManager(PATH, bus=bus, fs=fs, fs_driver="v2", root="/nonexistent")


def test_new_manager_returns_the_systemd_driver_without_touching_the_bus() -> None:
    mgr = new_manager(PATH, driver="systemd")
    assert isinstance(mgr, SystemdManager)
    assert mgr.unit == UNIT


def test_apply_starts_a_delegated_transient_scope_with_the_pending_limits() -> None:
    bus = RecordingBus()
    mgr = manager(bus)
    mgr.create()
    assert bus.members() == []  # a scope needs a process: nothing happens before apply
    mgr.set(
        {
            "cpu": {"shares": 1024, "quota": 50_000, "period": 100_000, "cpus": "0-1,9"},
            "memory": {"limit": 64 << 20, "swap": 96 << 20},
            "pids": {"limit": 100},
            "blockIO": {"weight": 500},
        }
    )
    mgr.apply(4242)
    assert bus.calls[0] == ("Get", "ss", (MANAGER_IFACE, "Version"))
    member, signature, body = bus.calls[-1]
    assert (member, signature) == ("StartTransientUnit", START_SIGNATURE)
    assert body == (
        UNIT,
        "replace",
        [
            ("Description", ("s", f"corral container {UNIT}")),
            ("Slice", ("s", "machine-alpha.slice")),
            ("Delegate", ("b", True)),
            ("PIDs", ("au", [4242])),
            *ACCOUNTING,
            ("IOAccounting", ("b", True)),
            ("CPUWeight", ("t", 100)),
            ("CPUQuotaPeriodUSec", ("t", 100_000)),
            ("CPUQuotaPerSecUSec", ("t", 500_000)),
            ("AllowedCPUs", ("ay", bytes([0b11, 0b10]))),
            ("MemoryMax", ("t", 64 << 20)),
            ("MemorySwapMax", ("t", 32 << 20)),
            ("TasksMax", ("t", 100)),
            ("IOWeight", ("t", 1 + (500 - 10) * 9999 // 990)),
        ],
        [],
    )


def test_old_systemd_gets_the_v1_property_names() -> None:
    bus = RecordingBus(version="219")
    mgr = manager(bus)
    mgr.set(
        {
            "cpu": {"shares": 512, "quota": 20_000, "period": 100_000, "cpus": "0"},
            "memory": {"limit": 64 << 20, "swap": 64 << 20},
            "blockIO": {"weight": 500},
        }
    )
    mgr.apply(4242)
    props = bus.calls[-1][2][2]
    names = [name for name, _ in props]
    assert ("CPUShares", ("t", 512)) in props
    assert ("MemoryLimit", ("t", 64 << 20)) in props
    assert ("BlockIOWeight", ("t", 500)) in props
    assert ("BlockIOAccounting", ("b", True)) in props
    assert ("CPUQuotaPerSecUSec", ("t", 200_000)) in props
    for newer in ("CPUWeight", "MemoryMax", "MemorySwapMax", "IOWeight", "AllowedCPUs"):
        assert newer not in names
    assert "CPUQuotaPeriodUSec" not in names


def test_fractional_cpu_quota_rounds_up_to_whole_percent_and_minus_one_is_infinity() -> None:
    bus = RecordingBus()
    mgr = manager(bus)
    mgr.apply(1)
    mgr.set({"cpu": {"quota": 1234, "period": 100_000}})
    assert ("CPUQuotaPerSecUSec", ("t", 20_000)) in bus.calls[-1][2][2]
    mgr.set({"cpu": {"quota": -1}, "memory": {"limit": -1}, "pids": {"limit": -1}})
    assert bus.calls[-1][2][2] == [
        ("CPUQuotaPerSecUSec", ("t", UINT64_MAX)),
        ("MemoryMax", ("t", UINT64_MAX)),
        ("TasksMax", ("t", UINT64_MAX)),
    ]


def test_set_after_start_is_set_unit_properties_at_runtime() -> None:
    bus = RecordingBus()
    mgr = manager(bus)
    mgr.apply(4242)
    mgr.set({"pids": {"limit": 10}})
    assert bus.calls[-1] == (
        "SetUnitProperties",
        "sba(sv)",
        (UNIT, True, [("TasksMax", ("t", 10))]),
    )


def test_a_second_process_is_attached_to_the_running_unit() -> None:
    bus = RecordingBus()
    mgr = manager(bus)
    mgr.apply(4242)
    mgr.apply(4343)
    assert bus.calls[-1] == ("AttachProcessesToUnit", "ssau", (UNIT, "/", [4343]))


def test_old_systemd_without_attach_writes_cgroup_procs(fake_v2: Any) -> None:
    bus = RecordingBus(version="219", fs=fake_v2)
    mgr = manager(bus, fake_v2)
    mgr.apply(4242)
    mgr.apply(4343)
    assert "AttachProcessesToUnit" not in bus.members()
    assert mgr.pids() == [4343]  # the fake bus does not move 4242; the file write did 4343


def test_an_existing_unit_after_an_agent_restart_is_joined() -> None:
    bus = RecordingBus()
    bus.fail["StartTransientUnit"] = DBusError("org.freedesktop.systemd1.UnitExists", "exists")
    mgr = manager(bus)
    mgr.set({"pids": {"limit": 10}})
    mgr.apply(4242)
    assert bus.members() == ["StartTransientUnit", "AttachProcessesToUnit", "SetUnitProperties"]
    assert bus.calls[-1][2] == (UNIT, True, [("TasksMax", ("t", 10))])


def test_a_failed_start_job_is_an_error_naming_the_step_and_unit() -> None:
    bus = RecordingBus()
    bus.job_result = "failed"
    with pytest.raises(CgroupError) as info:
        manager(bus).apply(4242)
    assert (info.value.step, info.value.field) == ("apply", UNIT)


def test_destroy_stops_the_unit_and_is_idempotent(fake_v2: Any) -> None:
    bus = RecordingBus(fs=fake_v2)
    mgr = manager(bus, fake_v2)
    mgr.apply(4242)
    Path(mgr.path(), "cgroup.procs").write_text("")  # the caller killed the process
    mgr.destroy()
    assert bus.calls[-1] == ("StopUnit", "ss", (UNIT, "replace"))
    assert not Path(mgr.path()).exists()
    bus.fail["StopUnit"] = DBusError("org.freedesktop.systemd1.NoSuchUnit", "gone")
    mgr.destroy()
    bus.fail["StopUnit"] = DBusError("org.freedesktop.DBus.Error.AccessDenied", "no")
    with pytest.raises(CgroupError) as info:
        mgr.destroy()
    assert info.value.step == "destroy"


def test_ensure_parent_starts_the_project_slice_with_equal_weight() -> None:
    bus = RecordingBus()
    manager(bus).ensure_parent()
    assert bus.calls[-1] == (
        "StartTransientUnit",
        START_SIGNATURE,
        (
            "machine-alpha.slice",
            "replace",
            [
                ("Description", ("s", "corral project machine-alpha.slice")),
                ("CPUWeight", ("t", 100)),
            ],
            [],
        ),
    )


def test_ensure_parent_updates_a_slice_that_already_exists() -> None:
    bus = RecordingBus()
    bus.fail["StartTransientUnit"] = DBusError("org.freedesktop.systemd1.UnitExists", "exists")
    manager(bus).ensure_parent({"cpu": {"shares": 2048}, "memory": {"limit": 1 << 30}})
    assert bus.calls[-1] == (
        "SetUnitProperties",
        "sba(sv)",
        ("machine-alpha.slice", True, [("CPUWeight", ("t", 174)), ("MemoryMax", ("t", 1 << 30))]),
    )


def test_stats_and_freeze_use_the_units_v2_files(fake_v2: Any) -> None:
    bus = RecordingBus(fs=fake_v2)
    mgr = manager(bus, fake_v2)
    mgr.apply(4242)
    unit_dir = Path(mgr.path())
    assert unit_dir == Path(fake_v2.abspath("machine.slice/machine-alpha.slice/corral-c1.scope"))
    (unit_dir / "memory.events").write_text("oom 2\noom_kill 1\n")
    (unit_dir / "cpu.stat").write_text("usage_usec 7\n")
    stats = mgr.stats()
    assert (stats.oom_events, stats.oom_kill, stats.cpu_usage_ns) == (2, 1, 7000)
    mgr.freeze()
    assert (unit_dir / "cgroup.freeze").read_text().strip() == "1"
    mgr.thaw()
    assert (unit_dir / "cgroup.freeze").read_text().strip() == "0"


def test_bad_resources_are_rejected_before_any_bus_call() -> None:
    bus = RecordingBus()
    mgr = manager(bus)
    mgr.apply(1)
    calls = len(bus.calls)
    with pytest.raises(CgroupError) as info:
        mgr.set({"memory": {"swap": 1 << 30}})
    assert info.value.field == "memory.swap"
    assert len(bus.calls) == calls


def test_bad_cgroups_path_is_rejected() -> None:
    with pytest.raises(CgroupError) as info:
        SystemdManager("/machine.slice/x.scope", bus=RecordingBus(), fs_driver="v2")
    assert info.value.field == "cgroupsPath"


@pytest.mark.parametrize(
    ("cpus", "mask"), [("0-2,5", bytes([0b100111])), ("8", bytes([0, 1])), ("", b"")]
)
def test_cpu_mask_is_systemds_byte_order(cpus: str, mask: bytes) -> None:
    assert cpu_mask(cpus) == mask


@pytest.mark.parametrize(("text", "number"), [("252.22-1~deb12u1", 252), ("v255", 255), ("", 0)])
def test_parse_version(text: str, number: int) -> None:
    assert parse_version(text) == number
