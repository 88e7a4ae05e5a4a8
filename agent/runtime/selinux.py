"""SELinux for containers: a unique MCS level per container on this host, and the labels
derived from it (process, files, mounts).

Two containers with different category pairs cannot touch each other's processes or files
even though both run as ``container_t``. Where SELinux is disabled every labelling call is
a no-op that records what it skipped (:func:`skipped_actions`), so a start never fails for
lack of SELinux and the agent can still report that the isolation was not applied.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

SELINUXFS = "/sys/fs/selinux"
EXEC_ATTR = "/proc/thread-self/attr/exec"
XATTR_NAME = "security.selinux"
MAX_CATEGORIES = 1024  # the stock MCS policy defines c0.c1023

Mode = Literal["enforcing", "permissive", "disabled"]

_LEVEL_RE = re.compile(r"^s0(?::c(\d{1,4}),c(\d{1,4}))?$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class SELinuxError(Exception):
    """An SELinux step failed; ``field`` names the value or file involved."""

    def __init__(self, step: str, field: str, detail: str, *, errno: int | None = None) -> None:
        self.step = step
        self.field = field
        self.detail = detail
        self.errno = errno
        super().__init__(f"selinux {step}: {field}: {detail}")


# -- host state ----------------------------------------------------------------------------


def selinux_enabled(selinuxfs: str = SELINUXFS) -> bool:
    """SELinux is active: selinuxfs is mounted (its ``enforce`` file exists)."""
    return Path(selinuxfs, "enforce").is_file()


def selinux_mode(selinuxfs: str = SELINUXFS) -> Mode:
    """``enforcing``/``permissive`` from selinuxfs, ``disabled`` when it is not mounted."""
    if not selinux_enabled(selinuxfs):
        return "disabled"
    value = Path(selinuxfs, "enforce").read_text(encoding="ascii").strip()
    return "enforcing" if value == "1" else "permissive"


# -- no-op record --------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedAction:
    """A labelling step not performed because SELinux is disabled."""

    action: str
    target: str
    label: str


_SKIPPED: collections.deque[SkippedAction] = collections.deque(maxlen=256)


def skipped_actions() -> list[SkippedAction]:
    """Labelling steps skipped since the last :func:`clear_skipped` (most recent last)."""
    return list(_SKIPPED)


def clear_skipped() -> None:
    _SKIPPED.clear()


def _skip(action: str, target: str, label: str) -> None:
    _SKIPPED.append(SkippedAction(action, target, label))
    logger.debug("selinux disabled: skipped %s of %s with %s", action, target, label)


# -- labels --------------------------------------------------------------------------------


def check_level(level: str) -> str:
    """Validate an MCS level (``s0`` or ``s0:cX,cY`` with X < Y < 1024)."""
    match = _LEVEL_RE.match(level)
    if not match:
        raise SELinuxError("label", "level", f"{level!r} is not s0 or s0:cX,cY")
    if match.group(1) is not None:
        low, high = int(match.group(1)), int(match.group(2))
        if not low < high < MAX_CATEGORIES:
            raise SELinuxError("label", "level", f"{level!r} needs X < Y < {MAX_CATEGORIES}")
    return level


def process_label(level: str) -> str:
    """The label a container's processes run with."""
    return f"system_u:system_r:container_t:{check_level(level)}"


def file_label(level: str) -> str:
    """The label of a container's files (rootfs upper dir, volumes, mounts)."""
    return f"system_u:object_r:container_file_t:{check_level(level)}"


def mount_option(label: str) -> str:
    """The mount option that labels a whole filesystem (tmpfs, mqueue, overlay) at once."""
    _check_label(label)
    return f'context="{label}"'


def _check_label(label: str) -> None:
    parts = label.split(":")
    if len(parts) < 4 or not all(parts[:3]) or any(c in label for c in '"\n\0 '):
        raise SELinuxError("label", "label", f"{label!r} is not user:role:type:level")


