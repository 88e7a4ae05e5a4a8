"""Certification profiles and their evaluation: data plus one pure function.

The agent reports findings; the control plane picks a profile and calls :func:`evaluate`.
A profile lists the finding ids that must not fail. ``warn`` never fails a profile (it is
advice); a required finding that is ``unknown`` or absent makes the verdict ``unknown``
unless another one already failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from agent.protocol.errors import ProtocolError
from agent.protocol.messages import Finding

CertVerdict = Literal["certified", "not_certified", "unknown"]

SELINUX_IDS = ("cert.selinux.E001", "cert.selinux.E002", "cert.selinux.E003", "cert.selinux.E004")
HOST_BASE_IDS = (
    "cert.kernel.E001",
    "cert.namespaces.E001",
    "cert.namespaces.E002",
    "cert.userns.E001",
    "cert.cgroup.E001",
    "cert.cgroup.E002",
    "cert.overlay.E001",
    "cert.seccomp.E001",
    "cert.runtime.E001",
    "cert.agent.E001",
    "cert.os.E001",
)
IMAGE_IDS = tuple(f"cert.image.E00{n}" for n in range(1, 9))


@dataclass(frozen=True)
class Profile:
    """A named set of finding ids that must pass (or warn) for ``certified``."""

    name: str
    kind: Literal["host", "image"]
    description: str
    required: tuple[str, ...]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "certified-container-host",
            "host",
            "Production: SELinux enabled, enforcing, MCS and container types; cgroup "
            "controllers; namespaces; overlayfs; seccomp; runtimes without known escape CVEs.",
            HOST_BASE_IDS + SELINUX_IDS,
        ),
        Profile(
            "development",
            "host",
            "Development and CI hosts: the same as production except that SELinux may be off.",
            HOST_BASE_IDS,
        ),
        Profile(
            "certified-image",
            "image",
            "Images for production: labels, licences, non-root user, layer limit, unique tag, "
            "approved base, no prohibited packages, no world-writable setuid files.",
            IMAGE_IDS,
        ),
        Profile(
            "development-image",
            "image",
            "Images under development: only the security checks (non-root user, prohibited "
            "packages, world-writable setuid files).",
            ("cert.image.E003", "cert.image.E007", "cert.image.E008"),
        ),
    )
}


def profile_get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        choices = ", ".join(sorted(PROFILES))
        raise ProtocolError("profile", f"unknown profile {name!r} (one of {choices})") from None


def evaluate(findings: Iterable[Finding], profile: Profile | str) -> tuple[CertVerdict, list[str]]:
    """(verdict, ids of required findings that failed, sorted) for ``findings`` under ``profile``.

    not_certified if any required finding failed; else unknown if any is unknown or missing;
    else certified. Findings the profile does not require are ignored.
    """
    prof = profile_get(profile) if isinstance(profile, str) else profile
    by_id: dict[str, Finding] = {}
    for f in findings:
        if not isinstance(f, Finding):
            raise ProtocolError("findings", f"expected Finding objects, got {type(f).__name__}")
        by_id[f.id] = f
    failed = sorted(i for i in prof.required if i in by_id and by_id[i].verdict == "fail")
    if failed:
        return "not_certified", failed
    if any(i not in by_id or by_id[i].verdict == "unknown" for i in prof.required):
        return "unknown", []
    return "certified", []
