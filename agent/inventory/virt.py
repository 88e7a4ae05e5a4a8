"""Virtualization: bare metal, KVM guest, other hypervisor's guest, or inside a container.

Each source is recorded with what it said, then weighed: marker files such as ``/.dockerenv``
are easy to leave behind in an image, so they only count when this process is not in the
kernel's initial namespaces (whose inode numbers are fixed constants, see proc_ns.h).
"""

from __future__ import annotations

import shutil
from typing import Any

from agent.inventory._base import Section, host_path, read_text, run_tool

# PROC_USER_INIT_INO and PROC_PID_INIT_INO from include/linux/proc_ns.h.
INIT_USER_NS_INO = 0xEFFFFFFD
INIT_PID_NS_INO = 0xEFFFFFFC

# DMI sys_vendor / product_name / bios_vendor substrings -> hypervisor name.
DMI_VENDORS = (
    ("KVM", "kvm"),
    ("QEMU", "kvm"),
    ("Amazon EC2", "kvm"),
    ("Google Compute Engine", "kvm"),
    ("OpenStack", "kvm"),
    ("Firecracker", "kvm"),
    ("VMware", "vmware"),
    ("innotek GmbH", "oracle"),
    ("VirtualBox", "oracle"),
    ("Xen", "xen"),
    ("Microsoft Corporation", "microsoft"),
    ("Parallels", "parallels"),
    ("Bochs", "bochs"),
)

# Clock sources only a guest of that hypervisor offers.
CLOCKSOURCES = {
    "kvm-clock": "kvm",
    "xen": "xen",
    "hyperv_clocksource_tsc_page": "microsoft",
    "hyperv_clocksource_msr": "microsoft",
}


def _dmi() -> dict[str, str]:
    out = {}
    for name in ("sys_vendor", "product_name", "bios_vendor"):
        value = read_text(f"/sys/class/dmi/id/{name}")
        if value is not None:
            out[name] = value.strip()
    return out


def _dmi_hypervisor(dmi: dict[str, str]) -> str | None:
    for value in dmi.values():
        for needle, name in DMI_VENDORS:
            if needle.lower() in value.lower():
                # Microsoft also makes laptops: only its "Virtual Machine" product is Hyper-V.
                if (
                    name == "microsoft"
                    and "virtual machine" not in dmi.get("product_name", "").lower()
                ):
                    continue
                return name
    return None


def _ns_inode(name: str) -> int | None:
    try:
        return host_path(f"/proc/self/ns/{name}").stat().st_ino
    except OSError:
        return None


def _container_markers() -> dict[str, Any]:
    markers: dict[str, Any] = {
        "/.dockerenv": host_path("/.dockerenv").exists(),
        "/run/.containerenv": host_path("/run/.containerenv").exists(),
    }
    env = None
    try:
        env = host_path("/proc/1/environ").read_bytes()
    except OSError as exc:
        markers["/proc/1/environ"] = f"unreadable: {exc.strerror}"
    if env is not None:
        values = [
            v.split(b"=", 1)[1].decode() for v in env.split(b"\0") if v.startswith(b"container=")
        ]
        markers["/proc/1/environ"] = values[0] if values else None
    markers["/run/systemd/container"] = (read_text("/run/systemd/container") or "").strip() or None
    return markers


def _marker_kind(markers: dict[str, Any]) -> str | None:
    if markers["/.dockerenv"]:
        return "docker"
    if markers["/run/.containerenv"]:
        return "podman"
    for key in ("/proc/1/environ", "/run/systemd/container"):
        value = markers.get(key)
        if isinstance(value, str) and value and not value.startswith("unreadable"):
            return value
    return None


def _detect_virt() -> dict[str, str] | None:
    """systemd-detect-virt's view (--vm and --container), when the tool is installed."""
    tool = shutil.which("systemd-detect-virt")
    if tool is None:
        return None
    out = {}
    for flag in ("--vm", "--container"):
        try:
            _, text = run_tool([tool, flag])
        except (OSError, TimeoutError) as exc:
            text = f"error: {exc}"
        out[flag.lstrip("-")] = text.splitlines()[0] if text else ""
    return out


