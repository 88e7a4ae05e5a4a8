"""The per-container monitor (like conmon): owns the container's stdio, logs, exit status and
restart policy.

Once the container is created and its creator told, the shim ``execve``s the native monitor
(``native/monitor.c``, built to ``native/corral-monitor``) in the same process: the container
stays its child, and the monitor costs ~0.5 MiB instead of a Python interpreter's ~7 (PSS).
It writes the same log and an exit record (``exit.json``) that ``StateStore.read`` folds into
the state; on an exit a restart policy may restart it execs this module again (``resume``),
which restarts the process and execs the monitor anew. A container with a terminal keeps this
Python monitor, as does a host without the binary (no compiler when it was built, another
architecture: an exec that fails falls back here); ``CORRAL_MONITOR`` names another binary, or
``python`` to always use this one. The state says which one runs (``monitor``).

It is started by a double fork with ``setsid`` so it is no child of whoever ran ``create`` and
survives it being killed. It is a child subreaper, so the container's init (forked by stage 1)
is re-parented to it and it can ``wait`` for it. It writes everything it learns into the state
directory, which is how ``state``, ``delete`` and the agent (after a restart) find out.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import sys
import time

from agent.runtime import process as process_mod
from agent.runtime.config import Config
from agent.runtime.errors import RuntimeFailure
from agent.runtime.linux import CLONE_NEWNET, O_PATH, PR_SET_CHILD_SUBREAPER, Linux
from agent.runtime.process import Launch, Stdio, spawn
from agent.runtime.record import replace
from agent.runtime.scope import SHIM_SLICE, shim_cgroup
from agent.runtime.state import (
    EXIT_FILE,
    FIFO,
    LOG,
    StateStore,
    oci_state,
    proc_start_time,
    write_atomic,
)

# Names for type checkers only: importing typing costs milliseconds on every CLI start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

DEFAULT_LOG_MAX = 10 * 1024 * 1024
_DRAIN_SECONDS = 0.2
_OOM_COUNT_WAIT = 0.1
# How long a container must have run before its shim moves into its own scope. Moving a
# process between v1 cgroups waits for an RCU grace period (~15 ms here): paid up front, it
# delayed every short container's exit record by that much. A container that is done sooner
# never costs a scope at all; until the move the shim stays in its creator's cgroup (the
# zygote's, or the CLI's).
SCOPE_DELAY = 0.05


NATIVE_MONITOR = os.path.join(os.path.dirname(__file__), "native", "corral-monitor")
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCOPE_PLAN = "monitor.scope"  # the scope helper's plan for the native monitor's last steps


def _entry(function: str, *args: str) -> list[str]:
    """A command line the native monitor runs: ``function`` of this module with ``args``, in
    a fresh interpreter (-S: the runtime needs only the standard library; the package root
    goes on sys.path by hand, as the shim's cwd and environment are its creator's)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        f"from agent.runtime.shim import {function}; {function}(sys.argv[2:])"
    )
    return [sys.executable, "-S", "-c", code, _PKG_ROOT, *args]


def native_monitor() -> str | None:
    """The native monitor binary to exec, or None for the Python loop."""
    chosen = os.environ.get("CORRAL_MONITOR") or NATIVE_MONITOR
    if chosen == "python" or not os.access(chosen, os.X_OK):
        return None
    return chosen


