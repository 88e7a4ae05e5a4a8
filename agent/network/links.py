"""Netlink steps for bridge mode, all through pyroute2 (never by parsing ``ip`` output).

Each function does one step and raises :class:`NetworkError` naming it, keeping the errno
text of the kernel's answer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.network.errors import NetworkError
from agent.runtime.linux import CLONE_NEWNET, LINUX

ALIAS_PREFIX = "corral:"
T = TypeVar("T")
_MAIN_TABLE = 254


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Turn netlink/OS failures inside the block into a NetworkError naming the step."""
    try:
        yield
    except NetworkError:
        raise
    except (NetlinkError, OSError) as exc:
        raise NetworkError(f"step.{name}", str(exc)) from exc


@contextlib.contextmanager
def _exists_ok() -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def veth_names(container_id: str) -> tuple[str, str]:
    """Host-side and temporary peer names (IFNAMSIZ allows 15 characters)."""
    digest = hashlib.sha256(container_id.encode()).hexdigest()[:12]
    return f"crl{digest}", f"crp{digest}"


def link_index(ipr: IPRoute, name: str) -> int | None:
    """Index of the link ``name``, asked for directly (``link_lookup`` dumps every link)."""
    try:
        found = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return int(found[0]["index"]) if found else None


def ensure_bridge(ipr: IPRoute, name: str, gateway: ipaddress.IPv4Interface) -> int:
    """Create the bridge if missing, give it the gateway address, bring it up."""
    with step("bridge"):
        index = link_index(ipr, name)
        if index is None:
            with _exists_ok():  # a concurrent attach may have created it meanwhile
                ipr.link("add", ifname=name, kind="bridge")
            index = link_index(ipr, name)
            if index is None:
                raise NetworkError("step.bridge", f"bridge {name} vanished after creation")
        have = {(a.get("address"), a.get("prefixlen")) for a in ipr.get_addr(index=index, family=2)}
        if (str(gateway.ip), gateway.network.prefixlen) not in have:
            with _exists_ok():
                ipr.addr(
                    "add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen
                )
        ipr.link("set", index=index, state="up")
        return index


def host_networks(
    ipr: IPRoute, skip_ifindex: int | None
) -> list[tuple[ipaddress.IPv4Network, str]]:
    """IPv4 networks already in use on this host: addresses and main-table routes (not the
    default route, and nothing on ``skip_ifindex``, our own bridge)."""
    found: list[tuple[ipaddress.IPv4Network, str]] = []
    for addr in ipr.get_addr(family=2):
        if addr["index"] == skip_ifindex:
            continue
        iface = ipaddress.IPv4Interface(f"{addr.get('address')}/{addr['prefixlen']}")
        found.append((iface.network, f"address {iface} on {addr.get('label')}"))
    for route in ipr.get_routes(family=2, table=_MAIN_TABLE):
        if route["dst_len"] == 0 or route.get("oif") == skip_ifindex:
            continue
        net = ipaddress.IPv4Network(f"{route.get('dst')}/{route['dst_len']}", strict=False)
        found.append((net, f"route {net}"))
    return found


def create_veth(ipr: IPRoute, host: str, peer: str, bridge_index: int, alias: str) -> None:
    """A veth pair with the host end enslaved to the bridge and tagged with ``alias`` so
    orphan clean-up can find it even without state."""
    with step("veth"):
        old = link_index(ipr, host)
        if old is not None:  # a previous, interrupted attach of the same container
            ipr.link("del", index=old)
        ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer})
        index = link_index(ipr, host)
        if index is None:
            raise NetworkError("step.veth", f"veth {host} vanished after creation")
        ipr.link("set", index=index, master=bridge_index, ifalias=alias, state="up")


def move_into(ipr: IPRoute, peer: str, netns_path: str) -> None:
    """Move the peer end into the container's network namespace."""
    with step("netns_move"):
        index = link_index(ipr, peer)
        if index is None:
            raise NetworkError("step.netns_move", f"peer {peer} not found")
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("set", index=index, net_ns_fd=fd)
        finally:
            os.close(fd)


def in_netns(netns_path: str, work: Callable[[IPRoute], T]) -> T:
    """Run ``work`` with a netlink socket inside another network namespace.

    A short-lived thread joins the namespace (``setns`` affects only the calling thread) and
    does all the netlink work there: no fork of the (large) agent, unlike pyroute2's own
    ``IPRoute(netns=...)``, which spawns a helper process for every socket. pyroute2 binds a
    socket where it is first used, so the socket never leaves that thread.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                LINUX.setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            with IPRoute() as ns:
                box["result"] = work(ns)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name="netns-config", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["result"])


def configure_inside(
    netns_path: str,
    peer: str,
    iface: ipaddress.IPv4Interface,
    mac: str,
    gateway: ipaddress.IPv4Address | None,
) -> None:
    """Inside the container netns: ``lo`` up; peer renamed ``eth0`` with MAC, address, up,
    default route via the gateway."""

    def work(ns: IPRoute) -> None:
        _lo_up(ns)
        index = link_index(ns, peer)
        if index is None:
            raise NetworkError("step.netns_config", f"{peer} is not in {netns_path}")
        if link_index(ns, "eth0") is not None:
            raise NetworkError("step.netns_config", f"{netns_path} already has an eth0")
        ns.link("set", index=index, ifname="eth0", address=mac)
        ns.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ns.link("set", index=index, state="up")
        if gateway is not None:
            ns.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=index)

    with step("netns_config"):
        in_netns(netns_path, work)


def loopback_only(netns_path: str) -> None:
    """Network mode ``none``: the namespace keeps only ``lo``, which is brought up."""
    with step("netns_config"):
        in_netns(netns_path, _lo_up)


def _lo_up(ns: IPRoute) -> None:
    lo = link_index(ns, "lo")
    if lo is None:
        raise NetworkError("step.netns_config", "namespace has no lo")
    ns.link("set", index=lo, state="up")


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete a link if it exists (deleting one veth end removes both). True if deleted."""
    with step("veth_delete"):
        index = link_index(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:  # gone meanwhile (its netns died)
                return False
            raise
        return True


def tagged_veths(ipr: IPRoute, bridge_index: int | None) -> dict[str, str]:
    """Container id -> host veth name, for veths carrying our alias on the given bridge."""
    found: dict[str, str] = {}
    for link in ipr.get_links():
        alias: Any = link.get("ifalias")
        if not isinstance(alias, str) or not alias.startswith(ALIAS_PREFIX):
            continue
        if bridge_index is not None and link.get("master") != bridge_index:
            continue
        found[alias[len(ALIAS_PREFIX) :]] = str(link.get("ifname"))
    return found


def enable_forwarding() -> None:
    """Routed traffic (published ports, NAT) needs IPv4 forwarding in this namespace."""
    with step("forwarding"), open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
