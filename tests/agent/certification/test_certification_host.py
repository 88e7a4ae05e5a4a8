"""Host checks: pass / fail / unknown for each, recorded hosts, and this real machine."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.certification import HOST_CHECKS, run_host_checks
from agent.certification.host.software import upstream_fix
from agent.certification.registry import ID_RE, host_check
from agent.inventory import collect_inventory, virt
from agent.protocol.certification import SELINUX_IDS, evaluate
from agent.protocol.messages import Finding

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "inventory"
GUEST = "rhel9-kvm-guest-selinux-enforcing.json"
RUNC_2025 = ("CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881")
RUNC_2025_ENTRY = {"fixed_in_lines": ["1.2.8", "1.3.3", "1.4.0"]}
METAL = "ubuntu2204-bare-metal.json"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def by_id(findings: list[Finding]) -> dict[str, Finding]:
    return {f.id: f for f in findings}


def test_check_ids_are_well_formed_and_cover_the_issue() -> None:
    assert all(ID_RE.match(i) for i in HOST_CHECKS)
    expected = {
        "cert.kernel.E001",
        "cert.namespaces.E001",
        "cert.namespaces.E002",
        "cert.userns.E001",
        "cert.cgroup.E001",
        "cert.cgroup.E002",
        "cert.systemd.W001",
        *SELINUX_IDS,
        "cert.overlay.E001",
        "cert.seccomp.E001",
        "cert.runtime.E001",
        "cert.runtime.W001",
        "cert.agent.E001",
        "cert.clock.W001",
        "cert.os.E001",
    }
    assert set(HOST_CHECKS) == expected


def test_an_id_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match=r"cert\.kernel\.E001 is already taken"):
        host_check("cert.kernel.E001", "again")
    with pytest.raises(ValueError, match="check id"):
        host_check("kernel-check", "bad id")


def test_selinux_enforcing_kvm_guest_passes_everything_and_is_certified() -> None:
    findings = run_host_checks(load(GUEST))
    assert {f.id: f.verdict for f in findings if f.verdict != "pass"} == {}
    assert evaluate(findings, "certified-container-host") == ("certified", [])


def test_bare_metal_host_fails_selinux_and_the_vulnerable_runc() -> None:
    findings = by_id(run_host_checks(load(METAL)))
    failing = sorted(i for i, f in findings.items() if f.verdict == "fail")
    assert failing == ["cert.runtime.E001", *SELINUX_IDS]
    cves = {a["cve"] for a in findings["cert.runtime.E001"].evidence["affected"]}
    assert cves == {"CVE-2024-21626", *RUNC_2025}
    verdict, failed = evaluate(findings.values(), "development")
    assert (verdict, failed) == ("not_certified", ["cert.runtime.E001"])


@pytest.mark.parametrize("name", [GUEST, METAL])
def test_recorded_virtualization_evidence_replays_to_the_recorded_kind(name: str) -> None:
    inv = load(name)
    decided = virt._decide(inv["virtualization"]["sources"])
    assert decided["kind"] == inv["virtualization"]["kind"]
    assert decided["hypervisor"] == inv["virtualization"]["hypervisor"]


def test_container_markers_count_only_outside_the_initial_namespaces() -> None:
    sources = copy.deepcopy(load(GUEST)["virtualization"]["sources"])
    sources["container_markers"]["/run/.containerenv"] = True
    assert virt._decide(sources)["container"] is None
    sources["namespaces"] = {"user": 4026532000, "pid": 4026532001}
    decided = virt._decide(sources)
    assert (decided["kind"], decided["container"]) == ("container", "podman")


def test_cloud_metal_instance_with_vm_vendor_dmi_but_no_hypervisor_flag_is_bare_metal() -> None:
    sources = copy.deepcopy(load(METAL)["virtualization"]["sources"])
    sources["dmi"] = {"sys_vendor": "Amazon EC2", "product_name": "c5.metal"}
    decided = virt._decide(sources)
    assert (decided["kind"], decided["hypervisor"]) == ("bare_metal", None)
    assert any("bare-metal instance" in r for r in decided["reasons"])


def test_microsoft_hardware_is_a_vm_only_when_dmi_says_virtual_machine() -> None:
    sources = copy.deepcopy(load(METAL)["virtualization"]["sources"])
    sources["dmi"] = {"sys_vendor": "Microsoft Corporation", "product_name": "Surface Laptop 5"}
    assert virt._decide(sources)["kind"] == "bare_metal"
    sources["dmi"]["product_name"] = "Virtual Machine"
    sources["cpuinfo_hypervisor_flag"] = True
    decided = virt._decide(sources)
    assert (decided["kind"], decided["hypervisor"]) == ("vm_guest", "microsoft")


def test_guest_with_no_dmi_or_clock_hint_is_an_unidentified_vm() -> None:
    sources = copy.deepcopy(load(GUEST)["virtualization"]["sources"])
    sources.update(dmi=None, clocksources=["tsc"], systemd_detect_virt=None)
    decided = virt._decide(sources)
    assert (decided["kind"], decided["hypervisor"]) == ("vm_guest", "other")


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def apply(inv: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = inv
        for p in parents:
            node = node[p]
        node[last] = value

    return apply


# (check id, mutation of the passing guest that must fail it, the section it reads)
FAIL_CASES: list[tuple[str, Mutation, str]] = [
    ("cert.kernel.E001", _set("kernel.release", "3.10.0-1160.el7.x86_64"), "kernel"),
    ("cert.namespaces.E001", _set("namespaces.listed", ["mnt", "uts", "ipc"]), "namespaces"),
    ("cert.namespaces.E002", _set("namespaces.unshare.net", False), "namespaces"),
    ("cert.userns.E001", _set("namespaces.user.max_user_namespaces", 0), "namespaces"),
    ("cert.cgroup.E001", _set("cgroups.version", None), "cgroups"),
    ("cert.cgroup.E002", _set("cgroups.controllers_usable", ["cpu", "memory"]), "cgroups"),
    ("cert.selinux.E001", _set("selinux.enabled", False), "selinux"),
    ("cert.selinux.E002", _set("selinux.mode", "permissive"), "selinux"),
    ("cert.selinux.E003", _set("selinux.mls", False), "selinux"),
    ("cert.selinux.E004", _set("selinux.container_types", ["spc_t"]), "selinux"),
    ("cert.overlay.E001", _set("overlay.available", False), "overlay"),
    ("cert.seccomp.E001", _set("seccomp.supported", False), "seccomp"),
    ("cert.runtime.E001", _set("runtimes.runtimes.crun.version", "1.4.3"), "runtimes"),
    ("cert.agent.E001", _set("agent.version", "0.0.9"), "agent"),
    ("cert.os.E001", _set("os.id", "slackware"), "os"),
]
WARN_CASES: list[tuple[str, Mutation, str]] = [
    ("cert.cgroup.E001", _set("cgroups.version", 1), "cgroups"),
    ("cert.systemd.W001", _set("init.systemd", False), "init"),
    ("cert.clock.W001", _set("clock.synchronized", False), "clock"),
]


@pytest.mark.parametrize(("check_id", "mutate", "_section"), FAIL_CASES + WARN_CASES)
def test_each_check_passes_on_the_good_host(check_id: str, mutate: Mutation, _section: str) -> None:
    assert by_id(run_host_checks(load(GUEST)))[check_id].verdict == "pass"


@pytest.mark.parametrize(("check_id", "mutate", "_section"), FAIL_CASES)
def test_each_check_fails_alone_when_its_requirement_breaks(
    check_id: str, mutate: Mutation, _section: str
) -> None:
    inv = load(GUEST)
    mutate(inv)
    findings = run_host_checks(inv)
    failing = [f.id for f in findings if f.verdict == "fail"]
    if check_id == "cert.selinux.E001":  # disabled SELinux fails every SELinux requirement
        assert failing == list(SELINUX_IDS)
    else:
        assert failing == [check_id]
    finding = by_id(findings)[check_id]
    assert finding.message and "\n" not in finding.message and finding.hint


@pytest.mark.parametrize(("check_id", "mutate", "_section"), WARN_CASES)
def test_advisory_checks_warn_and_do_not_fail_certification(
    check_id: str, mutate: Mutation, _section: str
) -> None:
    inv = load(GUEST)
    mutate(inv)
    findings = run_host_checks(inv)
    assert by_id(findings)[check_id].verdict == "warn"
    assert evaluate(findings, "certified-container-host") == ("certified", [])


@pytest.mark.parametrize(("check_id", "mutate", "section"), FAIL_CASES + WARN_CASES)
def test_each_check_is_unknown_when_its_section_could_not_be_collected(
    check_id: str, mutate: Mutation, section: str
) -> None:
    inv = load(GUEST)
    inv[section] = {"status": "unknown", "reason": "permission denied"}
    finding = by_id(run_host_checks(inv))[check_id]
    assert finding.verdict == "unknown"
    assert "permission denied" in finding.message


def test_runtime_check_is_unknown_when_a_version_is_unreadable() -> None:
    inv = load(GUEST)
    inv["runtimes"]["runtimes"]["runc"]["version"] = None
    assert by_id(run_host_checks(inv))["cert.runtime.E001"].verdict == "unknown"


def affected_cves(inv: dict[str, Any]) -> set[str]:
    finding = by_id(run_host_checks(inv))["cert.runtime.E001"]
    return {a["cve"] for a in finding.evidence.get("affected", [])}


def test_debian_backport_counts_only_for_the_debian_package_at_the_fixed_revision() -> None:
    inv = load(METAL)
    rt = inv["runtimes"]["runtimes"]["runc"]
    rt.update(version="1.1.5+ds1")
    rt["package"] = {"manager": "dpkg", "name": "runc", "version": "1.1.5+ds1-1+deb12u1"}
    inv["os"]["id"] = "debian"
    assert affected_cves(inv) == set(RUNC_2025)  # 2024-21626 backported, 2025 ones not
    rt["package"]["version"] = "1.1.5+ds1-1"
    assert affected_cves(inv) == {"CVE-2024-21626", *RUNC_2025}
    rt["package"]["version"] = "1.1.5+ds1-1+deb12u1"
    inv["os"]["id"] = "ubuntu"
    assert "CVE-2024-21626" in affected_cves(inv)


@pytest.mark.parametrize(
    ("version", "affected"),
    [
        ("1.1.15", True),
        ("1.2.7", True),
        ("1.2.8", False),
        ("1.3.2", True),
        ("1.3.3", False),
        ("1.4.0-rc.2", True),
        ("1.4.0", False),
        ("1.6.0", False),
    ],
)
def test_fixes_released_on_several_lines_apply_per_line(version: str, affected: bool) -> None:
    inv = load(GUEST)
    inv["runtimes"]["runtimes"]["runc"]["version"] = version
    hit = set(RUNC_2025) & affected_cves(inv)
    assert hit == (set(RUNC_2025) if affected else set())


def test_runc_before_1_0_rc7_is_flagged_for_cve_2019_5736() -> None:
    inv = load(METAL)
    inv["runtimes"]["runtimes"]["runc"]["version"] = "1.0.0-rc6"
    finding = by_id(run_host_checks(inv))["cert.runtime.E001"]
    assert {a["cve"] for a in finding.evidence["affected"]} == {
        "CVE-2019-5736",
        "CVE-2024-21626",
        *RUNC_2025,
    }
    assert all(a["source"].startswith("https://") for a in finding.evidence["affected"])


def test_a_crashing_check_yields_unknown_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(inv: dict[str, Any]) -> Finding:
        raise KeyError("surprise")

    reg = HOST_CHECKS["cert.overlay.E001"]
    monkeypatch.setitem(HOST_CHECKS, "cert.overlay.E001", type(reg)(reg.id, reg.title, boom))
    findings = by_id(run_host_checks(load(GUEST)))
    assert findings["cert.overlay.E001"].verdict == "unknown"
    assert "KeyError" in findings["cert.overlay.E001"].evidence["error"]
    assert findings["cert.seccomp.E001"].verdict == "pass"


@pytest.mark.parametrize("garbage", [{}, {"kernel": "nope", "selinux": None}, {"os": {"id": 5}}])
def test_checks_never_raise_on_a_malformed_inventory(garbage: dict[str, Any]) -> None:
    findings = run_host_checks(garbage)
    assert len(findings) == len(HOST_CHECKS)
    assert all(f.verdict in ("unknown", "fail", "warn", "pass") for f in findings)


def test_findings_survive_the_wire_format() -> None:
    for f in run_host_checks(load(METAL)):
        assert Finding.from_dict(json.loads(json.dumps(f.to_dict()))) == f


@pytest.mark.privileged
def test_this_machine_fails_selinux_only_and_warns_about_the_unused_runc() -> None:
    """This CI host runs with SELinux off, so exactly the SELinux ids fail under the strict
    profile. The agent runs containers with its own runtime, so Debian 12's runc (before the
    Nov 2025 fixes) is installed but unused: cert.runtime.W001 warns, E001 passes, and the
    development profile certifies."""
    inv = collect_inventory()
    findings = run_host_checks(inv)
    assert inv["selinux"]["enabled"] is False
    assert inv["agent"]["runtime"] == "corral"
    strict = evaluate(findings, "certified-container-host")
    assert strict == ("not_certified", sorted(SELINUX_IDS))
    assert evaluate(findings, "development") == ("certified", [])
    assert by_id(findings)["cert.runtime.E001"].verdict == "pass"
    runc = inv["runtimes"]["runtimes"].get("runc")
    if runc and upstream_fix(runc["version"], RUNC_2025_ENTRY) is None:
        warn = by_id(findings)["cert.runtime.W001"]
        assert warn.verdict == "warn"
        assert {a["cve"] for a in warn.evidence["affected"]} >= set(RUNC_2025)


def test_only_the_configured_runtime_can_fail_and_unused_ones_warn() -> None:
    inv = load(METAL)
    inv["agent"]["runtime"] = "corral"
    findings = by_id(run_host_checks(inv))
    assert findings["cert.runtime.E001"].verdict == "pass"
    assert findings["cert.runtime.W001"].verdict == "warn"
    assert "runc" in findings["cert.runtime.W001"].message
    inv["agent"]["runtime"] = "runc"
    findings = by_id(run_host_checks(inv))
    assert findings["cert.runtime.E001"].verdict == "fail"
    assert {a["runtime"] for a in findings["cert.runtime.E001"].evidence["affected"]} == {"runc"}
    inv["agent"]["runtime"] = "crun"
    inv["runtimes"]["runtimes"].pop("crun", None)
    finding = by_id(run_host_checks(inv))["cert.runtime.E001"]
    assert (finding.verdict, "not installed" in finding.message) == ("fail", True)
    inv["agent"]["runtime"] = "podman"
    assert by_id(run_host_checks(inv))["cert.runtime.E001"].verdict == "unknown"
