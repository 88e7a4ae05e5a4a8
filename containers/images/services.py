"""Image workflows: register by reference, pull onto hosts (one Operation per host), fold the
agents' results into the Image (digest, config, location, certification), uploads of
archives, registry credentials encrypted at rest, and garbage collection on hosts."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agent.protocol import names
from agent.protocol.containers import ImageRef
from agent.protocol.errors import ProtocolError
from agent.protocol.messages import Ping, PullImage, RegistryAuth
from config.errors import CorralError
from containers import certification
from containers.choices import ImageSource
from containers.images.archive import ParsedImage, read_archive
from containers.images.tokens import registry_auth
from containers.models import Container, Image, ImageLocation, Project
from containers.models_images import ImagePull, ImageUpload, RegistryCredential
from hosts import dispatch
from hosts.models import Host, Operation
from hosts.secrets import decrypt, encrypt
from hosts.services import operation_create, operation_event

logger = logging.getLogger(__name__)

REFERENCE_RE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
CONFIG_KEYS = (
    "Entrypoint",
    "Cmd",
    "Env",
    "User",
    "WorkingDir",
    "Labels",
    "ExposedPorts",
    "StopSignal",
)
PULL_DEADLINE = 900.0


def registry_of(reference: str) -> str:
    """The registry host of a reference (``docker.io`` when the first part is not a host)."""
    first, sep, _ = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def reference_check(reference: Any) -> str:
    if not isinstance(reference, str) or len(reference) > 512 or not REFERENCE_RE.match(reference):
        raise CorralError(
            f"reference: {reference!r} is not an image reference (name[:tag][@sha256:...]).",
            field="reference",
        )
    return reference


def image_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The container defaults of an OCI image config, as stored on the Image."""
    found = raw.get("config")
    inner: dict[str, Any] = found if isinstance(found, dict) else {}
    return {key: inner[key] for key in CONFIG_KEYS if inner.get(key) not in (None, "", [], {})}


def image_defaults(image: Image) -> dict[str, Any]:
    """Container fields an image implies (the agent's runtime takes an explicit command, so
    the control plane resolves them): command = Entrypoint, args = Cmd, env from Env (the
    container's own env wins when merged by the caller), working_dir, user."""
    config = image.config or {}
    env: dict[str, str] = {}
    for item in config.get("Env") or []:
        name, sep, value = str(item).partition("=")
        if sep and name:
            env[name] = value
    return {
        "command": list(config.get("Entrypoint") or []),
        "args": list(config.get("Cmd") or []),
        "env": env,
        "working_dir": str(config.get("WorkingDir") or ""),
        "user": str(config.get("User") or ""),
    }


# --- register and credentials --------------------------------------------------------------


def image_register(*, user: Any, project: Project, reference: str, registry_url: str = "") -> Image:
    """Record an image by reference in a project (idempotent per project and reference)."""
    reference_check(reference)
    if registry_url and not re.match(r"^https?://[^\s/]+", registry_url):
        raise CorralError("registry_url: must be http(s)://host[:port].", field="registry_url")
    image, created = Image.objects.get_or_create(
        project=project,
        reference=reference,
        defaults={"registry_url": registry_url, "source": ImageSource.REGISTRY},
    )
    if not created and registry_url and image.registry_url != registry_url:
        Image.objects.filter(pk=image.pk).update(registry_url=registry_url)
        image.registry_url = registry_url
    return image


def credential_set(
    *, user: Any, project: Project, registry: str, username: str, password: str, ca_pem: str = ""
) -> RegistryCredential:
    """Store (or replace) a project's credentials for ``registry``, the password encrypted."""
    if not registry or not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", registry):
        raise CorralError("registry: must be host[:port].", field="registry")
    if not username:
        raise CorralError("username: required.", field="username")
    if not password:
        raise CorralError("password: required.", field="password")
    cred, _ = RegistryCredential.objects.update_or_create(
        project=project,
        registry=registry,
        defaults={
            "username": username,
            "secret": encrypt(password),
            "ca_pem": ca_pem,
            "created_by": user if getattr(user, "pk", None) else None,
        },
    )
    logger.info("registry credentials for %s in project %s set", registry, project.slug)
    return cred


