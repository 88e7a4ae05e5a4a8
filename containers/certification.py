"""Certification policy and history on the control plane: named profiles per project and a
fleet default, image verdicts from the findings agents report, verdict and policy history,
and JSON reports of a host or an image.

Agents only report findings; the verdict is always :func:`agent.protocol.certification.
evaluate` under a profile chosen here, so changing a policy re-judges stored findings
without asking any host.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from agent.protocol.certification import PROFILES, evaluate
from agent.protocol.errors import ProtocolError
from agent.protocol.messages import Finding
from config.errors import CorralError
from containers.models import Image, Project
from containers.models_images import FleetPolicy, ImageCertificationChange, PolicyChange
from hosts.models import CertificationChange, Host

logger = logging.getLogger(__name__)

PROJECT_POLICY_FIELDS = (
    "host_profile",
    "image_profile",
    "require_certified_hosts",
    "require_certified_images",
)


def profile_check(name: Any, kind: str, field: str) -> str:
    """``name`` if it is a known profile of ``kind`` ("host" or "image"), else a 400 naming
    the field and the choices."""
    choices = sorted(n for n, p in PROFILES.items() if p.kind == kind)
    if not isinstance(name, str) or name not in PROFILES or PROFILES[name].kind != kind:
        raise CorralError(
            f"{field}: {name!r} is not a {kind} profile (one of {', '.join(choices)}).",
            field=field,
        )
    return name


def profiles_describe() -> list[dict[str, Any]]:
    return [
        {"name": p.name, "kind": p.kind, "description": p.description, "required": p.required}
        for p in PROFILES.values()
    ]


# --- policy --------------------------------------------------------------------------------


def fleet_policy() -> FleetPolicy:
    policy, _ = FleetPolicy.objects.get_or_create(pk=1)
    return policy


def _record(user: Any, project: Project | None, field: str, old: Any, new: Any) -> None:
    PolicyChange.objects.create(
        user=user if getattr(user, "pk", None) else None,
        project=project,
        field=field,
        old=str(old),
        new=str(new),
    )
    logger.info(
        "certification policy %s%s: %s -> %s by %s",
        f"{project.slug}." if project else "fleet.",
        field,
        old,
        new,
        getattr(user, "username", "system"),
    )


@transaction.atomic
def fleet_policy_set(
    *, user: Any, host_profile: str | None = None, image_profile: str | None = None
) -> FleetPolicy:
    """Change the fleet defaults; images judged under the fleet default are re-judged."""
    policy = FleetPolicy.objects.select_for_update().get(pk=fleet_policy().pk)
    changes = {}
    if host_profile is not None:
        changes["host_profile"] = profile_check(host_profile, "host", "host_profile")
    if image_profile is not None:
        changes["image_profile"] = profile_check(image_profile, "image", "image_profile")
    for field, new in changes.items():
        old = getattr(policy, field)
        if old != new:
            _record(user, None, field, old, new)
            setattr(policy, field, new)
    policy.updated_by = user if getattr(user, "pk", None) else None
    policy.save()
    if "image_profile" in changes:
        for image in Image.objects.select_related("project"):
            if not _project_image_profile(image.project):
                image_reevaluate(image, reason=f"fleet image profile set to {image_profile}")
    return policy


@transaction.atomic
def project_policy_set(*, user: Any, project: Project, **fields: Any) -> Project:
    """Change a project's profiles or requirements (history row per changed field); the
    project's images are re-judged when its image profile changes."""
    unknown = sorted(set(fields) - set(PROJECT_POLICY_FIELDS))
    if unknown:
        raise CorralError(f"{unknown[0]}: not a certification policy field.", field=unknown[0])
    if "host_profile" in fields:
        profile_check(fields["host_profile"], "host", "host_profile")
    if "image_profile" in fields:
        profile_check(fields["image_profile"], "image", "image_profile")
    for flag in ("require_certified_hosts", "require_certified_images"):
        if flag in fields and not isinstance(fields[flag], bool):
            raise CorralError(f"{flag}: must be true or false.", field=flag)
    locked = Project.objects.select_for_update().get(pk=project.pk)
    changed = []
    for field, new in fields.items():
        old = getattr(locked, field)
        if old != new:
            _record(user, locked, field, old, new)
            setattr(locked, field, new)
            changed.append(field)
    if changed:
        locked.save(update_fields=changed)
    if "image_profile" in changed:
        for image in locked.images.all():
            image_reevaluate(image, reason=f"project image profile set to {locked.image_profile}")
    return locked


def _project_image_profile(project: Project) -> str:
    name = project.image_profile
    return name if name in PROFILES and PROFILES[name].kind == "image" else ""


def image_profile_for(project: Project) -> str:
    """The project's image profile, or the fleet default when the project names none (or
    names a host profile, as the model's historical default ``development`` does)."""
    return _project_image_profile(project) or fleet_policy().image_profile


def host_profile_for(project: Project | None) -> str:
    name = project.host_profile if project is not None else ""
    if name in PROFILES and PROFILES[name].kind == "host":
        return name
    return fleet_policy().host_profile


# --- verdicts ------------------------------------------------------------------------------


def _findings(raw: list[dict[str, Any]]) -> list[Finding]:
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(Finding.from_dict(item))
        except ProtocolError as exc:
            raise CorralError(
                f"findings[{i}].{exc.field}: {exc.message}", field="findings"
            ) from None
    return out


