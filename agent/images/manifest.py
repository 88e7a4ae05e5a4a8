"""Manifests, indexes and image configs: OCI and Docker v2 schema 2, parsed and checked.

Documents are parsed into small frozen dataclasses; anything malformed raises
``ImageError`` naming the field. ``host_platform`` maps ``platform.machine()`` onto OCI
names so an index (multi-platform image) resolves to the manifest this host can run.
"""

from __future__ import annotations

import json
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Any

from agent.images.errors import (
    INVALID_CONFIG,
    INVALID_MANIFEST,
    NO_MATCHING_PLATFORM,
    UNSUPPORTED_MEDIA_TYPE,
    ImageError,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
LAYER_TYPES = (
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
MAX_DOCUMENT_BYTES = 4 << 20
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_MACHINE_TO_OCI = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


def host_platform(machine: str | None = None) -> Platform:
    """The OCI platform of this host (``linux/amd64`` on x86_64)."""
    machine = machine or _platform.machine()
    arch, variant = _MACHINE_TO_OCI.get(machine, (machine, None))
    return Platform("linux", arch, variant)


def load_json(data: bytes, what: str, code: str = INVALID_MANIFEST) -> dict[str, Any]:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ImageError(code, f"{what}: larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(code, f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ImageError(code, f"{what}: expected a JSON object")
    return doc


def parse_descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ImageError(INVALID_MANIFEST, f"{where}: expected an object")
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str):
        raise ImageError(INVALID_MANIFEST, f"{where}.mediaType: missing")
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise ImageError(INVALID_MANIFEST, f"{where}.digest: must be sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(INVALID_MANIFEST, f"{where}.size: must be a non-negative integer")
    plat = None
    raw_plat = obj.get("platform")
    if isinstance(raw_plat, dict):
        plat = Platform(
            str(raw_plat.get("os", "")),
            str(raw_plat.get("architecture", "")),
            raw_plat.get("variant") or None,
        )
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ImageError(INVALID_MANIFEST, f"{where}.annotations: expected an object")
    return Descriptor(
        media_type, digest, size, plat, {str(k): str(v) for k, v in annotations.items()}
    )


def parse_document(data: bytes, content_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or an index; the ``mediaType`` field wins over the HTTP header."""
    doc = load_json(data, "manifest")
    media_type = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not media_type:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if doc.get("schemaVersion") != 2:
        raise ImageError(
            UNSUPPORTED_MEDIA_TYPE, f"manifest.schemaVersion: {doc.get('schemaVersion')!r}"
        )
    if media_type in INDEX_TYPES:
        items = doc.get("manifests")
        if not isinstance(items, list):
            raise ImageError(INVALID_MANIFEST, "index.manifests: expected a list")
        return Index(
            media_type,
            tuple(parse_descriptor(d, f"index.manifests[{i}]") for i, d in enumerate(items)),
        )
    if media_type not in MANIFEST_TYPES:
        raise ImageError(UNSUPPORTED_MEDIA_TYPE, f"manifest.mediaType: {media_type!r}")
    config = parse_descriptor(doc.get("config"), "manifest.config")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageError(INVALID_MANIFEST, "manifest.layers: expected a list")
    layers = tuple(parse_descriptor(d, f"manifest.layers[{i}]") for i, d in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise ImageError(
                UNSUPPORTED_MEDIA_TYPE, f"manifest.layers[{i}].mediaType: {layer.media_type!r}"
            )
    return Manifest(media_type, config, layers)


def select_platform(index: Index, want: Platform | None = None) -> Descriptor:
    """The index entry for ``want`` (default: this host); an exact variant match is
    preferred, then an entry without a variant. Attestations (unknown/unknown) never match."""
    want = want or host_platform()
    candidates = [
        d
        for d in index.manifests
        if d.platform is not None
        and d.platform.os == want.os
        and d.platform.architecture == want.architecture
        and d.media_type in (*MANIFEST_TYPES, *INDEX_TYPES)
    ]
    for d in candidates:
        if d.platform is not None and d.platform.variant == want.variant:
            return d
    for d in candidates:
        if d.platform is not None and d.platform.variant in (None, ""):
            return d
    if candidates:
        return candidates[0]
    have = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
    raise ImageError(NO_MATCHING_PLATFORM, f"index: no manifest for {want} (has: {have})")


def parse_config(data: bytes) -> dict[str, Any]:
    """Parse an image config and check ``rootfs.diff_ids``; returns the raw document."""
    doc = load_json(data, "config", INVALID_CONFIG)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError(INVALID_CONFIG, "config.rootfs.type: must be 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and _DIGEST_RE.match(d) for d in diff_ids
    ):
        raise ImageError(INVALID_CONFIG, "config.rootfs.diff_ids: must be a list of sha256 digests")
    inner = doc.get("config", {})
    if inner is not None and not isinstance(inner, dict):
        raise ImageError(INVALID_CONFIG, "config.config: expected an object")
    return doc


def diff_ids(config: dict[str, Any]) -> list[str]:
    return list(config["rootfs"]["diff_ids"])


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """Container defaults from an image config, in the shape the agent's spec uses: lists
    for entrypoint/cmd, a dict for env and labels, sorted exposed ports."""
    inner = config.get("config") or {}

    def str_list(key: str) -> list[str]:
        value = inner.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ImageError(INVALID_CONFIG, f"config.config.{key}: expected a list of strings")
        return list(value)

    env: dict[str, str] = {}
    for item in str_list("Env"):
        key, sep, value = item.partition("=")
        if not key:
            raise ImageError(INVALID_CONFIG, f"config.config.Env: bad entry {item!r}")
        env[key] = value if sep else ""
    labels = inner.get("Labels") or {}
    if not isinstance(labels, dict):
        raise ImageError(INVALID_CONFIG, "config.config.Labels: expected an object")
    ports = inner.get("ExposedPorts") or {}
    volumes = inner.get("Volumes") or {}
    return {
        "entrypoint": str_list("Entrypoint"),
        "cmd": str_list("Cmd"),
        "env": env,
        "user": str(inner.get("User") or ""),
        "working_dir": str(inner.get("WorkingDir") or "/"),
        "labels": {str(k): str(v) for k, v in labels.items()},
        "exposed_ports": sorted(str(p) for p in ports) if isinstance(ports, dict) else [],
        "volumes": sorted(str(v) for v in volumes) if isinstance(volumes, dict) else [],
        "stop_signal": str(inner.get("StopSignal") or "SIGTERM"),
        "os": str(config.get("os", "")),
        "architecture": str(config.get("architecture", "")),
        "created": config.get("created"),
    }


def config_platform(config: dict[str, Any]) -> Platform:
    return Platform(
        str(config.get("os") or "linux"),
        str(config.get("architecture") or "unknown"),
        config.get("variant") or None,
    )
