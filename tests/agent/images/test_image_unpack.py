"""Layer unpack against hostile archives, whiteout conversion and size limits. Needs root
(ownership, whiteout device nodes, trusted.* xattrs)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from imgtest_helpers import Entry, compress, leftovers, sha, tar_bytes

from agent.images.errors import ImageError
from agent.images.unpack import UnpackLimits, unpack_layer

pytestmark = pytest.mark.privileged


@pytest.fixture
def area(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/layers`` holds layer dirs; everything else in tmp_path is 'outside'."""
    (tmp_path / "layers").mkdir()
    yield tmp_path


def _unpack(area: Path, blob: bytes, **kw: object) -> Path:
    src = area / "blob"
    src.write_bytes(blob)
    dest = area / "layers" / "L"
    unpack_layer(src, dest, **kw)  # type: ignore[arg-type]
    return dest


def _refused(area: Path, blob: bytes, code: str, **kw: object) -> ImageError:
    (area / "blob").write_bytes(blob)
    before = leftovers(area)
    with pytest.raises(ImageError) as err:
        _unpack(area, blob, **kw)
    assert err.value.code == code, err.value
    # Nothing new anywhere: no partial layer dir, no temp dir, nothing beside it.
    assert leftovers(area) == before
    return err.value


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_layer_unpacks_with_modes_owners_links_and_diff_id(area: Path, compression: str) -> None:
    raw = tar_bytes(
        [
            Entry("bin", "dir"),
            Entry("bin/tool", data=b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
            Entry("bin/alias", "symlink", target="/bin/tool"),
            Entry("bin/hard", "hardlink", target="bin/tool"),
            Entry("home/app/data", data=b"x" * 5000, mode=0o600, uid=1000, gid=1001),
            Entry("run/fifo", "fifo", mode=0o600),
        ]
    )
    result = _unpack(area, compress(raw, compression), expected_diff_id=sha(raw))
    assert result.is_dir()
    tool = result / "bin" / "tool"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o4755  # set-uid kept
    assert os.readlink(result / "bin" / "alias") == "/bin/tool"
    assert (result / "bin" / "hard").stat().st_ino == tool.stat().st_ino
    data = (result / "home" / "app" / "data").stat()
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (1000, 1001, 0o600)
    assert stat.S_ISFIFO((result / "run" / "fifo").lstat().st_mode)
    assert int(tool.stat().st_mtime) == 1_700_000_000


def test_whiteouts_become_overlay_whiteouts_and_opaque_xattr(area: Path) -> None:
    raw = tar_bytes(
        [
            Entry("etc", "dir"),
            Entry("etc/.wh.passwd"),
            Entry("var/cache", "dir"),
            Entry("var/cache/.wh..wh..opq"),
            Entry("var/cache/new", data=b"n"),
        ]
    )
    layer = _unpack(area, raw)
    wh = (layer / "etc" / "passwd").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert not (layer / "etc" / ".wh.passwd").exists()
    assert os.getxattr(layer / "var" / "cache", "trusted.overlay.opaque") == b"y"
    assert not (layer / "var" / "cache" / ".wh..wh..opq").exists()
    assert (layer / "var" / "cache" / "new").read_bytes() == b"n"


def test_layer_cannot_forge_overlay_xattrs(area: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {
            "SCHILY.xattr.trusted.overlay.opaque": "y",
            "SCHILY.xattr.user.note": "kept",
        }
        tar.addfile(info)
    layer = _unpack(area, buf.getvalue())
    assert "trusted.overlay.opaque" not in os.listxattr(layer / "d")
    assert os.getxattr(layer / "d", "user.note") == b"kept"


def test_later_entry_replaces_a_symlink_instead_of_writing_through_it(area: Path) -> None:
    victim = area / "victim"
    victim.write_text("original")
    raw = tar_bytes([Entry("f", "symlink", target=str(victim)), Entry("f", data=b"replaced")])
    layer = _unpack(area, raw)
    assert victim.read_text() == "original"
    assert (layer / "f").read_bytes() == b"replaced" and not (layer / "f").is_symlink()


def test_traversal_is_refused(area: Path) -> None:
    raw = tar_bytes([Entry("ok", data=b"1"), Entry("../x", data=b"evil")])
    err = _refused(area, raw, "path_traversal")
    assert "../x" in err.detail
    assert not (area / "x").exists()


def test_absolute_path_is_refused(area: Path) -> None:
    target = f"/etc/corral-test-{uuid.uuid4().hex}"
    _refused(area, tar_bytes([Entry(target, data=b"evil")]), "absolute_path")
    assert not Path(target).exists()


def test_write_through_symlink_to_etc_is_refused(area: Path) -> None:
    raw = tar_bytes([Entry("a", "symlink", target="/etc"), Entry("a/passwd", data=b"evil")])
    before = Path("/etc/passwd").read_bytes()
    _refused(area, raw, "symlink_escape")
    assert Path("/etc/passwd").read_bytes() == before


def test_write_through_relative_symlink_out_of_the_layer_is_refused(area: Path) -> None:
    raw = tar_bytes([Entry("up", "symlink", target="../../.."), Entry("up/escaped", data=b"evil")])
    _refused(area, raw, "symlink_escape")
    assert not (area / "escaped").exists()


def test_whiteout_or_opaque_marker_through_a_symlink_is_refused(area: Path) -> None:
    for marker in ("a/.wh.passwd", "a/.wh..wh..opq"):
        raw = tar_bytes([Entry("a", "symlink", target="/etc"), Entry(marker)])
        _refused(area, raw, "symlink_escape")
    assert Path("/etc/passwd").is_file()
    assert "trusted.overlay.opaque" not in os.listxattr("/etc")


def test_directory_replaced_by_a_file_then_recreated_stays_inside(area: Path) -> None:
    raw = tar_bytes(
        [
            Entry("d/sub/f1", data=b"1"),
            Entry("d/sub", data=b"now a file"),
            Entry("d/sub2/f2", data=b"2"),
            Entry("d", data=b"d is a file"),
            Entry("d/x", data=b"x"),
        ]
    )
    with pytest.raises(ImageError) as err:
        _unpack(area, raw)
    assert err.value.code == "invalid_layer"  # d/x under a regular file d
    raw = tar_bytes(
        [Entry("d/sub/f1", data=b"1"), Entry("d/sub", data=b"file"), Entry("d/sub2/f2", data=b"2")]
    )
    layer = _unpack(area, raw)
    assert (layer / "d" / "sub").read_bytes() == b"file"
    assert (layer / "d" / "sub2" / "f2").read_bytes() == b"2"


def test_hardlink_out_of_the_layer_is_refused(area: Path) -> None:
    raw = tar_bytes([Entry("pw", "hardlink", target="../../etc/passwd")])
    _refused(area, raw, "hardlink_escape")


def test_hardlink_through_a_symlink_is_refused(area: Path) -> None:
    raw = tar_bytes(
        [Entry("e", "symlink", target="/etc"), Entry("pw", "hardlink", target="e/passwd")]
    )
    _refused(area, raw, "symlink_escape")


def test_hardlink_to_absent_target_is_refused(area: Path) -> None:
    _refused(area, tar_bytes([Entry("pw", "hardlink", target="etc/passwd")]), "hardlink_escape")


def test_device_node_is_refused_unless_allowed(area: Path) -> None:
    raw = tar_bytes([Entry("dev/null", "chr", mode=0o666, dev=(1, 3))])
    _refused(area, raw, "device_node")
    layer = _unpack(area, raw, limits=UnpackLimits(allow_devices=True))
    assert (layer / "dev" / "null").lstat().st_rdev == os.makedev(1, 3)


def test_diff_id_mismatch_is_refused(area: Path) -> None:
    raw = tar_bytes([Entry("f", data=b"1")])
    err = _refused(area, raw, "digest_mismatch", expected_diff_id="sha256:" + "0" * 64)
    assert sha(raw) in err.detail


def test_too_many_entries_is_refused(area: Path) -> None:
    raw = tar_bytes([Entry(f"f{i}") for i in range(20)])
    _refused(area, raw, "too_large", limits=UnpackLimits(max_entries=10))


def test_total_size_limit_is_enforced(area: Path) -> None:
    raw = tar_bytes([Entry("big", data=b"\x00" * 300_000)])
    _refused(area, raw, "too_large", limits=UnpackLimits(max_bytes=100_000, max_ratio=10**9))


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def _bomb(size: int) -> bytes:
    """A zstd tar holding one file of ``size`` zero bytes: a few hundred KiB compressed."""
    out = io.BytesIO()
    writer = zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False)
    with writer as zw, tarfile.open(fileobj=zw, mode="w|") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size), 1 << 20))
    return out.getvalue()


