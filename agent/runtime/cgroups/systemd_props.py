"""systemd unit properties for OCI limits, named for the running systemd's version.

systemd 232 renamed the cgroup properties for the unified hierarchy (``CPUShares`` ->
``CPUWeight``, ``MemoryLimit`` -> ``MemoryMax``, ``BlockIOWeight`` -> ``IOWeight``); older
systemd knows only the old names, newer ones drop them, so the version picks the names.
"""

from __future__ import annotations

import math
from typing import Any

from agent.runtime.cgroups.base import (
    CgroupError,
    ResourceLimits,
    blkio_weight_to_io_weight,
    shares_to_weight,
)

UINT64_MAX = 2**64 - 1  # systemd's "infinity" for limits
# systemd 232 renamed the unified-hierarchy properties; older ones know only the v1 names.
UNIFIED_NAMES_SINCE = 232
ALLOWED_CPUS_SINCE = 244  # AllowedCPUs / AllowedMemoryNodes
QUOTA_PERIOD_SINCE = 242  # CPUQuotaPeriodUSec
ATTACH_SINCE = 238  # AttachProcessesToUnit

Property = tuple[str, tuple[str, Any]]  # D-Bus a(sv) element: (name, (signature, value))

START_SIGNATURE = "ssa(sv)a(sa(sv))"  # name, mode, properties, auxiliary units


def parse_version(value: Any) -> int:
    """``"252.22-1~deb12u1"`` or ``"v255"`` -> 252 / 255; 0 when unparseable (assume old)."""
    text = str(value).lstrip("v")
    digits = ""
    for char in text:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else 0


def cpu_mask(cpus: str) -> bytes:
    """A cpuset list ``0-2,5`` as systemd's ``AllowedCPUs`` byte mask (bit n = cpu n)."""
    members: set[int] = set()
    for part in cpus.split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        start, end = int(low), int(high or low)
        if end < start:
            raise CgroupError("set", "cpu.cpus", f"range {part!r} runs backwards")
        members.update(range(start, end + 1))
    mask = bytearray((max(members) // 8 + 1) if members else 0)
    for cpu in members:
        mask[cpu // 8] |= 1 << (cpu % 8)
    return bytes(mask)


def unit_properties(lim: ResourceLimits, version: int) -> list[Property]:
    """OCI limits as systemd unit properties, named for ``version`` of systemd."""
    new = version >= UNIFIED_NAMES_SINCE
    props: list[Property] = []
    if lim.cpu_shares is not None:
        if new:
            props.append(("CPUWeight", ("t", shares_to_weight(lim.cpu_shares))))
        else:
            props.append(("CPUShares", ("t", lim.cpu_shares)))
    props += _cpu_quota(lim, version)
    if version >= ALLOWED_CPUS_SINCE:
        if lim.cpus is not None:
            props.append(("AllowedCPUs", ("ay", cpu_mask(lim.cpus))))
        if lim.mems is not None:
            props.append(("AllowedMemoryNodes", ("ay", cpu_mask(lim.mems))))
    if lim.memory_limit is not None:
        props.append(("MemoryMax" if new else "MemoryLimit", ("t", _inf(lim.memory_limit))))
    if lim.memory_swap is not None and new:
        if lim.memory_swap == -1:
            swap = UINT64_MAX
        else:
            assert lim.memory_limit is not None  # from_oci checked
            swap = lim.memory_swap - lim.memory_limit
        props.append(("MemorySwapMax", ("t", swap)))
    if lim.pids_limit:  # 0 means "not set" in OCI
        props.append(("TasksMax", ("t", _inf(lim.pids_limit))))
    if lim.blkio_weight is not None:
        if new:
            props.append(("IOWeight", ("t", blkio_weight_to_io_weight(lim.blkio_weight))))
        else:
            props.append(("BlockIOWeight", ("t", lim.blkio_weight)))
    return props


def _cpu_quota(lim: ResourceLimits, version: int) -> list[Property]:
    """``CPUQuotaPerSecUSec`` is CPU time per wall second. systemd stores it as a whole
    percentage, so round a fractional one up to the next 10 ms as runc does (a quota of
    0.5 % would otherwise become 0 = unlimited)."""
    props: list[Property] = []
    period = lim.cpu_period or 100_000
    if lim.cpu_period is not None and version >= QUOTA_PERIOD_SINCE:
        props.append(("CPUQuotaPeriodUSec", ("t", lim.cpu_period)))
    if lim.cpu_quota is not None:
        if lim.cpu_quota <= 0:
            per_sec = UINT64_MAX
        else:
            per_sec = math.ceil(lim.cpu_quota * 1_000_000 / period / 10_000) * 10_000
        props.append(("CPUQuotaPerSecUSec", ("t", per_sec)))
    return props


def _inf(value: int) -> int:
    return UINT64_MAX if value < 0 else value


def accounting_properties(version: int) -> list[Property]:
    io = "IOAccounting" if version >= UNIFIED_NAMES_SINCE else "BlockIOAccounting"
    return [
        ("CPUAccounting", ("b", True)),
        ("MemoryAccounting", ("b", True)),
        ("TasksAccounting", ("b", True)),
        (io, ("b", True)),
    ]
