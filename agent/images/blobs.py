"""Content-addressed blob store: ``<root>/blobs/sha256/<hex>``, each blob verified on entry.

A blob is streamed into a temp file while hashed, fsynced and renamed into place only when
its digest and size match, so a blob path that exists is always whole and correct. A per
blob ``flock`` makes concurrent writers (threads or processes) fetch each blob once: the
second waits, then finds the blob present. Partial downloads are kept under a stable name
so a broken transfer resumes with an HTTP Range request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from agent.images.errors import DIGEST_MISMATCH, SIZE_MISMATCH, ImageError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
# A fetcher is given the offset it should resume from and returns the offset its stream
# really starts at (0 when the server ignored the Range) and the chunks from there.
Fetcher = Callable[[int], tuple[int, Iterable[bytes]]]
Progress = Callable[[int], None]


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest; anything else is refused."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not _HEX_RE.match(hexpart):
        raise ImageError(DIGEST_MISMATCH, f"digest {digest!r}: only sha256:<64 hex> is supported")
    return hexpart


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if needed) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class BlobStore:
    """Blobs under ``root``; ``root/tmp`` holds partial files, ``root/locks`` lock files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.tmp_dir = root / "tmp"
        self.lock_dir = root / "locks"
        for d in (self.blob_dir, self.tmp_dir, self.lock_dir):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blob_dir / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def digests(self) -> list[str]:
        return sorted("sha256:" + p.name for p in self.blob_dir.iterdir() if _HEX_RE.match(p.name))

    def delete(self, digest: str) -> int:
        """Remove a blob; returns the bytes freed (0 if it was absent)."""
        path = self.path(digest)
        with file_lock(self._lock_path(digest)):
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return 0
        return size

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store small content (manifests, configs); verifies ``digest`` when given."""
        got = sha256_digest(data)
        expected = digest or got
        return self.ingest(expected, len(data), lambda _offset: (0, [data]))

    def ingest(
        self, digest: str, size: int | None, fetch: Fetcher, *, progress: Progress | None = None
    ) -> str:
        """Make blob ``digest`` present, calling ``fetch`` only if it is missing. The content
        is verified against ``digest`` and ``size`` before it becomes visible."""
        hexpart = digest_hex(digest)
        with file_lock(self._lock_path(digest)):
            if self.has(digest):
                if size is not None and self.size(digest) != size:
                    raise ImageError(
                        SIZE_MISMATCH,
                        f"blob {digest}: stored size {self.size(digest)} != expected {size}",
                    )
                return digest
            partial = self.tmp_dir / f"{hexpart}.partial"
            self._download(digest, size, partial, fetch, progress)
            partial.rename(self.path(digest))
            _fsync_dir(self.blob_dir)
        return digest

    def add_stream(self, stream: IO[bytes]) -> tuple[str, int]:
        """Store content whose digest is not known in advance (archive import); returns
        ``(digest, size)``."""
        hasher = hashlib.sha256()
        tmp = self.tmp_dir / f"anon-{os.getpid()}-{id(stream)}.tmp"
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + hasher.hexdigest()
            with file_lock(self._lock_path(digest)):
                if not self.has(digest):
                    tmp.rename(self.path(digest))
                    _fsync_dir(self.blob_dir)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    def _lock_path(self, digest: str) -> Path:
        return self.lock_dir / f"blob-{digest_hex(digest)}.lock"

    def _download(
        self,
        digest: str,
        size: int | None,
        partial: Path,
        fetch: Fetcher,
        progress: Progress | None,
    ) -> None:
        hasher = hashlib.sha256()
        have = 0
        if partial.exists():
            # Resume: re-hash what an earlier, interrupted transfer already wrote.
            with open(partial, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
                    have += len(chunk)
            if size is not None and have > size:
                partial.unlink()
                hasher, have = hashlib.sha256(), 0
        start, chunks = fetch(have)
        if start != have:  # the source restarted from zero
            logger.info("blob %s: source ignored resume at %d, restarting", digest, have)
            hasher, have = hashlib.sha256(), 0
        with open(partial, "r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            for chunk in chunks:
                have += len(chunk)
                if size is not None and have > size:
                    out.close()
                    partial.unlink()
                    raise ImageError(
                        SIZE_MISMATCH, f"blob {digest}: expected {size} bytes, got more ({have})"
                    )
                hasher.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        got = "sha256:" + hasher.hexdigest()
        if got != digest or (size is not None and have != size):
            partial.unlink()
            raise ImageError(
                DIGEST_MISMATCH if got != digest else SIZE_MISMATCH,
                f"blob: expected {digest} ({size} bytes), got {got} ({have} bytes)",
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
