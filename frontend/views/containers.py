"""Container pages: one list across all hosts, the create form (validated by the API's
serializer), detail with live state, log tail and resource sparklines, and actions that
answer with the Operation they started."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from django.contrib import messages
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from agent.protocol import names
from agent.protocol.messages import ContainerAction, LogsRequest
from config.errors import CorralError
from containers import selectors, services
from containers.api.serializers import ContainerSerializer
from containers.choices import ContainerMode, NetworkMode, ObservedState, RestartPolicy, Role
from containers.filtersets import ContainerFilterSet
from containers.models import Container
from containers.permissions import has_role
from frontend.forms import FormErrors, container_data
from frontend.views.common import (
    current_project,
    errors_from,
    is_htmx,
    login_required,
    page,
    paginate,
    query_without_page,
    visible_projects,
)
from frontend.views.hosts import hosts_visible
from hosts import dispatch
from hosts.models import Operation

FIELD_ALIASES = {
    "image_reference": "image",
    "restart_max_retries": "restart_policy",
    "non_field_errors": "form",
}
FORM_FIELDS = {
    "form",
    "project",
    "name",
    "mode",
    "image",
    "command",
    "env",
    "working_dir",
    "user",
    "memory_limit",
    "cpu_millicores",
    "cpu_weight",
    "pids_limit",
    "restart_policy",
    "network_mode",
    "host",
    "placement",
    "labels",
}
# Large JSON columns the list never shows; not fetching them keeps the page query small.
LIST_DEFERRED = (
    "command",
    "args",
    "env",
    "ports",
    "sockets",
    "placement",
    "host__inventory",
    "host__findings",
    "host__labels",
    "image__config",
    "image__layers",
    "image__labels",
    "image__findings",
)
NAME_CONSTRAINT = "unique_live_container_name_per_project"
STATS_SAMPLES = 40
QUERY_WAIT = 3.0


def container_or_404(request: HttpRequest, container_id: Any) -> Container:
    """A container of the user's projects, else 404 (another tenant's looks like nothing)."""
    try:
        pk = uuid.UUID(str(container_id))
    except ValueError:
        raise Http404("No such container.") from None
    return get_object_or_404(selectors.container_list(request.user, include_removed=True), pk=pk)


@login_required
def container_list(request: HttpRequest) -> HttpResponse:
    """Containers of all visible hosts, filtered by the API's ContainerFilterSet."""
    params = request.GET.copy()
    if not request.GET and current_project(request):
        params["project"] = current_project(request)
    rows = selectors.container_list(request.user).defer(*LIST_DEFERRED)
    filterset = ContainerFilterSet(params, queryset=rows)
    context = {
        # -created_at alone walks its index and stops after one page (ties are rare).
        "page": paginate(request, filterset.qs.order_by("-created_at")),
        "filters": params,
        "query_string": query_without_page(request),
        "states": ObservedState.choices,
        "host_names": hosts_visible(request).order_by("name").values_list("name", flat=True),
    }
    return page(
        request, "frontend/containers.html", context, partial="frontend/partials/containers.html"
    )


def _create_context(request: HttpRequest, values: Any, errors: dict[str, list[str]]) -> dict:
    operable = [p for p in visible_projects(request) if has_role(request.user, p, Role.OPERATOR)]
    return {
        "values": values,
        "errors": errors,
        "operable_projects": operable,
        "pinnable_hosts": hosts_visible(request)
        .filter(status="online", maintenance=False)
        .order_by("name")
        .only("id", "name"),
        "modes": ContainerMode.choices,
        "network_modes": NetworkMode.choices,
        "restart_policies": RestartPolicy.choices,
        "default_project": current_project(request),
    }


