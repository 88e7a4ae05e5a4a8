"""Fast tests of the guest harness's own logic (no qemu): result parsing, and the qemu network
line, which must never let the guest reach anything but forwards to host loopback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from guest_harness import GuestError, GuestRun, parse_results, qemu_argv

RESULTS = """BEGIN uptime=50.1\r
LOG selinux_mcs_isolation ctr-a pid 296 = system_u:system_r:container_t:s0:c1,c2\r
SCENARIO selinux_mcs_isolation PASS cross reads denied (1.0s)\r
SCENARIO cgroup_v2_driver FAIL AssertionError: stats.memory_limit=None (4.2s)
garbage from a half-written line
SCENARIO certification SKIP agent.certification is not importable in this tree yet
AVC avc:  denied  { read } for  pid=1 scontext=a tcontext=b tclass=file permissive=1
END pass=1 fail=1 skip=1 uptime=70.0
"""


def test_parse_results_reads_each_scenario_with_its_logs() -> None:
    scenarios, begin, end = parse_results(RESULTS)
    assert begin
    assert end == "END pass=1 fail=1 skip=1 uptime=70.0"
    assert {name: sc.status for name, sc in scenarios.items()} == {
        "selinux_mcs_isolation": "PASS",
        "cgroup_v2_driver": "FAIL",
        "certification": "SKIP",
    }
    mcs = scenarios["selinux_mcs_isolation"]
    assert mcs.logs == ("ctr-a pid 296 = system_u:system_r:container_t:s0:c1,c2",)
    assert scenarios["cgroup_v2_driver"].detail.startswith("AssertionError: stats.memory_limit")


def test_parse_results_without_end_reports_no_end() -> None:
    scenarios, begin, end = parse_results("BEGIN uptime=1\nSCENARIO a PASS ok\n")
    assert begin and end is None and list(scenarios) == ["a"]


def test_avc_denials_come_from_the_results_channel() -> None:
    run = GuestRun({}, True, "END", console="avc:  denied on the console", results_raw=RESULTS)
    assert run.avc_denials() == [
        "avc:  denied  { read } for  pid=1 scontext=a tcontext=b tclass=file permissive=1"
    ]


@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or shutil.which("socat") is None,
    reason="qemu-system-x86 or socat not installed",
)
def test_guest_network_is_restricted_to_forwards_to_host_loopback(tmp_path: Path) -> None:
    argv = qemu_argv(tmp_path, tmp_path / "payload.img", tmp_path, 16379, 18000, "tok")
    netdev = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in netdev.split(",")
    forwards = re.findall(r"guestfwd=tcp:([\d.]+):(\d+)-cmd:socat - TCP:([\d.]+):(\d+)", netdev)
    assert forwards == [
        ("10.0.2.100", "6379", "127.0.0.1", "16379"),
        ("10.0.2.101", "8000", "127.0.0.1", "18000"),
    ]
    assert "hostfwd" not in netdev
    assert argv[argv.index("-accel") + 1].startswith("tcg")
    append = argv[argv.index("-append") + 1].split()
    assert {"security=selinux", "selinux=1", "enforcing=1"} <= set(append)


def test_missing_qemu_is_an_error_naming_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GuestError, match=r"step qemu: qemu-system-x86_64 is not installed"):
        qemu_argv(tmp_path, tmp_path / "payload.img", tmp_path, 1, 2, "tok")
