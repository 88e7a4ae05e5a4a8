"""Hosts added over SSH: where to connect, how to authenticate (encrypted at rest), which host
key is pinned, and where the agent is installed. Imported at the bottom of hosts/models.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

import hosts.secrets  # noqa: F401 - registers the corral.E001 system check
from hosts.ssh import validation
from hosts.ssh.errors import SSHError

DEFAULT_PREFIX = "/opt/corral-agent"


class SSHAuth(models.TextChoices):
    KEY = "key", "Private key"
    PASSWORD = "password", "Password"


class SSHTargetState(models.TextChoices):
    NEW = "new", "Not installed"
    INSTALLING = "installing", "Installing"
    INSTALLED = "installed", "Installed"
    FAILED = "failed", "Last install failed"
    UNINSTALLING = "uninstalling", "Uninstalling"
    UNINSTALLED = "uninstalled", "Uninstalled"


class SSHTarget(models.Model):
    """A machine the control plane installs the agent on over SSH, with its credential.

    The credential fields hold Fernet tokens (hosts.secrets), never plain text. A connection is
    only made when ``host_key_fingerprint``/``host_key_type`` are set: either given by the
    operator, or scanned and then confirmed by the operator (recorded in the audit log)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=253, unique=True, help_text="Name the host enrolls under")
    address = models.CharField(max_length=253)
    port = models.PositiveIntegerField(default=22)
    user = models.CharField(max_length=32, default="root")
    auth = models.CharField(max_length=16, choices=SSHAuth.choices, default=SSHAuth.KEY)
    allow_password = models.BooleanField(
        default=False, help_text="Password authentication is refused unless this is set."
    )
    private_key_encrypted = models.TextField(blank=True)
    passphrase_encrypted = models.TextField(blank=True)
    password_encrypted = models.TextField(blank=True)
    host_key_fingerprint = models.CharField(max_length=64, blank=True)
    host_key_type = models.CharField(max_length=32, blank=True)
    host_key_confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )  # fmt: skip
    host_key_confirmed_at = models.DateTimeField(null=True, blank=True)
    sudo = models.BooleanField(default=False, help_text="Run install steps with `sudo -n`.")
    install_prefix = models.CharField(max_length=255, default=DEFAULT_PREFIX)
    host = models.ForeignKey(
        "hosts.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="ssh_targets"
    )
    state = models.CharField(
        max_length=16, choices=SSHTargetState.choices, default=SSHTargetState.NEW
    )
    installed_version = models.CharField(max_length=64, blank=True)
    installed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def host_key_pinned(self) -> bool:
        return bool(self.host_key_fingerprint and self.host_key_type)

    def clean(self) -> None:
        """The same strict rules the installer applies before any connection."""
        errors: dict[str, str] = {}
        checks: list[tuple[str, Callable[[Any], Any], Any]] = [
            ("name", validation.validate_host_name, self.name),
            ("address", validation.validate_address, self.address),
            ("port", validation.validate_port, self.port),
            ("user", validation.validate_user, self.user),
            ("install_prefix", validation.validate_prefix, self.install_prefix),
        ]
        if self.host_key_fingerprint or self.host_key_type:
            checks += [
                ("host_key_fingerprint", validation.validate_fingerprint,
                 self.host_key_fingerprint),
                ("host_key_type", validation.validate_key_type, self.host_key_type),
            ]  # fmt: skip
        for field, check, value in checks:
            try:
                check(value)
            except SSHError as exc:
                errors[field] = exc.message
        if self.auth == SSHAuth.PASSWORD:
            if not self.allow_password:
                errors["auth"] = (
                    "Password authentication needs allow_password=true; prefer a private key."
                )
            elif not self.password_encrypted:
                errors["password"] = "A password is required for password authentication."  # noqa: S105
        elif not self.private_key_encrypted:
            errors["private_key"] = "A private key is required for key authentication."
        if errors:
            raise ValidationError(errors)
