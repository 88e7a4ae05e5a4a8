"""Container networking on one host: modes ``none``, ``host`` and ``bridge``.

Bridge mode, in order (each step undone by an ``ExitStack`` if a later one fails, so a failed
attach leaves nothing behind): validate -> bridge + NAT base rules -> lease recorded in the
IPAM state -> veth pair, host end on the bridge -> peer moved into the container netns,
renamed ``eth0``, addressed, default route -> published ports (DNAT) -> resolv.conf/hosts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from agent.network import dns, links, validation
from agent.network.errors import NetworkError
from agent.network.firewall import choose
from agent.network.ipam import Ipam, Lease, PublishedPort
from agent.protocol.containers import NetworkSpec

logger = logging.getLogger(__name__)

DEFAULT_SUBNET = "10.88.0.0/16"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


@dataclass(frozen=True)
class Attachment:
    """What a container got; the runtime bind-mounts the two files into the rootfs."""

    container_id: str
    mode: str
    ip_address: str | None
    gateway: str | None
    prefixlen: int | None
    mac: str | None
    veth_host: str | None
    ports: tuple[PublishedPort, ...]
    resolv_conf_path: str
    hosts_path: str


class NetworkManager:
    """Owns one bridge, its IPAM state file and the container rules of one firewall table."""

    def __init__(
        self,
        state_dir: Path,
        *,
        bridge: str = "corral0",
        subnet: str = DEFAULT_SUBNET,
        nat: bool = True,
        firewall: str = "auto",
        nft_table: str = "corral",
        iptables_chain: str = "CORRAL",
        host_resolv_conf: Path = dns.HOST_RESOLV_CONF,
    ) -> None:
        if not _BRIDGE_RE.match(bridge):
            raise NetworkError("bridge", "1-15 letters, digits, '_', '.', '-'")
        self.bridge = bridge
        self.subnet = validation.parse_subnet(subnet)
        self.gateway = next(self.subnet.hosts())
        self.nat = nat
        self.state_dir = Path(state_dir)
        self.host_resolv_conf = host_resolv_conf
        self._check_overlap()
        self.firewall = choose(firewall, table=nft_table, chain=iptables_chain)
        self.ipam = Ipam(self.state_dir, bridge, self.subnet)
        self._host_ready = False
        self._host_lock = threading.Lock()

    # -- validation ---------------------------------------------------------------------

    def _check_overlap(self) -> None:
        """Refuse a subnet that collides with an address or route of this host (except our
        own bridge, which holds the gateway address after a restart)."""
        with IPRoute() as ipr:
            own = links.link_index(ipr, self.bridge)
            for net, what in links.host_networks(ipr, own):
                if net.overlaps(self.subnet):
                    raise NetworkError("subnet", f"{self.subnet} overlaps the host's {what}")

    def validate(
        self,
        spec: NetworkSpec,
        *,
        allow_privileged_ports: bool = False,
        container_id: str | None = None,
    ) -> None:
        """Check a spec without touching the host; raises NetworkError naming the field."""
        self._published(spec, allow_privileged_ports, container_id)

    def _published(
        self, spec: NetworkSpec, allow_privileged: bool, container_id: str | None
    ) -> tuple[PublishedPort, ...]:
        others = [lease for cid, lease in self.ipam.leases().items() if cid != container_id]
        return validation.published_ports(spec, allow_privileged, others)

    # -- attach / detach ----------------------------------------------------------------

    def attach(
        self,
        container_id: str,
        name: str,
        netns_path: str,
        spec: NetworkSpec,
        *,
        allow_privileged_ports: bool = False,
    ) -> Attachment:
        """Connect a container's network namespace as ``spec`` says; see the module doc."""
        if not _ID_RE.match(container_id):
            raise NetworkError("container_id", "letters, digits, '_', '.', '-'; up to 128")
        if not _ID_RE.match(name):
            raise NetworkError("name", "letters, digits, '_', '.', '-'; up to 128")
        ports = self._published(spec, allow_privileged_ports, container_id)
        if spec.mode != "host" and not Path(netns_path).exists():
            raise NetworkError("netns_path", f"{netns_path} does not exist")
        if spec.mode == "host":
            servers = list(spec.dns) or _all_nameservers(self.host_resolv_conf)
            return self._files(container_id, name, spec.mode, servers, None)
        if spec.mode == "none":
            links.loopback_only(netns_path)
            return self._files(container_id, name, spec.mode, [], None)
        return self._attach_bridge(container_id, name, netns_path, spec, ports)

    def _attach_bridge(
        self,
        container_id: str,
        name: str,
        netns_path: str,
        spec: NetworkSpec,
        ports: tuple[PublishedPort, ...],
    ) -> Attachment:
        host_end, peer = links.veth_names(container_id)
        with IPRoute() as ipr, contextlib.ExitStack() as undo:
            bridge_index = self._ensure_host(ipr)
            # Recorded before any interface exists: a crash from here on keeps the address
            # reserved until detach/cleanup_orphans frees it.
            existed = self.ipam.get(container_id) is not None
            lease = self.ipam.allocate(container_id, name, host_end, ports)
            if not existed:  # a re-attach keeps its address even if it fails
                undo.callback(_quietly, self.ipam.release, container_id)
            links.create_veth(ipr, host_end, peer, bridge_index, links.ALIAS_PREFIX + container_id)
            undo.callback(_quietly, links.delete_link, ipr, host_end)
            links.move_into(ipr, peer, netns_path)
            iface = ipaddress.IPv4Interface(f"{lease.ip_address}/{self.subnet.prefixlen}")
            links.configure_inside(netns_path, peer, iface, lease.mac, self.gateway)
            if existed:  # rules of an interrupted attempt; a new lease cannot have any
                self.firewall.unpublish(container_id)
            self.firewall.publish(container_id, lease.ip_address, ports)
            undo.callback(_quietly, self.firewall.unpublish, container_id)
            servers = list(spec.dns) or dns.host_nameservers(self.host_resolv_conf)
            attachment = self._files(container_id, name, "bridge", servers, lease)
            undo.pop_all()
        logger.info(
            "attached %s (%s) at %s on %s", container_id, name, lease.ip_address, self.bridge
        )
        return attachment

    def _ensure_host(self, ipr: IPRoute) -> int:
        """Bridge with the gateway address, forwarding, NAT base rules (once per process)."""
        gateway = ipaddress.IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}")
        index = links.ensure_bridge(ipr, self.bridge, gateway)
        with self._host_lock:  # concurrent first attaches must not add the base rules twice
            if self._host_ready:
                return index
            links.enable_forwarding()
            with (
                links.step("route_localnet"),
                open(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet", "w") as f,
            ):
                f.write("1")  # lets 127.0.0.1:<published> be DNATed onto the bridge
            self.firewall.setup(self.subnet, self.bridge, self.nat)
            self._host_ready = True
            return index

    def _files(
        self,
        container_id: str,
        name: str,
        mode: str,
        servers: list[str],
        lease: Lease | None,
    ) -> Attachment:
        directory = self._files_dir(container_id)
        resolv, hosts = directory / "resolv.conf", directory / "hosts"
        with links.step("dns_files"):
            dns.write_atomically(resolv, dns.resolv_conf_text(servers))
            dns.write_atomically(hosts, dns.hosts_text(name, lease.ip_address if lease else None))
        return Attachment(
            container_id=container_id,
            mode=mode,
            ip_address=lease.ip_address if lease else None,
            gateway=str(self.gateway) if lease else None,
            prefixlen=self.subnet.prefixlen if lease else None,
            mac=lease.mac if lease else None,
            veth_host=lease.veth_host if lease else None,
            ports=lease.ports if lease else (),
            resolv_conf_path=str(resolv),
            hosts_path=str(hosts),
        )

    def _files_dir(self, container_id: str) -> Path:
        return self.state_dir / "containers" / container_id

    def detach(self, container_id: str) -> None:
        """Remove rules, veth, files, then the lease (last, so a crash midway leaves it for
        cleanup_orphans). Idempotent: detaching twice or never attached is fine."""
        lease = self.ipam.get(container_id)
        host_end = lease.veth_host if lease else links.veth_names(container_id)[0]
        if lease is None or lease.ports:  # a lease without ports never had rules
            self.firewall.unpublish(container_id)
        with IPRoute() as ipr:
            links.delete_link(ipr, host_end)
        shutil.rmtree(self._files_dir(container_id), ignore_errors=True)
        self.ipam.release(container_id)
        logger.info("detached %s from %s", container_id, self.bridge)

    def cleanup_orphans(self, live_container_ids: set[str]) -> list[str]:
        """At agent start-up: detach every container we hold anything for (lease, tagged veth
        on our bridge, tagged rule, files) that is not in ``live_container_ids``. The set must
        name all containers of the host: rules are found by tag in a table that may be shared.
        Returns the ids cleaned, sorted."""
        known = set(self.ipam.leases()) | set(self.firewall.tagged())
        with IPRoute() as ipr:
            index = links.link_index(ipr, self.bridge)
            if index is not None:
                known |= set(links.tagged_veths(ipr, index))
        files = self.state_dir / "containers"
        if files.is_dir():
            known |= {p.name for p in files.iterdir()}
        orphans = sorted(known - set(live_container_ids))
        for cid in orphans:
            self.detach(cid)
        if orphans:
            logger.info("removed network leftovers of %d vanished container(s): %s",
                        len(orphans), ", ".join(orphans))  # fmt: skip
        return orphans

    def teardown(self) -> None:
        """Remove the bridge and its NAT base rules, and our table/chain once nothing else is
        in it (host decommissioning, tests)."""
        self.firewall.teardown(self.bridge)
        with IPRoute() as ipr:
            links.delete_link(ipr, self.bridge)
        self._host_ready = False

    def facts(self) -> dict[str, Any]:
        """Inventory: the bridge, subnet, backend and the leases in use."""
        with IPRoute() as ipr:
            present = links.link_index(ipr, self.bridge) is not None
        leases = self.ipam.leases()
        capacity = self.subnet.num_addresses - 3  # network, gateway, broadcast
        return {
            "bridges": [{"name": self.bridge, "present": present, "gateway": str(self.gateway)}],
            "subnet": str(self.subnet),
            "nat": self.nat,
            "firewall": self.firewall.name,
            "leases_in_use": len(leases),
            "capacity": capacity,
            "leases": {cid: lease.ip_address for cid, lease in sorted(leases.items())},
        }


def _quietly(undo: Callable[..., object], *args: object) -> None:
    """Run one undo step; a failure is logged, never allowed to hide the original error."""
    try:
        undo(*args)
    except Exception:
        logger.exception("undo step %s%r failed", getattr(undo, "__name__", undo), args)


def _all_nameservers(resolv_conf: Path) -> list[str]:
    """Host mode shares the host's loopback, so its stub resolver is reachable too."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return []
    return [w[1] for w in (line.split() for line in lines) if len(w) >= 2 and w[0] == "nameserver"]