@login_required
def container_create(request: HttpRequest) -> HttpResponse:
    """GET: the form. POST: parse, validate with the API serializer, create; errors are shown
    beside their fields and the entered values are kept."""
    if request.method != "POST":
        return page(request, "frontend/container_form.html", _create_context(request, {}, {}))
    errors: dict[str, list[str]] = {}
    try:
        data = container_data(request.POST)
        serializer = ContainerSerializer(data=data)
        if not serializer.is_valid():
            raise FormErrors(
                {FIELD_ALIASES.get(k, k): [str(m) for m in v] for k, v in serializer.errors.items()}
            )
        fields = dict(serializer.validated_data)
        project = fields.pop("project")
        if project not in visible_projects(request) or not has_role(
            request.user, project, Role.OPERATOR
        ):
            raise FormErrors({"project": [f"You may not create containers in {project.slug}."]})
        container, op = services.container_create(
            user=request.user, project=project, host=fields.pop("host", None), **fields
        )
    except FormErrors as exc:
        errors = exc.errors
    except (CorralError, ValidationError) as exc:
        errors = _name_conflict(errors_from(exc, FIELD_ALIASES), request.POST)
    if errors:
        context = _create_context(request, request.POST, _fold_unknown(errors))
        # 200 like Django's form views: a 4xx document is logged as a console error by browsers.
        return page(request, "frontend/container_form.html", context)
    messages.success(request, f"Container {container.name} created on {container.host}.")
    return redirect(reverse("frontend:container-detail", args=[container.pk]) + f"?op={op.pk}")


def _name_conflict(errors: dict[str, list[str]], post: Any) -> dict[str, list[str]]:
    """The model's unique-name constraint reports on the whole form; it is about the name."""
    form_errors = errors.get("form", [])
    if any(NAME_CONSTRAINT in m for m in form_errors):
        errors["form"] = [m for m in form_errors if NAME_CONSTRAINT not in m]
        if not errors["form"]:
            del errors["form"]
        errors.setdefault("name", []).append(
            f"A container named {post.get('name', '')!r} already exists in project "
            f"{post.get('project', '')}."
        )
    return errors


def _fold_unknown(errors: dict[str, list[str]]) -> dict[str, list[str]]:
    """Errors about fields the form does not show go to the top, still naming the field."""
    out: dict[str, list[str]] = {}
    for field, messages_ in errors.items():
        if field in FORM_FIELDS:
            out.setdefault(field, []).extend(messages_)
        else:
            out.setdefault("form", []).extend(f"{field}: {m}" for m in messages_)
    return out


@login_required
def container_detail(request: HttpRequest, container_id: str) -> HttpResponse:
    container = container_or_404(request, container_id)
    op_id = request.GET.get("op", "")
    context = {
        "c": container,
        "can_operate": has_role(request.user, container.project, Role.OPERATOR),
        "events": container.events.all()[:15],
        "operations": Operation.objects.filter(target_id=str(container.pk))
        .exclude(kind__in=(names.AGENT_CONTAINER_LOGS, names.AGENT_CONTAINER_STATS))
        .select_related("requested_by")
        .order_by("-created_at")[:8],
        "op": _visible_operation(request, op_id) if op_id else None,
    }
    return page(
        request,
        "frontend/container_detail.html",
        context,
        partial="frontend/partials/container_live.html",
    )


def _visible_operation(request: HttpRequest, op_id: str) -> Operation | None:
    try:
        return selectors.operation_list(request.user).filter(pk=uuid.UUID(op_id)).first()
    except ValueError:
        return None


@login_required
def container_logs(request: HttpRequest, container_id: str) -> HttpResponse:
    """The last lines of the container's output, fetched from its agent (polled by htmx)."""
    container = container_or_404(request, container_id)
    context: dict[str, Any] = {"c": container, "lines": [], "error": ""}
    if container.observed_state == ObservedState.PENDING:
        # Not created on the host yet: asking now would only record a failed query.
        context["error"] = "the container is still being created"
    elif container.host is None or not dispatch.host_is_reachable(container.host):
        context["error"] = (
            dispatch.offline_reason(container.host) if container.host else "not placed on a host"
        )
    else:
        op = services.container_query(
            user=request.user,
            container=container,
            kind=names.AGENT_CONTAINER_LOGS,
            payload=LogsRequest(container_id=str(container.pk), tail=200),
            wait=QUERY_WAIT,
        )
        if op.status == "succeeded":
            context["lines"] = [_log_text(line) for line in op.result.get("lines", [])]
        else:
            context["error"] = op.error or "the host did not answer in time"
    return page(request, "frontend/partials/logs.html", context)


