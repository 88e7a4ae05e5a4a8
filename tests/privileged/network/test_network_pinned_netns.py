"""A container's network namespace outlives its processes: real runtime (through the zygote),
real bridge in the test's "host" namespace. A bridge container that exits non-zero is started
again by its shim (restart policy) and keeps its address, default route and published port;
removal and the start-up clean-up leave no pinned namespace (mount or file) behind."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nettest_helpers import Lab, talk, wire_second_host
from pyroute2 import IPRoute

from agent.containers import ContainerService
from agent.network.integration import ContainerNetworking, NetworkSettings
from agent.protocol.containers import ContainerSpec, NetworkSpec, PortMapping, RestartPolicy
from agent.runtime.spec import SpecOptions

pytestmark = pytest.mark.privileged

PARENT = "corraltest.slice"
SUBNET = "10.77.0.0/24"
# Host-mode containers see the host's /usr, so python3 is there. The first run leaves a mark
# in its private /var (kept across runs) and fails; the run its shim starts serves on 8080.
SERVER = (
    "import socket\n"
    "s = socket.create_server(('0.0.0.0', 8080))\n"
    "while True:\n"
    "    c, peer = s.accept()\n"
    "    c.sendall(b'echo:hi from:' + peer[0].encode())\n"
    "    c.close()\n"
)
FAIL_ONCE_THEN_SERVE = (
    'if [ -e /var/ran-once ]; then exec /usr/bin/python3 -c "$0"; fi; touch /var/ran-once; exit 3'
)


@pytest.fixture
def net(lab: Lab, tmp_path: Path) -> Iterator[ContainerNetworking]:
    networking = ContainerNetworking(
        tmp_path / "network", NetworkSettings(bridge=lab.bridge, subnet=SUBNET)
    )
    yield networking
    for cid in networking.pins.ids():  # a failed test must not leave mounts behind
        networking.pins.remove(cid)


@pytest.fixture
def service(net: ContainerNetworking, tmp_path: Path) -> Iterator[ContainerService]:
    svc = ContainerService(
        tmp_path / "containers",
        tmp_path / "runtime",
        options=SpecOptions(cgroup_parent=PARENT),
        before_start=net.before_start,
        netns_for=net.netns_for,
    )
    yield svc
    for status in svc.list():
        with contextlib.suppress(Exception):
            svc.remove(status.id, force=True)
            net.removed(status.id)
    svc.close()


@pytest.fixture
def second_host(lab: Lab) -> str:
    return wire_second_host(lab)


def spec(command: list[str], **kw: object) -> ContainerSpec:
    base: dict[str, object] = {"id": str(uuid.uuid4()), "name": "pinned", "project": "proj"}
    base.update(kw)
    return ContainerSpec(command=command, mode="host", **base)  # type: ignore[arg-type]


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def network_of(pid: int) -> tuple[list[tuple[str, int]], list[str], dict[str, str]]:
    """eth0's IPv4 addresses, the default routes' gateways and link states, as seen by the
    process ``pid``."""
    with IPRoute(netns=f"/proc/{pid}/ns/net") as ns:
        states = {str(x.get("ifname")): str(x.get("operstate")) for x in ns.get_links()}
        found = ns.link_lookup(ifname="eth0")
        ipv4 = ns.get_addr(index=found[0], family=2) if found else []
        addresses = [(str(a.get("address")), int(a["prefixlen"])) for a in ipv4]
        routes = ns.get_routes(family=2, table=254)
        gateways = [str(r.get("gateway")) for r in routes if r["dst_len"] == 0]
    return addresses, gateways, states


def same_namespace(pid: int, pin: Path) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(pin).st_ino


def mounts_under(directory: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f" {directory}/" in line]  # fmt: skip


def test_restarted_bridge_container_keeps_address_route_and_published_port(
    net: ContainerNetworking, service: ContainerService, second_host: str
) -> None:
    s = spec(
        ["/bin/sh", "-c", FAIL_ONCE_THEN_SERVE, SERVER],
        restart_policy=RestartPolicy("on-failure", 3),
        network=NetworkSpec(mode="bridge", ports=[PortMapping(8080, 18080)]),
    )
    service.create(s)
    pin = net.pins.path(s.id)
    assert mounts_under(pin.parent), "the namespace is pinned before the first process runs"
    first = service.start(s.id)
    assert first.pid is not None

    wait_until(lambda: service.status(s.id).restart_count == 1)
    wait_until(lambda: service.status(s.id).state == "running")
    again = service.status(s.id)
    assert again.pid is not None and again.pid != first.pid
    assert same_namespace(again.pid, pin)
    addresses, gateways, states = network_of(again.pid)
    assert addresses == [("10.77.0.2", 24)]
    assert gateways == ["10.77.0.1"]
    assert states["lo"] == "UNKNOWN" and states["eth0"] == "UP"  # lo reports UNKNOWN when up
    wait_until(lambda: _answers(second_host))
    assert talk(second_host, "198.18.0.1", 18080) == "echo:hi from:198.18.0.2"

    # Stopped and started again by the agent: same namespace, the veth replaced, reachable.
    service.stop(s.id, 5)
    third = service.start(s.id)
    assert third.pid is not None and same_namespace(third.pid, pin)
    assert network_of(third.pid)[:2] == ([("10.77.0.2", 24)], ["10.77.0.1"])
    wait_until(lambda: _answers(second_host))

    service.remove(s.id, force=True)
    net.removed(s.id)
    assert not pin.exists() and mounts_under(pin.parent) == []
    assert net.manager.ipam.leases() == {}


def _answers(peer: str) -> bool:
    try:
        return talk(peer, "198.18.0.1", 18080).startswith("echo:hi")
    except AssertionError:
        return False


def test_restarted_none_container_keeps_its_loopback_up(
    net: ContainerNetworking, service: ContainerService
) -> None:
    s = spec(
        ["/bin/sh", "-c", "[ -e /var/ran-once ] && exec sleep 600; touch /var/ran-once; exit 1"],
        restart_policy=RestartPolicy("always"),
        network=NetworkSpec(mode="none"),
    )
    service.create(s)
    service.start(s.id)
    wait_until(lambda: service.status(s.id).restart_count == 1)
    wait_until(lambda: service.status(s.id).state == "running")
    pid = service.status(s.id).pid
    assert pid is not None and same_namespace(pid, net.pins.path(s.id))
    assert network_of(pid)[2] == {"lo": "UNKNOWN"}


def test_host_mode_and_user_namespace_containers_get_no_pin(net: ContainerNetworking) -> None:
    assert net.netns_for(spec(["true"], network=NetworkSpec(mode="host"))) is None
    mapping = {"container_id": 0, "host_id": 100000, "size": 65536}
    mapped = ContainerSpec.from_dict({**spec(["true"]).to_dict(), "uid_mappings": [mapping]})
    assert net.netns_for(mapped) is None
    assert net.pins.ids() == set()


def test_startup_removes_pins_of_vanished_containers_only(net: ContainerNetworking) -> None:
    live, gone = str(uuid.uuid4()), str(uuid.uuid4())
    for cid in (live, gone):
        net.netns_for(spec(["true"], id=cid, network=NetworkSpec(mode="none")))
    # A pin file left unmounted (a reboot empties the mounts, not the state dir) goes too.
    stale = net.pins.path(str(uuid.uuid4()))
    stale.touch()
    assert len(mounts_under(net.pins.directory)) == 2

    cleaned = net.startup({live})

    assert gone in cleaned and stale.name in cleaned
    assert net.pins.ids() == {live}
    assert [line.split()[4] for line in mounts_under(net.pins.directory)] == [
        str(net.pins.path(live))
    ]
