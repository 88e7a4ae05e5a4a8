"""The agent's image store: pull, import, look up, hand layers to overlayfs, collect garbage.

Layout under ``root``::

    blobs/sha256/<hex>      verified content (manifests, configs, compressed layers)
    layers/<diff-hex>/      unpacked layers, one per diff_id, shared by every image using it
    images/<hex>.json       one record per image (manifest digest)
    refs.json               reference -> manifest digest
    locks/ tmp/             flock files; partial downloads

Pulls and imports hold the store lock shared, ``gc`` holds it exclusive, so a collection
never deletes a layer an install in progress is about to use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.images.archive import read_archive
from agent.images.blobs import BlobStore, digest_hex, file_lock
from agent.images.errors import (
    INVALID_CONFIG,
    INVALID_MANIFEST,
    LAYER_MISSING,
    NOT_FOUND,
    TOO_LARGE,
    ImageError,
)
from agent.images.manifest import (
    Descriptor,
    Manifest,
    Platform,
    config_platform,
    diff_ids,
    host_platform,
    normalise_config,
    parse_config,
    parse_document,
)
from agent.images.pull import fetch_blob, fetch_manifest
from agent.images.records import GcResult, ImageRecord, atomic_write, tree_bytes
from agent.images.reference import is_digest, parse_reference
from agent.images.registry import RegistryClient, default_registry_url
from agent.images.unpack import UnpackLimits, unpack_layer
from agent.protocol.messages import RegistryAuth

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


class ImageStore:
    """Images of one host under ``root``. Safe to use from several processes at once."""

    def __init__(
        self,
        root: Path,
        *,
        limits: UnpackLimits | None = None,
        platform: Platform | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.root = root
        self.blobs = BlobStore(root)
        self.layer_dir = root / "layers"
        self.image_dir = root / "images"
        self.limits = limits or UnpackLimits()
        self.platform = platform or host_platform()
        self.ca_file = ca_file
        for d in (self.layer_dir, self.image_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._store_lock = self.blobs.lock_dir / "store.lock"
        self._refs_lock = self.blobs.lock_dir / "refs.lock"

    # --- public API ------------------------------------------------------------------------

    def pull(
        self,
        reference: str,
        *,
        registry_url: str | None = None,
        auth: RegistryAuth | None = None,
        progress: ProgressCallback | None = None,
    ) -> ImageRecord:
        """Pull ``reference`` (by tag or digest) for this host's platform; blobs already
        present are not fetched again. A manifest whose digest differs from the pinned one
        is refused before anything else is fetched."""
        ref = parse_reference(reference)
        if ref.digest:
            # Content pinned by digest never changes: if it is whole here, no registry is
            # needed (a host restarts its containers while the registry is down).
            known = self.get(str(ref))
            if known is not None and self._is_whole(known):
                return known
        client = RegistryClient(
            registry_url or default_registry_url(ref.registry),
            ref.repository,
            auth=auth,
            ca_file=self.ca_file,
        )
        try:
            with file_lock(self._store_lock, shared=True):
                digest, manifest = fetch_manifest(client, ref, self.blobs, self.platform)

                def fetch(d: Descriptor, on_bytes: Callable[[int], None] | None) -> None:
                    fetch_blob(self.blobs, client, d, on_bytes)

                record = self._install(digest, manifest, fetch, progress)
                return self._tag(record, str(ref))
        finally:
            client.close()

    def import_archive(self, path: Path) -> list[ImageRecord]:
        """Import a ``docker save`` tarball or an OCI layout (tarball or directory)."""
        records = []
        with file_lock(self._store_lock, shared=True):
            for found in read_archive(path, self.blobs, self.platform):
                manifest = parse_document(self.blobs.read(found.manifest_digest))
                if not isinstance(manifest, Manifest):
                    raise ImageError(INVALID_MANIFEST, f"{found.manifest_digest}: not a manifest")

                def present(d: Descriptor, _cb: Callable[[int], None] | None) -> None:
                    if not self.blobs.has(d.digest):
                        raise ImageError(NOT_FOUND, f"blob {d.digest}: missing from archive")

                record = self._install(found.manifest_digest, manifest, present, None)
                for name in found.names:
                    record = self._tag(record, str(parse_reference(name)))
                records.append(record)
        return records

    def get(self, reference_or_digest: str) -> ImageRecord | None:
        """The image for a reference (``busybox`` means ``docker.io/library/busybox:latest``)
        or a manifest digest; None when absent."""
        key = reference_or_digest
        if is_digest(key):
            return self._load(key)
        ref = parse_reference(key)
        digest = self._read_refs().get(str(ref))
        if digest is None and ref.digest:
            digest = ref.digest  # the manifest itself (an index digest is found via refs)
        record = self._load(digest) if digest else None
        return replace(record, reference=str(ref)) if record else None

    def layers_for(self, image: ImageRecord | str) -> list[Path]:
        """Unpacked layer dirs, topmost first: ready for ``lowerdir=`` joined by ``:``."""
        record = image if isinstance(image, ImageRecord) else self.get(image)
        if record is None:
            raise ImageError(NOT_FOUND, f"image {image!r}: not in the store")
        paths = [self.layer_dir / digest_hex(d) for d in reversed(record.layers)]
        for path in paths:
            if not path.is_dir():
                raise ImageError(LAYER_MISSING, f"image {record.digest}: layer {path.name} gone")
        return paths

    def image_config(self, image: ImageRecord | str) -> dict[str, Any]:
        """Container defaults of an image (entrypoint, cmd, env, user, working_dir...)."""
        record = image if isinstance(image, ImageRecord) else self.get(image)
        if record is None:
            raise ImageError(NOT_FOUND, f"image {image!r}: not in the store")
        return normalise_config(record.config)

    def list(self) -> list[ImageRecord]:
        records = []
        for path in sorted(self.image_dir.glob("*.json")):
            record = self._load("sha256:" + path.stem)
            if record is not None:
                records.append(record)
        return records

    def gc(self, in_use: set[str]) -> GcResult:
        """Remove every image not named in ``in_use`` (references or manifest digests), then
        the layers and blobs no remaining image needs. Returns what went and bytes freed."""
        keep_digests = set()
        for item in in_use:
            record = self.get(item) if item else None
            if record is not None:
                keep_digests.add(record.digest)
        with file_lock(self._store_lock):
            removed_images, freed = [], 0
            kept: list[ImageRecord] = []
            for record in self.list():
                if record.digest in keep_digests:
                    kept.append(record)
                    continue
                (self.image_dir / f"{digest_hex(record.digest)}.json").unlink(missing_ok=True)
                removed_images.append(record.digest)
            self._drop_refs(set(removed_images))
            live_layers = {digest_hex(d) for r in kept for d in r.layers}
            removed_layers = []
            for path in sorted(self.layer_dir.iterdir()):
                if path.name in live_layers:
                    continue
                freed += tree_bytes(path)
                shutil.rmtree(path, ignore_errors=True)
                if not path.name.startswith(".tmp-"):
                    removed_layers.append("sha256:" + path.name)
            live_blobs = {b for r in kept for b in self._blobs_of(r)}
            removed_blobs = 0
            for digest in self.blobs.digests():
                if digest not in live_blobs:
                    freed += self.blobs.delete(digest)
                    removed_blobs += 1
            for stale in self.blobs.tmp_dir.iterdir():
                freed += stale.stat().st_size
                stale.unlink()
        logger.info(
            "image gc: %d images, %d layers, %d bytes",
            len(removed_images),
            len(removed_layers),
            freed,
        )
        return GcResult(tuple(removed_images), tuple(removed_layers), removed_blobs, freed)

    def disk_usage(self) -> dict[str, Any]:
        """Sizes for the host inventory: blobs, unpacked layers, image count, free space.
        Holds the store lock shared so a concurrent ``gc`` cannot delete under the count."""
        with file_lock(self._store_lock, shared=True):
            return self._disk_usage()

    def _disk_usage(self) -> dict[str, Any]:
        blob_bytes = sum(p.stat().st_size for p in self.blobs.blob_dir.iterdir())
        layers = [p for p in self.layer_dir.iterdir() if not p.name.startswith(".tmp-")]
        vfs = os.statvfs(self.root)
        return {
            "root": str(self.root),
            "images": len(list(self.image_dir.glob("*.json"))),
            "blobs": len(list(self.blobs.blob_dir.iterdir())),
            "blob_bytes": blob_bytes,
            "layers": len(layers),
            "layer_bytes": sum(tree_bytes(p) for p in layers),
            "filesystem_total_bytes": vfs.f_blocks * vfs.f_frsize,
            "filesystem_free_bytes": vfs.f_bavail * vfs.f_frsize,
        }

    # --- internals -------------------------------------------------------------------------

    def _install(
        self,
        digest: str,
        manifest: Manifest,
        fetch: Callable[[Descriptor, Callable[[int], None] | None], None],
        progress: ProgressCallback | None,
    ) -> ImageRecord:
        """Fetch config and layers, unpack each layer once (overlapping download of the next
        layer with unpack of the previous), and write the record."""
        total = manifest.config.size + sum(d.size for d in manifest.layers)
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        for i, layer in enumerate(manifest.layers):
            if layer.size > self.limits.max_bytes:  # refuse before filling the disk
                raise ImageError(
                    TOO_LARGE,
                    f"manifest.layers[{i}].size: {layer.size} over {self.limits.max_bytes}",
                )
        fetch(manifest.config, on_bytes)
        config = parse_config(self.blobs.read(manifest.config.digest))
        ids = diff_ids(config)
        if len(ids) != len(manifest.layers):
            raise ImageError(
                INVALID_CONFIG,
                f"config.rootfs.diff_ids: {len(ids)} entries for {len(manifest.layers)} layers",
            )
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unpack") as pool:
            pending: list[Future[None]] = []
            for layer, diff_id in zip(manifest.layers, ids, strict=True):
                had = self.blobs.has(layer.digest)
                fetch(layer, on_bytes)
                if had:
                    on_bytes(layer.size)
                pending.append(pool.submit(self._ensure_layer, layer.digest, diff_id))
            for fut in pending:
                fut.result()
        plat = config_platform(config)
        record = ImageRecord(
            reference="",
            digest=digest,
            config_digest=manifest.config.digest,
            size=total,
            platform=str(plat),
            layers=tuple(ids),
            config=config,
            labels=normalise_config(config)["labels"],
            created=config.get("created"),
            layer_digests=tuple(d.digest for d in manifest.layers),
        )
        path = self.image_dir / f"{digest_hex(digest)}.json"
        with file_lock(self._refs_lock):
            existing = self._load(digest)
            if existing is not None:
                record = replace(record, references=existing.references)
            atomic_write(path, json.dumps(record.to_json(), indent=1).encode())
        return record

    def _ensure_layer(self, blob_digest: str, diff_id: str) -> None:
        dest = self.layer_dir / digest_hex(diff_id)
        with file_lock(self.blobs.lock_dir / f"layer-{digest_hex(diff_id)}.lock"):
            if dest.is_dir():
                return
            unpack_layer(
                self.blobs.path(blob_digest), dest, expected_diff_id=diff_id, limits=self.limits
            )

    def _tag(self, record: ImageRecord, reference: str) -> ImageRecord:
        with file_lock(self._refs_lock):
            refs = self._read_refs()
            old = refs.get(reference)
            refs[reference] = record.digest
            atomic_write(self.root / "refs.json", json.dumps(refs, indent=1).encode())
            current = self._load(record.digest) or record
            names = tuple(sorted({*current.references, reference}))
            record = replace(current, references=names, reference=reference)
            path = self.image_dir / f"{digest_hex(record.digest)}.json"
            atomic_write(path, json.dumps(replace(record, reference="").to_json()).encode())
            if old and old != record.digest:
                self._untag(old, reference)
        return record

    def _untag(self, digest: str, reference: str) -> None:
        previous = self._load(digest)
        if previous is not None:
            names = tuple(n for n in previous.references if n != reference)
            path = self.image_dir / f"{digest_hex(digest)}.json"
            atomic_write(path, json.dumps(replace(previous, references=names).to_json()).encode())

    def _drop_refs(self, digests: set[str]) -> None:
        with file_lock(self._refs_lock):
            refs = {k: v for k, v in self._read_refs().items() if v not in digests}
            atomic_write(self.root / "refs.json", json.dumps(refs, indent=1).encode())

    def _read_refs(self) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads((self.root / "refs.json").read_bytes())
        except FileNotFoundError:
            return {}
        return data

    def _load(self, digest: str) -> ImageRecord | None:
        try:
            doc = json.loads((self.image_dir / f"{digest_hex(digest)}.json").read_bytes())
        except FileNotFoundError:
            return None
        record = ImageRecord.from_json(doc)
        if not record.reference and record.references:
            record = replace(record, reference=record.references[0])
        return record

    def _is_whole(self, record: ImageRecord) -> bool:
        layers = (self.layer_dir / digest_hex(d) for d in record.layers)
        return self.blobs.has(record.config_digest) and all(p.is_dir() for p in layers)

    def _blobs_of(self, record: ImageRecord) -> set[str]:
        """Manifest, config and layer blobs of an image, plus any index that led to it."""
        return {record.digest, record.config_digest, *record.layer_digests}