def collect_virtualization() -> Section:
    """Weigh every source into ``kind``: bare_metal, kvm_guest, vm_guest or container."""
    flags = (read_text("/proc/cpuinfo") or "").split("\nflags", 1)[-1].split("\n", 1)[0]
    clocks = (
        read_text("/sys/devices/system/clocksource/clocksource0/available_clocksource") or ""
    ).split()
    dmi = _dmi()
    ns = {"user": _ns_inode("user"), "pid": _ns_inode("pid")}
    sources: dict[str, Any] = {
        "cpuinfo_has_flags": "\nflags" in (read_text("/proc/cpuinfo") or ""),
        "cpuinfo_hypervisor_flag": " hypervisor" in f" {flags} ",
        "dmi": dmi or None,
        "sys_hypervisor_type": (read_text("/sys/hypervisor/type") or "").strip() or None,
        "clocksources": clocks,
        "namespaces": ns,
        "container_markers": _container_markers(),
        "systemd_detect_virt": _detect_virt(),
    }
    return _decide(sources)


def _decide(sources: dict[str, Any]) -> Section:
    """Pure reasoning over ``sources`` (so recorded evidence from other hosts can be replayed)."""
    reasons: list[str] = []
    flag = bool(sources.get("cpuinfo_hypervisor_flag"))
    hypervisor = _dmi_hypervisor(sources.get("dmi") or {})
    if hypervisor and sources.get("cpuinfo_has_flags", True) and not flag:
        # Every x86 hypervisor sets the CPUID hypervisor bit; cloud "metal" instances keep
        # their vendor's DMI strings without it.
        reasons.append(
            f"DMI names {hypervisor}, but the CPU has no hypervisor flag: a bare-metal instance"
        )
        hypervisor = None
    elif hypervisor:
        reasons.append(f"DMI names a virtual machine vendor ({hypervisor})")
    xen = sources.get("sys_hypervisor_type")
    if not hypervisor and xen:
        hypervisor = "xen" if xen == "xen" else str(xen)
        reasons.append(f"/sys/hypervisor/type says {xen}")
    if not hypervisor:
        for clock in sources.get("clocksources") or []:
            if clock in CLOCKSOURCES:
                hypervisor = CLOCKSOURCES[clock]
                reasons.append(f"clock source {clock} exists only in {hypervisor} guests")
                break
    if flag and not hypervisor:
        hypervisor = "other"
        reasons.append("CPU reports the hypervisor flag, vendor not identified")
    elif flag:
        reasons.append("CPU reports the hypervisor flag")
    sdv = sources.get("systemd_detect_virt") or {}
    if not hypervisor and sdv.get("vm") not in (None, "", "none") and "error" not in sdv["vm"]:
        hypervisor = sdv["vm"]
        reasons.append(f"systemd-detect-virt --vm says {hypervisor}")

    container = _container_verdict(sources, reasons)
    if container:
        kind = "container"
    elif hypervisor == "kvm":
        kind = "kvm_guest"
    elif hypervisor:
        kind = "vm_guest"
    else:
        kind = "bare_metal"
        reasons.append("no hypervisor flag, no VM vendor in DMI, no guest clock source")
    return {
        "kind": kind,
        "hypervisor": hypervisor,
        "container": container,
        "reasons": reasons,
        "sources": sources,
    }


def _container_verdict(sources: dict[str, Any], reasons: list[str]) -> str | None:
    ns = sources.get("namespaces") or {}
    marker = _marker_kind(sources.get("container_markers") or {})
    user_ino, pid_ino = ns.get("user"), ns.get("pid")
    if user_ino is not None and pid_ino is not None:
        if user_ino == INIT_USER_NS_INO and pid_ino == INIT_PID_NS_INO:
            if marker:
                reasons.append(
                    f"container marker ({marker}) ignored: this process is in the initial "
                    "user and PID namespaces, so it is not inside a container"
                )
            return None
        reasons.append("not in the initial user/PID namespace")
        return marker or "unknown"
    if marker:
        reasons.append(f"container marker ({marker}) present; namespace inodes unavailable")
    return marker
