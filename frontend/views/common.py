"""Helpers shared by the UI views: page rendering with the navigation context, pagination,
project switching, staff checks and the mapping of domain errors onto form fields."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required as django_login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from config.errors import CorralError
from containers import selectors
from containers.models import Project

PAGE_SIZE = 50
SESSION_PROJECT = "corral_project"
POLL_SECONDS = 2


def is_htmx(request: HttpRequest) -> bool:
    """True for requests made by htmx (polling and partial swaps), which get a fragment."""
    return request.headers.get("HX-Request") == "true"


def current_project(request: HttpRequest) -> str:
    """The project slug chosen in the switcher ('' = all the user's projects)."""
    return str(request.session.get(SESSION_PROJECT, ""))


def visible_projects(request: HttpRequest) -> list[Project]:
    """The user's projects, fetched once per request (the switcher and forms reuse it)."""
    cached = getattr(request, "_corral_projects", None)
    if cached is None:
        cached = list(selectors.project_list(request.user).order_by("slug"))
        request._corral_projects = cached  # type: ignore[attr-defined]
    return cached


def page(
    request: HttpRequest,
    template: str,
    context: dict[str, Any],
    *,
    partial: str | None = None,
    status: int = 200,
) -> HttpResponse:
    """Render a full page, or only ``partial`` when htmx asks (polling, filter changes)."""
    if partial and is_htmx(request):
        return render(request, partial, context, status=status)
    context.setdefault("projects", visible_projects(request))
    context.setdefault("current_project", current_project(request))
    context.setdefault("poll", POLL_SECONDS)
    return render(request, template, context, status=status)


def login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Django's login_required, except that an htmx request of an expired session gets an
    ``HX-Redirect`` to the login page (a plain redirect would swap the login form into the
    polled fragment)."""
    wrapped = django_login_required(view)

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if is_htmx(request) and not request.user.is_authenticated:
            current = request.headers.get("HX-Current-URL", "/")
            target = f"{settings.LOGIN_URL}?{urlencode({'next': current})}"
            return HttpResponse(status=204, headers={"HX-Redirect": target})
        return wrapped(request, *args, **kwargs)

    return wrapper


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Fleet-wide pages: staff only. Others get 404 so the page's existence is not leaked."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapper


def paginate(request: HttpRequest, queryset: Any, per_page: int = PAGE_SIZE) -> Page:
    """The requested page, clamped to the valid range (a bad ?page= never errors)."""
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def query_without_page(request: HttpRequest) -> str:
    """The current filters as a query string, for pagination links."""
    params = request.GET.copy()
    params.pop("page", None)
    return params.urlencode()


def errors_from(exc: Exception, aliases: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Field errors of a domain or validation error: ``{"field": [...], "form": [...]}``
    ("form" holds what is not about one field).
    A CorralError naming ``extra["field"]`` lands beside that field; model field names are
    mapped to form names with ``aliases`` (e.g. image_reference -> image)."""
    aliases = aliases or {}
    out: dict[str, list[str]] = {}
    if isinstance(exc, ValidationError):
        if hasattr(exc, "error_dict"):
            for field, messages in exc.message_dict.items():
                key = "form" if field == "__all__" else aliases.get(field, field)
                out.setdefault(key, []).extend(messages)
        else:
            out["form"] = list(exc.messages)
    elif isinstance(exc, CorralError):
        field = str(exc.extra.get("field") or "form")
        out[aliases.get(field, field)] = [str(exc)]
    else:
        out["form"] = [str(exc)]
    return out
