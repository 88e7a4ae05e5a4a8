"""Reading image archives into the blob store: ``docker save`` tarballs (the old layout
with ``<id>/layer.tar`` and the OCI-ish one of Docker 25+) and OCI image layouts (a
tarball or a directory with ``oci-layout``, ``index.json`` and ``blobs/``).

Everything read from an archive is verified like a registry download: blobs named by
digest must hash to it. A ``docker save`` image has no manifest, so one is written (OCI
media types) and its digest becomes the image's identity.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.images.blobs import CHUNK, BlobStore, Fetcher
from agent.images.errors import (
    INVALID_ARCHIVE,
    NOT_FOUND,
    PATH_TRAVERSAL,
    ImageError,
)
from agent.images.manifest import (
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    Platform,
    load_json,
    parse_document,
    select_platform,
)
from agent.images.unpack import detect_compression

_BLOB_NAME_RE = re.compile(r"^(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?$")
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class ArchivedImage:
    """One image found in an archive, with its blobs already in the store."""

    manifest_digest: str
    names: tuple[str, ...]


class _Source:
    """Files of an archive by relative name."""

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def read(self, name: str, limit: int = 4 << 20) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(INVALID_ARCHIVE, f"{name}: larger than {limit} bytes")
        return data

    def close(self) -> None:
        pass


def _clean(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise ImageError(PATH_TRAVERSAL, f"archive entry {name!r}: outside the archive")
    return "/".join(parts)


class _TarSource(_Source):
    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self.members = {_clean(m.name): m for m in self.tar.getmembers() if m.isreg()}
        except tarfile.TarError as exc:
            raise ImageError(INVALID_ARCHIVE, f"{path.name}: not a tar archive ({exc})") from exc

    def exists(self, name: str) -> bool:
        return _clean(name) in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(_clean(name))
        f = self.tar.extractfile(member) if member is not None else None
        if f is None:
            raise ImageError(NOT_FOUND, f"archive entry {name!r}: missing")
        return f

    def close(self) -> None:
        self.tar.close()


class _DirSource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, name: str) -> Path:
        path = (self.root / _clean(name)).resolve()
        if not path.is_relative_to(self.root):
            raise ImageError(PATH_TRAVERSAL, f"archive entry {name!r}: resolves outside")
        return path

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str) -> IO[bytes]:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise ImageError(NOT_FOUND, f"archive entry {name!r}: missing") from None


def read_archive(path: Path, blobs: BlobStore, want: Platform | None = None) -> list[ArchivedImage]:
    """Put every image of the archive at ``path`` into ``blobs``; returns what was found."""
    source: _Source = _DirSource(path) if path.is_dir() else _TarSource(path)
    try:
        if source.exists("index.json"):
            tags = _docker_tags(source) if source.exists("manifest.json") else {}
            return _read_oci_layout(source, blobs, want, tags, path.name)
        if source.exists("manifest.json"):
            return _read_docker_save(source, blobs)
        raise ImageError(INVALID_ARCHIVE, f"{path.name}: neither index.json nor manifest.json")
    finally:
        source.close()


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def _ingest(source: _Source, blobs: BlobStore, d: Descriptor) -> None:
    name = f"blobs/sha256/{d.digest.split(':', 1)[1]}"
    blobs.ingest(d.digest, d.size, _opener(source, name))


def _docker_entries(source: _Source) -> list[dict[str, Any]]:
    try:
        entries = json.loads(source.read("manifest.json"))
    except ValueError as exc:
        raise ImageError(INVALID_ARCHIVE, f"manifest.json: not JSON ({exc})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ImageError(INVALID_ARCHIVE, "manifest.json: expected a list of objects")
    return entries


def _docker_tags(source: _Source) -> dict[str, list[str]]:
    """Config digest -> RepoTags, from a Docker 25+ archive's manifest.json."""
    tags: dict[str, list[str]] = {}
    for entry in _docker_entries(source):
        match = _BLOB_NAME_RE.match(_clean(str(entry.get("Config", ""))))
        if match:
            tags["sha256:" + match.group(1)] = [str(t) for t in entry.get("RepoTags") or []]
    return tags


def _read_oci_layout(
    source: _Source,
    blobs: BlobStore,
    want: Platform | None,
    tags: dict[str, list[str]],
    archive_name: str,
) -> list[ArchivedImage]:
    index = parse_document(source.read("index.json"))
    if not isinstance(index, Index):
        raise ImageError(INVALID_ARCHIVE, "index.json: not an image index")
    found = []
    for top in index.manifests:
        desc = top
        for _depth in range(4):  # nested indexes: resolve to this host's platform
            _ingest(source, blobs, desc)
            doc = parse_document(blobs.read(desc.digest), desc.media_type)
            if isinstance(doc, Manifest):
                break
            desc = select_platform(doc, want)
        else:
            raise ImageError(INVALID_ARCHIVE, f"index.json: {top.digest} nests too deep")
        if desc.media_type in INDEX_TYPES or not isinstance(doc, Manifest):
            raise ImageError(INVALID_ARCHIVE, f"{desc.digest}: not a manifest")
        for d in (doc.config, *doc.layers):
            _ingest(source, blobs, d)
        names = list(tags.get(doc.config.digest, []))
        name = top.annotations.get(CONTAINERD_NAME) or top.annotations.get(REF_NAME)
        if name and not names:
            # A bare ref.name is only a tag; the archive's stem stands in for the repository.
            names.append(name if ("/" in name or ":" in name) else f"{_stem(archive_name)}:{name}")
        found.append(ArchivedImage(desc.digest, tuple(names)))
    return found


def _stem(archive_name: str) -> str:
    stem = re.sub(r"\.(tar|tgz|tar\.gz|oci)$", "", archive_name.lower())
    return re.sub(r"[^a-z0-9._/-]+", "-", stem).strip("-._") or "imported"


def _read_docker_save(source: _Source, blobs: BlobStore) -> list[ArchivedImage]:
    found = []
    for i, entry in enumerate(_docker_entries(source)):
        config_name = entry.get("Config")
        layer_names = entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise ImageError(INVALID_ARCHIVE, f"manifest.json[{i}]: needs Config and Layers")
        config_bytes = source.read(config_name)
        match = _BLOB_NAME_RE.match(_clean(config_name))
        config_digest = blobs.put_bytes(config_bytes, f"sha256:{match.group(1)}" if match else None)
        load_json(config_bytes, f"manifest.json[{i}].Config")
        layers = []
        for name in layer_names:
            match = _BLOB_NAME_RE.match(_clean(str(name)))
            if match:
                digest = f"sha256:{match.group(1)}"
                size = _size(source, str(name))
                blobs.ingest(digest, size, _opener(source, str(name)))
            else:
                with source.open(str(name)) as f:
                    digest, size = blobs.add_stream(f)
            with blobs.open(digest) as f:
                kind = detect_compression(f.read(4))
            media = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}.get(kind, OCI_LAYER)
            layers.append({"mediaType": media, "digest": digest, "size": size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": layers,
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        digest = blobs.put_bytes(data)
        tags = entry.get("RepoTags") or []
        found.append(ArchivedImage(digest, tuple(str(t) for t in tags)))
    return found


def _opener(source: _Source, name: str) -> Fetcher:
    def fetch(_offset: int) -> tuple[int, Iterator[bytes]]:
        return 0, _chunks(source.open(name))

    return fetch


def _size(source: _Source, name: str) -> int | None:
    if isinstance(source, _TarSource):
        return source.members[_clean(name)].size
    if isinstance(source, _DirSource):
        return source._path(name).stat().st_size
    return None
