"""Images, projects, the operations feed and the audit log; the project switcher."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from agent.protocol import names
from containers import selectors, services
from containers.filtersets import ImageFilterSet
from containers.models import Membership
from containers.permissions import role_in
from frontend.templatetags.corral import ERROR_WORDS, plain_error
from frontend.views.common import (
    SESSION_PROJECT,
    current_project,
    login_required,
    page,
    paginate,
    query_without_page,
    staff_required,
    visible_projects,
)
from hosts.choices import OPERATION_ACTIVE, CertificationStatus, OperationStatus
from hosts.filtersets import OperationFilterSet
from hosts.models import AuditEntry

QUERY_KINDS = (names.AGENT_CONTAINER_LOGS, names.AGENT_CONTAINER_STATS)


@require_POST
@login_required
def switch_project(request: HttpRequest) -> HttpResponse:
    """Remember the chosen project ('' = all) and go back where the user was."""
    slug = request.POST.get("project", "")
    if slug and slug not in {p.slug for p in visible_projects(request)}:
        raise Http404("No such project.")
    request.session[SESSION_PROJECT] = slug
    target = request.POST.get("next", "/")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}):
        target = "/"
    return redirect(target)


@login_required
def image_list(request: HttpRequest) -> HttpResponse:
    params = request.GET.copy()
    if not request.GET and current_project(request):
        params["project"] = current_project(request)
    images = ImageFilterSet(params, queryset=selectors.image_list(request.user)).qs
    query = request.GET.get("q", "").strip()
    if query:
        images = images.filter(Q(reference__icontains=query) | Q(digest__icontains=query))
    context = {
        "page": paginate(request, images.order_by("reference", "pk")),
        "filters": params,
        "query_string": query_without_page(request),
        "certifications": CertificationStatus.choices,
    }
    return page(request, "frontend/images.html", context)


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    rows = []
    for project in visible_projects(request):
        rows.append(
            {
                "p": project,
                "usage": services.project_usage(project),
                "role": role_in(request.user, project),
            }
        )
    return page(request, "frontend/projects.html", {"rows": rows})


@login_required
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(selectors.project_list(request.user), slug=slug)
    context = {
        "p": project,
        "usage": services.project_usage(project),
        "role": role_in(request.user, project),
        "members": Membership.objects.filter(project=project)
        .select_related("user")
        .order_by("user__username"),
        "containers": selectors.container_list(request.user)
        .filter(project=project)
        .order_by("-created_at")[:20],
    }
    return page(request, "frontend/project_detail.html", context)


@login_required
def operation_list(request: HttpRequest) -> HttpResponse:
    """The operations feed, filterable; log/stats queries hidden unless asked for."""
    params = request.GET.copy()
    if not request.GET and current_project(request):
        params["project_slug"] = current_project(request)
    qs = selectors.operation_list(request.user)
    if params.get("queries") != "1":
        qs = qs.exclude(kind__in=QUERY_KINDS)
    ops = OperationFilterSet(params, queryset=qs).qs.order_by("-created_at")
    context = {
        "page": paginate(request, ops),
        "filters": params,
        "query_string": query_without_page(request),
        "statuses": OperationStatus.choices,
        "words": ERROR_WORDS,
    }
    return page(
        request, "frontend/operations.html", context, partial="frontend/partials/operations.html"
    )


@login_required
def operation_detail(request: HttpRequest, op_id: str) -> HttpResponse:
    try:
        pk = uuid.UUID(op_id)
    except ValueError:
        raise Http404("No such operation.") from None
    op = get_object_or_404(selectors.operation_list(request.user), pk=pk)
    context: dict[str, Any] = {
        "op": op,
        "events": op.events.all()[:200],
        "active": op.status in OPERATION_ACTIVE,
        "error_text": plain_error(op.error_code, op.error),
    }
    return page(
        request,
        "frontend/operation_detail.html",
        context,
        partial="frontend/partials/operation_progress.html",
    )


@login_required
@staff_required
def audit_log(request: HttpRequest) -> HttpResponse:
    entries = AuditEntry.objects.select_related("user").order_by("-at")
    for field in ("username", "action", "outcome", "object_type", "method"):
        value = request.GET.get(field, "").strip()
        if value:
            entries = entries.filter(**{field: value})
    query = request.GET.get("q", "").strip()
    if query:
        entries = entries.filter(Q(path__icontains=query) | Q(object_id__icontains=query))
    context = {
        "page": paginate(request, entries),
        "filters": request.GET,
        "query_string": query_without_page(request),
    }
    return page(request, "frontend/audit.html", context)
