"""Creating tar entries inside one directory without ever following a symlink.

Every entry is made relative to directory file descriptors opened with ``O_NOFOLLOW``
(``openat``/``mkdirat``/``mknodat``/``linkat`` through the ``os`` module's ``dir_fd``), so a
symlink planted by the layer itself cannot redirect a write outside the layer. OCI
whiteouts become overlayfs whiteouts here.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from typing import TYPE_CHECKING

from agent.images.errors import (
    ABSOLUTE_PATH,
    DEVICE_NODE,
    HARDLINK_ESCAPE,
    INVALID_LAYER,
    PATH_TRAVERSAL,
    SYMLINK_ESCAPE,
    TOO_LARGE,
    ImageError,
)

if TYPE_CHECKING:
    from agent.images.unpack import UnpackLimits

logger = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


def split_entry_name(name: str) -> list[str]:
    """Normalise a tar entry name into components, refusing absolute names and ``..``."""
    if name.startswith("/"):
        raise ImageError(ABSOLUTE_PATH, f"entry {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(PATH_TRAVERSAL, f"entry {name!r}: '..' component")
    if "\x00" in name:
        raise ImageError(INVALID_LAYER, f"entry {name!r}: NUL in name")
    return parts


class EntryTree:
    """Creates entries under one root directory fd, never following a symlink."""

    def __init__(self, root_fd: int, limits: UnpackLimits) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self.entries = 0
        self.bytes_declared = 0
        self._cached: tuple[tuple[str, ...], int] | None = None
        self._dir_times: dict[tuple[str, ...], tuple[float, float]] = {}

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ImageError(TOO_LARGE, f"layer: more than {self.limits.max_entries} entries")
        parts = split_entry_name(member.name)
        if not parts:
            return  # the layer root itself ("./"): its metadata belongs to the lower layers
        *parent, base = parts
        if base == OPAQUE_MARKER:
            fd = self._parent_fd(tuple(parent), member.name)
            os.setxattr(fd, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX):
            hidden = base[len(WHITEOUT_PREFIX) :]
            if hidden.startswith(WHITEOUT_PREFIX) or hidden in ("", ".", ".."):
                return  # other AUFS metadata (.wh..wh.plnk ...) has no meaning for overlay
            fd = self._parent_fd(tuple(parent), member.name)
            self._clear(fd, hidden, tuple(parent))
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)
            return
        fd = self._parent_fd(tuple(parent), member.name)
        self._create(fd, base, tuple(parts), member, tar)

    def finish(self) -> None:
        """Directory times last: creating children changed them."""
        for parts, (atime, mtime) in sorted(self._dir_times.items(), key=lambda i: -len(i[0])):
            *parent, base = parts
            try:
                fd = self._parent_fd(tuple(parent), "/".join(parts))
                os.utime(base, (atime, mtime), dir_fd=fd, follow_symlinks=False)
            except (ImageError, FileNotFoundError):
                continue  # replaced by a later entry

    def _parent_fd(self, parent: tuple[str, ...], name: str) -> int:
        """An fd of the directory ``parent`` inside the layer, created as needed; refuses to
        walk through a symlink or a non-directory."""
        if self._cached is not None and self._cached[0] == parent:
            return self._cached[1]
        self.close()
        fd = os.dup(self.root_fd)
        try:
            for comp in parent:
                try:
                    nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                    os.fchmod(nfd, 0o755)  # an implied parent: 0755 whatever the umask
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise ImageError(
                            SYMLINK_ESCAPE, f"entry {name!r}: path goes through symlink {comp!r}"
                        ) from None
                    raise ImageError(
                        INVALID_LAYER, f"entry {name!r}: {comp!r} is not a directory"
                    ) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self._cached = (parent, fd)
        return fd

    def _clear(self, fd: int, base: str, parent: tuple[str, ...]) -> None:
        """Remove whatever is at ``base`` so the new entry replaces it (later entries win)."""
        try:
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            gone = (*parent, base)
            if self._cached is not None and self._cached[0][: len(gone)] == gone:
                self.close()  # the cached fd points into the tree being removed
            shutil.rmtree(base, dir_fd=fd)
        else:
            os.unlink(base, dir_fd=fd)

    def _create(
        self,
        fd: int,
        base: str,
        parts: tuple[str, ...],
        m: tarfile.TarInfo,
        tar: tarfile.TarFile,
    ) -> None:
        name = m.name
        mode = m.mode & 0o7777
        if mode & (stat.S_ISUID | stat.S_ISGID) and mode & stat.S_IWOTH:
            # A set-id file anyone can rewrite is a root shell waiting to happen.
            logger.warning("layer entry %s: set-id and world-writable; dropping o+w", name)
            mode &= ~stat.S_IWOTH
        if m.isdir():
            try:
                st = os.stat(base, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    self._clear(fd, base, parts[:-1])
                    os.mkdir(base, 0o700, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(base, 0o700, dir_fd=fd)
            dfd = os.open(base, DIR_FLAGS, dir_fd=fd)
            try:
                self._meta_fd(dfd, m, mode)
            finally:
                os.close(dfd)
            self._dir_times[parts] = (m.mtime, m.mtime)
            return
        if m.isreg():
            self.bytes_declared += m.size
            if self.bytes_declared > self.limits.max_bytes:
                raise ImageError(TOO_LARGE, f"entry {name!r}: layer over {self.limits.max_bytes} B")
        try:
            self._make(fd, base, m, tar, mode)
        except FileExistsError:  # a later entry replaces an earlier one: later wins
            self._clear(fd, base, parts[:-1])
            self._make(fd, base, m, tar, mode)

    def _make(
        self, fd: int, base: str, m: tarfile.TarInfo, tar: tarfile.TarFile, mode: int
    ) -> None:
        """Create one non-directory entry; every call fails with EEXIST rather than follow
        or overwrite what is there."""
        if m.isreg():
            self._write_file(fd, base, m, tar, mode)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=fd)
            os.chown(base, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
            os.utime(base, (m.mtime, m.mtime), dir_fd=fd, follow_symlinks=False)
        elif m.islnk():
            self._hardlink(fd, base, m)
        elif m.ischr() or m.isblk():
            if not self.limits.allow_devices:
                raise ImageError(DEVICE_NODE, f"entry {m.name!r}: device node not allowed")
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(base, kind | mode, os.makedev(m.devmajor, m.devminor), dir_fd=fd)
            self._meta_path(fd, base, m, mode)
        elif m.isfifo():
            os.mknod(base, stat.S_IFIFO | mode, dir_fd=fd)
            self._meta_path(fd, base, m, mode)
        else:
            raise ImageError(INVALID_LAYER, f"entry {m.name!r}: unsupported tar type {m.type!r}")

    def _write_file(
        self, fd: int, base: str, m: tarfile.TarInfo, tar: tarfile.TarFile, mode: int
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        ffd = os.open(base, flags, 0o600, dir_fd=fd)
        try:
            src = tar.extractfile(m)
            if src is not None:
                with os.fdopen(os.dup(ffd), "wb", closefd=True) as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            self._meta_fd(ffd, m, mode)
        finally:
            os.close(ffd)

    def _hardlink(self, fd: int, base: str, m: tarfile.TarInfo) -> None:
        target = m.linkname
        try:
            tparts = split_entry_name(target)
        except ImageError:
            raise ImageError(
                HARDLINK_ESCAPE, f"entry {m.name!r}: hardlink target {target!r} leaves the layer"
            ) from None
        if not tparts:
            raise ImageError(HARDLINK_ESCAPE, f"entry {m.name!r}: hardlink to the layer root")
        *tparent, tbase = tparts
        tfd = os.dup(self._parent_fd(tuple(tparent), m.name))
        try:
            st = os.stat(tbase, dir_fd=tfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise ImageError(HARDLINK_ESCAPE, f"entry {m.name!r}: hardlink to a directory")
            fd = self._parent_fd(tuple(split_entry_name(m.name)[:-1]), m.name)
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise ImageError(
                HARDLINK_ESCAPE, f"entry {m.name!r}: hardlink target {target!r} not in this layer"
            ) from None
        finally:
            os.close(tfd)

    def _meta_fd(self, fd: int, m: tarfile.TarInfo, mode: int) -> None:
        os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears set-id bits
        os.fchmod(fd, mode)
        _apply_xattrs(fd, m)
        if not m.isdir():
            os.utime(fd, (m.mtime, m.mtime))

    def _meta_path(self, fd: int, base: str, m: tarfile.TarInfo, mode: int) -> None:
        os.chown(base, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
        os.chmod(base, mode, dir_fd=fd)  # not a symlink: created just now by us
        os.utime(base, (m.mtime, m.mtime), dir_fd=fd, follow_symlinks=False)


def _apply_xattrs(fd: int, m: tarfile.TarInfo) -> None:
    """Apply PAX ``SCHILY.xattr.*`` records, except overlay's own ``trusted.overlay.*``
    (a layer must not forge whiteouts or redirects) and other ``trusted.*`` names."""
    for key, value in m.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        attr = key[len("SCHILY.xattr.") :]
        if attr.startswith("trusted."):
            logger.warning("layer entry %s: ignoring xattr %s", m.name, attr)
            continue
        raw = value.encode("utf-8", "surrogateescape")
        try:
            os.setxattr(fd, attr, raw)
        except OSError as exc:
            logger.warning("layer entry %s: xattr %s not applied: %s", m.name, attr, exc)
