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
from collections.abc import Iterator
from pathlib import Path

OPAQUE_XATTR = "trusted.overlay.opaque"


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def merge_layers(layers: list[Path], dest: Path) -> int:
    """Stack ``layers`` (topmost first, as ``ImageStore.layers_for`` returns them) into the
    empty directory ``dest``; returns the number of entries placed. An upper layer's entry,
    whiteout or opaque directory hides everything below it at that path."""
    hidden: set[str] = set()  # relative paths whited out or covered by an opaque dir
    placed: set[str] = set()
    count = 0
    for layer in layers:
        root = str(layer)
        opaque_here: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            for name in sorted(dirnames) + sorted(filenames):
                rel = os.path.join(rel_dir, name)
                src = os.path.join(dirpath, name)
                if _covered(rel, hidden):
                    if name in dirnames:
                        dirnames.remove(name)
                    continue
                st = os.lstat(src)
                if _is_whiteout(st):
                    hidden.add(rel)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if _is_opaque(src):
                        opaque_here.add(rel)
                    if rel not in placed:
                        os.mkdir(dest / rel, stat.S_IMODE(st.st_mode))
                        os.chmod(dest / rel, stat.S_IMODE(st.st_mode))
                        placed.add(rel)
                        count += 1
                    continue
                if rel in placed:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), dest / rel)
                else:
                    os.link(src, dest / rel, follow_symlinks=False)
                placed.add(rel)
                hidden.add(rel)  # a file hides whatever lower layers have at its path
                count += 1
        # An opaque dir of this layer hides the same dir's contents in every lower layer.
        hidden.update(f"{rel}/" for rel in opaque_here)
    return count


def _covered(rel: str, hidden: set[str]) -> bool:
    if rel in hidden:
        return True
    parts = rel.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in hidden or f"{prefix}/" in hidden:
            return True
    return False


@contextlib.contextmanager
def merged_rootfs(layers: list[Path], scratch: Path) -> Iterator[Path]:
    """The merged tree of ``layers`` in a fresh directory under ``scratch`` (which must be on
    the layers' filesystem), removed on exit even when the caller fails."""
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="check-", dir=scratch))
    try:
        rootfs = tmp / "rootfs"
        rootfs.mkdir(mode=0o755)
        merge_layers(layers, rootfs)
        yield rootfs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