def set_exec_label(label: str, *, enabled: bool | None = None, attr_path: str = EXEC_ATTR) -> None:
    """Make the next ``execve`` of this thread run with ``label``.

    ``os.open(O_WRONLY)``, not ``open(path, "w")``: the latter adds ``O_CREAT``, which the
    policy denies on ``/proc`` attributes even for root. Per thread, so it is called in the
    container's init just before exec.
    """
    _check_label(label)
    if not (selinux_enabled() if enabled is None else enabled):
        _skip("exec_label", attr_path, label)
        return
    try:
        fd = os.open(attr_path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SELinuxError(
            "exec_label", attr_path, exc.strerror or "open", errno=exc.errno
        ) from exc
    try:
        os.write(fd, label.encode("ascii"))
    except OSError as exc:
        raise SELinuxError("exec_label", label, exc.strerror or "write", errno=exc.errno) from exc
    finally:
        os.close(fd)


def label_path(
    path: str | Path, label: str, *, recursive: bool = True, enabled: bool | None = None
) -> int:
    """Set ``security.selinux`` on ``path`` (and everything below it when ``recursive``,
    e.g. a container's overlay upper dir) without following symlinks. Returns the number
    of entries labelled (0 when SELinux is disabled)."""
    _check_label(label)
    if not (selinux_enabled() if enabled is None else enabled):
        _skip("label_path", str(path), label)
        return 0
    value = label.encode("ascii") + b"\0"  # what libselinux's setfilecon writes
    count = 0
    for entry in _walk(Path(path), recursive):
        try:
            os.setxattr(entry, XATTR_NAME, value, follow_symlinks=False)
        except OSError as exc:
            raise SELinuxError(
                "label_path", str(entry), exc.strerror or "setxattr", errno=exc.errno
            ) from exc
        count += 1
    return count


def _walk(root: Path, recursive: bool) -> Iterator[Path]:
    yield root
    if not recursive or root.is_symlink() or not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            yield Path(dirpath, name)


# -- MCS allocation ------------------------------------------------------------------------


class MCSAllocator:
    """Hands out a unique ``s0:cX,cY`` per container on this host.

    The allocations live in a JSON file, changed under an exclusive ``flock`` on a sibling
    ``.lock`` file (the data file itself is replaced by an atomic rename, so it cannot carry
    the lock) and written to a temporary file that is fsynced and renamed: concurrent agents
    or shims never hand out the same pair, and a crash leaves the old or the new file.
    """

    def __init__(
        self,
        state_file: Path,
        *,
        categories: int = MAX_CATEGORIES,
        rng: random.Random | None = None,
    ) -> None:
        if not 2 <= categories <= MAX_CATEGORIES:
            raise SELinuxError("mcs", "categories", f"must be between 2 and {MAX_CATEGORIES}")
        self.state_file = Path(state_file)
        self.categories = categories
        self._rng = rng or random.SystemRandom()

    @property
    def capacity(self) -> int:
        """How many containers can hold a pair at once."""
        return self.categories * (self.categories - 1) // 2

    def allocate(self, container_id: str) -> str:
        """The container's level: the one it already holds, or a fresh random pair."""
        _check_id(container_id)
        with self._locked() as levels:
            if container_id in levels:
                return levels[container_id]
            level = self._pick(set(levels.values()))
            levels[container_id] = level
            self._save(levels)
            return level

    def release(self, container_id: str) -> bool:
        """Free the container's pair for reuse; ``False`` if it held none (idempotent)."""
        _check_id(container_id)
        with self._locked() as levels:
            if levels.pop(container_id, None) is None:
                return False
            self._save(levels)
            return True

    def allocations(self) -> dict[str, str]:
        """Every container id and its level, as stored."""
        with self._locked() as levels:
            return dict(levels)

    def _pick(self, used: set[str]) -> str:
        if len(used) >= self.capacity:
            raise SELinuxError("mcs", "categories", f"all {self.capacity} pairs are in use")
        # Random probing is fast while the space is sparse (the usual case: 500k pairs);
        # past a few misses fall back to an ordered scan that always terminates.
        for _ in range(64):
            low, high = sorted(self._rng.sample(range(self.categories), 2))
            level = f"s0:c{low},c{high}"
            if level not in used:
                return level
        for low in range(self.categories):
            for high in range(low + 1, self.categories):
                level = f"s0:c{low},c{high}"
                if level not in used:
                    return level
        raise AssertionError("unreachable: capacity was checked")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_file.with_name(self.state_file.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._load()
        finally:
            os.close(fd)  # closing drops the flock

    def _load(self) -> dict[str, str]:
        try:
            data: Any = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SELinuxError("mcs", str(self.state_file), f"unreadable: {exc}") from exc
        levels = data.get("levels") if isinstance(data, dict) else None
        if not isinstance(levels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in levels.items()
        ):
            raise SELinuxError("mcs", str(self.state_file), "has no valid 'levels' object")
        return dict(levels)

    def _save(self, levels: dict[str, str]) -> None:
        payload = json.dumps(
            {"version": 1, "categories": self.categories, "levels": levels},
            indent=1,
            sort_keys=True,
        )
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, payload.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self.state_file)
            dir_fd = os.open(self.state_file.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise SELinuxError(
                "mcs", str(self.state_file), exc.strerror or "write", errno=exc.errno
            ) from exc


def _check_id(container_id: str) -> None:
    if not isinstance(container_id, str) or not _ID_RE.match(container_id):
        raise SELinuxError("mcs", "container_id", f"{container_id!r} is not a container id")


__all__ = [
    "EXEC_ATTR",
    "MCSAllocator",
    "SELinuxError",
    "SkippedAction",
    "check_level",
    "clear_skipped",
    "file_label",
    "label_path",
    "mount_option",
    "process_label",
    "selinux_enabled",
    "selinux_mode",
    "set_exec_label",
    "skipped_actions",
]