def iso_now(now: float | None = None) -> str:
    """``2026-01-02T03:04:05.123456Z`` (UTC, microseconds rounded as ``datetime`` does;
    without ``datetime``, which would cost every CLI ``create`` a millisecond of imports)."""
    now = time.time() if now is None else now
    seconds = int(now // 1)
    micros = round((now - seconds) * 1e6)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{micros:06d}Z"


class LogWriter:
    """JSON-lines log (``{"time", "ts", "stream", "log"}``), rotated to ``.1`` when it
    grows past ``max_bytes``."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_LOG_MAX) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.partial: dict[str, bytes] = {}
        self.fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, stream: str, data: bytes) -> None:
        buf = self.partial.pop(stream, b"") + data
        *lines, rest = buf.split(b"\n")
        for line in lines:
            self._entry(stream, line + b"\n")
        if len(rest) > 16384:
            self._entry(stream, rest)
        elif rest:
            self.partial[stream] = rest

    def flush(self) -> None:
        for stream, rest in list(self.partial.items()):
            self._entry(stream, rest)
        self.partial.clear()

    def _entry(self, stream: str, line: bytes) -> None:
        now = time.time()
        record = {
            "time": iso_now(now),
            "ts": now,
            "stream": stream,
            "log": line.decode(errors="replace"),
        }
        os.write(self.fd, (json.dumps(record) + "\n").encode())
        if os.fstat(self.fd).st_size > self.max_bytes:
            os.close(self.fd)
            os.replace(self.path, f"{self.path}.1")
            self.fd = self._open()

    def close(self) -> None:
        self.flush()
        os.close(self.fd)


def cgroup_manager(config: Config) -> Any:
    """The cgroup manager for the config's ``cgroupsPath``, or None when it has none."""
    if not config.cgroups_path:
        return None
    from agent.runtime.cgroups import new_manager

    return new_manager(config.cgroups_path)


def selinux_on() -> bool:
    """Whether SELinux labels apply here (the teammate's module decides; absent means no)."""
    if not os.path.isdir("/sys/fs/selinux"):
        return False  # no selinuxfs at all: skip importing the labelling module
    try:
        from agent.runtime.selinux import selinux_enabled
    except ImportError:
        return False
    return bool(selinux_enabled())


def exit_code_of(wait_status: int) -> int:
    """Shell convention: the exit code, or 128 + signal number."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def detach(linux: Linux, keep: int, *more: int) -> None:
    """Leave the caller's session and stdio; keep only ``keep`` (and ``more``: fds to pass to
    the container) of its fds. Done by each shim, or ahead of time by a spare (zygote)."""
    os.setsid()
    linux.prctl(PR_SET_CHILD_SUBREAPER, 1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    low = 3
    for fd in sorted({keep, *more}):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


class Shim:
    """The monitor of one container, running in its own process."""

    def __init__(self, linux: Linux, store: StateStore, container_id: str, config: Config) -> None:
        self.linux = linux
        self.store = store
        self.id = container_id
        self.config = config
        self.dir = store.path(container_id)
        self.cgroup: Any = None
        self.log: LogWriter | None = None
        self.oom_seen = 0
        self.timings: list[tuple[str, float]] = []
        self.scope_due: float | None = None  # monotonic time to leave the caller's cgroup
        self.extra_fds: tuple[int, ...] = ()  # kept open for every (re)start of the process
        self.console_socket: str | None = None  # process.terminal: where each pty master goes

    # --- process set-up -----------------------------------------------------------------
    def detach(self, keep: int, *more: int) -> None:
        detach(self.linux, keep, *more)

    def create(self) -> int:
        """cgroup, pipes, the container process waiting on the exec fifo; returns its pid.
        The cgroup is made when ``spawn`` first moves the process into it: after the clone,
        while the container's init builds its rootfs (see ``_CgroupOnFirstApply``)."""
        self._join_network_namespace()
        max_bytes = int(self.config.annotations.get("run.corral.log.max-bytes", DEFAULT_LOG_MAX))
        self.log = LogWriter(os.path.join(self.dir, LOG), max_bytes)
        fifo_fd = os.open(os.path.join(self.dir, FIFO), O_PATH | os.O_CLOEXEC)
        started = time.perf_counter()
        try:
            pid = self._spawn(fifo_fd)
        finally:
            os.close(fifo_fd)
        self.timings.append(("shim.spawn", round((time.perf_counter() - started) * 1000, 3)))
        return pid

    def _join_network_namespace(self) -> None:
        """A network namespace given by path (the agent's pinned one) is joined here, once:
        every process the shim spawns, the first and each restart, is then cloned straight
        into it (the runtime's direct path) instead of through a stage that joins it. The
        shim itself uses no network; the container's sockets it holds were bound before."""
        ns = self.config.namespace("network")
        if ns is None or ns.path is None:
            return
        try:
            fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeFailure.from_os(f"namespaces.join network open {ns.path}", exc) from None
        try:
            self.linux.setns(fd, CLONE_NEWNET)
        except OSError as exc:
            raise RuntimeFailure.from_os("namespaces.join network", exc) from None
        finally:
            os.close(fd)
        kept = tuple(n for n in self.config.namespaces if n.type != "network")
        self.config = replace(self.config, namespaces=kept)

    def _make_cgroup(self) -> Any:
        """Make the container's cgroup; ``self.cgroup`` is set first, so a failure part-way
        leaves a manager to destroy what was made."""
        started = time.perf_counter()
        mgr = self.cgroup = cgroup_manager(self.config)

        def make() -> None:
            mgr.ensure_parent()
            mgr.create()
            mgr.set(self.config.resources)

        _cgroup_step("cgroup.create", make)
        self.timings.append(("shim.cgroup", round((time.perf_counter() - started) * 1000, 3)))
        return mgr

    def _spawn(self, fifo_fd: int | None) -> int:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            launch = Launch(
                self.config,
                Stdio(null, out_w, err_w),
                exec_fifo_fd=fifo_fd,
                selinux=selinux_on(),
                extra_fds=self.extra_fds,
                console_socket=self.console_socket,
            )
            cgroup = self.cgroup
            if cgroup is None and self.config.cgroups_path:
                cgroup = _CgroupOnFirstApply(self)
            pid = spawn(self.linux, launch, cgroup)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
        self.pipes = {out_r: "stdout", err_r: "stderr"}
        return pid

    # --- monitoring ---------------------------------------------------------------------
    def exec_native(self, binary: str, pid: int) -> None:
        """Become the native monitor of ``pid`` (returns only if the exec failed: the caller
        then monitors in Python)."""
        assert self.log is not None
        argv = [binary, "--pid", str(pid), "--log", os.path.join(self.dir, LOG)]
        argv += ["--log-max", str(self.log.max_bytes)]
        argv += ["--exit-file", os.path.join(self.dir, EXIT_FILE)]
        for fd, stream in self.pipes.items():
            os.set_inheritable(fd, True)
            argv += [f"--{stream}-fd", str(fd)]
        oom_file = self.cgroup.oom_file() if self.cgroup is not None else None
        if oom_file:
            argv += ["--oom-file", oom_file, "--oom-base", str(self.oom_seen)]
        argv += self._native_scope_args()
        if self.config.restart.name != "no":
            # An exit the policy may restart: the monitor execs this module again (resume).
            for fd in self.extra_fds:
                os.set_inheritable(fd, True)
            argv += ["--resume-on", "always" if self.config.restart.name == "always" else "failure"]
            fds = ",".join(map(str, self.extra_fds))
            argv += ["--", *_entry("resume_main", self.store.root_path, self.id, fds)]
        self.log.close()
        try:
            os.execv(binary, argv)  # noqa: S606 - our own monitor, by absolute path
        except OSError as exc:
            for fd in (*self.pipes, *self.extra_fds):
                os.set_inheritable(fd, False)
            self.log = LogWriter(self.log.path, self.log.max_bytes)
            note = f"native monitor {binary} failed ({exc.strerror}): monitoring in Python"

            def change(state: dict[str, Any]) -> None:
                state.update(monitor="python", warnings=[*state.get("warnings", []), note])

            with contextlib.suppress(Exception):
                self.store.update(self.id, change)

    def _native_scope_args(self) -> list[str]:
        """The shim's own scope for the native monitor: made and moved into by the monitor
        after SCOPE_DELAY (a container done sooner never has one) and removed by it at the
        end, as the Python loop does. A systemd scope is a unit, not files: moved into now;
        systemd removes it once empty.

        That needs the cgroup driver. Loaded already (the agent's zygote preloads it; a
        container with a cgroup loads it), the scope is made here. Otherwise (a CLI's shim)
        its ~10-20 ms of imports would delay every exit record: the monitor runs this
        module's :func:`scope_helper_main` when the move is due instead, and reads the
        helper's plan at the end."""
        args = ["--scope-delay-ms", str(round(SCOPE_DELAY * 1000))]
        if "agent.runtime.cgroups" not in sys.modules:
            plan = os.path.join(self.dir, SCOPE_PLAN)
            args += ["--scope-plan", plan]
            for arg in _entry("scope_helper_main", plan, self.id):
                args += ["--scope-helper-arg", arg]
            return args
        try:
            mgr, scope, shims = _scope_layout(self.id)
            if scope is None:
                mgr.create()
                mgr.apply(os.getpid())
                return []
        except Exception:
            return []  # as the Python loop: the monitor keeps working where it is
        for path in scope:  # the monitor makes these when the move is due
            args += ["--scope-procs", f"{path}/cgroup.procs", "--scope-dir", path]
        for path in shims:
            args += ["--slice-procs", f"{path}/cgroup.procs"]
        return args

    def monitor(self, pid: int) -> NoReturn:
        """Log output, record exits, restart per policy; exit when the container is done."""
        self.scope_due = time.monotonic() + SCOPE_DELAY
        while True:
            status = self._pump_until_exit(pid)
            restart = self._record_exit(status)
            if not restart:
                break
            pid = self._restart()
            if not pid:
                break
        if self.log is not None:
            self.log.close()
        if self.scope_due is None:  # we moved into our scope: take it away again
            self._remove_own_scope()
        os._exit(0)

    def _remove_own_scope(self) -> None:
        """Step out into the shims' slice and remove our scope, so a container deleted by
        just removing its files (or never deleted) leaves no empty cgroup behind."""
        with contextlib.suppress(Exception):
            from agent.runtime.cgroups import new_manager

            new_manager(SHIM_SLICE).apply(os.getpid())
            new_manager(shim_cgroup(self.id)).destroy()

    def _leave_caller_cgroup(self) -> None:
        """Once the container has run for SCOPE_DELAY: move into the shim's own scope, out of
        the caller's cgroup (so stopping the agent's cgroup does not take the monitors with
        it)."""
        with contextlib.suppress(Exception):
            from agent.runtime.cgroups import new_manager

            mgr = new_manager(shim_cgroup(self.id))
            mgr.create()
            mgr.apply(os.getpid())

    def _pump_until_exit(self, pid: int) -> int:
        """Copy output to the log until ``pid`` exited and its pipes are drained; reap every
        child on the way (orphans re-parented to us, and ``pid`` itself)."""
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        for fd in self.pipes:
            poller.register(fd, select.POLLIN)
        exited_at: float | None = None
        wait_status = 0
        while True:
            timeout = 1000 if exited_at is None else 20
            if self.scope_due is not None and exited_at is None:
                due_in = self.scope_due - time.monotonic()
                if due_in <= 0:
                    self.scope_due = None
                    self._leave_caller_cgroup()
                else:
                    timeout = min(timeout, int(due_in * 1000) + 1)
            for fd, _ in poller.poll(timeout):
                if fd == pidfd:
                    poller.unregister(pidfd)
                elif not self._read_pipe(fd):
                    poller.unregister(fd)
            for child, status in self._reap_children():
                if child == pid:
                    wait_status = status
                    exited_at = time.monotonic()
            if exited_at is not None and (
                not self.pipes or time.monotonic() - exited_at > _DRAIN_SECONDS
            ):
                break
        os.close(pidfd)
        for fd in list(self.pipes):
            os.close(fd)
        self.pipes = {}
        return wait_status

    def _read_pipe(self, fd: int) -> bool:
        data = os.read(fd, 65536)
        if not data:
            os.close(fd)
            del self.pipes[fd]
            return False
        if self.log is not None:
            self.log.write(self.pipes[fd], data)
        return True

    def _reap_children(self) -> list[tuple[int, int]]:
        reaped = []
        with contextlib.suppress(ChildProcessError):
            while True:
                child, status = os.waitpid(-1, os.WNOHANG)
                if child <= 0:
                    break
                reaped.append((child, status))
        return reaped

    def _record_exit(self, wait_status: int) -> bool:
        """Write the exit into the state; say whether the restart policy wants another run."""
        if self.log is not None:
            self.log.flush()
        code = exit_code_of(wait_status)
        oom = self._oom_killed()
        if not oom and code == 128 + signal.SIGKILL:
            # The OOM killer counts its kill after sending SIGKILL: on a busy host the victim
            # can be reaped before the count moves. Look again, briefly, for a SIGKILL only.
            deadline = time.monotonic() + _OOM_COUNT_WAIT
            while not oom and time.monotonic() < deadline:
                time.sleep(0.005)
                oom = self._oom_killed()
        decision = {"restart": False}

        def change(state: dict[str, Any]) -> None:
            state.update(status="stopped", exit_code=code, finished_at=time.time(), oom_killed=oom)
            decision["restart"] = self._wants_restart(state)

        try:
            self.store.update(self.id, change)
        except (FileNotFoundError, LookupError):
            return False  # deleted while running
        return decision["restart"]

    def _wants_restart(self, state: dict[str, Any]) -> bool:
        """The restart policy's verdict on the exit ``state`` records."""
        if state.get("stop_requested") or state.get("start_requested") is False:
            return False
        policy = self.config.restart
        count = int(state.get("restart_count", 0))
        if policy.name == "always":
            return True
        if policy.name == "on-failure" and state.get("exit_code") != 0:
            return not policy.max_retries or count < policy.max_retries
        return False

    def resume(self) -> int:
        """After the native monitor saw the process exit (and exec'd us): fold its exit
        record into state.json for good, then restart per policy; the new pid, or 0."""
        decision = {"restart": False}

        def change(state: dict[str, Any]) -> None:  # read() folded the record in
            decision["restart"] = state.get("status") == "stopped" and self._wants_restart(state)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, EXIT_FILE))

        try:
            self.store.update(self.id, change)
        except (FileNotFoundError, LookupError):
            return 0  # deleted meanwhile
        if self.cgroup is not None:
            with contextlib.suppress(Exception):
                self.oom_seen = int(self.cgroup.oom_kills())
        return self._restart() if decision["restart"] else 0

    def _oom_killed(self) -> bool:
        if self.cgroup is None:
            return False
        try:
            kills = int(self.cgroup.oom_kills())
        except Exception:
            return False
        seen, self.oom_seen = self.oom_seen, kills
        return kills > seen

    def _restart(self) -> int:
        state = self.store.read(self.id)
        count = int(state.get("restart_count", 0))
        time.sleep(min(0.1 * 2**count, 5.0))
        try:
            pid = self._spawn(None)
        except (RuntimeFailure, OSError) as exc:
            if self.log is not None:
                self.log.write("stderr", f"corral-shim: restart failed: {exc}\n".encode())
            return 0
        stop = {"requested": False}

        def change(st: dict[str, Any]) -> None:
            stop["requested"] = bool(st.get("stop_requested"))
            st.update(
                status="running",
                pid=pid,
                pid_start_time=proc_start_time(pid),
                restart_count=count + 1,
                started_at=time.time(),
                exit_code=None,
            )

        try:
            self.store.update(self.id, change)
        except LookupError:
            stop["requested"] = True
        if stop["requested"]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return pid


