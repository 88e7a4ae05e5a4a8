"""Bridge, none and host modes with real namespaces, veths, addresses and nft rules."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nettest_helpers import Lab, echo_server, talk, wire_second_host
from pyroute2 import IPRoute

from agent.network import NetworkError, NetworkManager, links
from agent.protocol.containers import NetworkSpec, PortMapping

pytestmark = pytest.mark.privileged


def cid() -> str:
    return str(uuid.uuid4())


def manager(lab: Lab, state: Path, **kwargs: object) -> NetworkManager:
    kwargs.setdefault("subnet", "10.77.0.0/24")
    return NetworkManager(state, bridge=lab.bridge, nft_table=f"crltest{lab.tag}", **kwargs)  # type: ignore[arg-type]


def links_named(prefix: str, kind: str = "veth") -> list[str]:
    """Names of this netns's links of ``kind`` starting with ``prefix``."""
    with IPRoute() as ipr:
        return [
            str(x.get("ifname"))
            for x in ipr.get_links()
            if str(x.get("ifname")).startswith(prefix)
            and x.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == kind
        ]


def nft_rules(table: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["nft", "-j", "list", "table", "inet", table], capture_output=True, text=True, check=True
    ).stdout
    return [item["rule"] for item in json.loads(out)["nftables"] if "rule" in item]


def ns_links(path: str) -> dict[str, str]:
    with IPRoute(netns=path) as ns:
        return {str(x.get("ifname")): str(x.get("operstate")) for x in ns.get_links()}


def test_bridge_container_gets_address_and_reaches_gateway_and_neighbour(
    lab: Lab, tmp_path: Path, spawn
) -> None:
    nm = manager(lab, tmp_path)
    c1, c2 = lab.netns("c1"), lab.netns("c2")
    a1 = nm.attach(cid(), "web", c1, NetworkSpec(dns=["192.0.2.53"]))
    a2 = nm.attach(cid(), "db", c2, NetworkSpec())

    assert a1.ip_address == "10.77.0.2" and a2.ip_address == "10.77.0.3"
    assert a1.gateway == "10.77.0.1" and a1.mac == "02:42:0a:4d:00:02"
    assert set(ns_links(c1)) == {"lo", "eth0"}
    with IPRoute(netns=c1) as ns:
        eth0 = ns.link_lookup(ifname="eth0")[0]
        assert [(a.get("address"), a["prefixlen"]) for a in ns.get_addr(index=eth0, family=2)] == [
            ("10.77.0.2", 24)
        ]
        default = [r for r in ns.get_routes(family=2, table=254) if r["dst_len"] == 0]
        assert [r.get("gateway") for r in default] == ["10.77.0.1"]
    assert Path(a1.resolv_conf_path).read_text().count("nameserver 192.0.2.53") == 1
    assert "10.77.0.2\tweb" in Path(a1.hosts_path).read_text()

    spawn(echo_server(None, "10.77.0.1", 7001))  # on the host, bound to the gateway
    assert talk(c1, "10.77.0.1", 7001) == "echo:hi from:10.77.0.2"
    spawn(echo_server(c2, "0.0.0.0", 7002))
    assert talk(c1, a2.ip_address, 7002) == "echo:hi from:10.77.0.2"


def test_published_port_reachable_from_a_second_host_namespace(
    lab: Lab, tmp_path: Path, spawn
) -> None:
    nm = manager(lab, tmp_path)
    c1 = lab.netns("c1")
    peer = wire_second_host(lab)  # another "host", routed via our side

    ports = [
        PortMapping(container_port=80, host_port=8080),
        PortMapping(container_port=53, host_port=5353, protocol="udp", host_ip="198.18.0.1"),
    ]
    container = cid()
    nm.attach(container, "web", c1, NetworkSpec(ports=ports))
    spawn(echo_server(c1, "0.0.0.0", 80))
    spawn(echo_server(c1, "0.0.0.0", 53, "udp"))

    assert talk(peer, "198.18.0.1", 8080) == "echo:hi from:198.18.0.2"
    assert talk(peer, "198.18.0.1", 5353, "udp") == "echo:hi from:198.18.0.2"
    # From the host itself, also through loopback (route_localnet + masquerade).
    assert talk(None, "198.18.0.1", 8080).startswith("echo:hi from:")
    assert talk(None, "127.0.0.1", 8080) == "echo:hi from:10.77.0.1"
    # A neighbour container through the host's published port (hairpin masquerade).
    c2 = lab.netns("c2")
    nm.attach(cid(), "client", c2, NetworkSpec())
    assert talk(c2, "198.18.0.1", 8080) == "echo:hi from:10.77.0.1"

    rules = nft_rules(f"crltest{lab.tag}")
    mine_rules = [r for r in rules if r.get("comment") == f"corral:{container}"]
    assert len(mine_rules) == 4  # 2 ports x (prerouting, output)
    nat = [r for r in rules if r.get("comment") == f"corral-nat:{lab.bridge}"]
    assert any(
        "masquerade" in json.dumps(r["expr"]) and "10.77.0.0" in json.dumps(r["expr"]) for r in nat
    )


