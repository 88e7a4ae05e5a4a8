"""Importing ``docker save`` archives (both layouts) and OCI image layouts built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from imgtest_helpers import (
    Entry,
    build_image,
    build_index,
    busybox_entries,
    leftovers,
    no_tmp_layers,
    sha,
    tar_directory,
    write_docker_save,
    write_oci_layout,
)

from agent.images import ImageError, ImageStore

pytestmark = pytest.mark.privileged


def _image(marker: bytes = b"one", **kw: object):  # type: ignore[no-untyped-def]
    return build_image([busybox_entries(), [Entry("marker", data=marker)]], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("new_format", [False, True], ids=["docker-save-legacy", "docker-save-oci"])
def test_docker_save_archive_imports(tmp_path: Path, store: ImageStore, new_format: bool) -> None:
    image = _image()
    archive = tmp_path / "img.tar"
    write_docker_save(archive, image, ["example.com/team/app:2.0"], new_format=new_format)
    (record,) = store.import_archive(archive)
    assert record.reference == "example.com/team/app:2.0"
    assert record.layers == tuple(image.diff_ids) and record.config_digest == image.config_digest
    if new_format:
        assert record.digest == image.digest  # the archive's own manifest is kept
    top, base = store.layers_for("example.com/team/app:2.0")
    assert (top / "marker").read_bytes() == b"one"
    assert (base / "bin" / "sh").is_symlink()
    assert store.image_config(record)["user"] == "1000:1000"


def test_oci_layout_directory_and_tarball_import(tmp_path: Path, store: ImageStore) -> None:
    image = _image(compression="zstd")
    layout = tmp_path / "layout"
    write_oci_layout(layout, [(image.manifest, "1.0")], image.blobs)
    (from_dir,) = store.import_archive(layout)
    assert from_dir.digest == image.digest and from_dir.reference == "docker.io/library/layout:1.0"
    tarball = tmp_path / "app.tar"
    tar_directory(layout, tarball)
    (from_tar,) = store.import_archive(tarball)
    assert from_tar.digest == image.digest
    assert store.get("app:1.0") is not None and store.get("layout:1.0") is not None


def test_oci_layout_with_an_index_imports_the_host_platform(
    tmp_path: Path, store: ImageStore
) -> None:
    amd = _image(b"amd64")
    arm = build_image([[Entry("marker", data=b"arm64")]], arch="arm64")
    index = build_index({"arm64": arm, "amd64": amd})
    layout = tmp_path / "multi"
    blobs = {**amd.blobs, **arm.blobs, amd.digest: amd.manifest, arm.digest: arm.manifest}
    write_oci_layout(layout, [(index, "example.com/multi:1")], blobs)
    (record,) = store.import_archive(layout)
    assert record.digest == amd.digest and record.platform == "linux/amd64"
    assert (store.layers_for(record)[0] / "marker").read_bytes() == b"amd64"


def test_images_sharing_a_base_layer_share_the_unpacked_dir(
    tmp_path: Path, store: ImageStore
) -> None:
    a, b = _image(b"a"), _image(b"b")
    write_docker_save(tmp_path / "a.tar", a, ["a:1"], new_format=True)
    write_docker_save(tmp_path / "b.tar", b, ["b:1"], new_format=False)
    (ra,) = store.import_archive(tmp_path / "a.tar")
    (rb,) = store.import_archive(tmp_path / "b.tar")
    base_a, base_b = store.layers_for(ra)[-1], store.layers_for(rb)[-1]
    assert base_a == base_b
    assert (base_a / "bin" / "busybox").stat().st_ino == (base_b / "bin" / "busybox").stat().st_ino
    assert len(list((store.root / "layers").iterdir())) == 3
    freed = store.gc({"a:1"})
    assert freed.removed_layers == (b.diff_ids[1],) and freed.freed_bytes > 0
    assert store.layers_for("a:1")[-1] == base_a


def test_blob_not_matching_its_name_is_refused(tmp_path: Path, store: ImageStore) -> None:
    image = _image()
    layout = tmp_path / "layout"
    write_oci_layout(layout, [(image.manifest, "1.0")], image.blobs)
    victim = layout / "blobs" / "sha256" / sha(image.layers[1])[7:]
    victim.write_bytes(image.layers[0])  # right name, wrong content
    with pytest.raises(ImageError) as err:
        store.import_archive(layout)
    assert err.value.code in ("digest_mismatch", "size_mismatch")
    assert store.list() == [] and not store.blobs.has(sha(image.layers[1]))


def test_config_diff_ids_must_match_the_layers(tmp_path: Path, store: ImageStore) -> None:
    image = _image()
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"][1] = "sha256:" + "2" * 64
    bad = build_image([busybox_entries(), [Entry("marker", data=b"one")]])
    bad.config = json.dumps(config).encode()
    write_docker_save(tmp_path / "bad.tar", bad, ["bad:1"], new_format=False)
    with pytest.raises(ImageError) as err:
        store.import_archive(tmp_path / "bad.tar")
    assert err.value.code == "digest_mismatch" and "diff_id" in err.value.detail
    assert store.list() == [] and no_tmp_layers(store.root)
    assert len(list((store.root / "layers").iterdir())) == 1  # the good base layer only


def test_archive_with_a_hostile_layer_leaves_nothing(tmp_path: Path, store: ImageStore) -> None:
    hostile = build_image([[Entry("a", "symlink", target="/etc"), Entry("a/passwd", data=b"x")]])
    write_docker_save(tmp_path / "evil.tar", hostile, ["evil:1"], new_format=True)
    before = Path("/etc/passwd").read_bytes()
    with pytest.raises(ImageError) as err:
        store.import_archive(tmp_path / "evil.tar")
    assert err.value.code == "symlink_escape"
    assert Path("/etc/passwd").read_bytes() == before
    assert leftovers(store.root / "layers") == [] and store.list() == []


def test_archive_without_manifest_or_index_is_refused(tmp_path: Path, store: ImageStore) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError) as err:
        store.import_archive(tmp_path / "empty")
    assert err.value.code == "invalid_archive"


def test_untagged_and_multi_tagged_images(tmp_path: Path, store: ImageStore) -> None:
    image = _image()
    write_docker_save(tmp_path / "none.tar", image, [], new_format=False)
    (untagged,) = store.import_archive(tmp_path / "none.tar")
    assert untagged.reference == "" and store.get(untagged.digest) is not None
    write_docker_save(tmp_path / "two.tar", image, ["x:1", "y:2"], new_format=False)
    (tagged,) = store.import_archive(tmp_path / "two.tar")
    assert tagged.digest == untagged.digest
    assert set(tagged.references) == {"docker.io/library/x:1", "docker.io/library/y:2"}
    x, y = store.get("x:1"), store.get("y:2")
    assert x is not None and y is not None and x.digest == y.digest
    assert (x.reference, y.reference) == ("docker.io/library/x:1", "docker.io/library/y:2")


def test_importing_the_same_archive_twice_is_idempotent(tmp_path: Path, store: ImageStore) -> None:
    image = _image()
    write_docker_save(tmp_path / "a.tar", image, ["a:1"], new_format=True)
    (first,) = store.import_archive(tmp_path / "a.tar")
    (second,) = store.import_archive(tmp_path / "a.tar")
    assert first == second and len(store.list()) == 1
    assert len(list((store.root / "layers").iterdir())) == 2
