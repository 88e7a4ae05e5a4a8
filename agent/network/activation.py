"""Socket activation: the agent holds a container's listening sockets and starts the
container on the first connection, passing the sockets the systemd way.

Protocol (``sd_listen_fds(3)``): the sockets become fds 3, 4, ... in the order declared;
``LISTEN_FDS=<n>``, ``LISTEN_PID=<pid of the process that should use them>``,
``LISTEN_FDNAMES=a:b``. ``LISTEN_PID`` is only known after fork, so the child side calls
:func:`place_fds` and builds its environment with :func:`listen_env` (``os.getpid()``) just
before exec; :func:`spawn_activated` does both for a plain command.

The first connection is never accepted by the agent: it stays in the kernel's accept queue
of the listening socket, which the container inherits and accepts itself.

Idle detection (``idle_stop_seconds``): while the container runs, the agent keeps the same
listening sockets in an *edge-triggered* epoll set. Every arriving connection (or datagram)
wakes the socket's wait queue and so produces one epoll event, even when the container
accepts it first; no ``ss`` and no polling of /proc. The container is stopped once no event
came for ``idle_stop_seconds`` *and* no accepted TCP connection on those ports is still
established (counted with sock_diag, best effort). Then the sockets are re-armed; connections
that arrive meanwhile wait in the queue and start the container again.

Where systemd runs, the same thing is a ``.socket`` unit per SocketSpec plus a ``.service``
with ``Sockets=``; systemd then sets the same three variables. :mod:`agent.network.systemd_units`
renders those units and documents the mapping (idle stop becomes the server exiting by itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.network.errors import NetworkError
from agent.protocol.containers import SocketSpec

logger = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
_RETRY_AFTER_FAILED_START = 1.0


def listen_env(pid: int, names: Sequence[str]) -> dict[str, str]:
    """The three variables for a process ``pid`` that receives ``len(names)`` sockets."""
    return {
        "LISTEN_FDS": str(len(names)),
        "LISTEN_PID": str(pid),
        "LISTEN_FDNAMES": ":".join(names),
    }


def place_fds(fds: Sequence[int]) -> None:
    """Child side, after fork: make ``fds`` become 3, 4, ... without CLOEXEC.

    Each fd is first duplicated above every target and every source, so moving one never
    overwrites another still to be moved (e.g. ``[4, 3]``).
    """
    if not fds:
        return
    floor = max([SD_LISTEN_FDS_START + len(fds), *fds]) + 1
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    for i, fd in enumerate(parked):
        target = SD_LISTEN_FDS_START + i
        os.dup2(fd, target, inheritable=True)  # dup2 leaves the new fd without CLOEXEC
        os.close(fd)


def spawn_activated(
    argv: Sequence[str],
    fds: Sequence[int],
    names: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> int:
    """Fork and exec ``argv`` with ``fds`` at 3.. and the LISTEN_* variables for its own pid.

    The caller reaps the child (``os.waitpid``). Between fork and exec only fd moves and the
    environment are done; a failure exits the child with 127.
    """
    base = dict(os.environ if env is None else env)
    path = list(argv)
    pid = os.fork()
    if pid == 0:  # child
        try:
            place_fds(fds)
            os.execvpe(path[0], path, base | listen_env(os.getpid(), names))  # noqa: S606 - argv list, no shell
        finally:
            os._exit(127)
    return pid


def bind_socket(spec: SocketSpec) -> socket.socket:
    """Bind and (for stream sockets) listen, non-blocking, with SO_REUSEADDR."""
    spec.validate()
    if spec.protocol == "unix":
        assert spec.path is not None  # validate() checked it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _remove_stale_unix_socket(spec.path)
        address: str | tuple[str, int] = spec.path
    else:
        try:
            ip = ipaddress.ip_address(spec.host_ip)
        except ValueError:
            raise NetworkError(f"sockets.{spec.name}.host_ip", "not an IP address") from None
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        kind = socket.SOCK_STREAM if spec.protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        address = (spec.host_ip, spec.port or 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if sock.type == socket.SOCK_STREAM:
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetworkError(f"sockets.{spec.name}", f"cannot bind {address}: {exc}") from exc
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """A socket file left by a previous run would make bind fail; other files are kept."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            Path(path).unlink()


def _established(ports: set[int]) -> int:
    """Established TCP connections whose local port is one of ``ports`` (sock_diag)."""
    if not ports:
        return 0
    try:
        from pyroute2.netlink.diag import DiagSocket

        count = 0
        with DiagSocket() as diag:
            diag.bind()
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in diag.get_sock_stats(family=family, states=1 << 1):  # ESTABLISHED
                    if msg["idiag_sport"] in ports:
                        count += 1
        return count
    except Exception:  # best effort: without it, idle means "no new connection"
        logger.debug("sock_diag unavailable", exc_info=True)
        return 0


