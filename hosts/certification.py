"""Host certification on the control plane: the agent reports findings with each inventory;
the control plane evaluates them under the host's policy profile and keeps the verdict and
its history (a CertificationChange row whenever the verdict changes)."""

from __future__ import annotations

import logging

from django.conf import settings

from agent.protocol.messages import Finding, InventoryReport
from hosts.models import CertificationChange, Host

logger = logging.getLogger(__name__)


def host_profile(host: Host) -> str:
    return str(
        host.labels.get("corral.certification/profile")
        or settings.CORRAL.get("HOST_PROFILE", "certified-container-host")
    )


def evaluate_findings(findings: list[Finding], profile: str) -> tuple[str, list[str]]:
    from agent.protocol.certification import evaluate

    verdict, failed = evaluate(findings, profile)
    return str(verdict), list(failed)


def host_certification_record(host: Host, report: InventoryReport) -> str:
    profile = host_profile(host)
    verdict, failed = evaluate_findings(list(report.findings), profile)
    findings = [f.to_dict() for f in report.findings]
    previous = Host.objects.filter(pk=host.pk).values_list("certification", flat=True).first()
    Host.objects.filter(pk=host.pk).update(
        certification=verdict, findings=findings, certification_profile=profile
    )
    if previous != verdict:
        CertificationChange.objects.create(
            host=host,
            profile=profile,
            from_verdict=previous or "",
            to_verdict=verdict,
            failed=failed,
        )
        log = logger.warning if verdict != "certified" and previous == "certified" else logger.info
        log(
            "host %s (%s) certification %s -> %s under %s; failed: %s",
            host.name,
            host.pk,
            previous,
            verdict,
            profile,
            ", ".join(failed) or "none",
        )
    return verdict
