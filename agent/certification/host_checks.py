"""Host certification checks: pure functions over the inventory dict.

Each returns a Finding with evidence copied from the inventory, so the control plane can show
why without asking the host again. A missing inventory section gives ``unknown``, never pass.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from agent.certification.registry import finding, host_check, missing, section
from agent.certification.versions import dpkg_compare, upstream_key, upstream_lt
from agent.protocol.messages import Finding

DATA = Path(__file__).with_name("data")
REQUIRED_NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
REQUIRED_CONTROLLERS = ("cpu", "memory", "pids", "io|blkio", "cpuset")
REQUIRED_CONTAINER_TYPES = ("container_t", "container_file_t")


@cache
def load_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


@host_check("cert.kernel.E001", "kernel is recent enough")
def kernel_version(inv: dict[str, Any]) -> Finding:
    cid = "cert.kernel.E001"
    kernel = section(inv, "kernel")
    if kernel is None:
        return missing(cid, inv, "kernel")
    floor = load_data("supported.json")["kernel_min_version"]
    release = kernel.get("release", "")
    if upstream_lt(release, floor):
        return finding(
            cid,
            "fail",
            f"kernel {release} is older than {floor}",
            "upgrade the kernel",
            release=release,
            minimum=floor,
        )
    return finding(cid, "pass", f"kernel {release} >= {floor}", release=release, minimum=floor)


@host_check("cert.namespaces.E001", "the kernel offers every namespace type")
def namespaces_listed(inv: dict[str, Any]) -> Finding:
    cid = "cert.namespaces.E001"
    ns = section(inv, "namespaces")
    if ns is None:
        return missing(cid, inv, "namespaces")
    absent = [n for n in REQUIRED_NAMESPACES if n not in ns.get("listed", [])]
    if absent:
        return finding(
            cid,
            "fail",
            f"namespace types missing: {', '.join(absent)}",
            "use a kernel built with CONFIG_NAMESPACES and every *_NS option",
            missing=absent,
            listed=ns.get("listed"),
        )
    return finding(cid, "pass", "all namespace types are present", listed=ns.get("listed"))


@host_check("cert.namespaces.E002", "namespaces can actually be created")
def namespaces_creatable(inv: dict[str, Any]) -> Finding:
    cid = "cert.namespaces.E002"
    ns = section(inv, "namespaces")
    if ns is None:
        return missing(cid, inv, "namespaces")
    probe = ns.get("unshare")
    if not isinstance(probe, dict) or probe.get("status") == "unknown":
        return finding(cid, "unknown", "the unshare probe did not run", probe=probe)
    failed = [n for n in REQUIRED_NAMESPACES if probe.get(n) is not True]
    if failed:
        return finding(
            cid,
            "fail",
            f"unshare failed for: {', '.join(failed)}",
            "a seccomp profile or a parent container may forbid unshare; run the agent on the host",
            failed=failed,
            probe=probe,
        )
    return finding(cid, "pass", "every required namespace was created in a probe", probe=probe)


@host_check("cert.userns.E001", "user namespaces are usable")
def user_namespaces(inv: dict[str, Any]) -> Finding:
    cid = "cert.userns.E001"
    ns = section(inv, "namespaces")
    if ns is None:
        return missing(cid, inv, "namespaces")
    user = ns.get("user") or {}
    evidence: dict[str, Any] = {k: user.get(k) for k in ("max_user_namespaces", "root_can_create")}
    if user.get("root_can_create") is None:
        return finding(cid, "unknown", "user namespace probe did not run", **evidence)
    if user.get("max_user_namespaces") == 0 or not user.get("root_can_create"):
        return finding(
            cid,
            "fail",
            "user namespaces cannot be created",
            "set sysctl user.max_user_namespaces > 0 and use a kernel with CONFIG_USER_NS",
            **evidence,
        )
    return finding(cid, "pass", "user namespaces can be created", **evidence)


@host_check("cert.cgroup.E001", "cgroup version")
def cgroup_version(inv: dict[str, Any]) -> Finding:
    cid = "cert.cgroup.E001"
    cg = section(inv, "cgroups")
    if cg is None:
        return missing(cid, inv, "cgroups")
    version, mode = cg.get("version"), cg.get("mode")
    if version == 2:
        return finding(cid, "pass", "cgroup v2 (unified)", version=2, mode=mode)
    if version == 1:
        return finding(
            cid,
            "warn",
            f"cgroup v1 ({mode}): supported, but v2 gives faster and safer starts",
            "boot with systemd.unified_cgroup_hierarchy=1 to use cgroup v2",
            version=1,
            mode=mode,
        )
    return finding(
        cid,
        "fail",
        "no cgroup hierarchy found",
        "mount cgroup2 on /sys/fs/cgroup (or the v1 controller hierarchies)",
        version=version,
        mode=mode,
    )


@host_check("cert.cgroup.E002", "cgroup controllers are usable")
def cgroup_controllers(inv: dict[str, Any]) -> Finding:
    cid = "cert.cgroup.E002"
    cg = section(inv, "cgroups")
    if cg is None:
        return missing(cid, inv, "cgroups")
    usable = set(cg.get("controllers_usable") or [])
    absent = [c for c in REQUIRED_CONTROLLERS if not usable & set(c.split("|"))]
    if absent:
        return finding(
            cid,
            "fail",
            f"cgroup controllers not usable: {', '.join(absent)}",
            "mount (v1) or enable in cgroup.subtree_control (v2) the missing controllers",
            missing=absent,
            usable=sorted(usable),
        )
    return finding(
        cid, "pass", "cpu, memory, pids, io and cpuset are usable", usable=sorted(usable)
    )


@host_check("cert.systemd.W001", "systemd manages the host")
def systemd_init(inv: dict[str, Any]) -> Finding:
    cid = "cert.systemd.W001"
    init = section(inv, "init")
    if init is None:
        return missing(cid, inv, "init")
    if init.get("systemd"):
        return finding(cid, "pass", "systemd is PID 1", pid1=init.get("pid1_comm"))
    return finding(
        cid,
        "warn",
        f"PID 1 is {init.get('pid1_comm')!r}, not systemd",
        "without systemd the agent manages cgroups directly (no Delegate=yes slices)",
        pid1=init.get("pid1_comm"),
    )


def _selinux(inv: dict[str, Any], cid: str) -> tuple[dict[str, Any] | None, Finding | None]:
    """The SELinux section, or the finding to return when it is unknown or disabled."""
    se = section(inv, "selinux")
    if se is None:
        return None, missing(cid, inv, "selinux")
    if not se.get("enabled"):
        return None, finding(
            cid,
            "fail",
            "SELinux is disabled, so this requirement cannot hold",
            "install an SELinux policy, boot with SELinux enabled, then re-run certification",
            enabled=False,
            config_mode=se.get("config_mode"),
        )
    return se, None


@host_check("cert.selinux.E001", "SELinux is enabled")
def selinux_enabled(inv: dict[str, Any]) -> Finding:
    cid = "cert.selinux.E001"
    se = section(inv, "selinux")
    if se is None:
        return missing(cid, inv, "selinux")
    if se.get("enabled"):
        return finding(cid, "pass", f"SELinux is enabled ({se.get('policy_name')})", enabled=True)
    return finding(
        cid,
        "fail",
        "SELinux is disabled",
        "install an SELinux policy (e.g. selinux-policy-targeted) and boot with SELinux enabled",
        enabled=False,
        selinuxfs=se.get("selinuxfs"),
        lsm_list=se.get("lsm_list"),
        cmdline_disabled=se.get("cmdline_disabled"),
    )


@host_check("cert.selinux.E002", "SELinux is enforcing")
def selinux_enforcing(inv: dict[str, Any]) -> Finding:
    cid = "cert.selinux.E002"
    se, early = _selinux(inv, cid)
    if se is None:
        assert early is not None
        return early
    mode = se.get("mode")
    if mode == "enforcing":
        return finding(cid, "pass", "SELinux is enforcing", mode=mode)
    if mode == "unknown":
        return finding(cid, "unknown", "SELinux mode could not be read", mode=mode)
    return finding(
        cid,
        "fail",
        f"SELinux is {mode}, not enforcing",
        "set SELINUX=enforcing in /etc/selinux/config and run setenforce 1",
        mode=mode,
    )


@host_check("cert.selinux.E003", "the SELinux policy supports MCS")
def selinux_mcs(inv: dict[str, Any]) -> Finding:
    cid = "cert.selinux.E003"
    se, early = _selinux(inv, cid)
    if se is None:
        assert early is not None
        return early
    mls = se.get("mls")
    if mls is None:
        return finding(cid, "unknown", "selinuxfs does not say whether MLS/MCS is on", mls=None)
    if mls:
        return finding(cid, "pass", "the loaded policy has MCS/MLS categories", mls=True)
    return finding(
        cid,
        "fail",
        "the loaded policy has no MCS categories, containers cannot be separated",
        "use the targeted (MCS) or mls policy",
        mls=False,
    )


@host_check("cert.selinux.E004", "the SELinux policy has container types")
def selinux_container_types(inv: dict[str, Any]) -> Finding:
    cid = "cert.selinux.E004"
    se, early = _selinux(inv, cid)
    if se is None:
        assert early is not None
        return early
    types = se.get("container_types")
    if types is None:
        return finding(
            cid,
            "unknown",
            "the policy's lxc_contexts could not be read",
            "make /etc/selinux/<policy>/contexts/lxc_contexts readable to the agent",
            policy_name=se.get("policy_name"),
        )
    absent = [t for t in REQUIRED_CONTAINER_TYPES if t not in types]
    if absent:
        return finding(
            cid,
            "fail",
            f"container types missing from the policy: {', '.join(absent)}",
            "install container-selinux",
            found=types,
            missing=absent,
        )
    return finding(cid, "pass", "container_t and container_file_t are defined", found=types)


@host_check("cert.overlay.E001", "overlayfs is available")
def overlay(inv: dict[str, Any]) -> Finding:
    cid = "cert.overlay.E001"
    ov = section(inv, "overlay")
    if ov is None:
        return missing(cid, inv, "overlay")
    evidence: dict[str, Any] = {k: ov.get(k) for k in ("registered", "module", "kernel_config")}
    if ov.get("available"):
        return finding(cid, "pass", "overlayfs is available", **evidence)
    return finding(
        cid,
        "fail",
        "overlayfs is neither registered nor loadable",
        "use a kernel with CONFIG_OVERLAY_FS (y or m)",
        **evidence,
    )


@host_check("cert.seccomp.E001", "seccomp filters are supported")
def seccomp(inv: dict[str, Any]) -> Finding:
    cid = "cert.seccomp.E001"
    sc = section(inv, "seccomp")
    if sc is None:
        return missing(cid, inv, "seccomp")
    evidence: dict[str, Any] = {
        k: sc.get(k) for k in ("status_field", "config_seccomp_filter", "actions_avail")
    }
    if sc.get("supported"):
        return finding(cid, "pass", "seccomp filters are supported", **evidence)
    return finding(
        cid,
        "fail",
        "the kernel has no seccomp filter support",
        "use a kernel with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER",
        **evidence,
    )


def _runtime_vulnerable(
    entry: dict[str, Any], rt: dict[str, Any], os_id: str | None
) -> tuple[bool, str]:
    """(affected?, why) for one CVE entry and one installed runtime."""
    version = rt.get("version")
    if not version:
        raise ValueError(f"runtimes.{entry['runtime']}.version: unknown")
    if not upstream_lt(version, entry["fixed_in"]):
        return False, f"{version} >= {entry['fixed_in']}"
    pkg = rt.get("package") or {}
    for fix in entry.get("distro_fixes", []):
        same_pkg = pkg.get("manager") == fix["manager"] and pkg.get("name") == fix["package"]
        if (
            same_pkg
            and os_id == fix["os_id"]
            and pkg.get("version")
            and dpkg_compare(pkg["version"], fix["fixed_version"]) >= 0
        ):
            return False, f"{os_id} package {pkg['version']} carries the fix"
    return True, f"{version} < {entry['fixed_in']}"


@host_check("cert.runtime.E001", "installed OCI runtimes have no known container-escape CVE")
def runtime_cves(inv: dict[str, Any]) -> Finding:
    cid = "cert.runtime.E001"
    rts = section(inv, "runtimes")
    if rts is None:
        return missing(cid, inv, "runtimes")
    os_id = (section(inv, "os") or {}).get("id")
    table = load_data("runtime_cves.json")["entries"]
    affected: list[dict[str, str]] = []
    checked: dict[str, list[str]] = {}
    unreadable: list[str] = []
    for name, rt in sorted((rts.get("runtimes") or {}).items()):
        for entry in (e for e in table if e["runtime"] == name):
            try:
                hit, why = _runtime_vulnerable(entry, rt, os_id)
            except ValueError:
                unreadable.append(name)
                break
            checked.setdefault(name, []).append(f"{entry['cve']}: {why}")
            if hit:
                affected.append({"runtime": name, "cve": entry["cve"], "source": entry["source"]})
    if affected:
        names = ", ".join(f"{a['runtime']} ({a['cve']})" for a in affected)
        return finding(
            cid,
            "fail",
            f"vulnerable OCI runtimes: {names}",
            "upgrade the runtime packages named here",
            affected=affected,
            checked=checked,
        )
    if unreadable:
        return finding(
            cid,
            "unknown",
            f"could not read the version of: {', '.join(unreadable)}",
            checked=checked,
            unreadable=unreadable,
        )
    return finding(cid, "pass", "no installed runtime matches a known CVE", checked=checked)


@host_check("cert.agent.E001", "the agent version is supported")
def agent_version(inv: dict[str, Any]) -> Finding:
    cid = "cert.agent.E001"
    ag = section(inv, "agent")
    if ag is None:
        return missing(cid, inv, "agent")
    minimum = load_data("supported.json")["agent_min_version"]
    version = str(ag.get("version", ""))
    try:
        too_old = upstream_key(version) < upstream_key(minimum)
    except ValueError:
        return finding(cid, "unknown", f"agent version {version!r} is unreadable", version=version)
    if too_old:
        return finding(
            cid,
            "fail",
            f"agent {version} is older than the supported {minimum}",
            "upgrade the agent",
            version=version,
            minimum=minimum,
        )
    return finding(cid, "pass", f"agent {version} is supported", version=version, minimum=minimum)


@host_check("cert.clock.W001", "the clock is synchronised")
def clock_sync(inv: dict[str, Any]) -> Finding:
    cid = "cert.clock.W001"
    clock = section(inv, "clock")
    if clock is None:
        return missing(cid, inv, "clock")
    evidence: dict[str, Any] = {
        k: clock.get(k) for k in ("synchronized", "sta_unsync", "maxerror_us")
    }
    if clock.get("synchronized"):
        return finding(cid, "pass", "the kernel clock is NTP-synchronised", **evidence)
    return finding(
        cid,
        "warn",
        "the kernel clock is not synchronised (STA_UNSYNC)",
        "run an NTP client (chrony, systemd-timesyncd); signed messages expire by time",
        **evidence,
    )


@host_check("cert.os.E001", "the OS release is supported")
def os_supported(inv: dict[str, Any]) -> Finding:
    cid = "cert.os.E001"
    osr = section(inv, "os")
    if osr is None:
        return missing(cid, inv, "os")
    supported: dict[str, list[str]] = load_data("supported.json")["os"]
    os_id, version = osr.get("id", ""), osr.get("version_id", "")
    ok = any(version == v or version.startswith(v + ".") for v in supported.get(os_id, []))
    evidence: dict[str, Any] = {
        "id": os_id,
        "version_id": version,
        "pretty_name": osr.get("pretty_name"),
    }
    if ok:
        return finding(cid, "pass", f"{os_id} {version} is supported", **evidence)
    return finding(
        cid,
        "fail",
        f"{os_id} {version} is not a supported OS release",
        f"supported: {', '.join(f'{k} {v}' for k, vs in supported.items() for v in vs)}",
        **evidence,
    )