class _CgroupOnFirstApply:
    """The container's cgroup, made when ``spawn`` first moves a process into it. On cgroup
    v1 making it (a directory and limits per hierarchy) takes milliseconds; ``spawn`` moves
    the init while the init builds its rootfs, so this way the making overlaps that too."""

    def __init__(self, shim: Shim) -> None:
        self.shim = shim

    def apply(self, pid: int) -> None:
        mgr = self.shim.cgroup if self.shim.cgroup is not None else self.shim._make_cgroup()
        mgr.apply(pid)


def _cgroup_step(step: str, action: Any) -> Any:
    try:
        return action()
    except OSError as exc:
        raise RuntimeFailure.from_os(step, exc) from None
    except RuntimeFailure:
        raise
    except Exception as exc:  # CgroupError names its own field
        raise RuntimeFailure(step, str(exc), getattr(exc, "errno", None)) from None


def run_shim(
    linux: Linux,
    store: StateStore,
    container_id: str,
    config: Config,
    result_fd: int,
    preserve_fds: tuple[int, ...] = (),
    *,
    spare: bool = False,
    console_socket: str | None = None,
) -> NoReturn:
    """Body of the shim process: create the container, report to the caller, then monitor.
    ``preserve_fds`` become fds 3.. of the container process (OCI ``--preserve-fds``).
    ``spare``: this process detached ahead of time (zygote) and, as nobody waits to undo it,
    removes the container's directory itself when the create fails. ``console_socket``
    receives the pty master when the process has a terminal."""
    # What we inherited from the caller stays shared copy-on-write: frozen, a collection never
    # walks (and so copies) it. Collection is on for what the monitor itself allocates over
    # its long life (a short-lived caller, the CLI, turns it off).
    gc.freeze()
    gc.enable()
    shim = Shim(linux, store, container_id, config)
    shim.extra_fds = tuple(preserve_fds)
    shim.console_socket = console_socket
    try:
        if not spare:
            shim.detach(result_fd, *preserve_fds)
        pid = shim.create()
        start_time = proc_start_time(pid)
        native = native_monitor() if console_socket is None else None
        state = {
            "ociVersion": "1.0.2",
            "id": container_id,
            "status": "created",
            "pid": pid,
            "pid_start_time": start_time,
            "bundle": config.bundle,
            "rootfs": config.root_path,
            "annotations": config.annotations,
            "created": iso_now(),
            "shim_pid": os.getpid(),
            "cgroups_path": config.cgroups_path,
            "restart_count": 0,
            "exit_code": None,
            "start_timings": [*shim.timings, *process_mod.LAST_TIMINGS],
            "warnings": list(process_mod.LAST_WARNINGS),
            "monitor": "native" if native else "python",
        }
        store.write(container_id, state)
        # The OCI state comes along, so the caller need not read back what we just wrote.
        report = {"pid": pid, "state": oci_state(state)}
        os.write(result_fd, json.dumps(report).encode() + b"\n")
        os.close(result_fd)
    except BaseException as exc:
        failure = exc if isinstance(exc, RuntimeFailure) else RuntimeFailure("shim", repr(exc))
        if shim.cgroup is not None:
            with contextlib.suppress(Exception):
                shim.cgroup.destroy()
        if spare:
            store.remove(container_id)
        with contextlib.suppress(OSError):
            os.write(result_fd, json.dumps({"error": failure.to_dict()}).encode() + b"\n")
        os._exit(1)
    try:
        if native:
            shim.exec_native(native, pid)
        shim.monitor(pid)
    except BaseException as exc:  # nobody sees our stderr: leave the reason in the log
        if shim.log is not None:
            shim.log.write("shim", f"corral-shim: monitor failed: {exc!r}\n".encode())
            shim.log.flush()
        os._exit(1)


