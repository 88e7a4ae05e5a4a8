"""Content-addressed blob storage for uploaded images under ``MEDIA_ROOT/registry``.

Every blob is written to a temporary file while hashed, then renamed to its digest only if
the digest matches what the archive claimed: nothing unverified is ever served."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO

from django.conf import settings

from config.errors import CorralError

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20


class ArchiveError(CorralError):
    """An uploaded archive that is malformed or whose content does not match its digests."""

    http_status = 400
    code = "invalid_archive"


def blob_root() -> Path:
    return Path(settings.MEDIA_ROOT) / "registry"


def blob_path(digest: str) -> Path:
    if not DIGEST_RE.match(digest):
        raise ArchiveError(f"digest {digest!r}: not a sha256 digest", field="digest")
    return blob_root() / "blobs" / "sha256" / digest[7:]


def blob_exists(digest: str) -> bool:
    return blob_path(digest).is_file()


def blob_put(stream: IO[bytes], expected: str | None, what: str) -> tuple[str, int]:
    """Store ``stream``; returns (digest, size). Raises ArchiveError naming ``what`` when the
    content does not hash to ``expected``."""
    dest_dir = blob_root() / "blobs" / "sha256"
    tmp_dir = blob_root() / "tmp"
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        digest = "sha256:" + h.hexdigest()
        if expected is not None and digest != expected:
            raise ArchiveError(f"{what}: content is {digest}, expected {expected}", field=what)
        os.replace(tmp, dest_dir / digest[7:])
        return digest, size
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def blob_put_bytes(data: bytes, what: str) -> str:
    import io

    digest, _ = blob_put(io.BytesIO(data), None, what)
    return digest


def blob_read(digest: str, limit: int = 4 << 20) -> bytes:
    with open(blob_path(digest), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArchiveError(f"blob {digest}: larger than {limit} bytes for a document")
    return data
