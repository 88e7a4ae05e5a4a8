"""The agent's mount-free merged view of image layers for the image checks: upper layers win,
whiteouts and opaque dirs hide lower content, modes are the layers' own, and nothing is left
behind. Layers come from the agent's real unpacker (overlay whiteouts need root)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.certification import run_image_checks
from agent.certification.image_rootfs import merge_layers, merged_rootfs
from agent.images import ImageStore
from tests.agent.images.imgtest_helpers import Entry, build_image, busybox_entries
from tests.containers.images.cp_support import oci_tarball

pytestmark = pytest.mark.privileged


def store_layers(tmp_path: Path, layers: list[list[Entry]], **extra) -> tuple[ImageStore, list]:
    image = build_image(layers, **extra)
    store = ImageStore(tmp_path / "store")
    (record,) = store.import_archive(oci_tarball(tmp_path, image, "1.0"))
    return store, store.layers_for(record)


def test_upper_layers_whiteouts_and_opaque_dirs_shape_the_merged_tree(tmp_path) -> None:
    base = [
        *busybox_entries(),
        Entry("etc/motd", data=b"base\n"),
        Entry("opt", "dir"),
        Entry("opt/old", data=b"old\n"),
        Entry("srv", "dir"),
        Entry("srv/keep", data=b"keep\n"),
    ]
    top = [
        Entry("etc", "dir"),
        Entry("etc/.wh.motd"),  # whiteout: the base motd is gone
        Entry("etc/hostname", data=b"top\n"),  # replaces the base file
        Entry("opt", "dir"),
        Entry("opt/.wh..wh..opq"),  # opaque: nothing of the base /opt shows
        Entry("opt/new", data=b"new\n"),
        Entry("srv", "dir"),
        Entry("srv/more", data=b"more\n"),
    ]
    _store, layers = store_layers(tmp_path, [base, top])
    dest = tmp_path / "merged"
    dest.mkdir()
    merge_layers(layers, dest)
    assert not (dest / "etc/motd").exists()
    assert (dest / "etc/hostname").read_text() == "top\n"
    assert sorted(os.listdir(dest / "opt")) == ["new"]
    assert sorted(os.listdir(dest / "srv")) == ["keep", "more"]
    assert os.readlink(dest / "bin/sh") == "busybox"
    # Hard links: the same inode as in the layer, so modes are exactly the layer's.
    assert os.stat(dest / "bin/busybox").st_ino == os.stat(layers[-1] / "bin/busybox").st_ino
    assert stat.S_IMODE(os.stat(dest / "tmp").st_mode) == 0o1777


def test_checks_run_on_the_merged_tree_and_it_is_removed_afterwards(tmp_path) -> None:
    base = [*busybox_entries(), Entry("licenses", "dir"), Entry("licenses/GPL", data=b"gpl")]
    top = [Entry("licenses", "dir"), Entry("licenses/.wh.GPL")]
    _store, layers = store_layers(tmp_path, [base, top])
    scratch = tmp_path / "scratch"
    with merged_rootfs(layers, scratch) as rootfs:
        findings = {f.id: f for f in run_image_checks(rootfs, {}, ["a"], ["1.0"])}
    # The licence of the base layer was deleted by the top layer: E002 sees an empty dir.
    assert findings["cert.image.E002"].verdict == "fail"
    assert list(scratch.iterdir()) == []
    with pytest.raises(RuntimeError), merged_rootfs(layers, scratch):
        raise RuntimeError("a failing check")
    assert list(scratch.iterdir()) == []
    assert (layers[-1] / "licenses/GPL").read_bytes() == b"gpl"  # layers untouched


def test_the_sparse_view_gives_the_same_findings_as_the_full_merge(tmp_path) -> None:
    dpkg = b"Package: telnetd\nStatus: install ok installed\n\n"
    base = [
        *busybox_entries(),
        Entry("licenses", "dir"),
        Entry("licenses/MIT", data=b"mit"),
        Entry("var", "dir"),
        Entry("var/lib", "dir"),
        Entry("var/lib/dpkg", "dir"),
        Entry("var/lib/dpkg/status", data=dpkg),
        Entry("usr", "dir"),
        Entry("usr/bin", "dir"),
        Entry("usr/bin/su", data=b"su", mode=0o4755),
        Entry("usr/bin/gone", data=b"x", mode=0o4755),
    ]
    top = [Entry("usr", "dir"), Entry("usr/bin", "dir"), Entry("usr/bin/.wh.gone")]
    top += [Entry("etc", "dir"), Entry("etc/passwd", data=b"app:x:1000:1000::/:/bin/sh\n")]
    _store, layers = store_layers(tmp_path, [base, top], config_extra={"User": "app"})
    config = {"config": {"User": "app", "Labels": {}}}

    def findings(full: bool) -> dict[str, tuple[str, str]]:
        with merged_rootfs(layers, tmp_path / "scratch", full=full) as rootfs:
            found = run_image_checks(rootfs, config, ["a", "b"], ["1.0"])
            if not full:
                kept = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
                assert "bin/busybox" not in kept and "usr/bin/gone" not in kept
                assert {"usr/bin/su", "etc/passwd", "licenses/MIT"} <= set(kept)
        return {f.id: (f.verdict, f.message) for f in found}

    sparse = findings(full=False)
    assert sparse == findings(full=True)
    assert sparse["cert.image.E003"][0] == "pass"  # app is uid 1000 in the top layer
    assert sparse["cert.image.E007"][0] == "fail"
    assert sparse["cert.image.E002"][0] == "pass"
