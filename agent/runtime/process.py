"""The linear start sequence of one container process.

Three processes take part, talking over a SOCK_SEQPACKET pair (one JSON object per packet):

* **parent** (the shim): forks *stage 1*, moves it into the cgroup, writes its id maps, learns
  the init's host pid, waits for ``ready`` or an ``error`` naming the failed step.
* **stage 1**: joins namespaces given by path, creates the user namespace (asks the parent for
  maps), creates the other namespaces, forks the init (pid 1 of a new pid namespace) and exits.
* **init**: rootfs -> hostname -> pivot_root, masked/readonly paths -> rlimits -> stdio ->
  capabilities/user/no_new_privs -> ``ready`` -> waits on the exec fifo (OCI ``start``) ->
  seccomp -> execve.

The parent undoes what it started if any step fails: it kills both children and reaps them.
"""

from __future__ import annotations

# The sync channel is a socket of socket.py's C core: socket.py itself builds its enums and
# loads selectors, ~1.5 ms of every CLI start, for the two fd-passing calls we write below.
import _socket
import contextlib
import fcntl
import json
import os
import signal
import sys
import time

from agent.runtime import namespaces
from agent.runtime.config import Config
from agent.runtime.errors import RuntimeFailure
from agent.runtime.linux import CLONE_NEWCGROUP, CLONE_NEWUSER, PR_SET_CHILD_SUBREAPER, Linux
from agent.runtime.record import record
from agent.runtime.rootfs import Rootfs
from agent.runtime.security import (
    apply_process_security,
    compile_seccomp,
    install_seccomp,
    seccomp_available,
)
from agent.runtime.terminal import become_terminal_stdio, open_pty, send_console

# Names for type checkers only: importing typing costs milliseconds on every CLI start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, Protocol

    class CgroupLike(Protocol):
        def apply(self, pid: int) -> None: ...


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYNC_TIMEOUT = 30.0
# (step, ms) of the last start, reported by the children with "pid" and "ready" so the
# shim can record where the time of a start went.
_TIMINGS: list[tuple[str, float]] = []
LAST_TIMINGS: list[tuple[str, float]] = []
# What the last start could not apply and why (e.g. no seccomp in this kernel); kept in state.
LAST_WARNINGS: list[str] = []


@record
class Stdio:
    """File descriptors the container process gets as 0, 1 and 2."""

    stdin: int
    stdout: int
    stderr: int


class Sync:
    """One end of the parent/child channel: JSON objects, one per packet."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    def send(self, **message: Any) -> None:
        self.sock.send(json.dumps(message).encode())

    def send_fd(self, fd: int, **message: Any) -> None:
        """A message with one file descriptor (SCM_RIGHTS): the pty master, init to parent."""
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
        self.sock.sendmsg([json.dumps(message).encode()], rights)

    def recv(self, timeout: float = SYNC_TIMEOUT) -> dict[str, Any]:
        return self.recv_fds(timeout)[0]

    def recv_fds(self, timeout: float = SYNC_TIMEOUT) -> tuple[dict[str, Any], list[int]]:
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(65536, _socket.CMSG_LEN(4))
        fds = [
            int.from_bytes(payload[i : i + 4], sys.byteorder)
            for level, kind, payload in ancillary
            if (level, kind) == (_socket.SOL_SOCKET, _socket.SCM_RIGHTS)
            for i in range(0, len(payload) - 3, 4)
        ]
        if not data:
            raise RuntimeFailure("sync", "the other side exited before answering")
        result: dict[str, Any] = json.loads(data)
        return result, fds

    def close(self) -> None:
        self.sock.close()


@record
class Launch:
    """What to start. ``exec_fifo_fd`` is an O_PATH fd of the OCI exec fifo (None: exec at
    once). ``join_only`` is for ``exec``: enter a running container's namespaces, no rootfs."""

    config: Config
    stdio: Stdio
    exec_fifo_fd: int | None = None
    join_only: bool = False
    selinux: bool = False
    # OCI ``--preserve-fds``: these fds become 3, 4, ... of the container process (socket
    # activation passes its listening sockets this way).
    extra_fds: tuple[int, ...] = ()
    # OCI ``--console-socket`` (with ``process.terminal``): where the pty master goes.
    console_socket: str | None = None


