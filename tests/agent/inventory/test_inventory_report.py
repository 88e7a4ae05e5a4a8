"""collect_inventory(): degradation, deadline, hashing and heartbeat stats."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import pytest

from agent import inventory
from agent.certification import run_host_checks
from agent.inventory import _base, collect_inventory, inventory_hash, quick_stats
from agent.protocol.messages import InventoryReport


@pytest.mark.privileged
def test_full_inventory_has_every_section_and_runs_well_under_one_second() -> None:
    """Best of three, so that other jobs on this 2-core CI machine do not decide the result."""
    collect_inventory()  # warm imports and page cache
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        inv = collect_inventory()
        runs.append((time.perf_counter() - start, inv["_meta"]))
        assert set(inv) == set(inventory.COLLECTORS) | {"_meta"}
        unknown = {k: v for k, v in inv.items() if isinstance(v, dict) and v.get("status")}
        assert unknown == {}, unknown
    best = min(runs, key=lambda r: r[0])
    assert best[0] < 1.0, best[1]


def test_a_crashing_collector_costs_only_its_own_section() -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("disk on fire")

    inv = collect_inventory({"broken": broken, "agent": inventory.COLLECTORS["agent"]})
    assert inv["broken"]["status"] == "unknown"
    assert "RuntimeError: disk on fire" in inv["broken"]["reason"]
    assert inv["agent"]["version"]


def test_a_stuck_collector_is_reported_unknown_at_the_deadline() -> None:
    release = threading.Event()

    def stuck() -> dict[str, object]:
        release.wait(10)
        return {"never": True}

    start = time.perf_counter()
    try:
        inv = collect_inventory({"stuck": stuck, "agent": inventory.COLLECTORS["agent"]}, 0.2)
    finally:
        release.set()
    assert time.perf_counter() - start < 1.0
    assert inv["stuck"] == {"status": "unknown", "reason": "collector did not finish within 0.2 s"}
    assert inv["agent"]["version"]


def test_collectors_degrade_on_a_host_where_nothing_is_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_base, "ROOT", tmp_path)
    inv = collect_inventory()
    for name in ("cpu", "memory", "disks", "network", "os", "kernel_config", "namespaces"):
        assert inv[name]["status"] == "unknown", name
        assert inv[name]["reason"], name


@pytest.mark.privileged
def test_hash_is_stable_across_collections_and_ignores_volatile_facts() -> None:
    # Other jobs on this shared CI host add and remove bridges and netns mounts at any
    # moment, so look for one quiet pair of collections; an unstripped volatile fact (free
    # memory, clock error...) would differ in every pair and still fail this test.
    pairs = []
    for _ in range(5):
        first, second = collect_inventory(), collect_inventory()
        pairs.append((inventory_hash(first), inventory_hash(second)))
        if pairs[-1][0] == pairs[-1][1]:
            break
    assert pairs[-1][0] == pairs[-1][1], pairs
    changed = copy.deepcopy(first)
    changed["memory"]["available_bytes"] = 1
    changed["disks"]["filesystems"][0]["free_bytes"] = 1
    changed["_meta"]["elapsed_ms"] = 1e6
    assert inventory_hash(changed) == inventory_hash(first)


@pytest.mark.privileged
def test_inventory_and_findings_travel_in_an_inventory_report() -> None:
    inv = collect_inventory()
    report = InventoryReport(
        collected_at=inv["_meta"]["collected_at"],
        inventory=inv,
        findings=run_host_checks(inv),
        inventory_hash=inventory_hash(inv),
    )
    wire = json.loads(json.dumps(report.to_dict()))
    assert InventoryReport.from_dict(wire) == report


def test_hash_changes_when_a_stable_fact_changes() -> None:
    inv = {"kernel": {"release": "6.1.0"}, "memory": {"total_bytes": 1, "free_bytes": 5}}
    other = copy.deepcopy(inv)
    other["kernel"]["release"] = "6.1.1"
    assert inventory_hash(inv) != inventory_hash(other)
    assert inventory_hash(inv).startswith("sha256:")


def test_hash_ignores_container_veths_but_not_host_interfaces() -> None:
    inv = {"network": {"interfaces": [{"name": "eth0", "veth": False, "mtu": 1500}]}}
    with_veth = copy.deepcopy(inv)
    with_veth["network"]["interfaces"].append({"name": "veth1a2b", "veth": True, "mtu": 1500})
    assert inventory_hash(with_veth) == inventory_hash(inv)
    with_nic = copy.deepcopy(inv)
    with_nic["network"]["interfaces"].append({"name": "eth1", "veth": False, "mtu": 1500})
    assert inventory_hash(with_nic) != inventory_hash(inv)


def test_quick_stats_agree_with_the_memory_collector() -> None:
    stats = quick_stats()
    assert stats["memory_total"] == inventory.COLLECTORS["memory"]()["total_bytes"]
    assert stats["load1"] is not None and stats["load1"] >= 0
    assert 0 < stats["memory_available"] <= stats["memory_total"]


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_non_positive_timeout_is_rejected_naming_it(timeout: float) -> None:
    with pytest.raises(ValueError, match=r"^timeout: "):
        collect_inventory({"agent": inventory.COLLECTORS["agent"]}, timeout)
