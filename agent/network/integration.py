"""Networking and socket activation wired into the agent's containers.

Every container not in ``host`` mode runs in a pinned network namespace
(:mod:`agent.network.netns`) that the container service asks for with
:meth:`ContainerNetworking.netns_for` before each runtime create, so a process its shim starts
again (restart policy) finds the same interfaces, address and routes. The container service
calls :meth:`ContainerNetworking.before_start` between create and start, when the container's
namespaces exist and its user process has not run: bridge
containers are attached (veth, address, published ports) and get ``/etc/resolv.conf`` and
``/etc/hosts``; ``none`` containers get ``lo`` up; ``host`` containers share the agent's
namespace and need nothing. Socket-activated containers are created holding the listening
sockets (fds 3..) and started by an :class:`Activator` on the first connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.network import links
from agent.network.activation import Activator
from agent.network.errors import NetworkError
from agent.network.manager import DEFAULT_SUBNET, Attachment, NetworkManager
from agent.network.netns import NetnsPins, in_own_thread
from agent.protocol.containers import ContainerSpec, ContainerStatus
from agent.runtime.linux import CLONE_NEWNET, LINUX

if TYPE_CHECKING:
    from agent.containers.service import ContainerService

logger = logging.getLogger(__name__)

WAITING_DETAIL = "waiting for connection"
# Inside a new pid namespace the container's process is pid 1: that is the LISTEN_PID its
# sd_listen_fds() compares with getpid().
CONTAINER_LISTEN_PID = "1"
_GATE_TIMEOUT = 60.0
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


@dataclass(frozen=True)
class NetworkSettings:
    """This host's bridge: name, subnet, NAT for outgoing traffic, firewall backend."""

    bridge: str = "corral0"
    subnet: str = DEFAULT_SUBNET
    nat: bool = True
    firewall: str = "auto"


