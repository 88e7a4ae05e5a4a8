"""Validation before touching the host: every bad input names its field. These run in the
current network namespace but only read it (netlink dumps, a bind probe on a free port)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from agent.network import NetworkError, NetworkManager
from agent.protocol.containers import NetworkSpec, PortMapping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nm(tmp_path: Path) -> NetworkManager:
    subnet = f"172.31.{random.randrange(256)}.0/24"
    return NetworkManager(tmp_path, bridge="crltestval", subnet=subnet, nft_table="crltestval")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (NetworkSpec(ports=[PortMapping(80, 0)]), "network.ports[0].host_port"),
        (NetworkSpec(ports=[PortMapping(65536, 8080)]), "network.ports[0].container_port"),
        (NetworkSpec(ports=[PortMapping(80, 443)]), "network.ports[0].host_port"),
        (NetworkSpec(ports=[PortMapping(80, 8080, "sctp")]), "network.ports[0].protocol"),  # type: ignore[arg-type]
        (NetworkSpec(ports=[PortMapping(80, 8080, host_ip="::1")]), "network.ports[0].host_ip"),
        (NetworkSpec(dns=["1.1.1.1", "dns.example"]), "network.dns[1]"),
        (NetworkSpec(mode="overlay"), "network.mode"),  # type: ignore[arg-type]
        (NetworkSpec(mode="none", ports=[PortMapping(80, 8080)]), "network.ports"),
        (NetworkSpec(mode="host", ports=[PortMapping(80, 8080)]), "network.ports"),
    ],
)
def test_bad_spec_names_the_field(nm: NetworkManager, spec: NetworkSpec, field: str) -> None:
    with pytest.raises(NetworkError) as err:
        nm.validate(spec)
    assert err.value.field == field
    assert str(err.value).startswith(field + ": ")
    assert nm.ipam.leases() == {}


@pytest.mark.privileged  # the bind probe of a port below 1024 needs root
def test_good_spec_passes_and_privileged_ports_need_permission(nm: NetworkManager) -> None:
    nm.validate(NetworkSpec(ports=[PortMapping(80, free_port())], dns=["192.0.2.53"]))
    privileged = NetworkSpec(ports=[PortMapping(80, 1021)])  # RFC 4727 experimental port
    with pytest.raises(NetworkError):
        nm.validate(privileged)
    nm.validate(privileged, allow_privileged_ports=True)


def test_a_port_a_host_process_listens_on_is_refused(nm: NetworkManager) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(NetworkError) as err:
            nm.validate(NetworkSpec(ports=[PortMapping(80, port, host_ip="127.0.0.1")]))
    assert err.value.field == "network.ports[0].host_port" and "in use" in err.value.message


def test_an_address_not_on_this_host_is_refused(nm: NetworkManager) -> None:
    with pytest.raises(NetworkError) as err:
        nm.validate(NetworkSpec(ports=[PortMapping(80, free_port(), host_ip="203.0.113.77")]))
    assert err.value.field == "network.ports[0].host_ip"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"subnet": "127.1.0.0/24"}, "subnet"),  # overlaps lo's 127.0.0.0/8
        ({"subnet": "10.1.2.3/24"}, "subnet"),
        ({"subnet": "10.1.2.0/30"}, "subnet"),
        ({"bridge": "a-name-far-too-long"}, "bridge"),
        ({"firewall": "pf"}, "firewall"),
        ({"nft_table": "corral; flush ruleset"}, "nft_table"),
        ({"iptables_chain": "A B"}, "iptables_chain"),
    ],
)
def test_bad_manager_settings_name_the_field(
    tmp_path: Path, kwargs: dict[str, str], field: str
) -> None:
    settings = {"bridge": "crltestval", "subnet": "172.31.250.0/24", **kwargs}
    with pytest.raises(NetworkError) as err:
        NetworkManager(tmp_path, **settings)  # type: ignore[arg-type]
    assert err.value.field == field
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_attach_refuses_bad_ids_and_missing_netns(nm: NetworkManager) -> None:
    with pytest.raises(NetworkError) as err:
        nm.attach('x"; flush ruleset', "web", "/proc/self/ns/net", NetworkSpec(mode="none"))
    assert err.value.field == "container_id"
    with pytest.raises(NetworkError) as err:
        nm.attach("c1", "web", "/nonexistent/netns", NetworkSpec())
    assert err.value.field == "netns_path"
