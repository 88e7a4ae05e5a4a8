"""What every scenario shares: the result channel, outcomes, and small process helpers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSYBOX = "/usr/local/lib/corral/busybox"
# container_var_lib_t (labelled at image build): where container_engine_t may relabel from.
STATE_DIR = Path("/var/lib/corral")


class Skip(Exception):
    """The scenario cannot run yet (the agent module it exercises is not in this tree)."""


@dataclass
class Channel:
    """Writes result lines to the results serial port (raw, no CRLF) and to the console."""

    path: str
    fd: int = -1
    lines: list[str] = field(default_factory=list)

    def open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_NOCTTY)
        except OSError as exc:
            print(f"corral-guest: cannot open results channel {self.path}: {exc}", flush=True)
            return
        with contextlib.suppress(termios.error):
            attrs = termios.tcgetattr(self.fd)
            attrs[1] &= ~termios.OPOST  # no \n -> \r\n translation
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def emit(self, line: str) -> None:
        line = line.replace("\n", " ").replace("\r", " ")
        self.lines.append(line)
        print(f"corral-guest: {line}", flush=True)
        if self.fd >= 0:
            os.write(self.fd, (line + "\n").encode("utf-8", "replace"))


@dataclass
class Context:
    """Handed to every scenario: ``log`` adds an evidence line under the scenario's name."""

    channel: Channel
    name: str = ""

    def log(self, text: str) -> None:
        self.channel.emit(f"LOG {self.name} {text}")


def read_label(pid: int | str = "self") -> str:
    """The SELinux context of a process, from ``/proc/<pid>/attr/current``."""
    with open(f"/proc/{pid}/attr/current", "rb") as fh:
        return fh.read().rstrip(b"\0\n").decode()


def file_label(path: str | Path) -> str:
    return os.getxattr(path, "security.selinux").rstrip(b"\0").decode()


def set_file_label(path: str | Path, label: str) -> None:
    os.setxattr(path, "security.selinux", label.encode() + b"\0", follow_symlinks=False)


def relabel_tree(root: Path, label: str) -> None:
    set_file_label(root, label)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            set_file_label(Path(dirpath) / name, label)


def run(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )


@contextlib.contextmanager
def timed(ctx: Context, what: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    ctx.log(f"{what} took {time.monotonic() - start:.2f}s")


def import_or_skip(module: str) -> Any:
    """Import an agent module, or skip with the reason (the teammate's part has not landed)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"{module} is not importable in this tree yet: {exc}") from exc