def credential_auth(project: Project, registry: str) -> RegistryAuth | None:
    cred = RegistryCredential.objects.filter(project=project, registry=registry).first()
    if cred is None:
        return None
    return RegistryAuth(
        username=cred.username, password=decrypt(cred.secret), ca_pem=cred.ca_pem or None
    )


# --- pull ----------------------------------------------------------------------------------


def pull_message(image: Image, host: Host) -> PullImage:
    """The signed-command payload that pulls ``image`` onto ``host``: uploads come from the
    control plane's own registry with a per-host token; registry images with the project's
    credentials for that registry (decrypted only here)."""
    auth: RegistryAuth | None
    if image.source == ImageSource.UPLOAD:
        registry_url: str | None = str(settings.CORRAL["PUBLIC_URL"])
        auth = registry_auth(host, image.project.slug, ttl=PULL_DEADLINE)
    else:
        registry_url = image.registry_url or None
        auth = credential_auth(image.project, registry_of(image.reference))
    reference = image.reference.split("@", 1)[0]
    try:
        return PullImage(
            image=ImageRef(reference=reference, digest=image.digest or None),
            registry_url=registry_url,
            auth=auth,
        )
    except ProtocolError as exc:
        raise CorralError(f"{exc.field}: {exc.message}", field=exc.field) from None


@transaction.atomic
def image_pull(*, user: Any, image: Image, hosts: list[Host]) -> list[Operation]:
    """One pull Operation per host, sent after commit; an offline host fails its own
    operation at once and the others still go."""
    if not hosts:
        raise CorralError("hosts: name at least one host.", field="hosts")
    ops = []
    for host in hosts:
        if host.project_slug and host.project_slug != image.project.slug:
            raise CorralError(f"Host {host.name} is dedicated to another project.", field="hosts")
        op = operation_create(
            kind=names.AGENT_IMAGE_PULL,
            host=host,
            target_type="image",
            target_id=str(image.pk),
            project_slug=image.project.slug,
            requested_by=user,
            payload={"reference": image.reference, "digest": image.digest},
            deadline_seconds=PULL_DEADLINE,
        )
        ImagePull.objects.create(image=image, host=host, operation=op)
        operation_event(op, f"pull {image.reference} onto {host.name}")
        dispatch.send_command(op, names.AGENT_IMAGE_PULL, pull_message(image, host))
        ops.append(op)
    return ops


@transaction.atomic
def image_apply_result(op: Operation) -> Image | None:
    """Fold a finished pull into its Image once (compare-and-set on ``applied_at``): digest,
    size, platform, config, labels, layers, the host's ImageLocation, and the verdict from
    the findings the agent's image checks reported."""
    if op.kind != names.AGENT_IMAGE_PULL or op.status not in ("succeeded", "failed"):
        return None
    pull = ImagePull.objects.select_related("image__project", "host").filter(operation=op).first()
    if pull is None:
        return None
    if not ImagePull.objects.filter(pk=pull.pk, applied_at__isnull=True).update(
        applied_at=timezone.now()
    ):
        return None
    image = pull.image
    if op.status != "succeeded":
        logger.warning("pull of %s onto %s failed: %s", image.reference, pull.host.name, op.error)
        return image
    result = op.result or {}
    found = result.get("config")
    raw_config: dict[str, Any] = found if isinstance(found, dict) else {}
    digest = str(result.get("digest") or "")
    if image.digest and digest and digest != image.digest:
        logger.info("image %s: tag moved from %s to %s", image.reference, image.digest, digest)
    fields = {
        "digest": digest or image.digest,
        "size": result.get("size") if isinstance(result.get("size"), int) else image.size,
        "platform": str(result.get("platform") or image.platform)[:32],
        "config": image_config(raw_config) or image.config,
        "labels": result.get("labels") or image_config(raw_config).get("Labels") or {},
        "layers": list(result.get("layers") or image.layers),
    }
    Image.objects.filter(pk=image.pk).update(**fields)
    for key, value in fields.items():
        setattr(image, key, value)
    ImageLocation.objects.update_or_create(image=image, host=pull.host)
    findings = result.get("findings")
    if isinstance(findings, list) and findings:
        certification.image_certify(image, findings, reason=f"checked on {pull.host.name}")
    elif result.get("check_error"):
        operation_event(op, f"image checks failed: {result['check_error']}", level="warning")
    return image


