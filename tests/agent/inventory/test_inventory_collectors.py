"""Every inventory collector against this real machine, checked against independent sources."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import agent
from agent.inventory import hardware, isolation, runtimes, security, system, virt

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[3]


def _cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_cpu_counts_every_processor_and_reports_only_flags_the_cpu_has() -> None:
    cpu = hardware.collect_cpu()
    processors = Path("/proc/cpuinfo").read_text().count("\nprocessor") + 1
    assert cpu["threads"] == processors
    assert 1 <= cpu["sockets"] <= cpu["cores"] <= cpu["threads"]
    flags = _cpuinfo_flags()
    assert set(cpu["flags"]) == {f for f in hardware.CPU_FLAGS_OF_INTEREST if f in flags}
    assert cpu["virtualization_extensions"] == bool({"vmx", "svm"} & flags)


def test_memory_total_matches_sysconf_physical_pages() -> None:
    mem = hardware.collect_memory()
    assert mem["total_bytes"] == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < mem["available_bytes"] <= mem["total_bytes"]
    assert mem["swap_free_bytes"] <= mem["swap_total_bytes"]


def test_disks_list_every_block_device_and_size_the_root_filesystem() -> None:
    disks = hardware.collect_disks()
    assert [d["name"] for d in disks["block_devices"]] == sorted(os.listdir("/sys/block"))
    root = next(f for f in disks["filesystems"] if f["mount_point"] == "/")
    st = os.statvfs("/")
    assert root["size_bytes"] == st.f_blocks * st.f_frsize
    pseudo = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "tmpfs", "devtmpfs", "nsfs"}
    assert not pseudo & {f["fstype"] for f in disks["filesystems"]}


def test_network_reports_addresses_of_interfaces_in_a_fresh_namespace() -> None:
    """A veth pair with known addresses in a network namespace that dies with the shell.

    A private mount namespace gets its own /sys, since sysfs shows the netns it was mounted in.
    """
    script = (
        "mount -t sysfs sysfs /sys && ip link set lo up && "
        "ip link add corrinv0 type veth peer name corrinv1 && "
        "ip addr add 198.51.100.7/24 dev corrinv0 && "
        "ip addr add 198.51.100.8/24 dev corrinv0 label corrinv0:1 && "
        "ip -6 addr add 2001:db8::7/64 dev corrinv0 nodad && ip link set corrinv0 up && "
        f"{sys.executable} -c 'import json; from agent.inventory.hardware import collect_network;"
        " print(json.dumps(collect_network()))'"
    )
    out = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-ec", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    net = json.loads(out.stdout)
    by_name = {i["name"]: i for i in net["interfaces"]}
    assert set(by_name) == {"lo", "corrinv0", "corrinv1"}
    assert by_name["corrinv0"]["addresses"] == [
        "198.51.100.7/24",
        "198.51.100.8/24",
        "2001:db8::7/64",
    ]
    assert "127.0.0.1/8" in by_name["lo"]["addresses"]
    assert by_name["corrinv1"]["addresses"] == []
    assert by_name["corrinv0"]["physical"] is False
    assert (by_name["corrinv0"]["veth"], by_name["corrinv1"]["veth"]) == (True, True)
    assert by_name["lo"]["veth"] is False


def test_filesystems_skip_container_overlays_and_subdirectory_binds(tmp_path: Path) -> None:
    """Mounts made in a private mount namespace that disappears with the shell."""
    for d in ("lower", "upper", "work", "merged", "bound"):
        (tmp_path / d).mkdir()
    t = tmp_path
    script = (
        f"mount -t overlay overlay -o lowerdir={t}/lower,upperdir={t}/upper,workdir={t}/work "
        f"{t}/merged && mount --bind {t}/lower {t}/bound && "
        f"{sys.executable} -c 'import json; from agent.inventory.hardware import collect_disks;"
        " print(json.dumps(collect_disks()))'"
    )
    out = subprocess.run(
        ["unshare", "--mount", "sh", "-ec", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    points = [f["mount_point"] for f in json.loads(out.stdout)["filesystems"]]
    assert str(tmp_path / "merged") not in points
    assert str(tmp_path / "bound") not in points
    assert "/" in points
    assert str(tmp_path / "merged") not in Path("/proc/self/mountinfo").read_text()


def test_kernel_and_os_release_match_uname_and_platform() -> None:
    kernel = system.collect_kernel()
    assert kernel["release"] == platform.release()
    assert kernel["arch"] == platform.machine()
    assert kernel["cmdline"] == Path("/proc/cmdline").read_text().strip()
    osr = system.collect_os_release()
    ref = platform.freedesktop_os_release()
    assert (osr["id"], osr["version_id"]) == (ref["ID"], ref.get("VERSION_ID", ""))


def test_kernel_config_agrees_with_facts_visible_elsewhere() -> None:
    cfg = system.collect_kernel_config()
    if cfg.get("status") == "unknown":
        assert not Path("/proc/config.gz").exists()
        assert not Path(f"/boot/config-{platform.release()}").exists()
        return
    opts = cfg["options"]
    assert opts["CONFIG_USER_NS"] == "y" if Path("/proc/self/ns/user").exists() else True
    if "Seccomp:" in Path("/proc/self/status").read_text():
        assert opts["CONFIG_SECCOMP"] == "y"


def test_os_release_parser_handles_quotes_comments_and_escapes() -> None:
    text = "# comment\nID=rhel\nNAME=\"Red Hat Enterprise Linux\"\nVERSION_ID='9.4'\nBAD LINE\n"
    data = system.parse_os_release(text)
    assert data == {"ID": "rhel", "NAME": "Red Hat Enterprise Linux", "VERSION_ID": "9.4"}


def test_virtualization_reasoning_follows_the_evidence_on_this_machine() -> None:
    v = virt.collect_virtualization()
    src = v["sources"]
    assert src["cpuinfo_hypervisor_flag"] == ("hypervisor" in _cpuinfo_flags())
    if src["cpuinfo_hypervisor_flag"]:
        assert v["kind"] in ("kvm_guest", "vm_guest", "container")
    if "kvm-clock" in src["clocksources"] and not src["dmi"]:
        assert v["hypervisor"] == "kvm"
    in_init_ns = (
        Path("/proc/self/ns/user").stat().st_ino == virt.INIT_USER_NS_INO
        and Path("/proc/self/ns/pid").stat().st_ino == virt.INIT_PID_NS_INO
    )
    if in_init_ns:
        assert v["container"] is None
        if Path("/.dockerenv").exists():
            assert any("ignored" in r for r in v["reasons"])
    # The kernel's own boot message is independent of every source the collector reads.
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    if "Hypervisor detected: KVM" in dmesg and v["container"] is None:
        assert v["kind"] == "kvm_guest"
    sdv = src["systemd_detect_virt"]
    if sdv and sdv["vm"] not in ("none", "") and v["hypervisor"] == "kvm":
        assert sdv["vm"] == "kvm"


def test_namespace_probe_creates_each_namespace_without_touching_this_process() -> None:
    before = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("net", "mnt", "user")}
    ns = isolation.collect_namespaces()
    assert before == {n: os.readlink(f"/proc/self/ns/{n}") for n in before}
    assert set(ns["listed"]) >= {"mnt", "uts", "ipc", "net", "pid", "user"}
    assert os.geteuid() == 0
    assert all(ns["unshare"].values()), ns["unshare"]
    user = ns["user"]
    max_ns = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    assert user["max_user_namespaces"] == max_ns
    assert user["root_can_create"] is (max_ns > 0)
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if max_ns > 0 and (not clone.exists() or clone.read_text().strip() == "1"):
        assert user["unprivileged_can_create"] is True


def _mounts() -> list[list[str]]:
    return [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]


def test_cgroup_version_and_controllers_match_the_mount_table() -> None:
    cg = isolation.collect_cgroups()
    root_type = next(m[2] for m in _mounts() if m[1] == "/sys/fs/cgroup")
    if root_type == "cgroup2":
        assert (cg["version"], cg["mode"]) == (2, "unified")
        return
    assert cg["version"] == 1
    unified = any(m[1] == "/sys/fs/cgroup/unified" and m[2] == "cgroup2" for m in _mounts())
    assert cg["mode"] == ("hybrid" if unified else "legacy")
    mounted = {
        opt for m in _mounts() if m[2] == "cgroup" for opt in m[3].split(",") if "=" not in opt
    }
    assert set(cg["controllers_usable"]) <= mounted
    assert {"cpu", "memory", "pids", "blkio", "cpuset"} <= set(cg["controllers_usable"])


def test_init_reports_pid1_and_not_systemd_when_systemd_did_not_boot_the_host() -> None:
    init = system.collect_init()
    assert init["pid1_comm"] == Path("/proc/1/comm").read_text().strip()
    assert init["systemd"] == (
        Path("/run/systemd/system").is_dir() and init["pid1_comm"] == "systemd"
    )


def test_selinux_disabled_exactly_when_selinuxfs_is_absent() -> None:
    se = security.collect_selinux()
    mounted = any(m[2] == "selinuxfs" for m in _mounts())
    assert se["enabled"] is mounted
    if not mounted:
        assert se["mode"] == "disabled" and se["mls"] is None


def test_apparmor_enabled_matches_module_parameter() -> None:
    aa = security.collect_apparmor()
    param = Path("/sys/module/apparmor/parameters/enabled")
    assert aa["enabled"] == (param.exists() and param.read_text().strip() == "Y")


def test_overlay_available_when_registered_in_proc_filesystems() -> None:
    ov = isolation.collect_overlay()
    registered = "overlay" in Path("/proc/filesystems").read_text().split()
    assert ov["registered"] is registered
    if registered:
        assert ov["available"] is True


def test_seccomp_field_is_read_from_proc_self_status() -> None:
    sc = isolation.collect_seccomp()
    status = Path("/proc/self/status").read_text()
    field = next(
        (ln.split(":")[1].strip() for ln in status.splitlines() if ln.startswith("Seccomp:")),
        None,
    )
    assert sc["status_field"] == field
    assert sc["supported"] is (field is not None)


def test_runtimes_report_the_versions_the_binaries_print() -> None:
    found = runtimes.collect_runtimes()["runtimes"]
    for name in ("crun", "runc", "conmon"):
        path = subprocess.run(["which", name], capture_output=True, text=True, check=False)
        if path.returncode != 0:
            assert name not in found
            continue
        out = subprocess.run([name, "--version"], capture_output=True, text=True, check=True)
        assert found[name]["version"] in out.stdout.splitlines()[0]
        dpkg = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True
        )
        if dpkg.returncode == 0:
            assert found[name]["package"]["version"] == dpkg.stdout


def test_version_output_parser() -> None:
    assert runtimes.parse_version_output("runc version 1.1.5+ds1\ncommit: x") == "1.1.5+ds1"
    assert runtimes.parse_version_output("crun version 1.8.1\n") == "1.8.1"
    assert runtimes.parse_version_output("conmon version 2.1.6") == "2.1.6"
    assert runtimes.parse_version_output("runc version 1.0.0-rc6") == "1.0.0-rc6"
    assert runtimes.parse_version_output("garbage") is None


def test_clock_state_is_self_consistent() -> None:
    clock = system.collect_clock()
    assert clock["synchronized"] == (not clock["sta_unsync"] and clock["clock_state"] != 5)
    assert clock["maxerror_us"] >= 0


def test_agent_section_reports_the_package_version_and_the_runtime_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(system.AGENT_RUNTIME_ENV, raising=False)
    assert system.collect_agent() == {"version": agent.__version__, "runtime": "corral"}
    monkeypatch.setenv(system.AGENT_RUNTIME_ENV, "crun")
    assert system.collect_agent()["runtime"] == "crun"
