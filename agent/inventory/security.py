"""Collectors for the Linux security modules: SELinux and AppArmor."""

from __future__ import annotations

from typing import Any

from agent.inventory._base import Section, host_path, mountinfo, read_int, read_text
from agent.inventory.system import parse_os_release

# Types container-selinux defines; finding them in the policy's container contexts means the
# policy can label containers (container_t processes, container_file_t files).
CONTAINER_TYPES = ("container_t", "container_file_t", "spc_t", "container_runtime_t")


def collect_selinux() -> Section:
    """Enabled?, enforcing?, policy name and type, MCS/MLS, container types in the policy."""
    mount = next((m["mount_point"] for m in mountinfo() if m["fstype"] == "selinuxfs"), None)
    config = parse_os_release(read_text("/etc/selinux/config") or "")  # same KEY=value syntax
    policy_name = config.get("SELINUXTYPE") or None
    lsm = (read_text("/sys/kernel/security/lsm") or "").split(",")
    cmdline = (read_text("/proc/cmdline") or "").split()
    info: dict[str, Any] = {
        "enabled": False,
        "mode": "disabled",
        "selinuxfs": mount,
        "config_mode": (config.get("SELINUX") or "").lower() or None,
        "policy_name": policy_name,
        "lsm_list": [x for x in lsm if x] or None,
        "cmdline_disabled": "selinux=0" in cmdline,
        "mls": None,
        "policy_version": None,
        "container_types": _container_types(policy_name),
    }
    if mount is None:
        return info
    enforce = read_int(host_path(mount) / "enforce")
    info.update(
        {
            "enabled": True,
            "mode": {1: "enforcing", 0: "permissive"}.get(enforce, "unknown")
            if enforce is not None
            else "unknown",
            "mls": read_int(host_path(mount) / "mls") == 1,
            "policy_version": read_int(host_path(mount) / "policyvers"),
            "deny_unknown": read_int(host_path(mount) / "deny_unknown"),
        }
    )
    return info


def _container_types(policy_name: str | None) -> list[str] | None:
    """Container types named in the policy's lxc_contexts (written by container-selinux).

    None when the file cannot be read (unknown), [] when it exists but names none.
    """
    if not policy_name:
        return None
    text = read_text(f"/etc/selinux/{policy_name}/contexts/lxc_contexts")
    if text is None:
        return None
    return sorted(t for t in CONTAINER_TYPES if f":{t}:" in text)


def collect_apparmor() -> Section:
    """AppArmor module state and the number of loaded profiles when securityfs shows them."""
    enabled = (read_text("/sys/module/apparmor/parameters/enabled") or "").strip()
    profiles = read_text("/sys/kernel/security/apparmor/profiles")
    return {
        "enabled": enabled == "Y",
        "module_present": host_path("/sys/module/apparmor").is_dir(),
        "profiles_loaded": len(profiles.splitlines()) if profiles is not None else None,
    }
