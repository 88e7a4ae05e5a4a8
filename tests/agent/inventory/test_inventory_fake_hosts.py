"""Collector logic for hosts this machine is not: SELinux enforcing, cgroup v2, systemd.

The collectors read every file through ``_base.ROOT``; here it points at a small tree written
by the test, and the one system call that cannot be faked by files (statfs of the cgroup
root) is replaced by a recording stand-in. The same code reads the real files on a real host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.certification import run_host_checks
from agent.inventory import _base, _sys, isolation, security, system

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "inventory"


def write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(_base, "ROOT", tmp_path)
    return tmp_path


def selinux_host(root: Path, enforce: str = "1", mls: str = "1") -> None:
    write(
        root,
        "/proc/self/mountinfo",
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "30 1 0:20 / /sys/fs/selinux rw,relatime - selinuxfs selinuxfs rw\n",
    )
    write(root, "/sys/fs/selinux/enforce", enforce)
    write(root, "/sys/fs/selinux/mls", mls)
    write(root, "/sys/fs/selinux/policyvers", "33")
    write(root, "/sys/fs/selinux/deny_unknown", "1")
    write(root, "/etc/selinux/config", "# comment\nSELINUX=enforcing\nSELINUXTYPE=targeted\n")
    write(
        root,
        "/etc/selinux/targeted/contexts/lxc_contexts",
        'process = "system_u:system_r:container_t:s0"\n'
        'file = "system_u:object_r:container_file_t:s0"\n'
        'sandbox_kvm_process = "system_u:system_r:container_kvm_t:s0"\n',
    )
    write(root, "/sys/kernel/security/lsm", "lockdown,capability,yama,selinux,bpf")


def test_selinux_enforcing_mcs_host_is_read_completely(fake_root: Path) -> None:
    selinux_host(fake_root)
    se = security.collect_selinux()
    assert se["enabled"] is True
    assert se["mode"] == "enforcing"
    assert se["mls"] is True
    assert se["policy_name"] == "targeted"
    assert se["policy_version"] == 33
    assert se["container_types"] == ["container_file_t", "container_t"]
    assert se["lsm_list"] == ["lockdown", "capability", "yama", "selinux", "bpf"]


def test_selinux_collector_feeds_the_checks(fake_root: Path) -> None:
    selinux_host(fake_root)
    inv = json.loads((FIXTURES / "rhel9-kvm-guest-selinux-enforcing.json").read_text())
    inv["selinux"] = security.collect_selinux()
    verdicts = {f.id: f.verdict for f in run_host_checks(inv) if f.id.startswith("cert.selinux")}
    assert set(verdicts.values()) == {"pass"}


def test_permissive_without_mcs_fails_enforcing_and_mcs(fake_root: Path) -> None:
    selinux_host(fake_root, enforce="0", mls="0")
    inv = json.loads((FIXTURES / "rhel9-kvm-guest-selinux-enforcing.json").read_text())
    inv["selinux"] = security.collect_selinux()
    assert inv["selinux"]["mode"] == "permissive"
    failing = sorted(f.id for f in run_host_checks(inv) if f.verdict == "fail")
    assert failing == ["cert.selinux.E002", "cert.selinux.E003"]


def test_unreadable_lxc_contexts_leaves_container_types_unknown(fake_root: Path) -> None:
    selinux_host(fake_root)
    (fake_root / "etc/selinux/targeted/contexts/lxc_contexts").unlink()
    assert security.collect_selinux()["container_types"] is None


def test_cgroup_v2_host_reports_unified_controllers(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def statfs(path: str) -> int:
        calls.append(path)
        return _sys.CGROUP2_SUPER_MAGIC

    monkeypatch.setattr(_sys, "statfs_type", statfs)
    write(fake_root, "/proc/self/mountinfo", "35 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    write(fake_root, "/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids\n")
    write(fake_root, "/sys/fs/cgroup/cgroup.subtree_control", "cpu io memory pids\n")
    cg = isolation.collect_cgroups()
    assert calls == [str(fake_root / "sys/fs/cgroup")]
    assert (cg["version"], cg["mode"]) == (2, "unified")
    assert cg["subtree_control"] == ["cpu", "io", "memory", "pids"]
    assert {"cpu", "io", "memory", "pids", "cpuset"} <= set(cg["controllers_usable"])


def test_unexpected_cgroup_filesystem_is_unknown(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sys, "statfs_type", lambda path: 0xEF53)  # ext4
    cg = isolation.collect_cgroups()
    assert cg["status"] == "unknown" and "0xef53" in cg["reason"]


def test_systemd_host_is_recognised(fake_root: Path) -> None:
    write(fake_root, "/proc/1/comm", "systemd\n")
    (fake_root / "run/systemd/system").mkdir(parents=True)
    (fake_root / "proc/1/exe").symlink_to("/usr/lib/systemd/systemd")
    init = system.collect_init()
    assert init == {
        "pid1_comm": "systemd",
        "pid1_exe": "/usr/lib/systemd/systemd",
        "systemd": True,
        "systemd_booted_marker": True,
    }


def test_kernel_config_from_boot_file_with_module_and_unset_options(fake_root: Path) -> None:
    write(
        fake_root,
        f"/boot/config-{os.uname().release}",
        "CONFIG_OVERLAY_FS=m\n# CONFIG_SECURITY_SELINUX is not set\nCONFIG_USER_NS=y\n",
    )
    cfg = system.collect_kernel_config()
    assert cfg["source"].endswith(f"boot/config-{os.uname().release}")
    assert cfg["options"]["CONFIG_OVERLAY_FS"] == "m"
    assert cfg["options"]["CONFIG_SECURITY_SELINUX"] == "n"
    assert cfg["options"]["CONFIG_MEMCG"] == "n"  # absent from the file


def test_mountinfo_unescapes_spaces_and_reads_device_and_root(fake_root: Path) -> None:
    write(
        fake_root,
        "/proc/self/mountinfo",
        "40 1 8:1 /srv/data /mnt/my\\040disk rw,relatime shared:1 - ext4 /dev/sda1 rw\n",
    )
    (entry,) = _base.mountinfo()
    assert entry["mount_point"] == "/mnt/my disk"
    assert (entry["device"], entry["root"], entry["fstype"]) == ("8:1", "/srv/data", "ext4")
    assert entry["super_options"] == "rw"
