"""Uploads: docker save archives (both layouts) and OCI image-layout tarballs built from
busybox-static become Image records with the right digests; their blobs are stored
content-addressed and verified; bad archives are refused naming what is wrong."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from containers.images.blobs import blob_path
from containers.models import Image
from containers.models_images import ImageUpload
from tests.agent.images.imgtest_helpers import sha
from tests.containers.images.cp_support import (
    api,
    docker_save,
    make_project,
    make_user,
    member,
    oci_tarball,
    passing_image,
    upload,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator():
    return member(make_user("op"), make_project("alpha"))


def _stored(digest: str) -> bytes:
    data = blob_path(digest).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_oci_layout_tarball_becomes_an_image_with_its_own_manifest_digest(operator, tmp_path):
    image = passing_image()
    resp = upload(api(operator), "alpha", oci_tarball(tmp_path, image, "1.0"), name="tools")
    assert resp.status_code == 201, resp.content
    (body,) = resp.json()
    assert body["reference"] == "alpha/tools:1.0"
    assert body["digest"] == image.digest
    assert body["source"] == "upload"
    assert body["layers"] == image.diff_ids
    assert body["platform"] == "linux/amd64"
    assert body["config"]["User"] == "1000:1000"
    assert body["config"]["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert body["labels"]["tier"] == "base"
    assert body["size"] == len(image.config) + sum(len(b) for b in image.layers)
    assert _stored(image.digest) == image.manifest
    for digest, data in image.blobs.items():
        assert _stored(digest) == data
    upload_row = ImageUpload.objects.get(image_id=body["id"])
    assert upload_row.archive_format == "oci-layout"
    assert set(upload_row.blobs) == set(image.blobs)


def test_new_docker_save_keeps_the_manifest_and_takes_the_name_from_repo_tags(operator, tmp_path):
    image = passing_image()
    path = docker_save(tmp_path, image, ["busybox:1.36"], new_format=True)
    resp = upload(api(operator), "alpha", path)
    assert resp.status_code == 201, resp.content
    (body,) = resp.json()
    assert (body["reference"], body["digest"]) == ("alpha/busybox:1.36", image.digest)
    assert ImageUpload.objects.get(image_id=body["id"]).archive_format == "docker-save-oci"


def test_old_docker_save_gets_a_written_manifest_over_its_verified_layers(operator, tmp_path):
    image = passing_image()
    path = docker_save(tmp_path, image, ["example.com/team/busybox:2"], new_format=False)
    resp = upload(api(operator), "alpha", path)
    assert resp.status_code == 201, resp.content
    (body,) = resp.json()
    assert body["reference"] == "alpha/team/busybox:2"  # the registry host is dropped
    manifest = json.loads(_stored(body["digest"]))
    assert manifest["config"]["digest"] == image.config_digest
    # The archive's layers are uncompressed tars: their digests are the diff_ids.
    assert [d["digest"] for d in manifest["layers"]] == image.diff_ids
    assert body["layers"] == image.diff_ids
    assert ImageUpload.objects.get(image_id=body["id"]).archive_format == "docker-save"


def test_uploading_again_updates_the_same_image(operator, tmp_path):
    client = api(operator)
    image = passing_image()
    path = oci_tarball(tmp_path, image, "1.0")
    first = upload(client, "alpha", path, name="tools").json()[0]
    second = upload(client, "alpha", path, name="tools").json()[0]
    assert first["id"] == second["id"]
    assert Image.objects.count() == 1


def _rewrite(src: Path, dest: Path, change: dict[str, bytes]) -> Path:
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for member_ in tin.getmembers():
            data = tin.extractfile(member_).read() if member_.isfile() else None
            if member_.name in change:
                data = change[member_.name]
                member_.size = len(data)
            tout.addfile(member_, None if data is None else __import__("io").BytesIO(data))
    return dest


def test_a_blob_that_does_not_match_its_digest_is_refused(operator, tmp_path):
    image = passing_image()
    path = oci_tarball(tmp_path, image, "1.0")
    layer = sha(image.layers[0])
    bad = _rewrite(path, tmp_path / "bad.tar", {f"blobs/sha256/{layer[7:]}": b"tampered"})
    resp = upload(api(operator), "alpha", bad, name="tools")
    assert resp.status_code == 400
    assert "layers[0]" in resp.json()["detail"] and layer in resp.json()["detail"]
    assert not Image.objects.exists()
    assert not blob_path(layer).exists()


def test_an_old_docker_save_layer_not_matching_its_diff_id_is_refused(operator, tmp_path):
    image = passing_image()
    path = docker_save(tmp_path, image, ["busybox:1"], new_format=False)
    with tarfile.open(path) as tar:
        layer_name = next(n for n in tar.getnames() if n.endswith("layer.tar"))
    bad = _rewrite(path, tmp_path / "bad.tar", {layer_name: b"\0" * 1024})
    resp = upload(api(operator), "alpha", bad)
    assert resp.status_code == 400
    assert "Layers[0]" in resp.json()["detail"] and "config says" in resp.json()["detail"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"this is not a tarball", "not a tar archive"),
        (None, "neither index.json"),
    ],
)
def test_archives_that_are_not_images_are_400(operator, tmp_path, content, needle):
    path = tmp_path / "x.tar"
    if content is None:
        with tarfile.open(path, "w") as tar:
            tar.add(__file__, arcname="README")
    else:
        path.write_bytes(content)
    resp = upload(api(operator), "alpha", path, name="x")
    assert resp.status_code == 400 and needle in resp.json()["detail"]


def test_a_path_outside_the_archive_is_refused(operator, tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("../../etc/index.json")
        info.size = 2
        tar.addfile(info, __import__("io").BytesIO(b"{}"))
    resp = upload(api(operator), "alpha", path, name="x")
    assert resp.status_code == 400 and "outside the archive" in resp.json()["detail"]


def test_upload_needs_an_operator_of_the_project_and_a_name(tmp_path):
    alpha = make_project("alpha")
    viewer = member(make_user("viewer"), alpha, "viewer")
    path = oci_tarball(tmp_path, passing_image(), None)
    assert upload(api(viewer), "alpha", path, name="x").status_code == 403
    operator = member(make_user("op"), alpha)
    unnamed = upload(api(operator), "alpha", path)
    assert unnamed.status_code == 400 and unnamed.json()["field"] == "name"
    missing = api(operator).post("/api/v1/images/upload/", {"project": "alpha"})
    assert missing.status_code == 400 and "archive" in missing.json()


def test_an_uploaded_image_implies_the_container_defaults(operator, tmp_path):
    from containers.images.services import image_defaults

    body = upload(api(operator), "alpha", oci_tarball(tmp_path, passing_image(), "1.0"), name="t")
    defaults = image_defaults(Image.objects.get(pk=body.json()[0]["id"]))
    assert defaults == {
        "command": ["/bin/sh", "-c"],
        "args": ["echo hello"],
        "env": {"PATH": "/bin", "GREETING": "hi=there"},
        "working_dir": "/tmp",
        "user": "1000:1000",
    }


def test_a_large_upload_is_read_from_its_temporary_file(operator, tmp_path, settings):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # every upload streams to a temporary file
    image = passing_image()
    resp = upload(api(operator), "alpha", oci_tarball(tmp_path, image, "1.0"), name="big")
    assert resp.status_code == 201, resp.content
    assert resp.json()[0]["digest"] == image.digest