def spawn(linux: Linux, launch: Launch, cgroup: CgroupLike | None) -> int:
    """Start the container process; returns its host pid once it is ``ready``."""
    linux.prctl(PR_SET_CHILD_SUBREAPER, 1)  # the init is re-parented to us when stage 1 exits
    parent_sock, child_sock = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    _TIMINGS.clear()
    t0 = time.perf_counter()
    direct = _can_clone_directly(launch)
    init_pid = 0
    if direct:
        # The common case: clone(2) straight into the new namespaces, the child is the init.
        init_pid = _clone_init(linux, launch, parent_sock, child_sock)
        stage1 = 0
    else:
        stage1 = os.fork()
        if stage1 == 0:
            parent_sock.close()
            _stage1(linux, launch, Sync(child_sock))
    child_sock.close()
    sync = Sync(parent_sock)
    ready = False
    LAST_TIMINGS.clear()
    try:
        overlap = cgroup is not None and direct and _can_join_cgroup_late(launch.config)
        if cgroup is not None and not overlap:
            _timed_apply(cgroup, init_pid if direct else stage1)
        sync.send(go=True, cgroup_pending=overlap)
        if overlap and cgroup is not None:
            # Moving a process between cgroup v1 hierarchies waits for an RCU grace period
            # (~14 ms here): the init builds its rootfs meanwhile, and waits for this message
            # before it makes its cgroup namespace and drops its privileges.
            _timed_apply(cgroup, init_pid)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # An init that failed while building its rootfs has reported why and exited;
                # its report is still queued for the recv below.
                sync.send(cgrouped=True)
        while True:
            msg, fds = sync.recv_fds()
            if "error" in msg:
                raise RuntimeFailure.from_dict(msg["error"])
            if msg.get("console") and fds:
                _send_console(launch, fds[0])
                continue
            LAST_TIMINGS.extend((str(n), float(ms)) for n, ms in msg.get("timings", []))
            kind = next((k for k in ("idmap", "pid", "ready") if k in msg), "other")
            LAST_TIMINGS.append((f"spawn.{kind} at", round((time.perf_counter() - t0) * 1000, 3)))
            if msg.get("idmap"):
                namespaces.write_id_maps(linux, init_pid if direct else stage1, launch.config)
                sync.send(mapped=True)
            elif "pid" in msg:
                init_pid = int(msg["pid"])
                os.waitpid(stage1, 0)
                stage1 = 0
            elif msg.get("ready"):
                ready = True
                LAST_WARNINGS[:] = [str(w) for w in msg.get("warnings", [])]
            # Stage 1 and the init share the channel: "ready" may overtake "pid".
            if ready and init_pid:
                return init_pid
    except BaseException:
        for pid in (stage1, init_pid):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)
        raise
    finally:
        sync.close()


def _send_console(launch: Launch, master: int) -> None:
    if launch.console_socket is None:
        os.close(master)
        raise RuntimeFailure("console-socket", "the container has a terminal but no console socket")
    send_console(launch.console_socket, master)


def _can_clone_directly(launch: Launch) -> bool:
    """Namespaces joined by path need setns before the new ones exist: the two-step path."""
    return not launch.join_only and all(ns.path is None for ns in launch.config.namespaces)


def _clone_flags(config: Config) -> int:
    # The cgroup namespace is created by the child once it is in its cgroup (after "go"):
    # created here, its root would be the shim's cgroup.
    flags = namespaces.unshare_flags(config) & ~CLONE_NEWCGROUP
    if namespaces.new_user_namespace(config):
        flags |= CLONE_NEWUSER
    return flags


def _clone_init(
    linux: Linux, launch: Launch, parent_sock: _socket.socket, child_sock: _socket.socket
) -> int:
    try:
        pid = linux.clone(_clone_flags(launch.config))
    except OSError as exc:
        raise RuntimeFailure.from_os("namespaces.clone", exc) from None
    if pid != 0:
        return pid
    parent_sock.close()
    sync = Sync(child_sock)
    try:
        # "go": we are in the cgroup now, or the parent is moving us (cgroup_pending).
        cgroup_pending = bool(sync.recv().get("cgroup_pending"))
        config = launch.config
        if namespaces.new_user_namespace(config):  # never with cgroup_pending
            sync.send(idmap=True)
            sync.recv()
            _become_namespace_root(linux, config)
        if not cgroup_pending:
            _unshare_cgroup_namespace(linux, config)
    except BaseException as exc:
        _report_and_exit(sync, exc, "namespaces")
    _init(linux, launch, sync, cgroup_pending=cgroup_pending)