class Activator:
    """Start-on-first-connection for one container; one small thread per container.

    ``start(fds)`` must start the container with those fds (see :func:`spawn_activated`,
    or the runtime's zygote calling :func:`place_fds`) and return the pid that uses them.
    ``stop()`` must stop it and return once it is gone. ``close()`` stops the container if
    it is running, then closes the sockets.
    """

    def __init__(
        self,
        sockets: list[SocketSpec],
        start: Callable[[list[int]], int],
        stop: Callable[[], None],
        idle_stop_seconds: int | None = None,
    ) -> None:
        if not sockets:
            raise NetworkError("sockets", "at least one socket is needed")
        names = [s.name for s in sockets]
        if len(set(names)) != len(names) or any(not n or ":" in n for n in names):
            raise NetworkError("sockets", "names must be unique, non-empty and without ':'")
        if idle_stop_seconds is not None and idle_stop_seconds < 1:
            raise NetworkError("idle_stop_seconds", "must be at least 1 second")
        for spec in sockets:
            try:
                spec.validate()
            except ValueError as exc:
                raise NetworkError(f"sockets.{spec.name}", str(exc)) from None
        self.specs = list(sockets)
        self.names = names
        self._start = start
        self._stop = stop
        self.idle_stop_seconds = idle_stop_seconds
        self._socks: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._closing = False
        self._pidfd = -1
        self._started_at = 0.0
        self._closed = threading.Event()  # lets close() cut short a back-off wait
        self.pid: int | None = None
        self.starts = 0
        self.stops = 0

    @property
    def fds(self) -> list[int]:
        return [s.fileno() for s in self._socks]

    def arm(self) -> None:
        """Bind every socket (all or none) and start watching for the first connection."""
        if self._thread is not None:
            raise NetworkError("step.activation", "already armed")
        if self._closing:
            raise NetworkError("step.activation", "closed")
        bound: list[socket.socket] = []
        with contextlib.ExitStack() as undo:
            for spec in self.specs:
                sock = bind_socket(spec)
                undo.callback(sock.close)
                bound.append(sock)
            undo.pop_all()
        self._socks = bound
        self._thread = threading.Thread(target=self._loop, name="activator", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching, stop a running container, close and unlink the sockets.
        Idempotent."""
        if self._closing and not self._socks and self._thread is None:
            return
        self._closing = True
        self._closed.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.pid is not None:
            self._do_stop("close")
        for sock, spec in zip(self._socks, self.specs, strict=False):
            sock.close()
            if spec.protocol == "unix" and spec.path:
                _remove_stale_unix_socket(spec.path)
        self._socks.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        with select.epoll() as ep:
            ep.register(self._wake_r, select.EPOLLIN)
            for fd in self.fds:
                ep.register(fd, select.EPOLLIN)  # level-triggered while armed
            try:
                while not self._closing:
                    if self.pid is None:
                        self._wait_first(ep)
                    else:
                        self._watch_running(ep)
            finally:
                self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _wait_first(self, ep: select.epoll) -> None:
        events = ep.poll()
        if self._closing or not any(fd in self.fds for fd, _ in events):
            return
        try:
            pid = self._start(self.fds)
        except Exception:
            logger.exception("socket activation: start failed; retrying on the queued connection")
            self._closed.wait(_RETRY_AFTER_FAILED_START)
            return
        self.pid, self.starts = pid, self.starts + 1
        self._started_at = time.monotonic()
        logger.info("socket activation started pid %d (%s)", pid, ",".join(self.names))
        for fd in self.fds:  # from now on: one event per arrival, whoever accepts it
            ep.modify(fd, select.EPOLLIN | select.EPOLLET)
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # gone before we could watch it: back off, then wait again
            logger.warning("socket-activated pid %d exited at once; re-arming", pid)
            self.pid = None
            self._rearm(ep)
            self._closed.wait(_RETRY_AFTER_FAILED_START)
            return
        ep.register(self._pidfd, select.EPOLLIN)

    def _watch_running(self, ep: select.epoll) -> None:
        last = time.monotonic()
        tcp_ports = {s.port for s in self.specs if s.protocol == "tcp" and s.port is not None}
        while not self._closing:
            timeout = None
            if self.idle_stop_seconds is not None:
                timeout = max(0.0, last + self.idle_stop_seconds - time.monotonic())
            events = ep.poll(timeout)
            if any(fd == self._pidfd for fd, _ in events):
                logger.info("socket-activated pid %s exited; re-arming", self.pid)
                self.pid = None
                if time.monotonic() - self._started_at < _RETRY_AFTER_FAILED_START:
                    # Exited at once (bad command?): do not restart in a tight loop.
                    self._closed.wait(_RETRY_AFTER_FAILED_START)
                break
            if any(fd in self.fds for fd, _ in events):
                last = time.monotonic()
            elif not events and _established(tcp_ports) == 0:
                self._do_stop("idle")
                break
            elif not events:
                last = time.monotonic()  # busy with long connections: check again later
        ep.unregister(self._pidfd)
        self._close_pidfd()
        if not self._closing:
            self._rearm(ep)

    def _rearm(self, ep: select.epoll) -> None:
        for fd in self.fds:
            ep.modify(fd, select.EPOLLIN)  # level-triggered again: next arrival starts it

    def _do_stop(self, why: str) -> None:
        logger.info("socket activation stopping pid %s (%s)", self.pid, why)
        try:
            self._stop()
        except Exception:
            logger.exception("socket activation: stop of pid %s failed", self.pid)
        self.pid, self.stops = None, self.stops + 1