def evaluate_raw(raw: list[dict[str, Any]], profile: str) -> tuple[str, list[str]]:
    if not raw:
        return "unknown", []
    verdict, failed = evaluate(_findings(raw), profile)
    return str(verdict), list(failed)


def image_certify(image: Image, findings: list[dict[str, Any]], *, reason: str) -> str:
    """Store ``findings`` and the verdict under the project's image profile; a history row
    when the verdict (or what failed) changes."""
    profile = image_profile_for(image.project)
    verdict, failed = evaluate_raw(findings, profile)
    previous = Image.objects.filter(pk=image.pk).values_list("certification", "findings").first()
    Image.objects.filter(pk=image.pk).update(certification=verdict, findings=findings)
    old_verdict, old_findings = previous or ("", [])
    old_failed = evaluate_raw(old_findings, profile)[1] if old_findings else []
    if old_verdict != verdict or old_failed != failed:
        ImageCertificationChange.objects.create(
            image=image,
            profile=profile,
            from_verdict=old_verdict,
            to_verdict=verdict,
            failed=failed,
            reason=reason[:255],
        )
    image.certification, image.findings = verdict, findings
    return verdict


def image_reevaluate(image: Image, *, reason: str) -> str:
    return image_certify(image, list(image.findings), reason=reason)


def host_verdict(host: Host, profile: str) -> tuple[str, list[str]]:
    """A host's verdict under any host profile, from the findings of its last inventory."""
    profile_check(profile, "host", "profile")
    return evaluate_raw(list(host.findings), profile)


def host_certified_for(host: Host, project: Project) -> bool:
    return host_verdict(host, host_profile_for(project))[0] == "certified"


# --- reports -------------------------------------------------------------------------------


def host_report(host: Host, *, profile: str | None = None) -> dict[str, Any]:
    """The JSON export of a host's certification: stored verdict, the verdict under every
    host profile (or the one asked for), each finding, and the history of changes."""
    names = (
        [profile_check(profile, "host", "profile")]
        if profile
        else sorted(n for n, p in PROFILES.items() if p.kind == "host")
    )
    verdicts = {}
    for name in names:
        verdict, failed = evaluate_raw(list(host.findings), name)
        verdicts[name] = {"verdict": verdict, "failed": failed}
    history = CertificationChange.objects.filter(host=host)[:100]
    return {
        "kind": "host",
        "id": str(host.pk),
        "name": host.name,
        "generated_at": timezone.now().isoformat(),
        "inventory_at": host.inventory_at.isoformat() if host.inventory_at else None,
        "profile": host.certification_profile,
        "verdict": host.certification,
        "fleet_profile": fleet_policy().host_profile,
        "profiles": verdicts,
        "findings": list(host.findings),
        "history": [
            {
                "at": c.at.isoformat(),
                "profile": c.profile,
                "from": c.from_verdict,
                "to": c.to_verdict,
                "failed": c.failed,
            }
            for c in history
        ],
    }


def image_report(image: Image) -> dict[str, Any]:
    profile = image_profile_for(image.project)
    verdict, failed = evaluate_raw(list(image.findings), profile)
    return {
        "kind": "image",
        "id": str(image.pk),
        "project": image.project.slug,
        "reference": image.reference,
        "digest": image.digest,
        "generated_at": timezone.now().isoformat(),
        "profile": profile,
        "verdict": image.certification,
        "failed": failed if verdict == "not_certified" else [],
        "findings": list(image.findings),
        "history": [
            {
                "at": c.at.isoformat(),
                "profile": c.profile,
                "from": c.from_verdict,
                "to": c.to_verdict,
                "failed": c.failed,
                "reason": c.reason,
            }
            for c in image.certification_changes.all()[:100]
        ],
    }


def certification_events(*, limit: int = 100, user: Any = None) -> list[dict[str, Any]]:
    """The fleet view's timeline: hosts gaining or losing certification (and why), image
    verdict changes and policy changes, newest first. Non-staff users see their projects'
    images and policies only."""
    hosts = CertificationChange.objects.select_related("host")[:limit]
    images = ImageCertificationChange.objects.select_related("image__project")
    policies = PolicyChange.objects.select_related("user", "project")
    if user is not None and not user.is_staff:
        images = images.filter(image__project__memberships__user=user)
        policies = policies.filter(project__memberships__user=user)
    events: list[dict[str, Any]] = []
    for c in hosts:
        lost = c.from_verdict == "certified" and c.to_verdict != "certified"
        events.append(
            {
                "at": c.at,
                "kind": "host_certification_lost" if lost else "host_certification",
                "host": c.host.name,
                "host_id": str(c.host_id),
                "profile": c.profile,
                "from": c.from_verdict,
                "to": c.to_verdict,
                "failed": c.failed,
            }
        )
    for i in images[:limit]:
        events.append(
            {
                "at": i.at,
                "kind": "image_certification",
                "image": i.image.reference,
                "image_id": str(i.image_id),
                "project": i.image.project.slug,
                "profile": i.profile,
                "from": i.from_verdict,
                "to": i.to_verdict,
                "failed": i.failed,
                "reason": i.reason,
            }
        )
    for p in policies[:limit]:
        events.append(
            {
                "at": p.at,
                "kind": "policy_change",
                "project": p.project.slug if p.project else None,
                "field": p.field,
                "from": p.old,
                "to": p.new,
                "by": p.user.username if p.user else None,
            }
        )
    events.sort(key=lambda e: e["at"], reverse=True)
    return [{**e, "at": e["at"].isoformat()} for e in events[:limit]]
