"""The unpacked layers really stack: mount overlayfs with ``layers_for`` as lowerdirs and
check the merged view (whiteouts hide files, opaque directories hide lower content)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.images import ImageStore

pytestmark = pytest.mark.privileged


def _tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """Entries are (name, data); data None makes a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layout(dest: Path, layers: list[bytes]) -> None:
    blobs = {}
    descs = []
    for raw in layers:
        blob = gzip.compress(raw)
        blobs[_sha(blob)] = blob
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _sha(blob),
                "size": len(blob),
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [_sha(raw) for raw in layers]},
        }
    ).encode()
    cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json"}
    cdesc |= {"digest": _sha(config), "size": len(config)}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cdesc,
            "layers": descs,
        }
    ).encode()
    blobs[_sha(config)] = config
    blobs[_sha(manifest)] = manifest
    (dest / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in blobs.items():
        (dest / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _sha(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "example.com/stack:1"},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))


@pytest.fixture
def merged(tmp_path: Path) -> Iterator[Path]:
    base = _tar(
        [
            ("etc", None),
            ("etc/passwd", b"root\n"),
            ("etc/keep", b"keep\n"),
            ("var", None),
            ("var/cache", None),
            ("var/cache/old1", b"1"),
            ("var/cache/old2", b"2"),
        ]
    )
    middle = _tar([("etc", None), ("etc/.wh.passwd", b""), ("etc/added", b"mid\n")])
    top = _tar(
        [
            ("var", None),
            ("var/cache", None),
            ("var/cache/.wh..wh..opq", b""),
            ("var/cache/fresh", b"new"),
            ("etc", None),
            ("etc/keep", b"top\n"),
        ]
    )
    _layout(tmp_path / "layout", [base, middle, top])
    store = ImageStore(tmp_path / "store")
    (record,) = store.import_archive(tmp_path / "layout")
    lowers = store.layers_for(record)
    assert len(lowers) == 3
    target = tmp_path / "merged"
    target.mkdir()
    lowerdir = ":".join(str(p) for p in lowers)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(target)],
        check=True,
    )
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_overlay_of_layers_shows_the_merged_image(merged: Path) -> None:
    assert not (merged / "etc" / "passwd").exists()  # whited out by the middle layer
    assert (merged / "etc" / "added").read_bytes() == b"mid\n"
    assert (merged / "etc" / "keep").read_bytes() == b"top\n"  # the top layer wins
    assert sorted(p.name for p in (merged / "var" / "cache").iterdir()) == ["fresh"]
