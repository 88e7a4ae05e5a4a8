"""Hosts of the fleet, their inventory and liveness, enrollment tokens, operations, audit."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

from hosts.choices import CertificationStatus, HostStatus, OperationStatus

host_name_validator = RegexValidator(
    r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$",
    "Host names are letters, digits, '.' and '-', and start and end with a letter or digit.",
)


# Host columns that can be large (a full inventory decodes in milliseconds): left out with
# ``defer()`` wherever hosts are loaded in bulk, or beside other rows, and not read.
HOST_LARGE_FIELDS = ("inventory", "findings")
# The same, for a host reached through a ``host`` foreign key (with select_related("host")).
RELATED_HOST_LARGE_FIELDS = tuple(f"host__{name}" for name in HOST_LARGE_FIELDS)


class Host(models.Model):
    """A machine running a Corral agent. ``status`` is liveness; ``maintenance`` is an operator's
    switch that keeps new containers off the host without touching liveness."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=253, unique=True, validators=[host_name_validator])
    address = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=HostStatus.choices, default=HostStatus.PENDING)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    maintenance = models.BooleanField(default=False)
    labels = models.JSONField(default=dict, blank=True)
    project_slug = models.SlugField(
        blank=True, help_text="Set when the host is dedicated to one project; empty = fleet."
    )
    agent_version = models.CharField(max_length=32, blank=True)
    public_key = models.CharField(max_length=64, blank=True, help_text="Agent's Ed25519 key")
    enrolled_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_seq = models.BigIntegerField(default=0)
    load1 = models.FloatField(null=True, blank=True)
    memory_available = models.BigIntegerField(null=True, blank=True)
    # Latest inventory snapshot and the indexed columns people filter by.
    inventory = models.JSONField(default=dict, blank=True)
    inventory_hash = models.CharField(max_length=80, blank=True)
    inventory_at = models.DateTimeField(null=True, blank=True)
    cpus = models.PositiveIntegerField(null=True, blank=True)
    memory_total = models.BigIntegerField(null=True, blank=True)
    kernel = models.CharField(max_length=128, blank=True, db_index=True)
    os_name = models.CharField(max_length=128, blank=True)
    virtualization = models.CharField(max_length=32, blank=True, db_index=True)
    cgroup_version = models.CharField(max_length=8, blank=True, db_index=True)
    selinux_mode = models.CharField(max_length=16, blank=True, db_index=True)
    certification = models.CharField(
        max_length=16, choices=CertificationStatus.choices, default=CertificationStatus.UNKNOWN
    )
    certification_profile = models.CharField(max_length=64, blank=True)
    findings = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["status", "maintenance"])]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        from agent.protocol.names import host_queue

        return host_queue(self.id)

    def clean(self) -> None:
        if not isinstance(self.labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            raise ValidationError({"labels": "Labels are an object of string keys and values."})


class HostStatusChange(models.Model):
    """One liveness transition of a host, for the timeline."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="status_changes")
    from_status = models.CharField(max_length=16, choices=HostStatus.choices)
    to_status = models.CharField(max_length=16, choices=HostStatus.choices)
    reason = models.CharField(max_length=255, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at"]


class InventoryChange(models.Model):
    """What changed in a host's inventory and when (sections added, removed or changed)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="inventory_changes")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    changes = models.JSONField(default=dict)

    class Meta:
        ordering = ["-at"]


class EnrollmentToken(models.Model):
    """A single-use secret an agent presents to enroll. Only its hash is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to tell tokens apart")
    project_slug = models.SlugField(blank=True)
    host = models.ForeignKey(
        Host,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="enrollment_tokens",
        help_text="Enroll as this pre-created host (or re-enroll it); empty = a new host.",
    )
    note = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]


class Operation(models.Model):
    """One command to one host (or a control-plane job), recorded before anything is sent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=64, db_index=True)
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.SET_NULL, related_name="operations"
    )
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True, db_index=True)
    project_slug = models.SlugField(blank=True, db_index=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    status = models.CharField(
        max_length=16, choices=OperationStatus.choices, default=OperationStatus.PENDING
    )
    error_code = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    step = models.CharField(max_length=64, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    progress_done = models.BigIntegerField(null=True, blank=True)
    progress_total = models.BigIntegerField(null=True, blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "deadline"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


class OperationEvent(models.Model):
    """A step of an operation with its output (SSH install steps, pull progress, placement)."""

    operation = models.ForeignKey(Operation, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    level = models.CharField(max_length=8, default="info")
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]


class AuditEntry(models.Model):
    """Who did what, when, from where, and the outcome: every mutating request."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    method = models.CharField(max_length=8, blank=True)
    path = models.CharField(max_length=512, blank=True)
    object_type = models.CharField(max_length=32, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    project_slug = models.SlugField(blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=16, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at"]


class ControlPlaneState(models.Model):
    """Singleton row: when the control plane last ingested a report. A gap longer than the
    unknown threshold means the control plane (not the fleet) was deaf, and liveness restarts
    its clocks from ``resumed_at`` so an outage of ours is never read as a fleet outage."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_ingest_at = models.DateTimeField(null=True, blank=True)
    resumed_at = models.DateTimeField(null=True, blank=True)
    last_sweep_at = models.DateTimeField(null=True, blank=True)


class CertificationChange(models.Model):
    """A change of a host's certification verdict: when it was (or stopped being) certified,
    under which profile, and the findings that failed."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="certification_changes")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    profile = models.CharField(max_length=64)
    from_verdict = models.CharField(max_length=16, blank=True)
    to_verdict = models.CharField(max_length=16)
    failed = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-at"]


from hosts.models_ssh import SSHTarget, SSHTargetState  # noqa: E402, F401 - SSH bootstrap
