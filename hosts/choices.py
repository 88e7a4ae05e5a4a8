"""Choices and allowed state transitions of the hosts app."""

from __future__ import annotations

from django.db import models


class HostStatus(models.TextChoices):
    PENDING = "pending", "Pending enrollment"
    ONLINE = "online", "Online"
    UNKNOWN = "unknown", "Unknown (missed heartbeats)"
    OFFLINE = "offline", "Offline"


HOST_TRANSITIONS: dict[str, set[str]] = {
    HostStatus.PENDING: {HostStatus.ONLINE},
    HostStatus.ONLINE: {HostStatus.UNKNOWN, HostStatus.OFFLINE},
    HostStatus.UNKNOWN: {HostStatus.ONLINE, HostStatus.OFFLINE},
    HostStatus.OFFLINE: {HostStatus.ONLINE},
}


class OperationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    LOST = "lost", "Lost"


OPERATION_ACTIVE = (OperationStatus.PENDING, OperationStatus.SENT, OperationStatus.RUNNING)
OPERATION_FINAL = (
    OperationStatus.SUCCEEDED,
    OperationStatus.FAILED,
    OperationStatus.TIMED_OUT,
    OperationStatus.LOST,
)

OPERATION_TRANSITIONS: dict[str, set[str]] = {
    OperationStatus.PENDING: {OperationStatus.SENT, OperationStatus.RUNNING, *OPERATION_FINAL},
    OperationStatus.SENT: {OperationStatus.RUNNING, *OPERATION_FINAL},
    OperationStatus.RUNNING: {OperationStatus.RUNNING, *OPERATION_FINAL},
    # A redelivered command may still report success after the deadline marked it lost.
    OperationStatus.LOST: {OperationStatus.SUCCEEDED, OperationStatus.FAILED},
    OperationStatus.TIMED_OUT: set(),
    OperationStatus.SUCCEEDED: set(),
    OperationStatus.FAILED: set(),
}


class CertificationStatus(models.TextChoices):
    CERTIFIED = "certified", "Certified"
    NOT_CERTIFIED = "not_certified", "Not certified"
    UNKNOWN = "unknown", "Unknown"
