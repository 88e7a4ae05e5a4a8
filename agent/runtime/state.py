"""The runtime's state directory: one directory per container under ``--root`` holding
``state.json`` (OCI state plus what the shim records), the exec fifo and the log.

Writes are atomic (temp file + rename) and read-modify-write happens under an ``flock`` on the
container's directory, because the shim (recording an exit) and the CLI (``start``,
``delete``) update the same file from different processes.

No fsync, on purpose: a process killed at any point (kill -9 of the agent, the CLI or a shim)
leaves either the old or the new state.json, never a torn one, because rename is atomic; at
worst a ``.state.json.<pid>.tmp`` stays, which ``delete`` removes with the directory. Only a
power loss could lose a rename that was not flushed, and the state root lives on /run (tmpfs):
it is empty after a reboot anyway, as are the containers it described.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select

from agent.runtime.errors import ContainerNotFound, RuntimeFailure

# Names for type checkers only: importing typing costs milliseconds on every CLI start, and
# pathlib (with urllib.parse and ipaddress) ~3.5 ms: the store works on strings and hands out
# Path objects only to callers that ask for them (``root``, ``dir``).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import Any

DEFAULT_ROOT = "/run/corral/runtime"
OCI_VERSION = "1.0.2"
STATE_FILE = "state.json"
FIFO = "exec.fifo"
LOG = "ctr.log"
# Written by the native monitor when the container's process exits (it cannot take part in
# the read-modify-write of state.json); folded into the state by StateStore.read.
EXIT_FILE = "exit.json"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-+")


def check_id(container_id: str) -> None:
    """Container ids become directory names: no '/', no '..', not empty."""
    if not container_id or container_id in (".", "..") or not set(container_id) <= _ID_CHARS:
        raise RuntimeFailure("id", f"invalid container id {container_id!r}")
    if len(container_id) > 1024:
        raise RuntimeFailure("id", "container id too long")


def write_atomic(path: str | os.PathLike[str], data: str) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it over ``path``."""
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a process from a later one reusing its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None  # a zombie has exited; only its parent's wait is pending
    return int(fields[19])


def wait_pid_gone(pid: int | None, start_time: int | None, timeout: float | None) -> bool:
    """Wait (on a pidfd, no polling) until the process ``pid`` that started at ``start_time``
    has exited; False on timeout. A pid now used by another process counts as gone."""
    if not pid or start_time is None:
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if proc_start_time(pid) != start_time:
            return True  # it exited (or is a zombie) before we held it
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


class StateStore:
    """Container directories under ``root``."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self.root_path = os.fspath(root)

    @property
    def root(self) -> Path:
        from pathlib import Path

        return Path(self.root_path)

    def dir(self, container_id: str) -> Path:
        from pathlib import Path

        return Path(self.path(container_id))

    def path(self, container_id: str, name: str = "") -> str:
        """The container's directory, or the file ``name`` in it (what the runtime's own
        operations use: a string, no pathlib)."""
        check_id(container_id)
        directory = os.path.join(self.root_path, container_id)
        return os.path.join(directory, name) if name else directory

    def make_dir(self, container_id: str) -> str:
        """Create the container's directory (its path); a second create of the same id fails."""
        os.makedirs(self.root_path, mode=0o700, exist_ok=True)
        path = self.path(container_id)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise RuntimeFailure(
                "state", f"container {container_id!r} already exists", 17
            ) from None
        return path

    def exists(self, container_id: str) -> bool:
        return os.path.exists(self.path(container_id, STATE_FILE))

    def read(self, container_id: str) -> dict[str, Any]:
        try:
            with open(self.path(container_id, STATE_FILE), "rb") as fh:
                data: dict[str, Any] = json.loads(fh.read())
        except FileNotFoundError:
            raise ContainerNotFound(container_id) from None
        if data.get("exit_code") is None and data.get("status") in ("created", "running"):
            fold_exit_record(data, self.path(container_id, EXIT_FILE))
        return data

    def write(self, container_id: str, state: dict[str, Any]) -> None:
        write_atomic(self.path(container_id, STATE_FILE), json.dumps(state, sort_keys=True))

    @contextlib.contextmanager
    def locked(self, container_id: str) -> Iterator[None]:
        """An exclusive ``flock`` on the container's directory (no lock file to create and
        delete for every container)."""
        path = self.path(container_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ContainerNotFound(container_id) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(self, container_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read, let ``change`` edit the dict in place, write back; all under the lock."""
        with self.locked(container_id):
            state = self.read(container_id)
            change(state)
            self.write(container_id, state)
            return state

    def ids(self) -> list[str]:
        if not os.path.isdir(self.root_path):
            return []
        with os.scandir(self.root_path) as entries:
            return sorted(
                e.name for e in entries if os.path.exists(os.path.join(e.path, STATE_FILE))
            )

    def remove(self, container_id: str) -> None:
        """Delete the container's directory. It holds only files (state, lock, fifo, logs),
        so a flat unlink is enough; anything else falls back to ``rmtree``."""
        path = self.path(container_id)
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        raise IsADirectoryError(entry.path)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            os.rmdir(path)
        except FileNotFoundError:
            return
        except OSError:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def fold_exit_record(state: dict[str, Any], path: str) -> None:
    """The native monitor's exit record, if it wrote one, into ``state``: what the Python
    monitor writes into state.json itself (``stopped``, exit code, time, OOM kill)."""
    try:
        with open(path, "rb") as fh:
            record = json.loads(fh.read())
        stopped = {
            "status": "stopped",
            "exit_code": int(record["exit_code"]),
            "finished_at": float(record["finished_at"]),
            "oom_killed": bool(record.get("oom_killed", False)),
        }
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return  # none yet (renamed into place whole, so never a torn one)
    state.update(stopped)


def live_status(state: dict[str, Any]) -> str:
    """created/running as recorded, unless the process is gone: then stopped."""
    status = str(state.get("status", "stopped"))
    if status in ("created", "running"):
        pid = state.get("pid") or 0
        if not pid or proc_start_time(pid) != state.get("pid_start_time"):
            return "stopped"
    return status


def oci_state(state: dict[str, Any]) -> dict[str, Any]:
    """The OCI ``state`` document (what ``corral-runtime state`` prints)."""
    status = live_status(state)
    out: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "id": state["id"],
        "status": status,
        "bundle": state.get("bundle", ""),
        "annotations": state.get("annotations", {}),
    }
    if status in ("created", "running"):
        out["pid"] = state.get("pid", 0)
    extras = ("created", "exit_code", "finished_at", "restart_count", "oom_killed", "rootfs")
    for key in (*extras, "warnings"):
        if key in state:
            out[key] = state[key]
    return out