class ContainerNetworking:
    """One per agent: the bridge (created on first use), and the armed socket activators."""

    def __init__(self, state_dir: Path, settings: NetworkSettings | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.settings = settings or NetworkSettings()
        self._manager: NetworkManager | None = None
        self._lock = threading.Lock()
        self._activators: dict[str, Activator] = {}
        self.pins = NetnsPins(self.state_dir / "netns")

    @property
    def manager(self) -> NetworkManager:
        """Built on first use: it checks the subnet against the host's and picks a firewall."""
        with self._lock:
            if self._manager is None:
                s = self.settings
                self._manager = NetworkManager(
                    self.state_dir, bridge=s.bridge, subnet=s.subnet, nat=s.nat, firewall=s.firewall
                )
            return self._manager

    # -- before create, between create and start -----------------------------------------

    def netns_for(self, spec: ContainerSpec) -> str | None:
        """The network namespace every process of the container joins, pinned (made now if
        missing); None for a new one per process: ``host`` mode, or a container with its own
        user namespace (a namespace we pin belongs to the host's user namespace, and the
        container could neither configure it nor mount its /sys)."""
        if spec.network.mode == "host" or spec.uid_mappings or spec.gid_mappings:
            return None
        return str(self.pins.ensure(spec.id))

    def before_start(self, spec: ContainerSpec, pid: int) -> None:
        """Connect the created container (host pid ``pid``) as its spec says. Its namespace
        is the pinned one where it has one (a container created before pins existed has its
        own): it is reached through the process either way. Attaching again (a start after a
        stop) replaces the veth: its host end is deleted first, which takes the old ``eth0``
        out of the pinned namespace with it."""
        mode = spec.network.mode
        if mode == "host":
            return
        netns = f"/proc/{pid}/ns/net"
        if mode == "none":
            loopback_up(netns)
            return
        attachment = self.manager.attach(spec.id, spec.name, netns, spec.network)
        write_container_files(pid, attachment)

    # -- socket activation ----------------------------------------------------------------

    def create_activated(
        self,
        service: ContainerService,
        spec: ContainerSpec,
        layers: list[Path] | None,
    ) -> ContainerStatus:
        """Bind the spec's sockets, create the container holding them (not started) and arm
        the activator: the first connection starts it. Idempotent for an armed id."""
        if spec.id in self._activators:
            return self.decorate(service.status(spec.id))
        spec = with_listen_env(spec)
        gate = threading.Event()  # a connection during create waits for the container

        def start(fds: list[int]) -> int:
            if not gate.wait(_GATE_TIMEOUT):
                raise NetworkError("step.activation", "create did not finish")
            status = service.start(spec.id, preserve_fds=tuple(fds))
            if status.pid is None or status.state != "running":
                raise NetworkError("step.activation", f"{spec.id} is {status.state} after start")
            return status.pid

        def stop() -> None:
            service.stop(spec.id)

        activator = Activator(spec.sockets, start, stop, spec.idle_stop_seconds)
        _arm(activator)
        for fd in activator.fds:
            # O_NONBLOCK belongs to the open file, which the container shares: hand it over
            # blocking, as systemd does (NonBlocking=no). The activator only polls them.
            os.set_blocking(fd, True)
        try:
            if service.exists(spec.id):  # re-armed after a stop: same bundle, new sockets
                status = service.prepare(spec.id, preserve_fds=tuple(activator.fds))
            else:
                status = service.create(spec, layers, preserve_fds=tuple(activator.fds))
        except BaseException:
            activator.close()
            raise
        finally:
            gate.set()
        self._activators[spec.id] = activator
        logger.info("container %s armed on %s", spec.id, ",".join(activator.names))
        return self.decorate(status)

    def rearm_waiting(
        self, service: ContainerService, statuses: list[ContainerStatus]
    ) -> list[str]:
        """At agent start-up: arm again the socket-activated containers that were waiting
        (their created process, holding the old sockets, is replaced). One that is running
        keeps serving on the sockets its shim holds, without idle stop until it is started
        again. Returns the ids armed; a failure is logged, never fatal."""
        armed = []
        for status in statuses:
            try:
                if status.state == "running" or not service.spec(status.id).sockets:
                    continue
                self.rearm(service, status.id)
                armed.append(status.id)
            except Exception:
                logger.exception("could not arm socket-activated container %s", status.id)
        return armed

    def is_activated(self, container_id: str) -> bool:
        return container_id in self._activators

    def disarm(self, container_id: str) -> bool:
        """Stop watching (and stop the container if the activator runs it). True if armed."""
        activator = self._activators.pop(container_id, None)
        if activator is None:
            return False
        activator.close()
        return True

    def rearm(self, service: ContainerService, container_id: str) -> ContainerStatus:
        """``start`` of a socket-activated container: arm it again (fresh sockets, the
        container re-created holding them)."""
        if container_id in self._activators:
            return self.decorate(service.status(container_id))
        service.stop(container_id, 0)  # a created one still holds the old sockets
        return self.create_activated(service, service.spec(container_id), None)

    # -- reads and clean-up ---------------------------------------------------------------

    def decorate(self, status: ContainerStatus) -> ContainerStatus:
        """The status with the container's address, and "created / waiting for connection"
        for an armed container that is not running (so nobody restarts it without its
        sockets)."""
        changes: dict[str, Any] = {}
        lease = self._lease(status.id)
        if lease is not None and status.state in ("created", "running"):
            changes["ip_address"] = lease
        activator = self._activators.get(status.id)
        if activator is not None and status.state != "running":
            changes.update(state="created", detail=WAITING_DETAIL, pid=None, exit_code=None)
            changes["finished_at"] = None
        return dataclasses.replace(status, **changes) if changes else status

    def _lease(self, container_id: str) -> str | None:
        if (
            self._manager is None
            and not (self.state_dir / f"{self.settings.bridge}.ipam.json").exists()
        ):
            return None
        try:
            lease = self.manager.ipam.get(container_id)
        except (NetworkError, OSError):
            logger.debug("no lease readable for %s", container_id, exc_info=True)
            return None
        return lease.ip_address if lease is not None else None

    def removed(self, container_id: str) -> None:
        """After the container is deleted: its veth, lease, port rules, files and pinned
        namespace go."""
        self.disarm(container_id)
        if self._manager is None and not self.state_dir.exists():
            return
        self.pins.remove(container_id)
        self.manager.detach(container_id)

    def startup(self, live_ids: set[str]) -> list[str]:
        """At agent start-up: free what vanished containers held (veths, leases, rules, files,
        pinned namespaces). Returns the ids cleaned; never fails the agent."""
        if not self.state_dir.exists():
            return []
        cleaned: set[str] = set()
        try:
            cleaned.update(self.manager.cleanup_orphans(live_ids))
        except Exception:
            logger.exception("network clean-up at start-up failed")
        try:
            cleaned.update(self.pins.cleanup_orphans(live_ids))
        except Exception:
            logger.exception("clean-up of pinned network namespaces at start-up failed")
        return sorted(cleaned)

    def close(self) -> None:
        """Disarm every activator (stops the containers they started)."""
        for cid in list(self._activators):
            self.disarm(cid)


def _arm(activator: Activator, timeout: float = 5.0) -> None:
    """Arm, retrying while a port is still held by a process that is going away (the shim of
    a container just stopped closes its copies of the sockets when it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            activator.arm()
            return
        except NetworkError as exc:
            cause = exc.__cause__
            busy = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def loopback_up(netns_path: str) -> None:
    """Mode ``none``: bring ``lo`` up in the namespace with two ioctls from a short thread
    that joins it (about 10x cheaper than a netlink socket there; on every start's path)."""

    def run() -> None:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            LINUX.setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))

    try:
        in_own_thread("netns-lo", run)
    except Exception as exc:
        raise NetworkError("step.netns_config", f"lo up in {netns_path}: {exc}") from exc


def with_listen_env(spec: ContainerSpec) -> ContainerSpec:
    """The spec with ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` (sd_listen_fds(3))."""
    env = dict(spec.env)
    env.update(
        LISTEN_FDS=str(len(spec.sockets)),
        LISTEN_PID=CONTAINER_LISTEN_PID,
        LISTEN_FDNAMES=":".join(s.name for s in spec.sockets),
    )
    return dataclasses.replace(spec, env=env)


def write_container_files(pid: int, attachment: Attachment) -> None:
    """Write resolv.conf and hosts into the created container's /etc, through its root
    (``/proc/<pid>/root``) without following any symlink the image put there."""
    with links.step("dns_files"):
        root = os.open(f"/proc/{pid}/root", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir("etc", 0o755, dir_fd=root)
            etc = os.open("etc", os.O_DIRECTORY | os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=root)  # fmt: skip
            try:
                for name, source in (
                    ("resolv.conf", attachment.resolv_conf_path),
                    ("hosts", attachment.hosts_path),
                ):
                    _write_in(etc, name, Path(source).read_bytes())
            finally:
                os.close(etc)
        finally:
            os.close(root)


def _write_in(dir_fd: int, name: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        os.unlink(name, dir_fd=dir_fd)  # a symlink in the image: replaced by a plain file
        fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
