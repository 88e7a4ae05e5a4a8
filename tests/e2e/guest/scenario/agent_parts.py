"""Scenarios over whole agent parts: inventory and host certification."""

from __future__ import annotations

from typing import Any

from scenario.common import Context, import_or_skip


def _pick(section: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: section.get(k) for k in keys}


def inventory(ctx: Context) -> str:
    """collect_inventory() on this guest: a (KVM/QEMU) VM, cgroup v2, systemd, SELinux MCS."""
    inv_mod: Any = import_or_skip("agent.inventory")
    inv = inv_mod.collect_inventory(timeout=90.0)
    virt, cgroups, init, selinux = (
        inv["virtualization"],
        inv["cgroups"],
        inv["init"],
        inv["selinux"],
    )
    ctx.log(
        f"virtualization kind={virt.get('kind')} hypervisor={virt.get('hypervisor')} "
        f"reasons={virt.get('reasons')}"
    )
    ctx.log(f"cgroups={_pick(cgroups, 'version', 'mode', 'controllers_usable')}")
    ctx.log(f"init={init}")
    ctx.log(f"selinux={_pick(selinux, 'mode', 'mls', 'policy_name', 'container_types')}")
    ctx.log(f"collector_ms={inv['_meta'].get('collector_ms')}")
    unknown = sorted(
        k for k, v in inv.items() if isinstance(v, dict) and v.get("status") == "unknown"
    )
    ctx.log(f"unknown sections: {unknown}")
    assert virt.get("kind") in ("kvm_guest", "vm_guest"), f"virtualization says {virt.get('kind')}"
    assert cgroups.get("version") == 2, f"cgroups says {cgroups}"
    assert init.get("systemd") is True, f"init says {init}"
    assert selinux.get("mode") == "enforcing" and selinux.get("mls") is True, f"selinux {selinux}"
    return (
        f"virtualization={virt['kind']}/{virt.get('hypervisor')}, cgroup v{cgroups['version']}, "
        f"systemd={init['systemd']}, selinux={selinux['mode']} mls={selinux['mls']}, "
        f"unknown sections {unknown or 'none'}"
    )


# The checks this host exists to satisfy: each must pass here.
MUST_PASS = (
    "cert.cgroup.E001",
    "cert.cgroup.E002",
    "cert.systemd.W001",
    "cert.selinux.E001",
    "cert.selinux.E002",
    "cert.selinux.E003",
    "cert.selinux.E004",
)


def certification(ctx: Context) -> str:
    """run_host_checks() over this guest's inventory: the cgroup v2, systemd and SELinux
    checks pass (elsewhere on these machines they cannot)."""
    cert: Any = import_or_skip("agent.certification")
    inv_mod: Any = import_or_skip("agent.inventory")
    findings = cert.run_host_checks(inv_mod.collect_inventory(timeout=90.0))
    verdicts = {f.id: f.verdict for f in findings}
    for f in findings:
        ctx.log(f"{f.id} {f.verdict}: {f.message}")
    missing = [cid for cid in MUST_PASS if cid not in verdicts]
    assert not missing, f"checks not reported: {missing}"
    failed = {cid: verdicts[cid] for cid in MUST_PASS if verdicts[cid] != "pass"}
    assert not failed, f"checks that must pass here did not: {failed}"
    counts = {v: list(verdicts.values()).count(v) for v in sorted(set(verdicts.values()))}
    return f"{len(findings)} findings {counts}; {', '.join(MUST_PASS)} pass"
