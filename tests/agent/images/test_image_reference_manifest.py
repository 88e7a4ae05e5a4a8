"""Reference parsing, manifest/index/config parsing and platform choice: pure logic."""

from __future__ import annotations

import json

import pytest

from agent.images.errors import ImageError
from agent.images.manifest import (
    DOCKER_LIST,
    OCI_INDEX,
    Index,
    Manifest,
    Platform,
    host_platform,
    normalise_config,
    parse_config,
    parse_document,
    select_platform,
)
from agent.images.reference import parse_reference

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def test_reference_with_registry_port_tag_and_digest_keeps_every_part() -> None:
    ref = parse_reference(f"localhost:5000/busybox:1.36@{D1}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "localhost:5000",
        "busybox",
        "1.36",
        D1,
    )
    assert str(ref) == f"localhost:5000/busybox:1.36@{D1}"


def test_short_names_get_docker_hub_defaults_as_names_only() -> None:
    ref = parse_reference("busybox")
    assert str(ref) == "docker.io/library/busybox:latest"
    assert parse_reference("index.docker.io/library/busybox").name == ref.name
    assert str(parse_reference("user/app:v1")) == "docker.io/user/app:v1"


def test_pinned_by_digest_alone_has_no_default_tag() -> None:
    ref = parse_reference(f"127.0.0.1:5000/a/b@{D2}")
    assert ref.tag is None and ref.digest == D2 and ref.repository == "a/b"


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("", "reference"),
        ("Busybox", "repository"),
        ("busybox:bad tag", "tag"),
        ("busybox:-x", "tag"),
        ("busybox@sha256:abc", "digest"),
        ("busybox@md5:" + "a" * 32, "digest"),
        ("a/b..c", "repository"),
    ],
)
def test_bad_references_are_refused_naming_the_part(text: str, part: str) -> None:
    with pytest.raises(ImageError) as err:
        parse_reference(text)
    assert err.value.code == "invalid_reference"
    assert err.value.detail.startswith(part)


def _index(*platforms: tuple[str, str, str | None], media: str = OCI_INDEX) -> bytes:
    manifests = []
    for i, (os_, arch, variant) in enumerate(platforms):
        plat = {"os": os_, "architecture": arch}
        if variant:
            plat["variant"] = variant
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + f"{i:x}" * 64,
                "size": 100 + i,
                "platform": plat,
            }
        )
    return json.dumps({"schemaVersion": 2, "mediaType": media, "manifests": manifests}).encode()


def test_index_picks_host_platform_and_skips_attestations() -> None:
    doc = parse_document(
        _index(("unknown", "unknown", None), ("linux", "arm64", "v8"), ("linux", "amd64", None))
    )
    assert isinstance(doc, Index)
    assert select_platform(doc, Platform("linux", "amd64")).size == 102
    assert select_platform(doc, host_platform("aarch64")).size == 101


def test_docker_manifest_list_is_an_index_too() -> None:
    doc = parse_document(_index(("linux", "amd64", None), media=DOCKER_LIST))
    assert isinstance(doc, Index) and doc.media_type == DOCKER_LIST


def test_index_without_the_platform_names_what_it_has() -> None:
    doc = parse_document(_index(("linux", "arm64", "v8"), ("linux", "s390x", None)))
    assert isinstance(doc, Index)
    with pytest.raises(ImageError) as err:
        select_platform(doc, Platform("linux", "amd64"))
    assert err.value.code == "no_matching_platform"
    assert "linux/arm64/v8" in err.value.detail and "linux/s390x" in err.value.detail


def test_host_platform_maps_machine_names() -> None:
    assert str(host_platform("x86_64")) == "linux/amd64"
    assert str(host_platform("armv7l")) == "linux/arm/v7"


def _manifest(**over: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": D1,
            "size": 10,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": D2,
                "size": 20,
            }
        ],
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_docker_schema2_manifest_parses() -> None:
    doc = parse_document(_manifest())
    assert isinstance(doc, Manifest)
    assert doc.config.digest == D1 and [d.digest for d in doc.layers] == [D2]


@pytest.mark.parametrize(
    ("over", "code", "field"),
    [
        ({"schemaVersion": 1}, "unsupported_media_type", "manifest.schemaVersion"),
        ({"layers": "x"}, "invalid_manifest", "manifest.layers"),
        (
            {"config": {"mediaType": "x", "digest": "sha256:1", "size": 1}},
            "invalid_manifest",
            "manifest.config.digest",
        ),
        (
            {"layers": [{"mediaType": "text/plain", "digest": D2, "size": 1}]},
            "unsupported_media_type",
            "manifest.layers[0].mediaType",
        ),
        (
            {"layers": [{"mediaType": "x", "digest": D2, "size": -1}]},
            "invalid_manifest",
            "manifest.layers[0].size",
        ),
    ],
)
def test_bad_manifests_name_the_field(over: dict[str, object], code: str, field: str) -> None:
    with pytest.raises(ImageError) as err:
        parse_document(_manifest(**over))
    assert err.value.code == code
    assert err.value.detail.startswith(field)


def test_not_json_is_refused() -> None:
    with pytest.raises(ImageError) as err:
        parse_document(b"<html>")
    assert err.value.code == "invalid_manifest"


def test_config_is_normalised_into_container_defaults() -> None:
    config = parse_config(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Entrypoint": ["/init"],
                    "Cmd": None,
                    "Env": ["PATH=/usr/bin", "EMPTY=", "A=b=c"],
                    "User": "app",
                    "Labels": {"k": "v"},
                    "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
                    "StopSignal": "SIGINT",
                },
                "rootfs": {"type": "layers", "diff_ids": [D1]},
            }
        ).encode()
    )
    norm = normalise_config(config)
    assert norm["entrypoint"] == ["/init"] and norm["cmd"] == []
    assert norm["env"] == {"PATH": "/usr/bin", "EMPTY": "", "A": "b=c"}
    assert norm["user"] == "app" and norm["working_dir"] == "/"
    assert norm["exposed_ports"] == ["443/tcp", "80/tcp"]
    assert norm["stop_signal"] == "SIGINT" and norm["labels"] == {"k": "v"}


@pytest.mark.parametrize(
    "rootfs",
    [None, {"type": "other", "diff_ids": []}, {"type": "layers", "diff_ids": ["md5:x"]}],
)
def test_config_without_valid_rootfs_is_refused(rootfs: object) -> None:
    with pytest.raises(ImageError) as err:
        parse_config(json.dumps({"rootfs": rootfs}).encode())
    assert err.value.code == "invalid_config"
    assert err.value.detail.startswith("config.rootfs")
