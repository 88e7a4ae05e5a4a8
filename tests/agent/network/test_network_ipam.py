"""IPAM state: persisted, locked, atomic; no address or host port handed out twice."""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
from pathlib import Path

import pytest

from agent.network.errors import NetworkError
from agent.network.ipam import Ipam, PublishedPort, mac_for

NET = ipaddress.IPv4Network("10.99.0.0/29")  # gateway .1, containers .2 - .6


def ipam(state: Path, net: ipaddress.IPv4Network = NET) -> Ipam:
    return Ipam(state, "crltest0", net)


def test_addresses_skip_gateway_and_survive_a_restart(tmp_path: Path) -> None:
    first = ipam(tmp_path)
    a = first.allocate("a", "a", "vetha", ())
    b = first.allocate("b", "b", "vethb", ())
    assert (first.gateway, a.ip_address, b.ip_address) == (
        ipaddress.IPv4Address("10.99.0.1"), "10.99.0.2", "10.99.0.3"
    )  # fmt: skip
    again = ipam(tmp_path)  # a new process reading the same state
    assert again.allocate("c", "c", "vethc", ()).ip_address == "10.99.0.4"
    assert again.allocate("a", "a", "vetha", ()).ip_address == "10.99.0.2"  # idempotent
    assert a.mac == mac_for(ipaddress.IPv4Address("10.99.0.2")) == "02:42:0a:63:00:02"


def test_freed_address_is_not_reused_at_once_and_exhaustion_is_an_error(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    ips = [pool.allocate(f"c{i}", "x", "v", ()).ip_address for i in range(5)]
    assert ips == [f"10.99.0.{i}" for i in range(2, 7)]
    with pytest.raises(NetworkError) as err:
        pool.allocate("c5", "x", "v", ())
    assert err.value.field == "step.ipam"
    pool.release("c1")
    assert pool.allocate("c6", "x", "v", ()).ip_address == "10.99.0.3"  # the only free one
    pool.release("c0")
    pool.release("c2")
    assert pool.allocate("c7", "x", "v", ()).ip_address == "10.99.0.4"  # after the cursor


def test_state_is_written_atomically_as_json(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    pool.allocate("a", "web", "vetha", (PublishedPort("0.0.0.0", 8080, 80, "tcp"),))
    data = json.loads(pool.path.read_text())
    assert data["leases"]["a"]["ports"] == [
        {"host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80, "protocol": "tcp"}
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "crltest0.ipam.json",
        "crltest0.ipam.lock",
    ]


def test_changing_the_subnet_under_live_leases_is_refused(tmp_path: Path) -> None:
    ipam(tmp_path).allocate("a", "a", "v", ())
    with pytest.raises(NetworkError) as err:
        ipam(tmp_path, ipaddress.IPv4Network("10.98.0.0/24"))
    assert err.value.field == "subnet"


def test_host_port_conflicts_are_caught_under_the_lock(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    pool.allocate("a", "a", "v", (PublishedPort("127.0.0.1", 8080, 80, "tcp"),))
    with pytest.raises(NetworkError) as err:
        pool.allocate("b", "b", "v", (PublishedPort("0.0.0.0", 8080, 81, "tcp"),))
    assert err.value.field == "network.ports[0].host_port" and "container a" in err.value.message
    assert set(pool.leases()) == {"a"}  # nothing recorded for b
    pool.allocate("b", "b", "v", (PublishedPort("127.0.0.2", 8080, 81, "tcp"),))
    pool.allocate("c", "c", "v", (PublishedPort("0.0.0.0", 8080, 81, "udp"),))


def _grab(state: str, worker: int, out: multiprocessing.Queue[list[str]]) -> None:
    pool = Ipam(Path(state), "crltest0", ipaddress.IPv4Network("10.97.0.0/24"))
    out.put([pool.allocate(f"w{worker}-{i}", "x", "v", ()).ip_address for i in range(20)])


def test_concurrent_processes_never_get_the_same_address(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_grab, args=(str(tmp_path), w, out)) for w in range(4)]
    for p in procs:
        p.start()
    got = [ip for _ in procs for ip in out.get(timeout=30)]
    for p in procs:
        p.join()
    assert len(got) == 80 and len(set(got)) == 80
    assert len(Ipam(tmp_path, "crltest0", ipaddress.IPv4Network("10.97.0.0/24")).leases()) == 80


def test_an_unreadable_state_file_is_an_error_naming_the_step(tmp_path: Path) -> None:
    pool = ipam(tmp_path)
    pool.allocate("a", "a", "v", ())
    pool.path.write_text('{"leases": {"a": ')  # what a torn write would look like
    with pytest.raises(NetworkError) as err:
        pool.allocate("b", "b", "v", ())
    assert err.value.field == "step.ipam" and str(pool.path) in err.value.message
