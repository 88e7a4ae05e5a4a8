"""Projects (tenants) with members and quotas, images, and containers across the fleet."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from agent.protocol.containers import MIN_MEMORY_BYTES
from containers import validators
from containers.choices import (
    ContainerMode,
    DesiredState,
    ImageSource,
    NetworkMode,
    ObservedState,
    RestartPolicy,
    Role,
)
from hosts.choices import CertificationStatus
from hosts.models import Host

container_name_validator = RegexValidator(
    r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
    "Names are 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit.",
)


class Project(models.Model):
    """A tenant. Every container and image belongs to one; each gets its own cgroup slice on
    every host with ``cpu_weight`` so no project can dominate a host."""

    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=128)
    description = models.TextField(blank=True)
    max_containers = models.PositiveIntegerField(null=True, blank=True)
    max_memory_bytes = models.BigIntegerField(null=True, blank=True)
    max_cpu_millicores = models.PositiveIntegerField(null=True, blank=True)
    cpu_weight = models.PositiveIntegerField(default=100, validators=[MinValueValidator(1)])
    require_certified_hosts = models.BooleanField(default=False)
    require_certified_images = models.BooleanField(default=False)
    host_profile = models.CharField(max_length=64, default="development")
    image_profile = models.CharField(max_length=64, default="development")
    allow_host_network = models.BooleanField(default=False)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="projects"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    """A user's role in a project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")
        ]


class Image(models.Model):
    """An OCI/Docker image known to the control plane, by reference and digest."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="images")
    reference = models.CharField(max_length=512)
    digest = models.CharField(max_length=71, blank=True, db_index=True)
    source = models.CharField(
        max_length=16, choices=ImageSource.choices, default=ImageSource.REGISTRY
    )
    registry_url = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    platform = models.CharField(max_length=32, blank=True)
    config = models.JSONField(default=dict, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    layers = models.JSONField(default=list, blank=True)
    certification = models.CharField(
        max_length=16, choices=CertificationStatus.choices, default=CertificationStatus.UNKNOWN
    )
    findings = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["reference"]
        constraints = [
            models.UniqueConstraint(fields=["project", "reference"], name="one_image_per_reference")
        ]

    def __str__(self) -> str:
        return self.reference


class ImageLocation(models.Model):
    """Which host holds which image in its cache."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="locations")
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="images")
    pulled_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "host"], name="one_location")]


class Container(models.Model):
    """A container's desired state (set by users) beside its observed state (reported by the
    host's agent). ``id`` is also the runtime's container id on the host."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="containers")
    name = models.CharField(max_length=63, validators=[container_name_validator])
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="containers"
    )
    mode = models.CharField(
        max_length=8, choices=ContainerMode.choices, default=ContainerMode.IMAGE
    )
    image = models.ForeignKey(
        Image, null=True, blank=True, on_delete=models.PROTECT, related_name="containers"
    )
    image_reference = models.CharField(max_length=512, blank=True)
    command = models.JSONField(default=list, blank=True)
    args = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    working_dir = models.CharField(max_length=4096, blank=True)
    user = models.CharField(max_length=64, blank=True)
    cpu_weight = models.PositiveIntegerField(null=True, blank=True)
    cpu_millicores = models.PositiveIntegerField(null=True, blank=True)
    memory_limit = models.BigIntegerField(null=True, blank=True)
    pids_limit = models.PositiveIntegerField(null=True, blank=True)
    restart_policy = models.CharField(
        max_length=16, choices=RestartPolicy.choices, default=RestartPolicy.NO
    )
    restart_max_retries = models.PositiveIntegerField(default=0)
    network_mode = models.CharField(
        max_length=8, choices=NetworkMode.choices, default=NetworkMode.NONE
    )
    ports = models.JSONField(default=list, blank=True)
    # Socket activation: the agent binds these on the host and starts the container on the
    # first connection, handing them over as LISTEN_FDS (fds 3..) in this order.
    sockets = models.JSONField(default=list, blank=True)
    idle_stop_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Stop a socket-activated container after this many seconds without a "
        "connection; it is armed again.",
    )
    labels = models.JSONField(default=dict, blank=True)
    placement = models.JSONField(default=dict, blank=True, help_text="Host label constraints")
    desired_state = models.CharField(
        max_length=16, choices=DesiredState.choices, default=DesiredState.RUNNING
    )
    observed_state = models.CharField(
        max_length=16, choices=ObservedState.choices, default=ObservedState.PENDING, db_index=True
    )
    observed_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    restart_count = models.PositiveIntegerField(default=0)
    selinux_label = models.CharField(max_length=255, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    detail = models.CharField(max_length=512, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                condition=models.Q(removed_at__isnull=True),
                name="unique_live_container_name_per_project",
            )
        ]
        indexes = [
            models.Index(fields=["host", "observed_state"]),
            models.Index(fields=["project", "desired_state"]),
        ]

    def __str__(self) -> str:
        return f"{self.project_id}/{self.name}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.mode == ContainerMode.IMAGE and not (self.image_id or self.image_reference):
            errors["image_reference"] = "An image-based container needs an image."
        if self.mode == ContainerMode.HOST and self.image_reference:
            errors["image_reference"] = "A host container runs the host's userspace: no image."
        if self.memory_limit is not None and self.memory_limit < MIN_MEMORY_BYTES:
            errors["memory_limit"] = f"Must be at least {MIN_MEMORY_BYTES} bytes (6 MiB)."
        if self.cpu_weight is not None and not 1 <= self.cpu_weight <= 10_000:
            errors["cpu_weight"] = "Must be between 1 and 10000."
        if self.restart_max_retries and self.restart_policy != RestartPolicy.ON_FAILURE:
            errors["restart_max_retries"] = "Only applies to the on-failure policy."
        try:
            self.sockets = validators.socket_list(self.sockets)
        except ValidationError as exc:
            errors["sockets"] = exc.messages[0]
        if self.idle_stop_seconds is not None and not self.sockets:
            errors["idle_stop_seconds"] = "Only applies to a socket-activated container."
        if errors:
            raise ValidationError(errors)


class ContainerEvent(models.Model):
    """History of one container: state changes, actions, restarts, OOM kills."""

    container = models.ForeignKey(Container, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=32)
    message = models.CharField(max_length=512, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]


from containers import models_images  # noqa: E402, F401 - credentials, uploads, policy
