"""The registry half of a pull: the manifest for this platform (verified against a pinned
digest and the registry's own digest header) and blobs with resume on broken transfers."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.images.blobs import BlobStore, sha256_digest
from agent.images.errors import DIGEST_MISMATCH, INVALID_MANIFEST, NETWORK_ERROR, ImageError
from agent.images.manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    parse_document,
    select_platform,
)
from agent.images.reference import Reference
from agent.images.registry import RegistryClient

logger = logging.getLogger(__name__)

FETCH_ATTEMPTS = 3


def fetch_manifest(
    client: RegistryClient, ref: Reference, blobs: BlobStore, platform: Platform
) -> tuple[str, Manifest]:
    """Manifest for this platform, verified and stored; follows an index once."""
    wanted = ref.digest or ref.tag or "latest"
    pinned = ref.digest
    for _depth in range(3):
        resp = client.get_manifest(wanted)
        digest = sha256_digest(resp.body)
        if pinned and digest != pinned:
            raise ImageError(
                DIGEST_MISMATCH, f"manifest {ref.name}: expected {pinned}, got {digest}"
            )
        header = resp.headers.get("docker-content-digest")
        if header and header.startswith("sha256:") and header != digest:
            raise ImageError(
                DIGEST_MISMATCH, f"manifest {ref.name}: registry said {header}, got {digest}"
            )
        doc = parse_document(resp.body, resp.headers.get("content-type"))
        blobs.put_bytes(resp.body, digest)
        if isinstance(doc, Manifest):
            return digest, doc
        assert isinstance(doc, Index)
        chosen = select_platform(doc, platform)
        wanted = pinned = chosen.digest
    raise ImageError(INVALID_MANIFEST, f"manifest {ref.name}: indexes nest too deep")


def fetch_blob(
    blobs: BlobStore,
    client: RegistryClient,
    d: Descriptor,
    on_bytes: Callable[[int], None] | None,
) -> None:
    """Ingest one blob; a broken transfer is resumed from the partial file (HTTP Range)."""
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        try:
            blobs.ingest(
                d.digest, d.size, lambda off: client.open_blob(d.digest, off), progress=on_bytes
            )
            return
        except ImageError as exc:
            if exc.code != NETWORK_ERROR or attempt == FETCH_ATTEMPTS:
                raise
            logger.warning("blob %s: attempt %d failed (%s); resuming", d.digest, attempt, exc)
