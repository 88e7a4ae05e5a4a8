"""A minimal image archive reader for uploads: ``docker save`` (the layout before Docker 25
with ``<id>/layer.tar``, and the OCI-style one of 25+) and OCI image-layout tarballs.

Only documents are parsed; every blob is copied into the blob store with its digest
verified. A pre-25 ``docker save`` has no manifest, so an OCI manifest is written for it (its
layers are stored as they are in the archive and must hash to the config's diff_ids).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from containers.images.blobs import (
    CHUNK,
    DIGEST_RE,
    ArchiveError,
    blob_exists,
    blob_put,
    blob_put_bytes,
    blob_read,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
REF_NAMES = ("org.opencontainers.image.ref.name", "io.containerd.image.name")
MAX_IMAGES = 64


@dataclass(frozen=True)
class ParsedImage:
    """One image of an archive, its blobs stored and verified."""

    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    config: dict[str, Any]
    layers: tuple[dict[str, Any], ...]  # descriptors: mediaType, digest, size
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(int(d["size"]) for d in self.layers) + len(blob_read(self.config_digest))

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def platform(self) -> str:
        arch, os_ = self.config.get("architecture", ""), self.config.get("os", "")
        variant = self.config.get("variant")
        return f"{os_}/{arch}" + (f"/{variant}" if variant else "")

    @property
    def blobs(self) -> list[str]:
        return [self.config_digest, *(d["digest"] for d in self.layers)]


class _Tar:
    """Members of an archive by cleaned name; refuses absolute names and ``..``."""

    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as exc:
            raise ArchiveError(f"archive: not a tar archive ({exc})", field="archive") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in self.tar.getmembers():
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if m.name.startswith("/") or ".." in parts:
                raise ArchiveError(f"archive entry {m.name!r}: outside the archive")
            if m.isfile():
                self.members["/".join(parts)] = m

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name)
        f = self.tar.extractfile(member) if member else None
        if f is None:
            raise ArchiveError(f"archive: {name} is missing", field=name)
        return f

    def json(self, name: str) -> Any:
        with self.open(name) as f:
            data = f.read(4 << 20)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ArchiveError(f"{name}: not valid JSON ({exc})", field=name) from None

    def close(self) -> None:
        self.tar.close()


def read_archive(path: Path) -> tuple[str, list[ParsedImage]]:
    """(format, images) of an uploaded archive; every blob ends up verified in the store."""
    src = _Tar(path)
    try:
        if src.has("index.json"):
            fmt = "docker-save-oci" if src.has("manifest.json") else "oci-layout"
            return fmt, _read_oci_layout(src)
        if src.has("manifest.json"):
            return "docker-save", _read_docker_save(src)
        raise ArchiveError(
            "archive: neither index.json (OCI layout) nor manifest.json (docker save)",
            field="archive",
        )
    finally:
        src.close()


# --- OCI layout (and Docker 25+ docker save) -----------------------------------------------


def _blob_name(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ArchiveError(f"descriptor digest {digest!r}: not a sha256 digest", field="digest")
    return f"blobs/sha256/{digest[7:]}"


def _store(src: _Tar, desc: dict[str, Any], what: str) -> str:
    digest = desc.get("digest", "")
    name = _blob_name(digest)
    if not blob_exists(digest):
        with src.open(name) as f:
            _, size = blob_put(f, digest, what)
    else:
        size = src.members[name].size if src.has(name) else -1
    if isinstance(desc.get("size"), int) and size >= 0 and size != desc["size"]:
        raise ArchiveError(f"{what}: {size} bytes, descriptor says {desc['size']}", field=what)
    return str(digest)


def _doc(digest: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(blob_read(digest))
    except ValueError as exc:
        raise ArchiveError(f"{what}: not valid JSON ({exc})", field=what) from None
    if not isinstance(doc, dict):
        raise ArchiveError(f"{what}: not a JSON object", field=what)
    return doc


def _read_oci_layout(src: _Tar) -> list[ParsedImage]:
    index = src.json("index.json")
    descs = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(descs, list) or not descs:
        raise ArchiveError("index.json.manifests: must be a non-empty list", field="manifests")
    tags_by_config = _docker_repo_tags(src)
    images = []
    for i, desc in enumerate(descs[:MAX_IMAGES]):
        what = f"index.json.manifests[{i}]"
        if not isinstance(desc, dict):
            raise ArchiveError(f"{what}: must be an object", field=what)
        digest, media = _store(src, desc, what), desc.get("mediaType", "")
        doc = _doc(digest, what)
        media = doc.get("mediaType") or media
        if media in INDEX_TYPES:
            digest, doc, media = _pick_platform(src, doc, what)
        names = tuple(
            str(v) for k, v in (desc.get("annotations") or {}).items() if k in REF_NAMES and v
        )
        image = _image(src, digest, media, doc, names, what)
        extra = tags_by_config.get(image.config_digest, ())
        images.append(
            ParsedImage(**{**image.__dict__, "names": tuple(dict.fromkeys(names + extra))})
        )
    return images


def _pick_platform(src: _Tar, index: dict[str, Any], what: str) -> tuple[str, dict[str, Any], str]:
    for j, desc in enumerate(index.get("manifests") or []):
        plat = desc.get("platform") or {}
        if plat.get("os") == "linux" and plat.get("architecture") == "amd64":
            digest = _store(src, desc, f"{what}.manifests[{j}]")
            doc = _doc(digest, what)
            return digest, doc, str(doc.get("mediaType") or desc.get("mediaType") or "")
    raise ArchiveError(f"{what}: the index has no linux/amd64 manifest", field=what)


def _image(
    src: _Tar | None,
    digest: str,
    media: str,
    doc: dict[str, Any],
    names: tuple[str, ...],
    what: str,
) -> ParsedImage:
    if media not in MANIFEST_TYPES:
        raise ArchiveError(f"{what}: unsupported manifest media type {media!r}", field=what)
    config_desc, layers = doc.get("config"), doc.get("layers")
    if not isinstance(config_desc, dict) or not isinstance(layers, list):
        raise ArchiveError(f"{what}: a manifest needs config and layers", field=what)
    config_digest = _store(src, config_desc, f"{what}.config") if src else config_desc["digest"]
    for k, layer in enumerate(layers):
        if src is not None:
            _store(src, layer, f"{what}.layers[{k}]")
    config = _doc(config_digest, f"{what}.config")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        raise ArchiveError(
            f"{what}.config.rootfs.diff_ids: {len(diff_ids)} for {len(layers)} layers",
            field="diff_ids",
        )
    return ParsedImage(digest, media, config_digest, config, tuple(layers), names)


def _docker_repo_tags(src: _Tar) -> dict[str, tuple[str, ...]]:
    """Config digest -> RepoTags from a Docker 25+ archive's manifest.json (if present)."""
    if not src.has("manifest.json"):
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for entry in src.json("manifest.json") or []:
        config = str(entry.get("Config", ""))
        if config.startswith("blobs/sha256/"):
            out["sha256:" + config.rsplit("/", 1)[-1]] = tuple(entry.get("RepoTags") or ())
    return out