def resume_main(args: list[str]) -> NoReturn:
    """Entry point of a shim the native monitor exec'd after an exit: ``ROOT ID FDS`` (FDS:
    the comma-separated fds kept for every run of the process). Restarts the process per
    policy and becomes its monitor again; exits when the policy is done with it."""
    from agent.runtime.config import load_config
    from agent.runtime.linux import LINUX

    root, container_id, fds = args
    store = StateStore(root)
    try:
        config = load_config(store.read(container_id)["bundle"])
    except Exception:
        os._exit(1)  # deleted meanwhile, or its bundle is gone: the exit stays recorded
    shim = Shim(LINUX, store, container_id, config)
    shim.extra_fds = tuple(int(fd) for fd in fds.split(",") if fd)
    try:
        shim.cgroup = cgroup_manager(config)
        shim._join_network_namespace()  # we are in it already: this drops it from the config
        max_bytes = int(config.annotations.get("run.corral.log.max-bytes", DEFAULT_LOG_MAX))
        shim.log = LogWriter(os.path.join(shim.dir, LOG), max_bytes)
        pid = shim.resume()
        if not pid:
            shim.log.close()
            os._exit(0)
        native = native_monitor()
        if native:
            shim.exec_native(native, pid)
        shim.monitor(pid)
    except BaseException as exc:
        if shim.log is not None:
            shim.log.write("shim", f"corral-shim: resume failed: {exc!r}\n".encode())
            shim.log.flush()
        os._exit(1)


