"""The ``resolv.conf`` and ``/etc/hosts`` a container gets; the runtime bind-mounts them."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from agent.network.errors import NetworkError

HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def check_servers(servers: Sequence[str], field: str = "network.dns") -> None:
    """Each DNS server must be a literal IP address (a name could not be resolved anyway)."""
    for i, server in enumerate(servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise NetworkError(f"{field}[{i}]", f"{server!r} is not an IP address") from None


def host_nameservers(resolv_conf: Path = HOST_RESOLV_CONF) -> list[str]:
    """The host's nameservers that a container in its own netns can reach: loopback ones
    (a local stub resolver) are dropped because the container's loopback is its own."""
    try:
        text = resolv_conf.read_text()
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(words[1].split("%")[0])
            except ValueError:
                continue
            if not addr.is_loopback:
                servers.append(words[1])
    return servers


def resolv_conf_text(servers: Sequence[str]) -> str:
    lines = ["# written by the corral agent"]
    lines += [f"nameserver {s}" for s in servers]
    if not servers:
        lines.append("# no nameserver: none given and the host has no non-loopback one")
    return "\n".join(lines) + "\n"


def hosts_text(name: str, ip_address: str | None) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{ip_address or '127.0.1.1'}\t{name}",
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)  # no fsync: attach rewrites these files; only the IPAM state must last
    tmp.chmod(0o644)
    tmp.replace(path)