def test_decompression_bomb_stops_early(area: Path) -> None:
    blob = _bomb(1 << 30)  # 1 GiB of zeros
    assert len(blob) < 1 << 20
    start = time.monotonic()
    err = _refused(area, blob, "too_large")
    elapsed = time.monotonic() - start
    assert "decompression bomb" in err.detail
    produced = int(err.detail.split("(")[1].split(" ")[0])
    assert produced < 64 << 20  # stopped after the grace window, nowhere near 1 GiB
    assert elapsed < 10


def test_gzip_bomb_stops_early(area: Path) -> None:
    raw = tar_bytes([Entry("zeros", data=bytes(64 << 20))])
    blob = gzip.compress(raw, compresslevel=9)  # ~1000:1 on zeros
    _refused(area, blob, "too_large", limits=UnpackLimits(ratio_grace_bytes=4 << 20))


def test_garbage_is_an_invalid_layer(area: Path) -> None:
    _refused(area, b"\x1f\x8bnot really gzip" * 10, "invalid_layer")


def test_multi_member_gzip_layer_unpacks(area: Path) -> None:
    raw = tar_bytes([Entry("a", data=b"1" * 70_000), Entry("b", data=b"2" * 70_000)])
    half = len(raw) // 2
    blob = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    layer = _unpack(area, blob, expected_diff_id=sha(raw))
    assert (layer / "b").read_bytes() == b"2" * 70_000


def test_truncated_gzip_is_an_invalid_layer(area: Path) -> None:
    raw = tar_bytes([Entry("a", data=os.urandom(200_000))])
    blob = gzip.compress(raw)
    _refused(area, blob[: len(blob) - 5000], "invalid_layer")


def test_setid_file_keeps_its_bits_but_loses_world_write(area: Path) -> None:
    raw = tar_bytes([Entry("su", data=b"x", mode=0o4777), Entry("sg", data=b"y", mode=0o2757)])
    layer = _unpack(area, raw)
    assert stat.S_IMODE((layer / "su").stat().st_mode) == 0o4775
    assert stat.S_IMODE((layer / "sg").stat().st_mode) == 0o2755


def test_implied_directories_are_0755_whatever_the_umask(area: Path) -> None:
    old = os.umask(0o077)
    try:
        layer = _unpack(area, tar_bytes([Entry("a/b/c", data=b"c")]))
    finally:
        os.umask(old)
    assert stat.S_IMODE(layer.stat().st_mode) == 0o755
    assert stat.S_IMODE((layer / "a" / "b").stat().st_mode) == 0o755
