"""Collectors for the machine itself: CPU, memory, block devices and filesystems, network."""

from __future__ import annotations

import array
import fcntl
import ipaddress
import os
import socket
import struct
from typing import Any

from agent.inventory._base import (
    Section,
    host_path,
    mountinfo,
    parse_key_values,
    read_int,
    read_text,
    unknown,
)

CPU_FLAGS_OF_INTEREST = (
    "vmx",
    "svm",
    "hypervisor",
    "aes",
    "avx",
    "avx2",
    "avx512f",
    "sse4_2",
    "sha_ni",
    "rdrand",
    "nx",
    "pdpe1gb",
    "x2apic",
    "smep",
    "smap",
)


def collect_cpu() -> Section:
    """Model, topology (sockets, cores, threads) and the flags that matter for placement."""
    text = read_text("/proc/cpuinfo")
    if not text:
        return unknown("/proc/cpuinfo is not readable")
    blocks = [parse_key_values(b) for b in text.split("\n\n") if b.strip()]
    if not blocks:
        return unknown("/proc/cpuinfo has no processor entries")
    first = blocks[0]
    sockets = {b.get("physical id", "0") for b in blocks}
    cores = {(b.get("physical id", "0"), b.get("core id", b.get("processor"))) for b in blocks}
    flags = set(first.get("flags", first.get("Features", "")).split())
    return {
        "vendor": first.get("vendor_id", ""),
        "model": first.get("model name", first.get("Processor", "")),
        "sockets": len(sockets),
        "cores": len(cores),
        "threads": len(blocks),
        "online": os.cpu_count() or len(blocks),
        "flags": sorted(f for f in CPU_FLAGS_OF_INTEREST if f in flags),
        "virtualization_extensions": "vmx" in flags or "svm" in flags,
        "mhz": _float(first.get("cpu MHz")),
    }


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def meminfo_bytes() -> dict[str, int]:
    """/proc/meminfo with values converted to bytes."""
    out: dict[str, int] = {}
    for key, value in parse_key_values(read_text("/proc/meminfo") or "").items():
        number, _, unit = value.partition(" ")
        if number.isdigit():
            out[key] = int(number) * (1024 if unit == "kB" else 1)
    return out


def collect_memory() -> Section:
    """RAM and swap in bytes."""
    info = meminfo_bytes()
    if "MemTotal" not in info:
        return unknown("/proc/meminfo has no MemTotal")
    return {
        "total_bytes": info["MemTotal"],
        "available_bytes": info.get("MemAvailable"),
        "free_bytes": info.get("MemFree"),
        "swap_total_bytes": info.get("SwapTotal", 0),
        "swap_free_bytes": info.get("SwapFree", 0),
        "hugepage_size_bytes": info.get("Hugepagesize"),
    }


def collect_disks() -> Section:
    """Block devices from /sys/block and mounted real filesystems with their sizes."""
    block = host_path("/sys/block")
    devices = []
    try:
        names = sorted(p.name for p in block.iterdir())
    except OSError as exc:
        return unknown(f"/sys/block is not readable: {exc.strerror}")
    for name in names:
        sectors = read_int(block / name / "size")
        devices.append(
            {
                "name": name,
                "size_bytes": (sectors or 0) * 512,
                "rotational": read_int(block / name / "queue" / "rotational") == 1,
                "removable": read_int(block / name / "removable") == 1,
                "read_only": read_int(block / name / "ro") == 1,
                "model": (read_text(block / name / "device" / "model") or "").strip(),
            }
        )
    return {"block_devices": devices, "filesystems": _filesystems()}


