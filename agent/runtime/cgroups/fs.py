"""The filesystem seam of the cgroup drivers: every read, write, mkdir and rmdir goes here.

All paths are relative to ``root`` (normally ``/sys/fs/cgroup``), so the v2 and systemd
drivers run unchanged against a fake cgroup2 tree in a temporary directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time

from agent.runtime.cgroups.base import CgroupError

CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_SUPER_MAGIC = 0x0027E0EB
TMPFS_MAGIC = 0x01021994

# The C library the interpreter already has loaded (dlopen(NULL)): ctypes.util.find_library
# would run ``ldconfig -p`` in a subprocess, milliseconds on every shim and CLI start.
_libc = ctypes.CDLL(None, use_errno=True)


def statfs_type(path: str) -> int:
    """``f_type`` of ``statfs(2)`` on ``path`` (``os.statvfs`` does not expose it).

    ``struct statfs`` starts with ``__fsword_t f_type`` (a C long on every Linux ABI we run
    on); the 256-byte buffer is larger than the whole struct (120 bytes on x86_64).
    """
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise CgroupError("detect", path, f"statfs: {os.strerror(err)}", errno=err)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


class CgroupFS:
    """Cgroup file access below ``root``. ``path`` arguments are relative ("a/b/cpu.max")."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"

    def abspath(self, rel: str) -> str:
        """The real path of ``rel`` under the root (plain strings: a start touches ~100
        paths, and building each as a ``pathlib.Path`` cost more than the cgroup work)."""
        parts = [p for p in rel.split("/") if p and p != "."]
        if not parts:
            return self.root
        return f"{self.root.rstrip('/')}/{'/'.join(parts)}"

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.abspath(rel))

    def read(self, rel: str) -> str:
        with open(self.abspath(rel), encoding="ascii") as fh:
            return fh.read()

    def read_int(self, rel: str, default: int = 0) -> int:
        """An integer file; ``default`` when missing (older kernels lack e.g. memory.peak)."""
        try:
            text = self.read(rel).strip()
        except FileNotFoundError:
            return default
        return -1 if text == "max" else int(text)

    def read_keyed(self, rel: str) -> dict[str, int]:
        """A flat-keyed file (``memory.events``, ``cpu.stat``, ``memory.oom_control``)."""
        try:
            text = self.read(rel)
        except FileNotFoundError:
            return {}
        out: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def write(self, rel: str, value: str, *, step: str = "set") -> None:
        """Write one value. ``O_WRONLY|O_TRUNC`` and never ``O_CREAT``: cgroup files exist
        or the controller is missing, and creating a regular file would hide that."""
        path = self.abspath(rel)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError as exc:
            raise CgroupError(step, rel, f"open: {exc.strerror}", errno=exc.errno) from exc
        try:
            os.write(fd, value.encode("ascii"))
        except OSError as exc:
            raise CgroupError(
                step, rel, f"write {value!r}: {exc.strerror}", errno=exc.errno
            ) from exc
        finally:
            os.close(fd)

    def mkdir(self, rel: str) -> bool:
        """Create one directory; ``False`` if it already existed."""
        try:
            os.mkdir(self.abspath(rel), 0o755)
        except FileExistsError:
            return False
        except OSError as exc:
            raise CgroupError("create", rel, f"mkdir: {exc.strerror}", errno=exc.errno) from exc
        return True

    def subdirs(self, rel: str) -> list[str]:
        try:
            entries = list(os.scandir(self.abspath(rel)))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))

    def rmdir_tree(self, rel: str, *, timeout: float = 1.0) -> None:
        """Remove ``rel`` and its sub-cgroups child-first. A cgroup stays EBUSY for a moment
        after its last process exits (the kernel reaps it asynchronously), so retry briefly."""
        for child in self.subdirs(rel):
            self.rmdir_tree(f"{rel}/{child}", timeout=timeout)
        self._rmdir_one(rel, timeout)

    def _rmdir_one(self, rel: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                self._remove(self.abspath(rel))
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise CgroupError(
                        "destroy", rel, f"rmdir: {exc.strerror}", errno=exc.errno
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _remove(self, path: str) -> None:
        """``rmdir`` a cgroup. Real cgroupfs directories hold only virtual files, so a plain
        ``rmdir`` is right; a fake tree overrides this to delete its regular files first."""
        os.rmdir(path)

    def open_dir(self, rel: str) -> int:
        path = self.abspath(rel)
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise CgroupError("open_fd", rel, exc.strerror or "open", errno=exc.errno) from exc