# --- docker save before Docker 25 ----------------------------------------------------------


def _read_docker_save(src: _Tar) -> list[ParsedImage]:
    entries = src.json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ArchiveError("manifest.json: must be a non-empty list", field="manifest.json")
    images = []
    for i, entry in enumerate(entries[:MAX_IMAGES]):
        what = f"manifest.json[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("Layers"), list):
            raise ArchiveError(f"{what}: needs Config and Layers", field=what)
        with src.open(str(entry.get("Config", ""))) as f:
            config_digest, config_size = blob_put(f, None, f"{what}.Config")
        config = _doc(config_digest, f"{what}.Config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(entry["Layers"]):
            raise ArchiveError(
                f"{what}.Layers: {len(entry['Layers'])} layers for {len(diff_ids)} diff_ids",
                field="Layers",
            )
        layers = []
        for k, (name, diff_id) in enumerate(zip(entry["Layers"], diff_ids, strict=True)):
            layers.append(_docker_layer(src, str(name), diff_id, f"{what}.Layers[{k}]"))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layers,
        }
        digest = blob_put_bytes(json.dumps(manifest, separators=(",", ":")).encode(), what)
        names = tuple(str(t) for t in entry.get("RepoTags") or ())
        images.append(_image(None, digest, OCI_MANIFEST, manifest, names, what))
    return images


def _docker_layer(src: _Tar, name: str, diff_id: str, what: str) -> dict[str, Any]:
    """Store one layer tar as is; its uncompressed content must hash to ``diff_id``."""
    with src.open(name) as f:
        magic = f.read(2)
    gz = magic == b"\x1f\x8b"
    with src.open(name) as f:
        digest, size = blob_put(f, None, what)
    h = hashlib.sha256()
    with open(_path(digest), "rb") as raw:
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if gz else raw  # type: ignore[assignment]
        while chunk := stream.read(CHUNK):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != diff_id:
        raise ArchiveError(
            f"{what}: content is sha256:{h.hexdigest()}, config says {diff_id}", field=what
        )
    return {"mediaType": OCI_LAYER + ("+gzip" if gz else ""), "digest": digest, "size": size}


def _path(digest: str) -> Path:
    from containers.images.blobs import blob_path

    return blob_path(digest)