def scope_helper_main(args: list[str]) -> NoReturn:
    """Run by the native monitor (its child) when its move into the shim's scope is due and
    it was not told where the scope is: ``PLAN ID``. Makes the scope, moves the monitor in,
    and writes where it must step out to and what to remove at the end."""
    plan, container_id = args
    monitor = os.getppid()
    with contextlib.suppress(Exception):
        mgr, scope, shims = _scope_layout(container_id)
        mgr.create()
        mgr.apply(monitor)
        # A systemd scope (scope None) goes away by itself once empty: nothing to undo.
        lines = [f"dir {d}" for d in scope or ()] + [f"slice {d}/cgroup.procs" for d in shims]
        write_atomic(plan, "".join(f"{line}\n" for line in lines))
    os._exit(0)


def _scope_layout(container_id: str) -> tuple[Any, list[str] | None, list[str]]:
    """The shim's scope: its manager, its directories (one per hierarchy) and the shims'
    slice's, each a real path once (``cpu`` and ``cpuacct`` may be one hierarchy). Under
    systemd, whose scopes are units made and entered through the driver, no directories."""
    from agent.runtime.cgroups import new_manager

    mgr = new_manager(shim_cgroup(container_id))
    dirs = mgr.dirs()
    if dirs is None:
        return mgr, None, []
    shims = new_manager(SHIM_SLICE)
    shims.create()  # once per host; the scope itself is made only when the move is due
    return mgr, _real_once(dirs), _real_once(shims.dirs() or [])


def _real_once(dirs: list[str]) -> list[str]:
    return list(dict.fromkeys(os.path.realpath(d) for d in dirs))
