"""Helpers for network tests (fixtures are in conftest.py). Every test runs its
NetworkManager inside a fresh network namespace standing in for the host ("sim host"), so
bridges, veths, nft tables and sysctls of one test can never touch the real host or another
test. Removing that namespace in teardown removes everything created inside it, even when the
test failed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

NETNS_DIR = Path("/var/run/netns")

ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    kind = socket.SOCK_STREAM if sys.argv[3] == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    print("ready", flush=True)
    while True:
        if kind == socket.SOCK_STREAM:
            c, peer = s.accept()
            data = c.recv(100)
            c.sendall(b"echo:" + data + b" from:" + peer[0].encode())
            c.close()
        else:
            data, peer = s.recvfrom(100)
            s.sendto(b"echo:" + data + b" from:" + peer[0].encode(), peer)
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys
    kind = socket.SOCK_STREAM if sys.argv[3] == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(3)
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"hi")
    print(s.recv(100).decode())
    """
)


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def in_netns(path: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={path}", *argv]


def talk(path: str | None, ip: str, port: int, proto: str = "tcp") -> str:
    """Connect from inside ``path`` (or the current netns) and return the echo reply."""
    argv = [sys.executable, "-c", CLIENT, ip, str(port), proto]
    done = subprocess.run(
        in_netns(path, argv) if path else argv, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class Lab:
    """Names unique to one test and the namespaces it created."""

    tag: str
    host: str
    created: list[str]

    def netns(self, suffix: str) -> str:
        """A fresh container netns; removed in teardown."""
        name = f"crltest-{self.tag}-{suffix}"
        netns.create(name)
        self.created.append(name)
        return netns_path(name)

    @property
    def bridge(self) -> str:
        return f"crlt{self.tag}"


def echo_server(path: str | None, ip: str, port: int, proto: str = "tcp") -> list[str]:
    argv = [sys.executable, "-c", ECHO_SERVER, ip, str(port), proto]
    return in_netns(path, argv) if path else argv


def wire_second_host(lab: Lab) -> str:
    """Another "host" namespace wired to ours by a veth pair and routed via our side
    (198.18.0.2 -> 198.18.0.1); its path."""
    peer = lab.netns("peer")
    with IPRoute() as ipr:
        ipr.link("add", ifname=f"crlq{lab.tag}", kind="veth", peer={"ifname": "crlqpeer"})
        mine = ipr.link_lookup(ifname=f"crlq{lab.tag}")[0]
        ipr.addr("add", index=mine, address="198.18.0.1", prefixlen=24)
        ipr.link("set", index=mine, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="crlqpeer")[0], net_ns_fd=peer)
    with IPRoute(netns=peer) as ns:
        idx = ns.link_lookup(ifname="crlqpeer")[0]
        ns.addr("add", index=idx, address="198.18.0.2", prefixlen=24)
        ns.link("set", index=idx, state="up")
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        ns.route("add", dst="0.0.0.0/0", gateway="198.18.0.1")
    return peer
