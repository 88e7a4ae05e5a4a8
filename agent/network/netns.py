"""Pinned network namespaces: one per container, outliving any single container process.

Like ``ip netns add`` (and CNI's pinned namespaces), a new network namespace is kept alive by
bind-mounting its nsfs file onto a plain file, ``<dir>/<container id>``. The container's OCI
config joins it by path, so every process of the container (the first one, the ones its shim
starts again per restart policy, the ones the agent starts after a stop) runs in the same
namespace, with the veth, address and routes set up once. Removing the pin (unmount, then
unlink) frees the namespace once no process is in it any more.

The namespace is made from a short thread (``unshare`` affects only the calling thread), never
by forking the agent. The pins must live in the mount namespace that the agent, the zygote and
the shims share (the agent's unit gives it no private one).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from agent.network.errors import NetworkError
from agent.runtime.linux import CLONE_NEWNET, LINUX, MNT_DETACH, MS_BIND, Linux

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_namespace_file(path: str | Path) -> bool:
    """Whether ``path`` is an nsfs file (a mounted pin), not the empty file under it.

    Every namespace file lives on the one nsfs device, whatever its type: comparing devices
    with our own ``/proc/self/ns/net`` needs no mount table.
    """
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except FileNotFoundError:
        return False


class NetnsPins:
    """The pinned network namespaces of one agent, under ``directory``."""

    def __init__(self, directory: Path, linux: Linux = LINUX) -> None:
        self.directory = Path(directory)
        self.linux = linux
        self._lock = threading.Lock()

    def path(self, container_id: str) -> Path:
        if not _ID_RE.match(container_id):
            raise NetworkError("container_id", "letters, digits, '_', '.', '-'; up to 128")
        return self.directory / container_id

    def ensure(self, container_id: str) -> Path:
        """The container's pinned namespace, made if it is missing (first create, or after a
        reboot emptied the mounts and left the file)."""
        path = self.path(container_id)
        if is_namespace_file(path):  # the common case: two stat calls
            return path
        with self._lock:
            if not is_namespace_file(path):
                self._pin_new(path)
                logger.info("pinned a new network namespace for %s at %s", container_id, path)
        return path

    def _pin_new(self, path: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))

        def pin() -> None:
            self.linux.unshare(CLONE_NEWNET)
            # The mount is made in the mount namespace this thread shares with the agent.
            self.linux.mount("/proc/thread-self/ns/net", str(path), None, MS_BIND, None)

        try:
            in_own_thread("netns-pin", pin)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            raise NetworkError("step.netns_pin", f"{path}: {exc}") from exc

    def remove(self, container_id: str) -> bool:
        """Unmount and delete the pin; the namespace goes with its last process. Idempotent;
        True if there was anything to remove."""
        path = self.path(container_id)
        removed = False
        # A pin can be mounted more than once (two agents raced after a crash): unmount all.
        while is_namespace_file(path):
            try:
                self.linux.umount2(str(path), MNT_DETACH)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # not a mount point after all
                    break
                raise NetworkError("step.netns_unpin", f"{path}: {exc}") from exc
            removed = True
        try:
            path.unlink()
            removed = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NetworkError("step.netns_unpin", f"{path}: {exc}") from exc
        if removed:
            logger.info("removed the pinned network namespace of %s", container_id)
        return removed

    def ids(self) -> set[str]:
        """Container ids with a pin file (mounted or not)."""
        if not self.directory.is_dir():
            return set()
        return {p.name for p in self.directory.iterdir() if _ID_RE.match(p.name)}

    def cleanup_orphans(self, live_container_ids: set[str]) -> list[str]:
        """At agent start-up: remove the pins of containers that no longer exist."""
        orphans = sorted(self.ids() - set(live_container_ids))
        for cid in orphans:
            self.remove(cid)
        return orphans


def in_own_thread(name: str, fn: Callable[[], None]) -> None:
    """Run ``fn`` in a short-lived thread and wait for it; what it raises is raised here. For
    steps that change the calling thread's namespaces (unshare, setns): they then end with
    the thread, and the agent's other threads stay where they were."""
    box: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the caller's thread below
            box.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if box:
        raise box[0]
