"""What the store keeps per image, and small file helpers it shares."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImageRecord:
    """One image in the store. ``digest`` is the manifest digest (its identity); ``layers``
    are diff_ids bottom first; ``config`` the raw image config; ``size`` the bytes of the
    compressed layers and config as stored."""

    reference: str
    digest: str
    config_digest: str
    size: int
    platform: str
    layers: tuple[str, ...]
    config: dict[str, Any] = field(compare=False)
    labels: dict[str, str] = field(compare=False)
    created: str | None
    layer_digests: tuple[str, ...] = ()
    references: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ImageRecord:
        for key in ("layers", "layer_digests", "references"):
            doc[key] = tuple(doc.get(key) or ())
        return cls(**doc)


@dataclass(frozen=True)
class GcResult:
    removed_images: tuple[str, ...]
    removed_layers: tuple[str, ...]
    removed_blobs: int
    freed_bytes: int


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def tree_bytes(path: Path) -> int:
    """Bytes of regular files and symlinks under ``path``, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total