NETWORK_FSTYPES = frozenset({"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "zfs", "9p"})


def _storage_fstypes() -> set[str]:
    """Filesystem types that store data: block-device ones (not ``nodev`` in
    /proc/filesystems) and network ones. Everything else (proc, nsfs, tmpfs...) is pseudo."""
    text = read_text("/proc/filesystems") or ""
    block = {ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.startswith("nodev")}
    return block | NETWORK_FSTYPES


def _filesystems() -> list[dict[str, Any]]:
    """Each real filesystem once (by device), at the mount that shows its whole tree.

    Pseudo filesystems, bind mounts of subdirectories and overlay mounts other than ``/``
    (container root filesystems, which come and go with containers) are left out, so the
    list, and with it the inventory hash, changes only when the host's storage does.
    """
    storage = _storage_fstypes()
    chosen: dict[str, dict[str, str]] = {}
    for entry in mountinfo():
        root_overlay = entry["fstype"] == "overlay" and entry["mount_point"] == "/"
        if entry["fstype"] not in storage and not root_overlay:
            continue
        current = chosen.get(entry["device"])
        if current is None or (current["root"] != "/" and entry["root"] == "/"):
            chosen[entry["device"]] = entry
    out = []
    for entry in chosen.values():
        try:
            st = os.statvfs(entry["mount_point"])
        except OSError:
            continue
        out.append(
            {
                "mount_point": entry["mount_point"],
                "fstype": entry["fstype"],
                "source": entry["source"],
                "read_only": "ro" in entry["options"].split(","),
                "size_bytes": st.f_blocks * st.f_frsize,
                "free_bytes": st.f_bavail * st.f_frsize,
                "inodes_free": st.f_favail,
            }
        )
    return sorted(out, key=lambda f: str(f["mount_point"]))


SIOCGIFCONF = 0x8912
SIOCGIFNETMASK = 0x891B
_IFREQ_SIZE = 40


def collect_network() -> Section:
    """Interfaces from /sys/class/net with IPv4 (ioctl) and IPv6 (/proc/net/if_inet6) addresses."""
    net = host_path("/sys/class/net")
    try:
        names = sorted(p.name for p in net.iterdir())
    except OSError as exc:
        return unknown(f"/sys/class/net is not readable: {exc.strerror}")
    errors = {}
    try:
        v4 = _ipv4_addresses()
    except OSError as exc:  # the interface list is still worth reporting
        v4, errors["ipv4"] = {}, f"SIOCGIFCONF failed: {exc}"
    v6 = _ipv6_addresses()
    interfaces = []
    for name in names:
        ifindex, iflink = read_int(net / name / "ifindex"), read_int(net / name / "iflink")
        virtual = "/virtual/" in str((net / name).resolve())
        interfaces.append(
            {
                "name": name,
                # A virtual link whose peer is another interface: a container veth end.
                "veth": virtual and ifindex != iflink and not _is_vlan(name),
                "mac": read_text(net / name / "address") or "",
                "mtu": read_int(net / name / "mtu"),
                "operstate": read_text(net / name / "operstate") or "unknown",
                "type": read_int(net / name / "type"),
                "physical": (net / name / "device").exists(),
                "addresses": v4.get(name, []) + v6.get(name, []),
            }
        )
    out: Section = {"hostname": socket.gethostname(), "interfaces": interfaces}
    if errors:
        out["errors"] = errors
    return out


def _is_vlan(name: str) -> bool:
    return host_path(f"/proc/net/vlan/{name}").exists()


def _ipv4_addresses() -> dict[str, list[str]]:
    """All IPv4 addresses per interface with SIOCGIFCONF (labels like eth0:1 fold into eth0)."""
    out: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        buf = array.array("B", b"\0" * _IFREQ_SIZE * 256)
        addr, _ = buf.buffer_info()
        ifconf = struct.pack("iL", len(buf), addr)
        length = struct.unpack("iL", fcntl.ioctl(sock.fileno(), SIOCGIFCONF, ifconf))[0]
        raw = buf.tobytes()[:length]
        for off in range(0, length, _IFREQ_SIZE):
            label = raw[off : off + 16].split(b"\0", 1)[0].decode()
            ip = socket.inet_ntoa(raw[off + 20 : off + 24])
            try:
                req = struct.pack("16s24x", label.encode())
                mask = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFNETMASK, req)[20:24])
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
            except OSError:
                prefix = 32
            out.setdefault(label.split(":", 1)[0], []).append(f"{ip}/{prefix}")
    return out


def _ipv6_addresses() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (read_text("/proc/net/if_inet6") or "").splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        ip = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
        out.setdefault(parts[5], []).append(f"{ip}/{int(parts[2], 16)}")
    return out
