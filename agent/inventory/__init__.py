"""Host inventory: one collector per area, run concurrently under one deadline.

``collect_inventory()`` returns ``{section: dict}``; a collector that fails or overruns yields
``{"status": "unknown", "reason": ...}`` for its section and never fails the report.
``inventory_hash()`` fingerprints the stable facts (so heartbeats can say "unchanged") and
``quick_stats()`` is the cheap part a heartbeat carries.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any

from agent.inventory._base import Collector, Section, unknown
from agent.inventory.hardware import (
    collect_cpu,
    collect_disks,
    collect_memory,
    collect_network,
    meminfo_bytes,
)
from agent.inventory.isolation import (
    collect_cgroups,
    collect_namespaces,
    collect_overlay,
    collect_seccomp,
)
from agent.inventory.runtimes import collect_runtimes
from agent.inventory.security import collect_apparmor, collect_selinux
from agent.inventory.system import (
    collect_agent,
    collect_clock,
    collect_init,
    collect_kernel,
    collect_kernel_config,
    collect_os_release,
)
from agent.inventory.virt import collect_virtualization

__all__ = ["COLLECTORS", "collect_inventory", "inventory_hash", "quick_stats"]

logger = logging.getLogger(__name__)

COLLECTORS: dict[str, Collector] = {
    "cpu": collect_cpu,
    "memory": collect_memory,
    "disks": collect_disks,
    "network": collect_network,
    "kernel": collect_kernel,
    "kernel_config": collect_kernel_config,
    "os": collect_os_release,
    "virtualization": collect_virtualization,
    "namespaces": collect_namespaces,
    "cgroups": collect_cgroups,
    "init": collect_init,
    "selinux": collect_selinux,
    "apparmor": collect_apparmor,
    "overlay": collect_overlay,
    "seccomp": collect_seccomp,
    "runtimes": collect_runtimes,
    "clock": collect_clock,
    "agent": collect_agent,
}

# Dotted paths (list items as "*") of facts that change without the host changing.
VOLATILE = (
    "_meta",
    "_meta.*",
    "cpu.mhz",
    "memory.available_bytes",
    "memory.free_bytes",
    "memory.swap_free_bytes",
    "disks.filesystems.*.free_bytes",
    "disks.filesystems.*.inodes_free",
    "clock.maxerror_us",
    "clock.esterror_us",
    "clock.clock_state",
    "clock.synchronized",
    "clock.sta_unsync",
    "virtualization.sources.namespaces.*",
)

# List items that come and go with containers, not with the host: {list path: flag key}.
EPHEMERAL_ITEMS = {"network.interfaces": "veth"}

DEFAULT_TIMEOUT_S = 5.0


def _run_one(name: str, collector: Collector) -> tuple[Section, float]:
    start = time.perf_counter()
    try:
        section = collector()
    except Exception as exc:  # a collector bug must cost only its own section
        logger.warning("inventory collector %s failed: %s", name, exc, exc_info=True)
        section = unknown(f"collector raised {type(exc).__name__}: {exc}")
    return section, (time.perf_counter() - start) * 1000


def collect_inventory(
    collectors: dict[str, Collector] | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """Run every collector concurrently; sections still running at ``timeout`` become unknown.

    Collectors run in daemon threads, so one stuck in a hung filesystem can neither delay
    the report past ``timeout`` nor keep the agent from exiting. ``_meta`` records when, how
    long in total and per collector (milliseconds).
    """
    if not timeout > 0:
        raise ValueError(f"timeout: must be a positive number of seconds, got {timeout!r}")
    chosen = COLLECTORS if collectors is None else collectors
    started = time.perf_counter()
    results: dict[str, tuple[Section, float]] = {}
    threads = []
    for name, fn in chosen.items():

        def run(name: str = name, fn: Collector = fn) -> None:
            results[name] = _run_one(name, fn)

        thread = threading.Thread(target=run, name=f"inventory-{name}", daemon=True)
        thread.start()
        threads.append(thread)
    deadline = started + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    inventory: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in chosen:
        done = results.get(name)
        if done is None:
            inventory[name] = unknown(f"collector did not finish within {timeout:g} s")
        else:
            inventory[name], timings[name] = done[0], round(done[1], 2)
    inventory["_meta"] = {
        "collected_at": time.time(),
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
        "collector_ms": timings,
    }
    return inventory


def _strip_volatile(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if any(fnmatch.fnmatchcase(sub, pattern) for pattern in VOLATILE):
                continue
            out[key] = _strip_volatile(item, sub)
        return out
    if isinstance(value, list):
        flag = EPHEMERAL_ITEMS.get(path)
        return [
            _strip_volatile(item, f"{path}.*")
            for item in value
            if not (flag and isinstance(item, dict) and item.get(flag))
        ]
    return value


def inventory_hash(inv: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``inv`` without volatile facts (see :data:`VOLATILE`)."""
    stable = _strip_volatile(inv, "")
    blob = json.dumps(stable, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def quick_stats() -> dict[str, Any]:
    """load1, memory_total and memory_available (bytes): cheap enough for every heartbeat."""
    try:
        load1: float | None = os.getloadavg()[0]
    except OSError:
        load1 = None
    info = meminfo_bytes()
    return {
        "load1": load1,
        "memory_total": info.get("MemTotal"),
        "memory_available": info.get("MemAvailable"),
    }
