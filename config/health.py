"""/healthz: answers 200 only when the database and the broker both answer."""

from __future__ import annotations

import logging
import time

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

logger = logging.getLogger(__name__)


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _check_broker() -> str:
    from config.celery import app

    with app.connection_for_write(app.conf.broker_url) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        # A real round trip where the transport has one (Redis PING); the filesystem
        # transport has nothing more to check than its directories.
        client = getattr(conn.default_channel, "client", None)
        if client is not None and hasattr(client, "ping"):
            client.ping()
    return "ok"


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    healthy = True
    for name, check in (("database", _check_database), ("broker", _check_broker)):
        started = time.monotonic()
        try:
            checks[name] = check()
        except Exception as exc:
            healthy = False
            checks[name] = f"error: {type(exc).__name__}"
            logger.warning("healthz: %s check failed: %s", name, exc)
        checks[f"{name}_ms"] = f"{(time.monotonic() - started) * 1000:.1f}"
    return JsonResponse(
        {"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503
    )
