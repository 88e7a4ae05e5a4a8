"""Verification of agent reports: a report is accepted only if it is signed by the key of the
host its envelope names. A host can only ever speak for itself."""

from __future__ import annotations

import logging
import time
from typing import Any

from agent.protocol import envelope
from agent.protocol.errors import ProtocolError
from agent.protocol.schema import Message
from hosts.keys import host_public_key
from hosts.models import HOST_LARGE_FIELDS, Host

logger = logging.getLogger(__name__)


class ReportRejected(Exception):
    """A report that must not be applied; the reason is logged, nothing is written."""


_HOST_CACHE: dict[str, tuple[float, Host]] = {}
_HOST_CACHE_TTL = 5.0


def _load_host(host_id: str) -> Host | None:
    """The host a report names, without its large columns (verifying needs only the key)."""
    return Host.objects.filter(pk=host_id).defer(*HOST_LARGE_FIELDS).first()


def _host(host_id: str) -> Host | None:
    hit = _HOST_CACHE.get(host_id)
    now = time.monotonic()
    if hit and now - hit[0] < _HOST_CACHE_TTL:
        return hit[1]
    host = _load_host(host_id)
    if host is not None:
        _HOST_CACHE[host_id] = (now, host)
    return host


def verify_report(data: Any, kind: str, *, cached: bool = False) -> tuple[Host, Message]:
    """Open a report envelope or raise ReportRejected. ``cached`` lets hot paths (heartbeats)
    reuse the host row for a few seconds; a key rotation takes effect within that time."""
    host_id = data.get("host_id") if isinstance(data, dict) else None
    if not isinstance(host_id, str):
        raise ReportRejected("report has no host_id")
    try:
        host = _host(host_id) if cached else _load_host(host_id)
    except Exception:
        host = None
    if host is None or not host.public_key:
        raise ReportRejected(f"report from unknown or unenrolled host {host_id!r}")
    try:
        _, message = envelope.open_envelope(
            data, host_public_key(host.public_key), expected_kind=kind, expected_host=host_id
        )
    except ProtocolError as exc:
        _HOST_CACHE.pop(host_id, None)
        raise ReportRejected(f"{kind} claiming host {host_id}: {exc}") from None
    return host, message


def report_or_none(data: Any, kind: str, label: str) -> tuple[Host, Message] | None:
    """``verify_report`` for task edges: a rejected report is logged as "<label> rejected"
    and dropped (None), never raised into the worker."""
    try:
        return verify_report(data, kind)
    except ReportRejected as exc:
        logger.warning("%s rejected: %s", label, exc)
        return None