def _default_signals(linux: Linux) -> None:
    """The container starts with every signal at its default action and none blocked, as
    runc and crun start it. An ignored disposition survives execve: without this, Python's
    own SIGPIPE ignore, or a SIGINT ignored by whoever started the caller in the background,
    would reach the container (^C would not stop its foreground process)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError):
            linux.signal_action(number, 0)  # also 32 and 33, which glibc's sigaction refuses


def _can_join_cgroup_late(config: Config) -> bool:
    """Whether the init may set up its rootfs before it is in its cgroup: not when the user
    namespace handshake shares the channel, nor when it mounts a cgroup filesystem (whose
    view depends on the cgroup namespace made once it is in the cgroup)."""
    if namespaces.new_user_namespace(config):
        return False
    return not any(m.type in ("cgroup", "cgroup2") for m in config.mounts)


def _timed_apply(cgroup: CgroupLike, pid: int) -> None:
    started = time.perf_counter()
    _cgroup_apply(cgroup, pid)
    LAST_TIMINGS.append(("spawn.cgroup.apply", round((time.perf_counter() - started) * 1000, 3)))


def _unshare_cgroup_namespace(linux: Linux, config: Config) -> None:
    """A new cgroup namespace, rooted at the cgroup we are in (so: once we are in ours)."""
    ns = config.namespace("cgroup")
    if ns is not None and ns.path is None:
        _step("namespaces.unshare cgroup", lambda: linux.unshare(CLONE_NEWCGROUP))


def _cgroup_apply(cgroup: CgroupLike, pid: int) -> None:
    try:
        cgroup.apply(pid)
    except RuntimeFailure:
        raise  # names its own step (making the cgroup on the way: cgroup.create)
    except OSError as exc:
        raise RuntimeFailure.from_os("cgroup.apply", exc) from None
    except Exception as exc:  # CgroupError from the driver: keep its message and errno
        raise RuntimeFailure("cgroup.apply", str(exc), getattr(exc, "errno", None)) from None


def _report_and_exit(sync: Sync | None, exc: BaseException, step: str) -> NoReturn:
    if isinstance(exc, RuntimeFailure):
        failure = exc
    elif isinstance(exc, OSError):
        failure = RuntimeFailure.from_os(step, exc)
    else:
        failure = RuntimeFailure(step, f"{type(exc).__name__}: {exc}")
    try:
        if sync is not None:
            sync.send(error=failure.to_dict())
        else:
            os.write(2, f"corral-runtime: {failure}\n".encode())
    finally:
        os._exit(1)


def _stage1(linux: Linux, launch: Launch, sync: Sync) -> NoReturn:
    """Child of the parent: namespaces, then fork the init."""
    try:
        sync.recv()  # "go": we are in the cgroup now
        config = launch.config
        namespaces.join_namespaces(linux, config)
        if not launch.join_only and namespaces.new_user_namespace(config):
            namespaces.unshare_user(linux)
            sync.send(idmap=True)
            sync.recv()
            _become_namespace_root(linux, config)
        if not launch.join_only:
            _step("namespaces.unshare", lambda: namespaces.unshare_rest(linux, config))
        pid = os.fork()
        if pid == 0:
            _init(linux, launch, sync)
        sync.send(pid=pid, timings=_TIMINGS)
        os._exit(0)
    except BaseException as exc:
        _report_and_exit(sync, exc, "stage1")


def _become_namespace_root(linux: Linux, config: Config) -> None:
    """Act as root of the new user namespace, as runc does: devpts and mqueue refuse a mounter
    whose ids are unmapped there (EOVERFLOW). Skipped when 0 is not mapped."""
    if any(m.container_id == 0 for m in config.gid_mappings):
        _step("namespaces.setresgid", lambda: linux.setresgid(0))
    if any(m.container_id == 0 for m in config.uid_mappings):
        _step("namespaces.setresuid", lambda: linux.setresuid(0))


def _init(linux: Linux, launch: Launch, sync: Sync, *, cgroup_pending: bool = False) -> NoReturn:
    """The container's process: set up everything, tell the parent, wait for start, exec.
    ``cgroup_pending``: the parent is still moving us into our cgroup; we wait for it before
    the cgroup namespace and the privilege drop."""
    channel: Sync | None = sync
    config = launch.config
    process = config.process
    _TIMINGS.clear()
    rootfs = Rootfs(linux, config, selinux=launch.selinux)
    try:
        os.setsid()
        if not launch.join_only:
            rootfs.setup()
            if config.hostname:
                _step("hostname", lambda: linux.sethostname(config.hostname))
            if config.domainname:
                _step("domainname", lambda: linux.setdomainname(config.domainname))
            rootfs.finish()
        for rl in process.rlimits:
            _step(f"rlimits {rl.type}", lambda r=rl: linux.setrlimit(r.type, r.soft, r.hard))
        if process.terminal and not launch.join_only:
            _step("terminal", lambda: _open_terminal(sync))
        else:
            _step("stdio", lambda: _dup_stdio(launch.stdio))
        _close_other_fds(sync.sock.fileno(), launch.exec_fifo_fd, *launch.extra_fds)
        env = dict(e.split("=", 1) for e in process.env)
        executable = find_executable(process.args[0], env.get("PATH", DEFAULT_PATH), process.cwd)
        seccomp = config.seccomp
        warnings: list[str] = []
        if seccomp is not None:
            available, reason = seccomp_available()
            skipped = compile_seccomp(seccomp)[1]
            if not available:
                warnings.append(f"seccomp not applied: {reason}")
                seccomp = None
            elif skipped:
                warnings.append(f"seccomp: unknown syscalls skipped: {', '.join(sorted(skipped))}")
        if cgroup_pending:
            _step("cgroup.wait", lambda: sync.recv())  # "cgrouped"
            _unshare_cgroup_namespace(linux, config)
        if seccomp is not None and not process.no_new_privileges:
            _step("seccomp", lambda: install_seccomp(linux, seccomp))
        _step("security", lambda: apply_process_security(linux, process))
        _step("process.cwd", lambda: os.chdir(process.cwd))
        sync.send(ready=True, timings=rootfs.timings + _TIMINGS, warnings=warnings)
        sync.close()
        channel = None
        if launch.exec_fifo_fd is not None:
            _wait_for_start(launch.exec_fifo_fd)
        if launch.extra_fds:  # after the sync socket and fifo are closed: 3.. are free
            _step("preserve_fds", lambda: _place_fds(launch.extra_fds))
        if launch.selinux and process.selinux_label:
            _set_exec_label(process.selinux_label)
        if seccomp is not None and process.no_new_privileges:
            install_seccomp(linux, seccomp)
        _default_signals(linux)
        os.execve(executable, list(process.args), env)  # noqa: S606 - exec is the point
    except BaseException as exc:
        _report_and_exit(channel, exc, "exec")


def _step(name: str, action: Any) -> None:
    started = time.perf_counter()
    try:
        action()
        _TIMINGS.append((name, round((time.perf_counter() - started) * 1000, 3)))
    except RuntimeFailure:
        raise
    except OSError as exc:
        raise RuntimeFailure.from_os(name, exc) from None


def _set_exec_label(label: str) -> None:
    """SELinux: the next execve runs with the container's process label (only when enabled)."""
    from agent.runtime.selinux import set_exec_label

    try:
        set_exec_label(label, enabled=True)
    except Exception as exc:
        raise RuntimeFailure("selinux.exec_label", str(exc), getattr(exc, "errno", None)) from None