def test_none_mode_has_only_loopback_up(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    c1 = lab.netns("c1")
    att = nm.attach(cid(), "lonely", c1, NetworkSpec(mode="none"))
    assert ns_links(c1) == {"lo": "UNKNOWN"}  # lo reports UNKNOWN when up
    with IPRoute(netns=c1) as ns:
        assert ns.get_links(ns.link_lookup(ifname="lo")[0])[0]["flags"] & 1  # IFF_UP
    assert att.ip_address is None and att.veth_host is None
    assert links_named(lab.bridge, "bridge") == []  # none mode does not even create the bridge


def test_host_mode_touches_no_namespace_and_uses_host_dns(lab: Lab, tmp_path: Path) -> None:
    resolv = tmp_path / "host-resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.9\n")
    nm = manager(lab, tmp_path / "state", host_resolv_conf=resolv)
    att = nm.attach(cid(), "hosty", "/nonexistent", NetworkSpec(mode="host"))
    assert att.mode == "host" and att.ip_address is None
    text = Path(att.resolv_conf_path).read_text()
    assert "nameserver 127.0.0.53" in text and "nameserver 192.0.2.9" in text
    assert links_named("crl") == []


def test_detach_leaves_no_veth_lease_rule_or_files(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    c1 = lab.netns("c1")
    container = cid()
    att = nm.attach(container, "web", c1, NetworkSpec(ports=[PortMapping(80, 8081)]))
    assert att.veth_host in links_named("crl")
    assert nm.firewall.tagged() == {container: 2}

    nm.detach(container)
    nm.detach(container)  # idempotent

    assert links_named("crl") == []
    assert ns_links(c1) == {"lo": "UNKNOWN"}
    assert nm.ipam.leases() == {}
    assert not any(
        str(r.get("comment", "")).startswith("corral:") for r in nft_rules(f"crltest{lab.tag}")
    )
    assert not Path(att.resolv_conf_path).exists()


def test_restarted_manager_hands_out_no_duplicate_address(lab: Lab, tmp_path: Path) -> None:
    first = manager(lab, tmp_path)
    a = first.attach(cid(), "a", lab.netns("a"), NetworkSpec())
    # A crash right after the lease was recorded, before any veth existed:
    crashed = first.ipam.allocate(cid(), "b", "crlxxxxxxxxxxxx", ())

    second = manager(lab, tmp_path)  # the agent restarted
    c = second.attach(cid(), "c", lab.netns("c"), NetworkSpec())
    assert len({a.ip_address, crashed.ip_address, c.ip_address}) == 3
    assert second.facts()["leases_in_use"] == 3


def test_cleanup_orphans_removes_vanished_containers_only(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    alive, gone = cid(), cid()
    nm.attach(alive, "alive", lab.netns("a"), NetworkSpec(ports=[PortMapping(80, 8082)]))
    gone_att = nm.attach(gone, "gone", lab.netns("g"), NetworkSpec(ports=[PortMapping(80, 8083)]))
    # The agent restarts and forgets its state file; the veth and rules remain.
    (tmp_path / f"{lab.bridge}.ipam.json").unlink()
    restarted = manager(lab, tmp_path)

    assert restarted.cleanup_orphans({alive}) == [gone]

    assert gone_att.veth_host not in links_named("crl")
    assert len(links_named("crl")) == 1
    assert set(restarted.firewall.tagged()) == {alive}
    assert restarted.cleanup_orphans({alive}) == []


def test_overlapping_subnet_is_refused_naming_the_field(lab: Lab, tmp_path: Path) -> None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.addr("add", index=idx, address="10.66.1.1", prefixlen=16)
    with pytest.raises(NetworkError) as err:
        manager(lab, tmp_path, subnet="10.66.200.0/24")
    assert err.value.field == "subnet" and "10.66" in err.value.message
    assert not (tmp_path / f"{lab.bridge}.ipam.json").exists()
    for bad in ("10.0.0.1/24", "fd00::/64", "10.0.0.0/30", "banana"):
        with pytest.raises(NetworkError) as err:
            manager(lab, tmp_path, subnet=bad)
        assert err.value.field == "subnet"


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        (PortMapping(container_port=80, host_port=70000), "network.ports[0].host_port"),
        (PortMapping(container_port=0, host_port=8080), "network.ports[0].container_port"),
        (PortMapping(container_port=80, host_port=80), "network.ports[0].host_port"),
        (PortMapping(80, 8080, protocol="sctp"), "network.ports[0].protocol"),  # type: ignore[arg-type]
        (PortMapping(80, 8080, host_ip="not-an-ip"), "network.ports[0].host_ip"),
    ],
)
def test_bad_port_is_refused_and_nothing_is_configured(
    lab: Lab, tmp_path: Path, mapping: PortMapping, field: str
) -> None:
    nm = manager(lab, tmp_path)
    c1 = lab.netns("c1")
    with pytest.raises(NetworkError) as err:
        nm.attach(cid(), "web", c1, NetworkSpec(ports=[mapping]))
    assert err.value.field == field
    assert links_named("crl") == [] and nm.ipam.leases() == {}
    assert set(ns_links(c1)) == {"lo"}