def image_pulls_sync() -> int:
    """Fold every finished pull not folded yet (results arrive through the operation-result
    task; this makes reads see them whatever path applied the operation)."""
    pending = ImagePull.objects.filter(
        applied_at__isnull=True, operation__status__in=("succeeded", "failed")
    ).select_related("operation")
    return sum(1 for p in pending if image_apply_result(p.operation) is not None)


# --- uploads -------------------------------------------------------------------------------


def _split_name(found: str) -> tuple[str, str]:
    """(repository, tag) of a name found in an archive. A bare word is a tag (the OCI
    convention for ``org.opencontainers.image.ref.name``); a registry host is dropped."""
    found = found.split("@", 1)[0]
    if "/" not in found and ":" not in found:
        return "", found
    repo, _, tag = found.rpartition(":")
    if "/" in tag or not repo:
        repo, tag = found, ""
    if registry_of(repo) != "docker.io":
        repo = repo.split("/", 1)[1]
    repo = repo.removeprefix("docker.io/").removeprefix("library/")
    return repo, tag


def _name_and_tag(parsed: ParsedImage, name: str, tag: str) -> tuple[str, str]:
    found_name, found_tag = _split_name(parsed.names[0]) if parsed.names else ("", "")
    name = name or found_name
    tag = tag or found_tag or "latest"
    if not name or not NAME_RE.match(name):
        raise CorralError(f"name: {name!r} is not a repository name; give one.", field="name")
    if not TAG_RE.match(tag):
        raise CorralError(f"tag: {tag!r} is not a tag.", field="tag")
    return name, tag


@transaction.atomic
def image_upload(
    *, user: Any, project: Project, archive: Path, name: str = "", tag: str = ""
) -> list[Image]:
    """Store an uploaded ``docker save`` or OCI-layout archive's blobs (digests verified) and
    make one Image per image in it, referenced ``<project>/<name>:<tag>`` and served to
    agents by the control plane's registry endpoint."""
    fmt, parsed = read_archive(archive)
    if not parsed:
        raise CorralError("archive: contains no image.", field="archive")
    if len(parsed) > 1 and name:
        raise CorralError("name: the archive holds several images; omit name.", field="name")
    images = []
    for item in parsed:
        repo, item_tag = _name_and_tag(item, name, tag)
        reference = f"{project.slug}/{repo}:{item_tag}"
        image, _ = Image.objects.update_or_create(
            project=project,
            reference=reference,
            defaults={
                "source": ImageSource.UPLOAD,
                "digest": item.manifest_digest,
                "registry_url": str(settings.CORRAL["PUBLIC_URL"]),
                "size": item.size,
                "platform": item.platform[:32],
                "config": image_config(item.config),
                "labels": image_config(item.config).get("Labels") or {},
                "layers": item.diff_ids,
            },
        )
        ImageUpload.objects.update_or_create(
            image=image,
            defaults={
                "manifest_media_type": item.manifest_media_type,
                "blobs": item.blobs,
                "archive_format": fmt,
                "uploaded_by": user if getattr(user, "pk", None) else None,
            },
        )
        logger.info("uploaded %s (%s) into project %s", reference, item.manifest_digest, project)
        images.append(image)
    return images


# --- garbage collection --------------------------------------------------------------------


@transaction.atomic
def image_gc(*, user: Any, image: Image) -> list[Operation]:
    """Remove ``image`` from every host holding it: each host collects everything but the
    other images the control plane placed there and the images of its live containers. The
    host stops counting as a location at once (the operation shows what was freed)."""
    ops = []
    for loc in ImageLocation.objects.filter(image=image).select_related("host"):
        others = (
            ImageLocation.objects.filter(host=loc.host)
            .exclude(image=image)
            .values_list("image__digest", flat=True)
        )
        running = Container.objects.filter(
            host=loc.host, removed_at__isnull=True, image__isnull=False
        ).values_list("image__digest", flat=True)
        keep = sorted({d for d in [*others, *running] if d})
        op = operation_create(
            kind=names.AGENT_IMAGE_GC,
            host=loc.host,
            target_type="image",
            target_id=str(image.pk),
            project_slug=image.project.slug,
            requested_by=user,
            payload={"keep": keep},
        )
        # The protocol's gc payload is a Ping: its text carries the keep list as JSON.
        dispatch.send_command(op, names.AGENT_IMAGE_GC, Ping(text=json.dumps(keep)))
        loc.delete()
        ops.append(op)
    return ops
