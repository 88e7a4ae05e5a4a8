"""Audit middleware: every mutating request (POST, PUT, PATCH, DELETE) is recorded with who,
what, when, from where and the outcome. Bodies are never recorded (they may hold secrets)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from hosts.models import AuditEntry

logger = logging.getLogger(__name__)
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
SKIP_PREFIXES = ("/api/v1/enroll/", "/healthz", "/login/")


class AuditMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.method in MUTATING and not request.path.startswith(SKIP_PREFIXES):
            try:
                self._record(request, response)
            except Exception:
                logger.exception("could not write the audit entry for %s", request.path)
        return response

    def _record(self, request: HttpRequest, response: HttpResponse) -> None:
        match = getattr(request, "resolver_match", None)
        kwargs = match.kwargs if match else {}
        user = getattr(request, "user", None)
        drf_user = user  # DRF propagates token-authenticated users to the HttpRequest
        authenticated = drf_user is not None and bool(drf_user.is_authenticated)
        action = (match.url_name or match.view_name) if match else ""
        extra_action = request.path.rstrip("/").rsplit("/", 1)[-1]
        if match and extra_action and extra_action not in (kwargs.get("pk"), ""):
            action = f"{action}:{extra_action}" if action else extra_action
        AuditEntry.objects.create(
            user=drf_user if authenticated else None,
            username=drf_user.get_username() if drf_user is not None and authenticated else "",
            action=(action or request.path)[:64],
            method=request.method or "",
            path=request.path[:512],
            object_type=(match.url_name or "").split("-")[0][:32] if match else "",
            object_id=str(kwargs.get("pk") or kwargs.get("slug") or "")[:64],
            project_slug=str(kwargs.get("project_slug") or "")[:50],
            remote_addr=request.META.get("REMOTE_ADDR") or None,
            status_code=response.status_code,
            outcome="ok"
            if response.status_code < 400
            else "denied"
            if response.status_code in (401, 403, 404)
            else "error",
        )
