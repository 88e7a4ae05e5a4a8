"""The one-line report a shim sends whoever created it (a pipe, or a spare's socket): the
container's ``pid`` and OCI ``state`` once it is created, or the error it failed with."""

from __future__ import annotations

import contextlib
import json
import os

from agent.runtime.errors import ConfigError, RuntimeFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


def read_shim_report(fd: int) -> dict[str, Any]:
    """The shim's one-line report (the container's ``pid`` and OCI ``state``), or the error
    it failed with, raised."""
    # One line, not EOF: the container process holds a copy of the write end until exec.
    chunks = []
    while (chunk := os.read(fd, 65536)) and not chunk.endswith(b"\n"):
        chunks.append(chunk)
    chunks.append(chunk)
    if not b"".join(chunks).strip():
        raise RuntimeFailure("shim", "the monitor exited without reporting")
    msg = json.loads(b"".join(chunks))
    if "config_error" in msg:
        raise ConfigError(msg["config_error"]["field"], msg["config_error"]["message"])
    if "error" in msg:
        raise RuntimeFailure.from_dict(msg["error"])
    report: dict[str, Any] = msg
    return report


def report_failure(fd: int, exc: ConfigError | RuntimeFailure | OSError) -> NoReturn:
    """Write ``exc`` as :func:`read_shim_report` reads it, and exit (a spare shim's end)."""
    if isinstance(exc, ConfigError):
        msg: dict[str, Any] = {"config_error": {"field": exc.field, "message": exc.message}}
    elif isinstance(exc, RuntimeFailure):
        msg = {"error": exc.to_dict()}
    else:
        msg = {"error": RuntimeFailure.from_os("state", exc).to_dict()}
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(msg).encode() + b"\n")
    os._exit(1)
