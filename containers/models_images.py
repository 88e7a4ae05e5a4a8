"""Image-side models: per-project registry credentials (encrypted at rest), uploaded images'
blobs, pulls per host, certification policy (fleet defaults) and the history of verdicts and
policy changes."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from hosts.models import Host, Operation


class RegistryCredential(models.Model):
    """Credentials for one registry in one project. ``secret`` is a Fernet token
    (``hosts.secrets``); the plain password is decrypted only to go into a signed pull
    command and is never returned by the API."""

    project = models.ForeignKey(
        "containers.Project", on_delete=models.CASCADE, related_name="registry_credentials"
    )
    registry = models.CharField(max_length=255, help_text="host[:port], e.g. registry.example:5000")
    username = models.CharField(max_length=255)
    secret = models.TextField(help_text="Fernet token of the password")
    ca_pem = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["registry"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "registry"], name="one_credential_per_registry"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project_id}/{self.registry}"


class ImageUpload(models.Model):
    """An image uploaded as an archive: its manifest (stored as a blob, served as is) and
    every blob it references, so the registry endpoint serves only blobs of this project's
    uploads."""

    image = models.OneToOneField(
        "containers.Image", on_delete=models.CASCADE, related_name="upload"
    )
    manifest_media_type = models.CharField(max_length=128)
    blobs = models.JSONField(default=list, help_text="config and layer blob digests")
    archive_format = models.CharField(max_length=32)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)


class ImagePull(models.Model):
    """One pull of an image onto one host: its Operation, and whether the result was folded
    into the Image (digest, config, location, certification) yet."""

    image = models.ForeignKey("containers.Image", on_delete=models.CASCADE, related_name="pulls")
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="image_pulls")
    operation = models.OneToOneField(Operation, on_delete=models.CASCADE, related_name="pull")
    applied_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["applied_at"])]


class FleetPolicy(models.Model):
    """The fleet's default certification profiles (one row, pk 1): used for images of
    projects that name no image profile of their own, and shown beside host verdicts."""

    host_profile = models.CharField(max_length=64, default="certified-container-host")
    image_profile = models.CharField(max_length=64, default="development-image")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    def __str__(self) -> str:
        return f"fleet policy ({self.host_profile}, {self.image_profile})"


class PolicyChange(models.Model):
    """Who changed which certification policy, when, from what to what (fleet or project)."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    project = models.ForeignKey(
        "containers.Project",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="policy_changes",
    )
    field = models.CharField(max_length=64)
    old = models.CharField(max_length=128, blank=True)
    new = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-at", "-id"]


class ImageCertificationChange(models.Model):
    """A change of an image's certification verdict: under which profile, what failed and
    what caused the re-evaluation (a host's pull, a policy change)."""

    image = models.ForeignKey(
        "containers.Image", on_delete=models.CASCADE, related_name="certification_changes"
    )
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    profile = models.CharField(max_length=64)
    from_verdict = models.CharField(max_length=16, blank=True)
    to_verdict = models.CharField(max_length=16)
    failed = models.JSONField(default=list, blank=True)
    reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
