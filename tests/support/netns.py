"""Test hosts as network namespaces: a host-side bridge with an address, and one namespace per
test host joined to it by a veth pair. Only these addresses and loopback are ever used."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

# A /24 of our own, only ever configured on interfaces these fixtures create.
SUBNET_PREFIX = "10.231"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class Bridge:
    name: str
    address: str  # host side, e.g. 10.231.7.1
    prefix: str  # e.g. 10.231.7


@dataclass
class NetnsHost:
    name: str
    address: str
    bridge: Bridge

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def exec_argv(self, argv: list[str]) -> list[str]:
        # nsenter joins only the network namespace; `ip netns exec` would also remount /sys
        # in a private mount namespace and hide the cgroup hierarchies from the agent.
        return ["nsenter", f"--net={self.path}", "--", *argv]


@contextlib.contextmanager
def bridge() -> Iterator[Bridge]:
    tag = secrets.token_hex(3)
    name = f"crlbr{tag}"
    third = int(tag[:2], 16) % 200 + 20
    prefix = f"{SUBNET_PREFIX}.{third}"
    br = Bridge(name=name, address=f"{prefix}.1", prefix=prefix)
    ip("link", "add", name, "type", "bridge")
    try:
        ip("addr", "add", f"{br.address}/24", "dev", name)
        ip("link", "set", name, "up")
        yield br
    finally:
        ip("link", "del", name, check=False)


@contextlib.contextmanager
def netns_host(br: Bridge, index: int) -> Iterator[NetnsHost]:
    tag = secrets.token_hex(3)
    name = f"crlh{tag}"
    host = NetnsHost(name=name, address=f"{br.prefix}.{10 + index}", bridge=br)
    veth, peer = f"crlv{tag}", f"crlp{tag}"
    ip("netns", "add", name)
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", veth, "master", br.name)
        ip("link", "set", veth, "up")
        ip("link", "set", peer, "netns", name)
        ns = ["-n", name]
        ip(*ns, "link", "set", "lo", "up")
        ip(*ns, "link", "set", peer, "name", "eth0")
        ip(*ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip(*ns, "link", "set", "eth0", "up")
        ip(*ns, "route", "add", "default", "via", br.address)
        yield host
    finally:
        ip("link", "del", veth, check=False)
        # Kill whatever still runs in the namespace before deleting it.
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        ip("netns", "del", name, check=False)
