"""Registry of certification checks and the runner that never lets one crash the rest.

A check is a function returning a :class:`Finding`; it is registered once under a stable id
(``cert.<area>.E001`` for requirements, ``W001`` for advice). Ids are never reused: a retired
check's id stays in :data:`RETIRED_IDS` so it cannot be given to a different meaning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.protocol.messages import Finding, Verdict

logger = logging.getLogger(__name__)

ID_RE = re.compile(r"^cert\.[a-z0-9_]+\.[EW]\d{3}$")
RETIRED_IDS: frozenset[str] = frozenset()

HostCheck = Callable[[dict[str, Any]], Finding]


@dataclass(frozen=True)
class Registered:
    id: str
    title: str
    fn: Callable[..., Finding]


HOST_CHECKS: dict[str, Registered] = {}
IMAGE_CHECKS: dict[str, Registered] = {}


def _register(
    table: dict[str, Registered], check_id: str, title: str
) -> Callable[[Callable[..., Finding]], Callable[..., Finding]]:
    if not ID_RE.match(check_id):
        raise ValueError(f"check id: {check_id!r} does not look like cert.<area>.E001")
    if check_id in HOST_CHECKS or check_id in IMAGE_CHECKS or check_id in RETIRED_IDS:
        raise ValueError(f"check id: {check_id} is already taken (ids are never reused)")

    def wrap(fn: Callable[..., Finding]) -> Callable[..., Finding]:
        table[check_id] = Registered(check_id, title, fn)
        return fn

    return wrap


def host_check(check_id: str, title: str) -> Callable[[HostCheck], HostCheck]:
    return _register(HOST_CHECKS, check_id, title)


def image_check(
    check_id: str, title: str
) -> Callable[[Callable[..., Finding]], Callable[..., Finding]]:
    return _register(IMAGE_CHECKS, check_id, title)


def finding(
    check_id: str, verdict: Verdict, message: str, hint: str = "", **evidence: Any
) -> Finding:
    """A Finding with a one-line message (newlines would break the UI's table)."""
    return Finding(
        id=check_id,
        verdict=verdict,
        message=" ".join(message.split()),
        hint=hint,
        evidence=evidence,
    )


def run_guarded(reg: Registered, *args: Any) -> Finding:
    """Run one check; a crash or a wrong return becomes ``unknown`` with the error."""
    try:
        result = reg.fn(*args)
    except Exception as exc:
        logger.warning("certification check %s crashed: %s", reg.id, exc, exc_info=True)
        return finding(
            reg.id,
            "unknown",
            f"check crashed: {type(exc).__name__}: {exc}",
            "this is a bug in the check; the host or image was not judged",
            error=f"{type(exc).__name__}: {exc}",
        )
    if not isinstance(result, Finding) or result.id != reg.id:
        return finding(reg.id, "unknown", "check returned something other than its own finding")
    return result


def section(inventory: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The inventory section, or None when it is missing or the collector reported unknown."""
    value = inventory.get(name)
    if not isinstance(value, dict) or value.get("status") == "unknown":
        return None
    return value


def missing(check_id: str, inventory: dict[str, Any], name: str) -> Finding:
    """The ``unknown`` finding of a check whose inventory section could not be collected."""
    value = inventory.get(name)
    reason = value.get("reason") if isinstance(value, dict) else "section missing"
    return finding(
        check_id,
        "unknown",
        f"inventory section {name!r} is unavailable: {reason}",
        "fix the collector's access on the host, then collect the inventory again",
        section=name,
        reason=reason,
    )
