"""Archives and registry content written by tools nobody here wrote (skopeo, from Debian)
import and pull like our own: the formats are the real ones, not our reading of them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from imgtest_helpers import (
    BuiltImage,
    Entry,
    Registry,
    build_image,
    busybox_entries,
    write_oci_layout,
)

from agent.images import ImageStore

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

SKOPEO = shutil.which("skopeo")


def _skopeo(*args: str) -> None:
    if SKOPEO is None:
        pytest.fail("skopeo is missing: apt-get install skopeo")
    subprocess.run([SKOPEO, "--insecure-policy", *args], check=True, timeout=120)


def _layout(tmp_path: Path) -> tuple[Path, BuiltImage]:
    image = build_image(
        [busybox_entries(), [Entry("etc/.wh.hostname"), Entry("opt/tool", data=b"tool\n")]]
    )
    layout = tmp_path / "layout"
    write_oci_layout(layout, [(image.manifest, "1.0")], image.blobs)
    return layout, image


def test_skopeo_docker_archive_imports(tmp_path: Path, store: ImageStore) -> None:
    layout, image = _layout(tmp_path)
    archive = tmp_path / "docker.tar"
    _skopeo("copy", "--quiet", f"oci:{layout}:1.0", f"docker-archive:{archive}:example.com/sk:1")
    (record,) = store.import_archive(archive)
    assert record.reference == "example.com/sk:1"
    assert record.layers == tuple(image.diff_ids)
    assert (store.layers_for(record)[0] / "opt" / "tool").read_bytes() == b"tool\n"


def test_skopeo_oci_archive_imports(tmp_path: Path, store: ImageStore) -> None:
    layout, image = _layout(tmp_path)
    archive = tmp_path / "oci.tar"
    _skopeo("copy", "--quiet", f"oci:{layout}:1.0", f"oci-archive:{archive}:2.0")
    (record,) = store.import_archive(archive)
    assert record.layers == tuple(image.diff_ids)
    assert record.reference == "docker.io/library/oci:2.0"


def test_pull_of_an_image_skopeo_pushed(
    tmp_path: Path, registry: Registry, store: ImageStore
) -> None:
    layout, image = _layout(tmp_path)
    ref = f"127.0.0.1:{registry.port}/interop/sk:1"
    _skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:1.0", f"docker://{ref}")
    record = store.pull(ref, registry_url=registry.url)
    assert record.layers == tuple(image.diff_ids)
    assert store.image_config(record)["stop_signal"] == "SIGQUIT"
