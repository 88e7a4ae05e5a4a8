"""One DRF exception handler: domain errors become clear 400/404/409/503 answers, never 500."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from agent.protocol.errors import ProtocolError
from config.errors import CorralError

logger = logging.getLogger(__name__)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = ValidationError(detail=detail)
    elif isinstance(exc, ProtocolError):
        exc = ValidationError(detail={exc.field or "detail": [exc.message]})
    if isinstance(exc, CorralError):
        body: dict[str, Any] = {"detail": str(exc), "code": exc.code}
        body.update(exc.extra)
        return Response(body, status=exc.http_status)
    return drf_exception_handler(exc, context)
