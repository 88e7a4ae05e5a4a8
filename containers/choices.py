"""Choices and allowed transitions of the containers app."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ADMIN = "admin", "Admin"


ROLE_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


class ContainerMode(models.TextChoices):
    IMAGE = "image", "Image-based"
    HOST = "host", "Host container"


class DesiredState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    REMOVED = "removed", "Removed"


class ObservedState(models.TextChoices):
    PENDING = "pending", "Pending"
    CREATED = "created", "Created"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    EXITED = "exited", "Exited"
    PAUSED = "paused", "Paused"
    UNKNOWN = "unknown", "Unknown"
    MISSING = "missing", "Missing from host"
    REMOVED = "removed", "Removed"
    FAILED = "failed", "Failed to create"


class RestartPolicy(models.TextChoices):
    NO = "no", "Never"
    ON_FAILURE = "on-failure", "On failure"
    ALWAYS = "always", "Always"


class NetworkMode(models.TextChoices):
    NONE = "none", "None (loopback only)"
    HOST = "host", "Host network"
    BRIDGE = "bridge", "Bridge"


class ImageSource(models.TextChoices):
    REGISTRY = "registry", "Registry"
    UPLOAD = "upload", "Upload"