def _open_terminal(sync: Sync) -> None:
    """``process.terminal``: a pty from the container's devpts; the master goes to the parent
    (which hands it to the console socket), the slave becomes our stdio and terminal."""
    master, slave = open_pty()
    try:
        sync.send_fd(master, console=True)
    finally:
        os.close(master)
    become_terminal_stdio(slave)


def _dup_stdio(stdio: Stdio) -> None:
    for target, fd in ((0, stdio.stdin), (1, stdio.stdout), (2, stdio.stderr)):
        if fd != target:
            os.dup2(fd, target, inheritable=True)
        else:
            os.set_inheritable(fd, True)


def _close_other_fds(*keep: int | None) -> None:
    """Close every fd but stdio and ``keep``: the process must not hold the shim's pipes."""
    low = 3
    for fd in sorted(k for k in keep if k is not None and k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _place_fds(fds: tuple[int, ...]) -> None:
    """Make ``fds`` become 3, 4, ... (inheritable), parking each above every target first so
    moving one never overwrites another still to be moved."""
    floor = max([3 + len(fds), *fds]) + 1
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    for i, fd in enumerate(parked):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    os.closerange(3 + len(fds), floor)  # the originals, unless they were targets


def _wait_for_start(fifo_fd: int) -> None:
    """Block until ``start`` opens the exec fifo for reading, then tell it we go on."""
    fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_fd)


def find_executable(name: str, path: str, cwd: str) -> str:
    """Resolve ``process.args[0]`` inside the container (after pivot_root), like execvp."""
    if "/" in name:
        candidate = name if name.startswith("/") else os.path.join(cwd, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
        raise RuntimeFailure("process.args[0]", f"{name} is not an executable file", 2)
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise RuntimeFailure("process.args[0]", f"{name} not found in PATH {path}", 2)
