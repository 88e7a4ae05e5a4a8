"""The container's filesystem: root (overlayfs or bind), OCI mounts, /dev, pivot_root, masked
and read-only paths.

Runs inside the container's new mount namespace, so nothing mounted here is visible on the host
and everything disappears with the namespace. Destinations inside the rootfs are resolved with
``openat2(RESOLVE_IN_ROOT)`` and mounted through ``/proc/self/fd/N``: a symlink planted in an
image (``/etc -> /``) can never redirect a mount onto the host.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import Callable

from agent.runtime.config import Config, Mount
from agent.runtime.errors import RuntimeFailure
from agent.runtime.linux import (
    MNT_DETACH,
    MS_BIND,
    MS_DIRSYNC,
    MS_MANDLOCK,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_NOSYMFOLLOW,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    MS_STRICTATIME,
    MS_SYNCHRONOUS,
    MS_UNBINDABLE,
    O_PATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    Linux,
)

# OCI mount options -> (flags to set, flags to clear).
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY), "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV), "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC), "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0), "mand": (MS_MANDLOCK, 0), "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME), "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME), "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0), "nostrictatime": (0, MS_STRICTATIME),
    "bind": (MS_BIND, 0), "rbind": (MS_BIND | MS_REC, 0), "nosymfollow": (MS_NOSYMFOLLOW, 0),
}  # fmt: skip
_PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC, "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}  # fmt: skip
# Flags a bind remount must keep in a user namespace (the kernel locks them).
_STATVFS_LOCKED = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEFAULT_SYMLINKS = (
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
)
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


def parse_options(options: tuple[str, ...]) -> tuple[int, int, str]:
    """OCI mount options -> (mount flags, propagation flags, filesystem data string)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAG_OPTIONS:
            set_, clear = _FLAG_OPTIONS[opt]
            flags = (flags | set_) & ~clear
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class Rootfs:
    """Builds one container's filesystem. ``linux`` is the OS seam; ``selinux`` says whether
    ``context=`` mount labels apply on this host."""

    def __init__(self, linux: Linux, config: Config, *, selinux: bool = False) -> None:
        self.linux = linux
        self.config = config
        self.selinux = selinux
        self.root_fd = -1
        self.timings: list[tuple[str, float]] = []  # (step, ms): where start time goes

    # --- the sequence -------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before pivot_root: propagation, root, mounts, /dev."""
        self._step("rootfs.propagation", self._make_private)
        self._step("rootfs.root", self._mount_root)
        self.root_fd = os.open(self.config.root_path, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for i, mnt in enumerate(self.config.mounts):
            self._step(f"rootfs.mounts[{i}] {mnt.destination}", functools.partial(self._mount, mnt))
        if any(m.destination == "/dev" for m in self.config.mounts):
            self._step("rootfs.devices", self._populate_dev)

    def finish(self) -> None:
        """pivot_root, then what must happen inside the new root."""
        self._step("rootfs.pivot_root", self._pivot_root)
        for key, value in self.config.sysctl.items():
            path = "/proc/sys/" + key.replace(".", "/")
            self._step(
                f"rootfs.sysctl {key}", functools.partial(self.linux.write_file, path, value)
            )
        for path in self.config.masked_paths:
            self._step(f"rootfs.maskedPaths {path}", functools.partial(self._mask, path))
        for path in self.config.readonly_paths:
            self._step(f"rootfs.readonlyPaths {path}", functools.partial(self._readonly, path))
        if self.config.root_readonly:
            self._step("rootfs.readonly", lambda: self._remount_ro("/", MS_BIND))

    # --- steps --------------------------------------------------------------------------
    def _step(self, name: str, action: Callable[[], None]) -> None:
        started = time.perf_counter()
        try:
            action()
        except OSError as exc:
            raise RuntimeFailure.from_os(name, exc) from None
        self.timings.append((name, round((time.perf_counter() - started) * 1000, 3)))

    def _make_private(self) -> None:
        prop = _PROPAGATION.get(self.config.rootfs_propagation or "rprivate", MS_PRIVATE | MS_REC)
        # The whole tree first becomes private (so nothing leaks back to the host), then the
        # requested propagation is applied on top.
        self.linux.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        if prop & (MS_SLAVE | MS_SHARED):
            self.linux.mount(None, "/", None, prop, None)

    def _mount_root(self) -> None:
        root = self.config.root_path
        lower = self.config.lower_dirs
        if lower:
            from agent.runtime.config import ANN_UPPER, ANN_WORK

            upper = self.config.annotations.get(ANN_UPPER)
            work = self.config.annotations.get(ANN_WORK)
            data = f"lowerdir={':'.join(lower)}"
            if upper and work:
                data += f",upperdir={upper},workdir={work}"
            self.linux.mount("overlay", root, "overlay", 0, self._label(data))
        else:
            self.linux.mount(root, root, None, MS_BIND | MS_REC, None)

    def _label(self, data: str) -> str:
        if self.selinux and self.config.mount_label:
            context = f'context="{self.config.mount_label}"'
            return f"{data},{context}" if data else context
        return data

    def _mount(self, mnt: Mount) -> None:
        flags, propagation, data = parse_options(mnt.options)
        is_bind = bool(flags & MS_BIND)
        source = mnt.source
        if is_bind and source and not source.startswith("/"):
            source = os.path.join(self.config.bundle, source)
        want_file = is_bind and bool(source) and not os.path.isdir(source)
        fd = self.resolve(mnt.destination, directory=not want_file)
        try:
            target = fd_path(fd)
            if is_bind:
                self.linux.mount(source, target, None, flags & (MS_BIND | MS_REC), None)
                extra = flags & ~(MS_BIND | MS_REC)
                if extra:
                    # A bind mount ignores other flags; they need a remount of the new mount.
                    self._remount_bind(mnt.destination, extra)
            else:
                if mnt.type not in ("proc", "sysfs", "mqueue", "cgroup", "cgroup2"):
                    data = self._label(data)
                self.linux.mount(mnt.source or mnt.type, target, mnt.type, flags, data or None)
            if propagation:
                self._with_resolved(
                    mnt.destination, lambda t: self.linux.mount(None, t, None, propagation, None)
                )
        finally:
            os.close(fd)

    def _remount_bind(self, destination: str, flags: int) -> None:
        def remount(target: str) -> None:
            self.linux.mount(
                None, target, None, MS_BIND | MS_REMOUNT | flags | _locked(target), None
            )

        self._with_resolved(destination, remount)

    def _with_resolved(self, destination: str, action: Callable[[str], None]) -> None:
        fd = self.resolve(destination, directory=True, create=False)
        try:
            action(fd_path(fd))
        finally:
            os.close(fd)

    def _populate_dev(self) -> None:
        dev_fd = self.resolve("/dev", directory=True)
        try:
            for name in DEFAULT_DEVICES:
                if not os.path.exists(f"/dev/{name}"):
                    continue
                node = self.resolve(f"/dev/{name}", directory=False)
                try:
                    self.linux.mount(f"/dev/{name}", fd_path(node), None, MS_BIND, None)
                finally:
                    os.close(node)
            for target, name in DEFAULT_SYMLINKS:
                with contextlib.suppress(FileExistsError):
                    os.symlink(target, name, dir_fd=dev_fd)
        finally:
            os.close(dev_fd)

    def _pivot_root(self) -> None:
        old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        new_root = os.open(self.config.root_path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(new_root)
            self.linux.pivot_root(".", ".")
            # The old root is now stacked on "."; detach it without propagating the unmount.
            os.fchdir(old_root)
            self.linux.mount(None, ".", None, MS_SLAVE | MS_REC, None)
            self.linux.umount2(".", MNT_DETACH)
            os.chdir("/")
        finally:
            os.close(old_root)
            os.close(new_root)
            if self.root_fd >= 0:
                os.close(self.root_fd)
                self.root_fd = -1

    def _mask(self, path: str) -> None:
        try:
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if not os.path.lexists(path):
                return
        except OSError:
            return
        if is_dir:
            self.linux.mount("tmpfs", path, "tmpfs", MS_RDONLY, self._label("") or None)
        else:
            self.linux.mount("/dev/null", path, None, MS_BIND, None)

    def _readonly(self, path: str) -> None:
        if not os.path.lexists(path):
            return
        self.linux.mount(path, path, None, MS_BIND | MS_REC, None)
        self._remount_ro(path, MS_BIND | MS_REC)

    def _remount_ro(self, path: str, extra: int) -> None:
        self.linux.mount(None, path, None, MS_REMOUNT | MS_RDONLY | extra | _locked(path), None)

    # --- safe resolution ----------------------------------------------------------------
    def resolve(self, path: str, *, directory: bool, create: bool = True) -> int:
        """An O_PATH fd for ``path`` inside the rootfs, never leaving it (symlinks and ``..``
        are resolved as if the rootfs were ``/``). Missing components are created."""
        try:
            return self.linux.openat2(self.root_fd, path, O_PATH, _RESOLVE)
        except FileNotFoundError:
            if not create:
                raise
        parent, _, name = path.rstrip("/").rpartition("/")
        parent_fd = self.resolve(parent or "/", directory=True)
        try:
            if directory:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
            else:
                flags = os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(name, flags, 0o644, dir_fd=parent_fd))
        finally:
            os.close(parent_fd)
        return self.linux.openat2(self.root_fd, path, O_PATH, _RESOLVE)


def _locked(path: str) -> int:
    """Flags of the mount at ``path`` that a remount must keep (locked in user namespaces)."""
    try:
        st_flags = os.statvfs(path).f_flag
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return 0
        raise
    return sum(ms for st, ms in _STATVFS_LOCKED if st_flags & st)
