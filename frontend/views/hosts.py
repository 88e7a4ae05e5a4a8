"""Host pages: list with filters and search, detail (inventory, certification findings,
containers, timeline), fleet-admin actions and enrollment of a new host."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.db.models.deletion import ProtectedError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from agent.protocol import names
from agent.protocol.messages import CollectInventory
from containers import selectors as container_selectors
from containers.models import Project
from frontend.views.common import login_required, page, paginate, query_without_page, staff_required
from hosts import dispatch, services
from hosts.choices import CertificationStatus, HostStatus
from hosts.filtersets import HostFilterSet
from hosts.models import Host

logger = logging.getLogger(__name__)


def hosts_visible(request: HttpRequest) -> QuerySet[Host]:
    """Staff see the fleet; members see shared hosts and hosts dedicated to their projects."""
    qs = Host.objects.defer("inventory")
    if request.user.is_staff:
        return qs
    slugs = Project.objects.filter(memberships__user=request.user.pk).values("slug")
    return qs.filter(Q(project_slug="") | Q(project_slug__in=slugs))


def _host_or_404(request: HttpRequest, host_id: Any) -> Host:
    """A visible host or 404 (also for malformed ids)."""
    try:
        pk = uuid.UUID(str(host_id))
    except ValueError:
        raise Http404("No such host.") from None
    return get_object_or_404(hosts_visible(request).defer(None), pk=pk)


@login_required
def host_list(request: HttpRequest) -> HttpResponse:
    """All visible hosts, filterable by the shared HostFilterSet, searchable by name/OS/kernel."""
    qs = hosts_visible(request).defer("findings")
    filterset = HostFilterSet(request.GET, queryset=qs)
    hosts = filterset.qs
    query = request.GET.get("q", "").strip()
    if query:
        hosts = hosts.filter(
            Q(name__icontains=query)
            | Q(address__icontains=query)
            | Q(kernel__icontains=query)
            | Q(os_name__icontains=query)
        )
    host_page = paginate(request, hosts.order_by("name"))
    _count_containers(request, host_page.object_list)
    context = {
        "page": host_page,
        "filters": request.GET,
        "query_string": query_without_page(request),
        "statuses": HostStatus.choices,
        "certifications": CertificationStatus.choices,
        "filter_errors": filterset.errors,
    }
    return page(request, "frontend/hosts.html", context, partial="frontend/partials/hosts.html")


def _count_containers(request: HttpRequest, hosts: Any) -> None:
    """Set ``container_count`` (containers the user may see) on one page of hosts with one
    grouped query, instead of a join and GROUP BY across the whole fleet."""
    hosts = list(hosts)
    rows = (
        container_selectors.container_list(request.user)
        .filter(host__in=[h.pk for h in hosts])
        .order_by()
        .values("host_id")
        .annotate(n=Count("pk"))
    )
    counts = {r["host_id"]: r["n"] for r in rows}
    for host in hosts:
        host.container_count = counts.get(host.pk, 0)


@login_required
def host_detail(request: HttpRequest, host_id: str) -> HttpResponse:
    host = _host_or_404(request, host_id)
    containers = container_selectors.container_list(request.user).filter(host=host)
    context = {
        "host": host,
        # Sections by name; bookkeeping sections ("_meta") last.
        "inventory": sorted(
            (host.inventory or {}).items(), key=lambda kv: (kv[0].startswith("_"), kv[0])
        ),
        "findings": sorted(
            host.findings or [],
            key=lambda f: {"fail": 0, "warn": 1}.get(str(f.get("verdict")), 2),
        ),
        "containers": containers.order_by("name")[:200],
        "container_count": containers.count(),
        "timeline": host.status_changes.all()[:50],
        "certifications": host.certification_changes.all()[:20],
        "operations": container_selectors.operation_list(request.user)
        .filter(host=host)
        .exclude(kind__in=(names.AGENT_CONTAINER_LOGS, names.AGENT_CONTAINER_STATS))
        .order_by("-created_at")[:10],
    }
    return page(
        request, "frontend/host_detail.html", context, partial="frontend/partials/host_live.html"
    )


@require_POST
@login_required
@staff_required
def host_maintenance(request: HttpRequest, host_id: str) -> HttpResponse:
    """Switch maintenance on or off: keeps new containers off the host, liveness untouched."""
    host = _host_or_404(request, host_id)
    enabled = request.POST.get("enabled") == "1"
    Host.objects.filter(pk=host.pk).update(maintenance=enabled)
    messages.success(request, f"Maintenance {'on' if enabled else 'off'} for {host.name}.")
    return redirect("frontend:host-detail", host_id=host.pk)


@require_POST
@login_required
@staff_required
def host_recheck(request: HttpRequest, host_id: str) -> HttpResponse:
    """Ask the agent to re-run its certification checks (recorded as an Operation first)."""
    host = _host_or_404(request, host_id)
    with transaction.atomic():
        op = services.operation_create(
            kind=names.AGENT_CERTIFICATION_RUN,
            host=host,
            target_type="host",
            target_id=str(host.pk),
            project_slug=host.project_slug,
            requested_by=request.user,
        )
        dispatch.send_command(op, names.AGENT_CERTIFICATION_RUN, CollectInventory(full=True))
    if op.status == "failed":
        messages.error(request, f"Could not re-run the checks: {op.error}.")
    else:
        messages.success(request, f"Certification checks requested (operation {op.pk}).")
    return redirect("frontend:operation-detail", op_id=op.pk)


@require_POST
@login_required
@staff_required
def host_remove(request: HttpRequest, host_id: str) -> HttpResponse:
    host = _host_or_404(request, host_id)
    if request.POST.get("confirm") != host.name:
        messages.error(request, f"Type the host name {host.name!r} to confirm removal.")
        return redirect("frontend:host-detail", host_id=host.pk)
    try:
        host.delete()
    except ProtectedError:
        messages.error(
            request,
            f"{host.name} still has containers on record; remove or move them first.",
        )
        return redirect("frontend:host-detail", host_id=host.pk)
    logger.info("host %s (%s) removed by %s", host.name, host_id, request.user)
    messages.success(request, f"Host {host.name} removed.")
    return redirect("frontend:host-list")


@login_required
@staff_required
def host_add(request: HttpRequest) -> HttpResponse:
    """Create a single-use enrollment token and show the command to run on the new host."""
    context: dict[str, Any] = {"errors": {}, "values": request.POST}
    if request.method == "POST":
        note = request.POST.get("note", "").strip()[:255]
        project_slug = request.POST.get("project_slug", "").strip()
        if project_slug and not Project.objects.filter(slug=project_slug).exists():
            context["errors"]["project_slug"] = [f"No project {project_slug!r}."]
        else:
            token, secret = services.enrollment_token_create(
                created_by=request.user, project_slug=project_slug, note=note
            )
            server = settings.CORRAL["PUBLIC_URL"]
            context["token"] = token
            context["command"] = f"python -m agent enroll --server {server} --token {secret}"
    context["all_projects"] = Project.objects.order_by("slug")
    return page(request, "frontend/host_add.html", context)