def test_privileged_port_allowed_with_permission(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    att = nm.attach(
        cid(), "web", lab.netns("c1"), NetworkSpec(ports=[PortMapping(80, 80)]),
        allow_privileged_ports=True,
    )  # fmt: skip
    assert att.ports[0].host_port == 80


def test_host_port_conflicts_are_refused_at_allocation(lab: Lab, tmp_path: Path, spawn) -> None:
    nm = manager(lab, tmp_path)
    first = cid()
    nm.attach(first, "one", lab.netns("c1"), NetworkSpec(ports=[PortMapping(80, 8090)]))
    c2 = lab.netns("c2")
    with pytest.raises(NetworkError) as err:
        nm.attach(cid(), "two", c2, NetworkSpec(ports=[PortMapping(81, 8090, host_ip="127.0.0.1")]))
    assert err.value.field == "network.ports[0].host_port" and first in err.value.message
    dup = [PortMapping(80, 8091), PortMapping(81, 8091)]
    with pytest.raises(NetworkError) as err:
        nm.validate(NetworkSpec(ports=dup))
    assert err.value.field == "network.ports[1].host_port"
    spawn(echo_server(None, "0.0.0.0", 8092))  # a host process already listens there
    with pytest.raises(NetworkError) as err:
        nm.attach(cid(), "three", c2, NetworkSpec(ports=[PortMapping(80, 8092)]))
    assert err.value.field == "network.ports[0].host_port" and "in use" in err.value.message
    # UDP on the same number is another port.
    nm.validate(NetworkSpec(ports=[PortMapping(80, 8090, protocol="udp")]))
    assert set(nm.ipam.leases()) == {first} and set(ns_links(c2)) == {"lo"}


def test_failed_step_midway_undoes_everything(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    c1 = lab.netns("c1")
    with IPRoute(netns=c1) as ns:  # make the rename to eth0 fail inside the netns
        ns.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0p"})
    with pytest.raises(NetworkError) as err:
        nm.attach(cid(), "web", c1, NetworkSpec(ports=[PortMapping(80, 8085)]))
    assert err.value.field == "step.netns_config"
    assert links_named("crl") == [] and nm.ipam.leases() == {} and nm.firewall.tagged() == {}
    assert set(ns_links(c1)) == {"lo", "eth0", "eth0p"}  # the peer was removed with its host end


def test_iptables_fallback_publishes_and_removes_exactly(lab: Lab, tmp_path: Path, spawn) -> None:
    nm = manager(lab, tmp_path, firewall="iptables", iptables_chain="CRLTEST")
    assert nm.firewall.name == "iptables"
    c1 = lab.netns("c1")
    container = cid()
    nm.attach(container, "web", c1, NetworkSpec(ports=[PortMapping(80, 8086)]))
    spawn(echo_server(c1, "0.0.0.0", 80))
    assert talk(None, "127.0.0.1", 8086) == "echo:hi from:10.77.0.1"
    assert nm.firewall.tagged() == {container: 1}
    nm.detach(container)
    assert nm.firewall.tagged() == {}
    saved = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert f"corral:{container}" not in saved and f"corral-nat:{lab.bridge}" in saved


def test_concurrent_attaches_get_distinct_addresses(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    spaces = [lab.netns(f"c{i}") for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:  # threads inherit this thread's netns
        attachments = list(pool.map(lambda ns: nm.attach(cid(), "web", ns, NetworkSpec()), spaces))
    assert len({a.ip_address for a in attachments}) == 6
    assert len(links_named("crl")) == 6 and len(nm.ipam.leases()) == 6
    nat = [
        r for r in nft_rules(f"crltest{lab.tag}") if r.get("comment") == f"corral-nat:{lab.bridge}"
    ]
    assert len(nat) == 3  # loopback, outbound, hairpin masquerade: once each


def test_facts_report_bridge_subnet_and_leases(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    container = cid()
    nm.attach(container, "web", lab.netns("c1"), NetworkSpec())
    facts = nm.facts()
    assert facts["bridges"] == [{"name": lab.bridge, "present": True, "gateway": "10.77.0.1"}]
    assert facts["subnet"] == "10.77.0.0/24" and facts["leases"] == {container: "10.77.0.2"}
    assert facts["firewall"] == "nftables" and facts["capacity"] == 253


def test_reattach_after_a_crash_mid_attach_reuses_the_address(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    container = cid()
    host_end, peer = links.veth_names(container)
    # The previous agent died after recording the lease and creating the veth pair.
    with IPRoute() as ipr:
        bridge = links.ensure_bridge(ipr, lab.bridge, ipaddress.IPv4Interface("10.77.0.1/24"))
        crashed = nm.ipam.allocate(container, "web", host_end, ())
        links.create_veth(ipr, host_end, peer, bridge, links.ALIAS_PREFIX + container)

    c1 = lab.netns("c1")
    att = nm.attach(container, "web", c1, NetworkSpec())
    assert att.ip_address == crashed.ip_address
    assert links_named("crl") == [host_end] and set(ns_links(c1)) == {"lo", "eth0"}

    # Re-attaching replaces the old veth; when that fails, the address stays reserved.
    c2 = lab.netns("c2")
    with IPRoute(netns=c2) as ns:
        ns.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0p"})
    with pytest.raises(NetworkError):
        nm.attach(container, "web", c2, NetworkSpec())
    assert nm.ipam.get(container) is not None and links_named("crl") == []


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_teardown_removes_bridge_and_our_rules(lab: Lab, tmp_path: Path, backend: str) -> None:
    nm = manager(lab, tmp_path, firewall=backend, iptables_chain="CRLTEST")
    container = cid()
    nm.attach(container, "web", lab.netns("c1"), NetworkSpec(ports=[PortMapping(80, 8087)]))
    nm.detach(container)
    nm.teardown()
    assert links_named(lab.bridge, "bridge") == []
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"crltest{lab.tag}" not in tables
    saved = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert "CRLTEST" not in saved and "corral" not in saved


def test_attach_by_proc_path_and_detach_after_the_container_died(lab: Lab, tmp_path: Path) -> None:
    nm = manager(lab, tmp_path)
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])  # a "container" process
    try:
        path = f"/proc/{proc.pid}/ns/net"
        wait_until(lambda: Path(path).resolve() != Path("/proc/self/ns/net").resolve())
        container = cid()
        att = nm.attach(container, "web", path, NetworkSpec(ports=[PortMapping(80, 8088)]))
        assert set(ns_links(path)) == {"lo", "eth0"} and att.veth_host in links_named("crl")
    finally:
        proc.kill()
        proc.wait()
    # Its netns is gone and took the veth pair with it; detach still clears lease and rules.
    wait_until(lambda: links_named("crl") == [])
    nm.detach(container)
    assert nm.ipam.leases() == {} and nm.firewall.tagged() == {}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
