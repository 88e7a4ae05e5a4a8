"""The OCI runtime operations: create, start, state, kill, delete, plus run, exec, list, ps.

``create`` validates the bundle's config before touching the host, makes the state directory
and exec fifo, and hands the rest to a detached shim; every step it took is undone through an
``ExitStack`` if a later one fails, so a failed create leaves no state, cgroup or mount.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import select
import signal
import time

from agent.runtime.errors import ConfigError, ContainerNotFound, RuntimeFailure
from agent.runtime.linux import LINUX, NAMESPACE_PROC_NAMES, Linux
from agent.runtime.scope import shim_cgroup, shim_cgroups_may_exist
from agent.runtime.state import (
    DEFAULT_ROOT,
    FIFO,
    LOG,
    StateStore,
    live_status,
    oci_state,
    proc_start_time,
    wait_pid_gone,
    write_atomic,
)

# The config, the start sequence and the shim (and with them dataclasses, sockets...) are
# imported by the operations that start something: ``start``, ``state``, ``kill`` and
# ``delete`` from the CLI load none of it. The block below is for type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NoReturn

    from agent.runtime.config import Config
    from agent.runtime.process import Stdio

START_TIMEOUT = 10.0
_POLL = 0.002  # seconds between state reads when no process exit can tell us more
# Once the container process is gone, the monitor records its exit within about a
# millisecond, but its own exit (for the Python monitor, tearing down a ~17 MB process) can come
# several milliseconds later: until it does, the state is re-read this often, not every _POLL.
_RECORD_POLL = 0.0005


def parse_signal(value: str | int) -> int:
    """``9``, ``KILL`` or ``SIGKILL`` -> 9; an error names the signal otherwise."""
    if isinstance(value, int) or value.isdigit():
        num = int(value)
        if 0 < num < signal.NSIG:
            return num
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        sig = getattr(signal.Signals, name, None)
        if sig is not None:
            return int(sig)
    raise RuntimeFailure("signal", f"unknown signal {value!r}")


class Runtime:
    """One state root (``--root``). All methods raise :class:`RuntimeFailure` naming the step,
    :class:`ContainerNotFound`, or :class:`ConfigError` naming the field."""

    def __init__(
        self, root: str | Path = DEFAULT_ROOT, linux: Linux = LINUX, *, double_fork: bool = True
    ) -> None:
        self.store = StateStore(root)
        self.linux = linux
        # The zygote forks shims once and reaps them itself; a long-lived caller double-forks
        # so the shim is nobody's child (the CLI, about to exit, forks once).
        self.double_fork = double_fork

    # --- create / start -----------------------------------------------------------------
    def create(
        self,
        container_id: str,
        bundle: str | Path,
        *,
        pid_file: str | None = None,
        preserve_fds: tuple[int, ...] = (),
        console_socket: str | None = None,
    ) -> dict[str, Any]:
        """``preserve_fds`` (ours) become fds 3, 4, ... of the container process, as OCI
        ``--preserve-fds`` does with the caller's 3..; the shim keeps them for restarts.
        ``console_socket`` (a unix socket path) receives the pty master when the config asks
        for a terminal (``process.terminal``), which then requires it."""
        from agent.runtime.config import load_config
        from agent.runtime.terminal import check_console

        config = load_config(bundle)
        check_console(config, console_socket)
        with contextlib.ExitStack() as undo:
            path = self.store.make_dir(container_id)
            undo.callback(self.store.remove, container_id)
            self._make_fifo(os.path.join(path, FIFO), config)
            pid = self._launch_shim(container_id, config, tuple(preserve_fds), console_socket)
            if pid_file:
                write_atomic(os.path.realpath(pid_file), str(pid))
            undo.pop_all()
        return self.state(container_id)

    def _make_fifo(self, path: str, config: Config) -> None:
        """The exec fifo; writable by the container's user (it opens it after dropping to it),
        owned by the host ids of the container's root, as runc does."""
        os.mkfifo(path, 0o600)
        os.chmod(path, 0o622)  # noqa: S103 - the dir is 0700; the user must write it
        uid = next((m.host_id for m in config.uid_mappings if m.container_id == 0), 0)
        gid = next((m.host_id for m in config.gid_mappings if m.container_id == 0), 0)
        if uid or gid:
            os.chown(path, uid, gid)

    def _launch_shim(
        self,
        container_id: str,
        config: Config,
        preserve_fds: tuple[int, ...] = (),
        console_socket: str | None = None,
    ) -> int:
        """Double fork: the shim is re-parented away from us and reports on a pipe."""
        from agent.runtime.shim import run_shim

        read_fd, write_fd = os.pipe()
        middle = os.fork()
        if middle == 0:
            try:
                os.close(read_fd)
                if not self.double_fork or os.fork() == 0:
                    run_shim(
                        self.linux,
                        self.store,
                        container_id,
                        config,
                        write_fd,
                        preserve_fds,
                        console_socket=console_socket,
                    )
            finally:
                os._exit(0)
        os.close(write_fd)
        if self.double_fork:
            os.waitpid(middle, 0)
        from agent.runtime.report import read_shim_report

        try:
            return int(read_shim_report(read_fd)["pid"])
        finally:
            os.close(read_fd)

    def create_in_spare(
        self, container_id: str, bundle: str, result_fd: int, preserve_fds: tuple[int, ...]
    ) -> NoReturn:
        """``create`` run inside a spare shim (a process the zygote forked and detached before
        the request came): the same checks and steps, then this process becomes the
        container's shim. Failures are undone here and reported on ``result_fd``."""
        from agent.runtime.config import load_config
        from agent.runtime.report import report_failure
        from agent.runtime.shim import run_shim
        from agent.runtime.terminal import check_console

        try:
            config = load_config(bundle)
            check_console(config, None)
            self.store.make_dir(container_id)
        except (ConfigError, RuntimeFailure, OSError) as exc:
            report_failure(result_fd, exc)
        try:
            self._make_fifo(self.store.path(container_id, FIFO), config)
        except OSError as exc:
            self.store.remove(container_id)
            report_failure(result_fd, exc)
        run_shim(self.linux, self.store, container_id, config, result_fd, preserve_fds, spare=True)

    def start(self, container_id: str) -> None:
        """Let the created container exec its process (OCI ``start``)."""
        state = self.store.read(container_id)
        status = live_status(state)
        if status != "created":
            raise RuntimeFailure("start", f"container {container_id} is {status}, not created")
        fifo = self.store.path(container_id, FIFO)
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._wait_fifo(fd, state)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo)

        def change(st: dict[str, Any]) -> None:
            if st.get("status") == "created":
                st.update(status="running", started_at=time.time())

        self.store.update(container_id, change)

    def _wait_fifo(self, fd: int, state: dict[str, Any]) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if poller.poll(50):
                with contextlib.suppress(BlockingIOError):
                    if os.read(fd, 1):
                        return
            if live_status(state) == "stopped":
                raise RuntimeFailure("start", "the container process exited before start")
        raise RuntimeFailure(
            "start", "timed out waiting for the container process", errno.ETIMEDOUT
        )

    # --- inspect ------------------------------------------------------------------------
    def state(self, container_id: str) -> dict[str, Any]:
        return oci_state(self.store.read(container_id))

    def raw_state(self, container_id: str) -> dict[str, Any]:
        """The whole state file (exit code, restart count, shim pid...)."""
        state = self.store.read(container_id)
        state["status"] = live_status(state)
        return state

    def list(self) -> builtins.list[dict[str, Any]]:
        out = []
        for cid in self.store.ids():
            with contextlib.suppress(ContainerNotFound):
                out.append(self.state(cid))
        return out

    def ps(self, container_id: str) -> builtins.list[int]:
        state = self.store.read(container_id)
        if state.get("cgroups_path"):
            with contextlib.suppress(Exception):
                from agent.runtime.cgroups import new_manager

                pids: builtins.list[int] = new_manager(state["cgroups_path"]).pids()
                return pids
        return [state["pid"]] if live_status(state) in ("created", "running") else []

    # --- stop / delete ------------------------------------------------------------------
    def kill(self, container_id: str, sig: str | int = signal.SIGTERM) -> None:
        signum = parse_signal(sig)
        state = self.store.read(container_id)
        if live_status(state) not in ("created", "running"):
            raise RuntimeFailure("kill", f"container {container_id} is not running")
        try:
            os.kill(int(state["pid"]), signum)
        except ProcessLookupError:
            raise RuntimeFailure("kill", "container process is gone", errno.ESRCH) from None

    def request_stop(self, container_id: str, requested: bool = True) -> None:
        """Tell the shim not to restart the container when it next exits (or to again)."""

        def change(st: dict[str, Any]) -> None:
            st["stop_requested"] = requested

        self.store.update(container_id, change)

    def wait(self, container_id: str, timeout: float | None = None) -> int | None:
        """Wait until the container process exited and the shim recorded it; the exit code.

        Sleeps on pidfds rather than a timer: first on the container's process, then on its
        shim, which exits right after recording the exit, re-reading the state every 0.5 ms
        meanwhile (the record comes well before the shim's exit). Only when a restart policy
        keeps the shim (or the shim is gone) is the state re-read every 2 ms."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shim_gone = False
        while True:
            state = self.store.read(container_id)
            if state.get("status") == "stopped" and state.get("exit_code") is not None:
                return int(state["exit_code"])
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            poll = _POLL if remaining is None else min(remaining, _POLL)
            if live_status(state) in ("created", "running"):
                wait_pid_gone(state.get("pid"), state.get("pid_start_time"), remaining)
            elif not shim_gone:
                shim = int(state.get("shim_pid") or 0)
                shim_start = proc_start_time(shim) if shim else None
                shim_gone = wait_pid_gone(shim, shim_start, min(poll, _RECORD_POLL))
            else:
                time.sleep(poll)

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Remove a stopped container (``force``: kill it first). Leaves no cgroup or state."""
        state = self.store.read(container_id)
        if live_status(state) in ("created", "running"):
            if not force:
                raise RuntimeFailure("delete", f"container {container_id} is running; use --force")
            self.request_stop(container_id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(state["pid"]), signal.SIGKILL)
            self._wait_gone(state)
        if state.get("cgroups_path"):
            self._destroy_cgroup(state["cgroups_path"])
        self._destroy_shim_cgroup(container_id, state)
        self.store.remove(container_id)

    def _wait_gone(self, state: dict[str, Any], timeout: float = 10.0) -> None:
        if not wait_pid_gone(state.get("pid"), state.get("pid_start_time"), timeout):
            raise RuntimeFailure("delete", "container process did not die", errno.ETIMEDOUT)

    def _destroy_shim_cgroup(self, container_id: str, state: dict[str, Any]) -> None:
        """The shim exits right after recording the exit (removing its scope, if it had moved
        into one); once it is gone, remove a scope a killed shim may have left.

        A shim that had already recorded the exit when we read the state moves into no scope
        any more (it does so only while its container runs): when none exists, there is
        nothing to wait for, and its exit (a few ms for the Python monitor) is not waited on."""
        recorded = state.get("status") == "stopped" and state.get("exit_code") is not None
        if recorded and not shim_cgroups_may_exist(container_id):
            return
        shim_pid = int(state.get("shim_pid") or 0)
        if shim_pid:
            wait_pid_gone(shim_pid, proc_start_time(shim_pid), 2.0)
        if not shim_cgroups_may_exist(container_id):
            return  # short-lived containers: no cgroup driver to load, nothing to remove
        from agent.runtime.cgroups import new_manager

        with contextlib.suppress(Exception):
            mgr = new_manager(shim_cgroup(container_id))
            mgr.destroy()
            mgr.remove_parent_if_empty()

    def _destroy_cgroup(self, cgroups_path: str) -> None:
        from agent.runtime.cgroups import new_manager

        mgr = new_manager(cgroups_path)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                pids = mgr.pids()
            except Exception:
                pids = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                mgr.destroy()
                with contextlib.suppress(Exception):
                    mgr.remove_parent_if_empty()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeFailure("delete.cgroup", str(exc)) from None
                time.sleep(0.01)

    # --- run / exec ---------------------------------------------------------------------
    def run(
        self,
        container_id: str,
        bundle: str | Path,
        *,
        echo: bool = False,
        console_socket: str | None = None,
    ) -> int | None:
        """create + start + wait + delete; the exit code. ``echo`` copies the container's
        output to our stdout/stderr (the CLI's foreground ``run``)."""
        self.create(container_id, bundle, console_socket=console_socket)
        try:
            self.start(container_id)
            code = self.wait(container_id)
            if echo:
                self._echo_log(container_id)
            return code
        finally:
            self.delete(container_id, force=True)

    def _echo_log(self, container_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            with open(self.store.path(container_id, LOG)) as fh:
                lines = fh.read().splitlines()
            for line in lines:
                entry = json.loads(line)
                fd = 2 if entry.get("stream") == "stderr" else 1
                os.write(fd, entry["log"].encode())

    def exec(
        self,
        container_id: str,
        args: builtins.list[str],
        *,
        env: builtins.list[str] | None = None,
        cwd: str | None = None,
        stdio: Stdio | None = None,
    ) -> int:
        """Run another process in a running container's namespaces and cgroup; its exit code."""
        from agent.runtime.config import Namespace, Process, load_config
        from agent.runtime.process import Launch, Stdio, spawn
        from agent.runtime.record import replace
        from agent.runtime.shim import cgroup_manager, exit_code_of

        state = self.store.read(container_id)
        if live_status(state) != "running":
            raise RuntimeFailure("exec", f"container {container_id} is not running")
        config = load_config(state["bundle"])
        pid = int(state["pid"])
        joined = tuple(
            Namespace(ns.type, f"/proc/{pid}/ns/{NAMESPACE_PROC_NAMES[ns.type]}")
            for ns in config.namespaces
        )
        process: Process = replace(
            config.process,
            args=tuple(args),
            env=tuple(env) if env is not None else config.process.env,
            cwd=cwd or config.process.cwd,
            terminal=False,  # an exec'd process uses the caller's stdio
        )
        exec_config = replace(config, namespaces=joined, process=process)
        cgroup = cgroup_manager(config)
        launch = Launch(exec_config, stdio or Stdio(0, 1, 2), join_only=True)
        child = spawn(self.linux, launch, cgroup)
        _, status = os.waitpid(child, 0)
        return exit_code_of(status)
