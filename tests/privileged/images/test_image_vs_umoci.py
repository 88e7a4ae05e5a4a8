"""Differential check against umoci (Debian), which nobody here wrote: the overlay view of
our unpacked layers must equal the rootfs ``umoci unpack`` makes from the same image."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.images import ImageStore

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.mtime = 1_700_000_000
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _entry(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw: object
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def _layers() -> list[bytes]:
    busybox = Path("/bin/busybox").read_bytes()
    base = _tar(
        [
            (_entry("bin", tarfile.DIRTYPE, 0o755), b""),
            (_entry("bin/busybox", mode=0o755), busybox),
            (_entry("bin/sh", tarfile.SYMTYPE, 0o777, linkname="busybox"), b""),
            (_entry("etc", tarfile.DIRTYPE, 0o755), b""),
            (_entry("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n"),
            (_entry("etc/shadow", mode=0o600), b"root:*::0:::::\n"),
            (_entry("var", tarfile.DIRTYPE, 0o755), b""),
            (_entry("var/lib", tarfile.DIRTYPE, 0o755), b""),
            (_entry("var/lib/old", uid=1000, gid=100), b"old"),
            (_entry("tmp", tarfile.DIRTYPE, 0o1777), b""),
        ]
    )
    top = _tar(
        [
            (_entry("etc", tarfile.DIRTYPE, 0o755), b""),
            (_entry("etc/.wh.shadow"), b""),
            (_entry("etc/motd", mode=0o444), b"hello\n"),
            (_entry("var", tarfile.DIRTYPE, 0o755), b""),
            (_entry("var/lib", tarfile.DIRTYPE, 0o750), b""),
            (_entry("var/lib/.wh..wh..opq"), b""),
            (_entry("var/lib/new", uid=1000, gid=1000), b"new"),
            (_entry("usr", tarfile.DIRTYPE, 0o755), b""),
            (_entry("usr/bin", tarfile.DIRTYPE, 0o755), b""),
            (_entry("usr/bin/su", mode=0o4755), b"#!/bin/sh\n"),
            (_entry("usr/bin/su-link", tarfile.LNKTYPE, 0o4755, linkname="usr/bin/su"), b""),
        ]
    )
    return [base, top]


def _write_layout(dest: Path, layers: list[bytes]) -> None:
    blobs = {_sha(raw): raw for raw in layers}
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha(raw) for raw in layers]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _sha(raw),
                    "size": len(raw),
                }
                for raw in layers
            ],
        }
    ).encode()
    blobs |= {_sha(config): config, _sha(manifest): manifest}
    (dest / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in blobs.items():
        (dest / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": _sha(manifest),
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "1"},
    }
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))


def _listing(root: Path) -> dict[str, tuple[object, ...]]:
    """Path -> (type, permission bits, uid, gid, content hash or link target)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                what: object = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = None
            kind = stat.S_IFMT(st.st_mode)
            out[str(path.relative_to(root))] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                what,
            )
    return out


def test_overlay_of_our_layers_equals_umoci_rootfs(tmp_path: Path) -> None:
    umoci = shutil.which("umoci")
    if umoci is None:
        pytest.fail("umoci is missing: apt-get install umoci")
    layout = tmp_path / "layout"
    _write_layout(layout, _layers())
    subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:1", str(tmp_path / "bundle")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    theirs = _listing(tmp_path / "bundle" / "rootfs")
    store = ImageStore(tmp_path / "store")
    (record,) = store.import_archive(layout)
    lower = ":".join(str(p) for p in store.layers_for(record))
    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", str(merged)], check=True
    )
    try:
        ours = _listing(merged)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert "etc/shadow" not in ours and "var/lib/old" not in ours
    assert ours == theirs
