"""Layer unpack: one compressed or plain tar layer into a directory overlayfs can stack.

Layers are hostile input. Every entry is created relative to directory file descriptors
opened with ``O_NOFOLLOW``, so no symlink (from this layer or planted by it) is ever
followed and nothing is written outside the layer directory. Absolute names, ``..``,
hardlinks leaving the layer, device nodes (unless allowed) and archives over the size,
entry-count or compression-ratio limits are refused with a specific :class:`ImageError`
code. OCI whiteouts become overlayfs whiteouts (char device 0/0, ``trusted.overlay.opaque``).
The layer is unpacked into a temp directory and renamed into place only when complete and
its diff_id (sha256 of the uncompressed tar) matches, so a refused layer leaves nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from agent.images.errors import DIGEST_MISMATCH, INVALID_LAYER, TOO_LARGE, ImageError
from agent.images.tree import DIR_FLAGS, EntryTree

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class UnpackLimits:
    """Bounds on one layer. The ratio is checked once ``ratio_grace_bytes`` were produced,
    so a small highly compressible file passes but a decompression bomb stops early."""

    max_bytes: int = 16 << 30
    max_entries: int = 1_000_000
    max_ratio: int = 250
    ratio_grace_bytes: int = 16 << 20
    allow_devices: bool = False


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str
    uncompressed_bytes: int
    entries: int


def detect_compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none``, by magic bytes (media types lie, magic does not)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Counting(io.RawIOBase):
    """Counts bytes read from the compressed source (for the ratio check)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buf))
        buf[: len(data)] = data
        self.count += len(data)
        return len(data)


class _Guarded(io.RawIOBase):
    """The uncompressed tar stream: hashed for the diff_id and bounded by the limits."""

    def __init__(self, inner: BinaryIO, source: _Counting, limits: UnpackLimits) -> None:
        self.inner = inner
        self.source = source
        self.limits = limits
        self.hasher = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buf))
        n = len(data)
        self.count += n
        self.hasher.update(data)
        buf[:n] = data
        lim = self.limits
        if self.count > lim.max_bytes:
            raise ImageError(TOO_LARGE, f"layer: more than {lim.max_bytes} uncompressed bytes")
        if self.count > lim.ratio_grace_bytes and self.count > lim.max_ratio * max(
            self.source.count, 1
        ):
            raise ImageError(
                TOO_LARGE,
                f"layer: compression ratio over {lim.max_ratio} ({self.count} bytes from "
                f"{self.source.count}); stopped as a decompression bomb",
            )
        return n


class _Inflate(io.RawIOBase):
    """gzip (all members) through ``zlib`` in 1 MiB steps: ``gzip.GzipFile`` reads 8 KiB at
    a time and checks the CRC in Python-visible steps, which doubled unpack time here."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.z = zlib.decompressobj(wbits=31)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        while True:
            if self.z.unconsumed_tail:
                data = self.z.decompress(self.z.unconsumed_tail, len(buf))
            elif self.z.eof:
                rest = self.z.unused_data or self.src.read(_CHUNK)
                if not rest:
                    return 0
                self.z = zlib.decompressobj(wbits=31)  # a further gzip member
                data = self.z.decompress(rest, len(buf))
            else:
                chunk = self.src.read(_CHUNK)
                if not chunk:
                    raise EOFError("gzip stream ends before its end marker")
                data = self.z.decompress(chunk, len(buf))
            if data:
                buf[: len(data)] = data
                return len(data)


def unpack_layer(
    blob: Path,
    dest: Path,
    *,
    expected_diff_id: str | None = None,
    limits: UnpackLimits | None = None,
) -> UnpackResult:
    """Unpack ``blob`` into ``dest`` (which must not exist). On any refusal nothing is left
    at ``dest`` nor beside it."""
    limits = limits or UnpackLimits()
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(mode=0o700, parents=False)
    try:
        with open(blob, "rb") as raw:
            result = _unpack_stream(raw, tmp, limits)
        if expected_diff_id is not None and result.diff_id != expected_diff_id:
            raise ImageError(
                DIGEST_MISMATCH,
                f"layer {blob.name}: diff_id expected {expected_diff_id}, got {result.diff_id}",
            )
        # No fsync of every file: a crash before the rename leaves only a .tmp- dir that the
        # store sweeps; files are flushed by the kernel like any unpacked tree.
        tmp.chmod(0o755)  # the layer root: traversable by container users, umask aside
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # fd-based on Linux: never follows symlinks
        raise
    return result


def _unpack_stream(raw: BinaryIO, root: Path, limits: UnpackLimits) -> UnpackResult:
    source = _Counting(raw)
    buffered = io.BufferedReader(source, _CHUNK)
    kind = detect_compression(buffered.peek(4)[:4])
    inner: BinaryIO
    if kind == "gzip":
        inner = io.BufferedReader(_Inflate(buffered), _CHUNK)
    elif kind == "zstd":
        inner = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
    else:
        inner = buffered
    guarded = _Guarded(inner, source, limits)
    stream = io.BufferedReader(guarded, _CHUNK)
    root_fd = os.open(root, DIR_FLAGS)
    tree = EntryTree(root_fd, limits)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                tree.add(member, tar)
        while stream.read(_CHUNK):  # tar padding after the end blocks is part of the diff_id
            pass
        tree.finish()
    except tarfile.TarError as exc:
        raise ImageError(INVALID_LAYER, f"layer: not a valid tar stream ({exc})") from exc
    except (EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(INVALID_LAYER, f"layer: cannot decompress or write ({exc})") from exc
    finally:
        tree.close()
        os.close(root_fd)
    return UnpackResult("sha256:" + guarded.hasher.hexdigest(), guarded.count, tree.entries)