def _log_text(line: Any) -> dict[str, str]:
    """One agent log entry ``{"time", "ts", "stream", "log"}`` as text and stream."""
    if isinstance(line, dict):
        text = line.get("log", line.get("line", line.get("message", "")))
        return {"text": str(text).rstrip("\n"), "stream": str(line.get("stream", "stdout"))}
    return {"text": str(line).rstrip("\n"), "stream": "stdout"}


@login_required
def container_stats(request: HttpRequest, container_id: str) -> HttpResponse:
    """Take one stats sample from the agent, keep the last samples in the cache and render
    CPU and memory sparklines from them."""
    container = container_or_404(request, container_id)
    key = f"corral:ui:stats:{container.pk}"
    samples: list[dict[str, float]] = cache.get(key, [])
    error = ""
    if container.observed_state != ObservedState.RUNNING:
        error = f"container is {container.get_observed_state_display().lower()}"
    elif container.host is None or not dispatch.host_is_reachable(container.host):
        error = "host unreachable"
    else:
        op = services.container_query(
            user=request.user,
            container=container,
            kind=names.AGENT_CONTAINER_STATS,
            payload=ContainerAction(container_id=str(container.pk)),
            wait=QUERY_WAIT,
        )
        stats = op.result.get("stats", {}) if op.status == "succeeded" else {}
        if stats:
            samples = [*samples, _sample(stats)][-STATS_SAMPLES:]
            cache.set(key, samples, 3600)
        else:
            error = op.error or "no answer in time"
    context = {"c": container, "error": error, **stats_series(samples)}
    return page(request, "frontend/partials/stats.html", context)


def _sample(stats: dict[str, Any]) -> dict[str, float]:
    return {
        "t": float(stats.get("timestamp") or 0.0),
        "cpu_ns": float(stats.get("cpu_usage_ns") or 0),
        "mem": float(stats.get("memory_current") or 0),
        "limit": float(stats.get("memory_limit") or 0),
    }


def stats_series(samples: list[dict[str, float]]) -> dict[str, Any]:
    """CPU % (from usage deltas between samples) and memory bytes, for the sparklines."""
    cpu = []
    for prev, cur in itertools.pairwise(samples):
        dt = cur["t"] - prev["t"]
        cpu.append(max(0.0, (cur["cpu_ns"] - prev["cpu_ns"]) / (dt * 1e9) * 100) if dt > 0 else 0.0)
    last = samples[-1] if samples else {}
    return {
        "cpu_series": cpu,
        "mem_series": [s["mem"] for s in samples],
        "cpu_now": round(cpu[-1], 1) if cpu else None,
        "mem_now": last.get("mem"),
        "mem_limit": last.get("limit") or None,
    }


@require_POST
@login_required
def container_action(request: HttpRequest, container_id: str, action: str) -> HttpResponse:
    """start / stop / restart / remove; answers with the Operation's progress (htmx) or
    redirects to the detail page that shows it."""
    container = container_or_404(request, container_id)
    if not has_role(request.user, container.project, Role.OPERATOR):
        raise PermissionDenied(f"You need the operator role in project {container.project.slug}.")
    try:
        op = services.container_action(
            user=request.user,
            container=container,
            action=action,
            force=request.POST.get("force") == "1",
        )
    except CorralError as exc:
        if is_htmx(request):
            return page(request, "frontend/partials/action_error.html", {"error": str(exc)})
        messages.error(request, str(exc))
        return redirect("frontend:container-detail", container_id=container.pk)
    if is_htmx(request):
        return page(request, "frontend/partials/operation_progress.html", {"op": op})
    return redirect(reverse("frontend:container-detail", args=[container.pk]) + f"?op={op.pk}")
