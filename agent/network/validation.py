"""Checks of a network spec and of the manager's settings, before anything on the host is
touched. Each raises :class:`NetworkError` naming the field."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from agent.network import dns
from agent.network.errors import NetworkError
from agent.network.ipam import Lease, PublishedPort
from agent.protocol.containers import NetworkSpec

MODES = ("none", "host", "bridge")
PROTOCOLS = ("tcp", "udp")


def published_ports(
    spec: NetworkSpec, allow_privileged: bool, other_leases: Sequence[Lease]
) -> tuple[PublishedPort, ...]:
    """Validate the spec; return its ports normalised. ``other_leases`` hold the host ports
    other containers already publish; a port some host process listens on is refused too."""
    if spec.mode not in MODES:
        raise NetworkError("network.mode", f"must be one of {', '.join(MODES)}")
    dns.check_servers(spec.dns)
    if spec.ports and spec.mode != "bridge":
        raise NetworkError("network.ports", f"mode {spec.mode} cannot publish ports")
    ports: list[PublishedPort] = []
    for i, mapping in enumerate(spec.ports):
        port = check_port(f"network.ports[{i}]", mapping, allow_privileged)
        for j, earlier in enumerate(ports):
            if port.overlaps(earlier):
                raise NetworkError(
                    f"network.ports[{i}].host_port", f"same host port as network.ports[{j}]"
                )
        ports.append(port)
    for lease in other_leases:
        refuse_conflicts(ports, lease)
    for i, port in enumerate(ports):
        refuse_bound(f"network.ports[{i}].host_port", port)
    return tuple(ports)


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise NetworkError("subnet", str(exc)) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise NetworkError("subnet", "only IPv4 subnets are supported")
    if net.prefixlen > 29:
        raise NetworkError("subnet", "must be /29 or larger (gateway + containers)")
    return net


def check_port(field: str, mapping: Any, allow_privileged: bool) -> PublishedPort:
    protocol = getattr(mapping, "protocol", None)
    if protocol not in PROTOCOLS:
        raise NetworkError(f"{field}.protocol", f"{protocol!r} is not one of tcp, udp")
    for attr in ("container_port", "host_port"):
        value = getattr(mapping, attr, None)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise NetworkError(f"{field}.{attr}", f"{value!r} is not between 1 and 65535")
    if mapping.host_port < 1024 and not allow_privileged:
        raise NetworkError(
            f"{field}.host_port", f"{mapping.host_port} is privileged (<1024) and not permitted"
        )
    try:
        host_ip = ipaddress.IPv4Address(mapping.host_ip)
    except ValueError:
        raise NetworkError(
            f"{field}.host_ip", f"{mapping.host_ip!r} is not an IPv4 address"
        ) from None
    return PublishedPort(str(host_ip), mapping.host_port, mapping.container_port, protocol)


def refuse_conflicts(ports: Sequence[PublishedPort], lease: Lease) -> None:
    for i, port in enumerate(ports):
        for theirs in lease.ports:
            if port.overlaps(theirs):
                raise NetworkError(
                    f"network.ports[{i}].host_port",
                    f"{port.host_ip}:{port.host_port}/{port.protocol} is already published by "
                    f"container {lease.container_id}",
                )


def refuse_bound(field: str, port: PublishedPort) -> None:
    """A host process already listening there would be shadowed by our DNAT: refuse."""
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((port.host_ip, port.host_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NetworkError(
                    field, f"{port.host_ip}:{port.host_port}/{port.protocol} is in use on the host"
                ) from None
            if exc.errno != errno.EADDRNOTAVAIL:
                raise NetworkError(field, f"cannot check {port.host_ip}: {exc}") from None
            ip_field = field.removesuffix("host_port") + "host_ip"
            raise NetworkError(ip_field, f"{port.host_ip} is not an address of this host") from None
