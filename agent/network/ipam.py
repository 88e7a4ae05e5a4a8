"""Per-host IP address management, persisted so that an agent restart hands out no address
twice.

The state lives in one JSON file per bridge. Every change runs under an exclusive ``fcntl``
lock on a sibling lock file and is written with write-to-temp + fsync + rename, so a crash
leaves either the old or the new state, never half of one. A lease is recorded *before* the
caller configures any interface: after a crash mid-attach the address stays reserved until
``release`` (or orphan clean-up) frees it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.network.errors import NetworkError

STATE_VERSION = 1


@dataclass(frozen=True)
class PublishedPort:
    """A host port reserved for one container (the validated, normalised PortMapping)."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str

    def overlaps(self, other: PublishedPort) -> bool:
        """Two reservations clash on the same protocol and port unless both name distinct IPs."""
        if self.protocol != other.protocol or self.host_port != other.host_port:
            return False
        wildcard = ("0.0.0.0", "::")  # noqa: S104 - compared, not bound
        return (
            self.host_ip == other.host_ip or self.host_ip in wildcard or other.host_ip in wildcard
        )


@dataclass(frozen=True)
class Lease:
    """One container's address and what was configured for it (for exact clean-up)."""

    container_id: str
    ip_address: str
    mac: str
    veth_host: str
    name: str
    ports: tuple[PublishedPort, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "ip_address": self.ip_address,
            "mac": self.mac,
            "veth_host": self.veth_host,
            "name": self.name,
            "ports": [p.__dict__ for p in self.ports],
        }

    @classmethod
    def from_json(cls, container_id: str, data: dict[str, Any]) -> Lease:
        return cls(
            container_id=container_id,
            ip_address=str(data["ip_address"]),
            mac=str(data["mac"]),
            veth_host=str(data["veth_host"]),
            name=str(data.get("name", "")),
            ports=tuple(PublishedPort(**p) for p in data.get("ports", [])),
        )


def mac_for(ip: ipaddress.IPv4Address) -> str:
    """A locally administered MAC derived from the IPv4 address, stable across restarts."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


class Ipam:
    """Leases of one subnet, stored in ``<state_dir>/<bridge>.ipam.json``."""

    def __init__(self, state_dir: Path, bridge: str, subnet: ipaddress.IPv4Network) -> None:
        self.state_dir = state_dir
        self.subnet = subnet
        self.gateway = next(subnet.hosts())
        self.path = state_dir / f"{bridge}.ipam.json"
        self._lock_path = state_dir / f"{bridge}.ipam.lock"
        state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked() as state:
            if state["leases"] and state["subnet"] != str(subnet):
                raise NetworkError(
                    "subnet",
                    f"{subnet} differs from {state['subnet']} in {self.path}, which still "
                    f"has {len(state['leases'])} lease(s)",
                )
            state["subnet"] = str(subnet)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the lock, yield the state, write it back atomically if the block succeeds."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._read()
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                self._write(state)
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                data: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            return {"version": STATE_VERSION, "subnet": str(self.subnet), "cursor": 0, "leases": {}}
        except (OSError, ValueError) as exc:
            raise NetworkError("step.ipam", f"cannot read {self.path}: {exc}") from exc
        data.setdefault("cursor", 0)
        data.setdefault("leases", {})
        return data

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        dir_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)

    def allocate(
        self, container_id: str, name: str, veth_host: str, ports: tuple[PublishedPort, ...]
    ) -> Lease:
        """Reserve an address and the host ports; an existing lease of the container is reused.

        Ports are checked against every other lease under the same lock, so two concurrent
        attaches cannot both get one host port.
        """
        with self._locked() as state:
            leases: dict[str, Any] = state["leases"]
            for other_id, data in leases.items():
                if other_id == container_id:
                    continue
                for i, mine in enumerate(ports):
                    for theirs in Lease.from_json(other_id, data).ports:
                        if mine.overlaps(theirs):
                            raise NetworkError(
                                f"network.ports[{i}].host_port",
                                f"{mine.host_ip}:{mine.host_port}/{mine.protocol} is already "
                                f"published by container {other_id}",
                            )
            if container_id in leases:
                ip = ipaddress.IPv4Address(leases[container_id]["ip_address"])
            else:
                ip = self._next_free(state)
            lease = Lease(container_id, str(ip), mac_for(ip), veth_host, name, ports)
            leases[container_id] = lease.to_json()
            return lease

    def _next_free(self, state: dict[str, Any]) -> ipaddress.IPv4Address:
        """Round-robin from the cursor so a just-freed address is not reused at once (stale
        ARP entries and conntrack flows of the old owner would otherwise hit the new one)."""
        used = {v["ip_address"] for v in state["leases"].values()}
        first = int(self.gateway) + 1
        last = int(self.subnet.broadcast_address) - 1
        size = last - first + 1
        if size <= 0:
            raise NetworkError("subnet", f"{self.subnet} has no room for containers")
        start = int(state["cursor"])
        for step in range(size):
            candidate = ipaddress.IPv4Address(first + (start + step) % size)
            if str(candidate) not in used:
                state["cursor"] = (start + step + 1) % size
                return candidate
        raise NetworkError("step.ipam", f"no free address left in {self.subnet}")

    def release(self, container_id: str) -> Lease | None:
        """Free the lease; returns what it held (None if there was none)."""
        with self._locked() as state:
            data = state["leases"].pop(container_id, None)
        return None if data is None else Lease.from_json(container_id, data)

    def get(self, container_id: str) -> Lease | None:
        with self._locked() as state:
            data = state["leases"].get(container_id)
        return None if data is None else Lease.from_json(container_id, data)

    def leases(self) -> dict[str, Lease]:
        with self._locked() as state:
            return {cid: Lease.from_json(cid, d) for cid, d in state["leases"].items()}
