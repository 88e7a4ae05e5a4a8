"""A read-only merged view of an image's unpacked layers for the image checks, without mounts.

The image store keeps each layer unpacked as an overlayfs lower dir (whiteouts are char
devices 0/0, opaque dirs carry ``trusted.overlay.opaque``). Mounting overlayfs for a check
would need root and a mount to clean up; instead the layers are stacked top-down into a
temporary directory of *hard links* (same filesystem as the store): no file data is copied,
modes (setuid bits, world-writable) are the layer's own, and removing the tree leaves the
layers untouched. The checks only read, so sharing inodes is safe.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

OPAQUE_XATTR = "trusted.overlay.opaque"


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


# What the image checks read besides config and layer digests (cert.image.E002 licences,
# E003 /etc/passwd, E007 package databases); E008 walks for set-id files, which are always
# kept. A new check that reads other paths adds them here.
CHECK_PATHS = (
    "licenses",
    "etc/passwd",
    "var/lib/dpkg/status",
    "var/lib/rpm",
    "usr/lib/sysimage/rpm",
    "lib/apk/db",
)
SET_ID = stat.S_ISUID | stat.S_ISGID

Keep = Callable[[str, os.stat_result], bool]


def for_checks(rel: str, st: os.stat_result) -> bool:
    """Keep only what the image checks read: :data:`CHECK_PATHS` and set-id regular files."""
    if stat.S_ISREG(st.st_mode) and st.st_mode & SET_ID:
        return True
    return any(rel == p or rel.startswith(p + "/") for p in CHECK_PATHS)


def merge_layers(layers: list[Path], dest: Path, keep: Keep | None = None) -> int:
    """Stack ``layers`` (topmost first, as ``ImageStore.layers_for`` returns them) into the
    empty directory ``dest``; returns the number of entries placed. An upper layer's entry,
    whiteout or opaque directory hides everything below it at that path. With ``keep``, only
    entries it accepts (and their parent dirs) are placed: the walk still sees everything."""
    state = _Merge(dest, keep)
    for layer in layers:
        opaque: set[str] = set()
        state.walk(str(layer), "", opaque)
        # An opaque dir of this layer hides the same dir's contents in every lower layer.
        state.hidden_below.update(opaque)
    return state.count


class _Merge:
    def __init__(self, dest: Path, keep: Keep | None) -> None:
        self.dest = str(dest)
        self.keep = keep
        self.hidden: set[str] = set()  # paths whited out or shadowed by an upper file
        self.hidden_below: set[str] = set()  # dirs whose lower contents are hidden (opaque)
        self.placed_dirs: set[str] = {""}
        self.seen_dirs: set[str] = set()  # a directory hides a lower non-directory
        self.count = 0

    def walk(self, root: str, rel_dir: str, opaque: set[str]) -> None:
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if rel in self.hidden:
                continue
            if entry.is_dir(follow_symlinks=False):
                self.seen_dirs.add(rel)
                if _is_opaque(entry.path):
                    opaque.add(rel)
                if self.keep is None or any(
                    rel == p or p.startswith(rel + "/") or rel.startswith(p + "/")
                    for p in CHECK_PATHS
                ):
                    self._dir(rel, entry.stat(follow_symlinks=False).st_mode)
                if rel not in self.hidden_below:
                    self.walk(root, rel, opaque)
                continue
            if rel in self.seen_dirs:
                continue
            st = entry.stat(follow_symlinks=False)
            if _is_whiteout(st):
                self.hidden.add(rel)
                continue
            self.hidden.add(rel)  # an entry hides whatever lower layers have at its path
            if self.keep is not None and not self.keep(rel, st):
                continue
            self._parents(rel)
            target = os.path.join(self.dest, rel)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(entry.path), target)
            else:
                os.link(entry.path, target, follow_symlinks=False)
            self.count += 1

    def _dir(self, rel: str, mode: int) -> None:
        if rel in self.placed_dirs:
            return
        self._parents(rel)
        path = os.path.join(self.dest, rel)
        os.mkdir(path)
        os.chmod(path, stat.S_IMODE(mode))
        self.placed_dirs.add(rel)
        self.count += 1

    def _parents(self, rel: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent not in self.placed_dirs:
            self._parents(parent)
            os.mkdir(os.path.join(self.dest, parent), 0o755)
            self.placed_dirs.add(parent)


@contextlib.contextmanager
def merged_rootfs(layers: list[Path], scratch: Path, *, full: bool = False) -> Iterator[Path]:
    """The merged tree of ``layers`` in a fresh directory under ``scratch`` (which must be on
    the layers' filesystem), removed on exit even when the caller fails. By default only what
    the image checks read is placed (:func:`for_checks`); ``full`` places everything."""
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="check-", dir=scratch))
    try:
        rootfs = tmp / "rootfs"
        rootfs.mkdir(mode=0o755)
        merge_layers(layers, rootfs, None if full else for_checks)
        yield rootfs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
