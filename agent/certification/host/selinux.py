"""Host checks on SELinux: enabled, enforcing, MCS, container types in the policy.

When SELinux is disabled, E002-E004 fail too: none of those properties can hold.
"""

from __future__ import annotations

from typing import Any

from agent.certification.registry import finding, host_check, missing, section
from agent.protocol.messages import Finding

REQUIRED_CONTAINER_TYPES = ("container_t", "container_file_t")


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
