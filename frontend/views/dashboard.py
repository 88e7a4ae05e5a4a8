"""The dashboard: the fleet at a glance, every number a link to the filtered list. A fixed
number of aggregate queries whatever the fleet size (no per-host or per-container work)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse

from agent.protocol import names
from containers import selectors
from containers.choices import ObservedState
from containers.models import ContainerEvent
from frontend.views.common import login_required, page
from frontend.views.hosts import hosts_visible
from hosts.choices import CertificationStatus, HostStatus


def _host_summary(request: HttpRequest) -> dict[str, Any]:
    hosts = hosts_visible(request)
    agg = hosts.aggregate(
        total=Count("pk"),
        online=Count("pk", filter=Q(status=HostStatus.ONLINE)),
        unknown=Count("pk", filter=Q(status=HostStatus.UNKNOWN)),
        offline=Count("pk", filter=Q(status=HostStatus.OFFLINE)),
        pending=Count("pk", filter=Q(status=HostStatus.PENDING)),
        maintenance=Count("pk", filter=Q(maintenance=True)),
        certified=Count("pk", filter=Q(certification=CertificationStatus.CERTIFIED)),
        not_certified=Count("pk", filter=Q(certification=CertificationStatus.NOT_CERTIFIED)),
        cpus=Sum("cpus", filter=Q(status=HostStatus.ONLINE)),
        load=Sum("load1", filter=Q(status=HostStatus.ONLINE)),
        mem_total=Sum("memory_total", filter=Q(status=HostStatus.ONLINE)),
        mem_available=Sum("memory_available", filter=Q(status=HostStatus.ONLINE)),
    )
    agg = {k: v or 0 for k, v in agg.items()}
    agg["uncertified_unknown"] = agg["total"] - agg["certified"] - agg["not_certified"]
    agg["mem_used"] = max(0, agg["mem_total"] - agg["mem_available"])
    agg["load"] = round(float(agg["load"]), 1)
    return agg


def _container_summary(request: HttpRequest) -> tuple[list[dict[str, Any]], int]:
    rows = (
        selectors.container_list(request.user)
        .order_by()
        .values("observed_state")
        .annotate(n=Count("pk"))
    )
    counts = {r["observed_state"]: r["n"] for r in rows}
    states = [
        {"state": value, "label": label, "count": counts.get(value, 0)}
        for value, label in ObservedState.choices
        if value != ObservedState.REMOVED
    ]
    return states, sum(counts.values())


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Hosts by liveness and certification, containers by observed state, fleet CPU and
    memory, recent operations and events, failing certifications. Polled every 2 s."""
    states, container_total = _container_summary(request)
    events = ContainerEvent.objects.select_related("container", "container__project").order_by(
        "-at", "-id"
    )
    if not request.user.is_staff:
        events = events.filter(container__project__memberships__user=request.user.pk)
    failing = (
        hosts_visible(request)
        .filter(certification=CertificationStatus.NOT_CERTIFIED)
        .only("id", "name", "findings", "certification_profile")[:8]
    )
    context = {
        "hosts": _host_summary(request),
        "states": states,
        "container_total": container_total,
        "operations": selectors.operation_list(request.user)
        .exclude(kind__in=(names.AGENT_CONTAINER_LOGS, names.AGENT_CONTAINER_STATS))
        .order_by("-created_at")[:10],
        "events": events[:10],
        "failing": [
            {
                "host": h,
                "failed": [f for f in h.findings if f.get("verdict") == "fail"][:3],
            }
            for h in failing
        ],
    }
    return page(
        request, "frontend/dashboard.html", context, partial="frontend/partials/dashboard.html"
    )
