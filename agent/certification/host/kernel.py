"""Host checks on the kernel's container building blocks: version, namespaces, user
namespaces, cgroups, overlayfs, seccomp."""

from __future__ import annotations

from typing import Any

from agent.certification.data import load_data
from agent.certification.registry import finding, host_check, missing, section
from agent.certification.versions import upstream_lt
from agent.protocol.messages import Finding

REQUIRED_NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
REQUIRED_CONTROLLERS = ("cpu", "memory", "pids", "io|blkio", "cpuset")


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
