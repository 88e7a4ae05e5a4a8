"""The fast path: a small, already-running helper that forks once per container.

The agent is a large process (Celery, crypto, ...); forking it per container costs tens of
milliseconds and a fresh interpreter costs ~15 ms. So the agent starts this helper once (a
``python -S`` that imports only the runtime), and sends it ``create`` requests over a
SOCK_SEQPACKET socket; the helper forks the shim (double fork, as the CLI does) and answers
with the container's state. ``start``, ``kill`` and ``state`` need no fork and run in the agent.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from agent.runtime.errors import ConfigError, ContainerNotFound, RuntimeFailure

if TYPE_CHECKING:
    from agent.runtime.runtime import Runtime

_PKG_ROOT = str(Path(__file__).resolve().parents[2])
# -S: no site-packages (the runtime needs only the standard library); the agent package is put
# on sys.path by hand.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from agent.runtime.zygote import serve; serve(int(sys.argv[2]))"
)


class Zygote:
    """Client side: one helper process, requests serialised by a lock (the helper is single
    threaded because it forks)."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()
        self.owner = os.getpid()

    def ensure_started(self) -> None:
        if self.owner != os.getpid():
            # We were forked (a Celery prefork child): the helper and its socket belong to
            # the parent; start our own rather than interleave requests with it.
            self.proc, self.sock, self.owner = None, None, os.getpid()
        if self.proc is not None and self.proc.poll() is None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [self.python, "-S", "-c", _BOOT, _PKG_ROOT, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )
        theirs.close()
        self.sock = ours
        self._call({"op": "ping"})

    def create(
        self,
        root: str | Path,
        container_id: str,
        bundle: str | Path,
        preserve_fds: tuple[int, ...] = (),
    ) -> dict[str, Any]:
        """Like :meth:`Runtime.create`, forked from the helper; the same errors.
        ``preserve_fds`` travel to the helper with the request (SCM_RIGHTS)."""
        if self.owner != os.getpid():
            self.lock = threading.Lock()  # a lock copied by fork may be held forever
        with self.lock:
            self.ensure_started()
            request = {"op": "create", "root": str(root), "id": container_id, "bundle": str(bundle)}
            result: dict[str, Any] = self._call(request, preserve_fds)
            return result

    def _call(self, request: dict[str, Any], fds: tuple[int, ...] = ()) -> Any:
        assert self.sock is not None
        if fds:
            socket.send_fds(self.sock, [json.dumps(request).encode()], list(fds))
        else:
            self.sock.send(json.dumps(request).encode())
        data = self.sock.recv(1 << 20)
        if not data:
            self.close()
            raise RuntimeFailure("zygote", "the helper process exited")
        reply = json.loads(data)
        error = reply.get("error")
        if error is None:
            return reply.get("result")
        kind = error.get("kind")
        if kind == "config":
            raise ConfigError(error["field"], error["message"])
        if kind == "not_found":
            raise ContainerNotFound(error["id"])
        raise RuntimeFailure.from_dict(error)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Spare:
    """A shim forked and detached before it is needed (fork and detach cost milliseconds
    here), waiting on a socket for the one create it will serve; it then does what
    ``Runtime.create`` does and becomes that container's shim. Each serves one container:
    every container still gets fresh namespaces, its own cgroup and its own shim."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Objects that exist now are shared with the child copy-on-write; a garbage collection
        # there would write to every one of them (page faults, copies). Frozen, it skips them.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            ours.close()
            _spare_main(theirs)
        theirs.close()
        self.sock = ours
        self.pid = pid

    def create(self, request: dict[str, Any], fds: tuple[int, ...]) -> dict[str, Any] | None:
        """Hand over one create; the container's OCI state once it is created (or its
        error, raised). None when the spare is gone before taking the request: the caller
        creates the usual way."""
        from agent.runtime.report import read_shim_report

        try:
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], list(fds))
            except OSError:
                return None
            try:
                state: dict[str, Any] = read_shim_report(self.sock.fileno())["state"]
            except RuntimeFailure as exc:
                if exc.step == "shim":  # it died without a word: undo what it may have made
                    self._remove_what_it_made(request)
                raise
            return state
        finally:
            self.sock.close()

    def _remove_what_it_made(self, request: dict[str, Any]) -> None:
        """A spare that dies (killed) between taking a create and reporting leaves nobody
        to undo its state directory: remove it, unless it belongs to another container."""
        from agent.runtime.state import StateStore

        store = StateStore(request["root"])
        try:
            owner = store.read(request["id"]).get("shim_pid")
        except (ContainerNotFound, ValueError):
            owner = self.pid  # no (complete) state: the directory was only being made
        if owner == self.pid:
            store.remove(request["id"])


def _spare_main(sock: socket.socket) -> NoReturn:
    from agent.runtime.linux import LINUX
    from agent.runtime.runtime import Runtime
    from agent.runtime.shim import detach

    try:
        detach(LINUX, sock.fileno())
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 64)
    except BaseException:
        os._exit(1)
    if not data:
        os._exit(0)  # the zygote is closing: no container for us
    request = json.loads(data)
    rt = Runtime(request["root"], double_fork=False)
    rt.create_in_spare(request["id"], request["bundle"], sock.fileno(), tuple(fds))


# How long the helper must have been idle before it forks the next spare shim: not at once
# after a create, when the fork would compete for the CPU with the agent starting that
# container.
SPARE_AFTER_IDLE = 0.01


def serve(fd: int) -> None:
    """Helper side: answer requests until the agent closes its end. A spare shim is forked
    once we have been idle for a moment, so a create finds one ready."""
    with contextlib.suppress(ImportError):  # warm what every create needs, once
        import agent.runtime.cgroups
        import agent.runtime.runtime
        import agent.runtime.selinux
        import agent.runtime.shim  # noqa: F401
    sock = socket.socket(fileno=fd)
    runtimes: dict[str, Runtime] = {}
    spare: list[Spare] = []
    while True:
        if not spare and not select.select([sock], [], [], SPARE_AFTER_IDLE)[0]:
            spare.append(Spare())
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 64)
        if not data:
            return
        request = json.loads(data)
        _reap_shims()
        try:
            reply = _answer(request, runtimes, tuple(fds), spare)
        finally:
            for fd in fds:  # the shim has its own copies now
                os.close(fd)
        sock.send(json.dumps(reply).encode())


def _answer(
    request: dict[str, Any],
    runtimes: dict[str, Runtime],
    fds: tuple[int, ...],
    spare: list[Spare],
) -> dict[str, Any]:
    """One request -> one reply; errors become replies the client raises again. A create
    takes the spare shim from ``spare`` when there is one."""
    from agent.runtime.runtime import Runtime

    try:
        if request["op"] == "ping":
            result: Any = {"pid": os.getpid()}
        elif request["op"] == "create":
            rt = runtimes.setdefault(request["root"], Runtime(request["root"], double_fork=False))
            result = spare.pop().create(request, fds) if spare else None
            if result is None:
                result = rt.create(request["id"], request["bundle"], preserve_fds=fds)
        else:
            raise RuntimeFailure("zygote", f"unknown op {request.get('op')!r}")
        reply: dict[str, Any] = {"result": result}
    except ConfigError as exc:
        reply = {"error": {"kind": "config", "field": exc.field, "message": exc.message}}
    except ContainerNotFound as exc:
        reply = {"error": {"kind": "not_found", "id": exc.container_id}}
    except RuntimeFailure as exc:
        reply = {"error": {"kind": "runtime", **exc.to_dict()}}
    except Exception as exc:
        reply = {"error": {"kind": "runtime", "step": "zygote", "detail": repr(exc)}}
    return reply


def _reap_shims() -> None:
    """Shims are our children (one fork, not two): reap those that have exited."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
