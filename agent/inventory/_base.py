"""Shared helpers of the collectors: file reads that never raise, bounded subprocesses.

Every collector returns a JSON-able dict. A collector that cannot learn its facts returns
:func:`unknown` with a reason instead of raising, so one broken area never costs the report.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

Section = dict[str, Any]
Collector = Callable[[], Section]

# Overridable in tests to read recorded trees; collectors build every path from it.
ROOT = Path("/")

TOOL_TIMEOUT_S = 2.0


def unknown(reason: str, **evidence: Any) -> Section:
    """The section value of a collector that could not determine its facts."""
    return {"status": "unknown", "reason": reason, **evidence}


def host_path(path: str) -> Path:
    """``path`` (absolute, e.g. ``/proc/cpuinfo``) under the inventory root."""
    return ROOT / path.lstrip("/")


def read_text(path: str | Path, default: str | None = None) -> str | None:
    """File contents stripped of trailing whitespace, or ``default`` if unreadable."""
    p = path if isinstance(path, Path) else host_path(path)
    try:
        return p.read_text(errors="replace").rstrip("\n")
    except OSError:
        return default


def read_int(path: str | Path) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_key_values(text: str, sep: str = ":") -> dict[str, str]:
    """``Key<sep> value`` lines (as in /proc/meminfo or /proc/self/status) into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, found, value = line.partition(sep)
        if found:
            out[key.strip()] = value.strip()
    return out


def run_tool(argv: list[str], timeout: float = TOOL_TIMEOUT_S) -> tuple[int, str]:
    """Run a host tool with a hard time-out; returns (exit code, stdout+stderr).

    Raises OSError when it cannot start and TimeoutError when it overruns, so callers can
    record which of the two happened.
    """
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"{argv[0]} did not answer within {timeout:g} s") from exc
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def mountinfo() -> list[dict[str, str]]:
    """/proc/self/mountinfo entries: device, root, mount_point, fstype, source, options..."""
    text = read_text("/proc/self/mountinfo") or ""
    entries = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 6 or len(rfields) < 2:
            continue
        entries.append(
            {
                "device": fields[2],
                "root": _unescape(fields[3]),
                "mount_point": _unescape(fields[4]),
                "options": fields[5],
                "fstype": rfields[0],
                "source": _unescape(rfields[1]),
                "super_options": rfields[2] if len(rfields) > 2 else "",
            }
        )
    return entries


def _unescape(value: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\040`` etc."""
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and len(value[i + 1 : i + 4]) == 3 and value[i + 1 : i + 4].isdigit():
            out.append(chr(int(value[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(value[i])
            i += 1
    return "".join(out)
