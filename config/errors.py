"""The few named domain exceptions of the control plane. The API maps them by http_status."""

from __future__ import annotations

from typing import Any


class CorralError(Exception):
    http_status = 400
    code = "error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class InvalidTransition(CorralError):
    http_status = 409
    code = "invalid_transition"


class OperationConflict(CorralError):
    http_status = 409
    code = "conflict"


class HostUnavailable(CorralError):
    http_status = 503
    code = "host_unavailable"


class QuotaExceeded(CorralError):
    http_status = 409
    code = "quota_exceeded"


class PlacementFailed(CorralError):
    http_status = 409
    code = "no_host_fits"


class EnrollmentRefused(CorralError):
    http_status = 403
    code = "enrollment_refused"
