"""Image checks over real busybox-static image directories built in each test.

One image passes every check; each failing variant changes one thing and must produce exactly
the one expected failing finding.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.certification import IMAGE_CHECKS, ImagePolicy, run_image_checks
from agent.protocol.certification import evaluate

BUSYBOX = Path("/bin/busybox")
LABELS = {
    "name": "corral/busybox-test",
    "vendor": "Corral tests",
    "version": "1.35.0",
    "release": "1",
    "summary": "busybox for certification tests",
    "description": "A static busybox userland used to exercise the image checks.",
}

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="needs busybox-static")


def layer_digest(root: Path) -> str:
    """sha256 of an uncompressed tar of ``root``: the layer's diff id, as in OCI configs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()


@dataclass
class Image:
    rootfs: Path
    config: dict[str, Any]
    layers: list[str]
    tags: list[str]
    policy: dict[str, Any] = field(default_factory=dict)

    def run(self) -> dict[str, str]:
        return {f.id: f.verdict for f in self.findings()}

    def findings(self) -> list[Any]:
        return run_image_checks(self.rootfs, self.config, self.layers, self.tags, self.policy)

    def failing(self) -> list[str]:
        return sorted(i for i, v in self.run().items() if v == "fail")


@pytest.fixture
def image(tmp_path: Path) -> Image:
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, base / "bin" / "busybox")
    for tool in ("sh", "id", "ls"):
        (base / "bin" / tool).symlink_to("busybox")
    (base / "etc").mkdir()
    (base / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1001:app:/home/app:/bin/sh\n"
    )
    base_layer = layer_digest(base)
    app = tmp_path / "rootfs"
    shutil.copytree(base, app, symlinks=True)
    (app / "licenses").mkdir()
    copyright_file = Path("/usr/share/doc/busybox-static/copyright")
    (app / "licenses" / "busybox.txt").write_text(
        copyright_file.read_text() if copyright_file.exists() else "GPL-2.0-only\n"
    )
    app_only = tmp_path / "app-layer"
    (app_only / "licenses").mkdir(parents=True)
    shutil.copy2(app / "licenses" / "busybox.txt", app_only / "licenses")
    layers = [base_layer, layer_digest(app_only)]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": "app", "Labels": dict(LABELS), "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": list(layers)},
    }
    policy = ImagePolicy.default()
    return Image(
        app,
        config,
        layers,
        ["1.35.0-1", "latest"],
        {
            "required_labels": list(policy.required_labels),
            "max_layers": policy.max_layers,
            "approved_base_layers": [base_layer],
            "prohibited_packages": sorted(policy.prohibited_packages),
        },
    )


def test_the_busybox_image_is_real_and_runs_as_its_declared_user(image: Image) -> None:
    """The fixture is a working image: busybox runs from it and resolves the user's uid."""
    out = subprocess.run(
        [str(image.rootfs / "bin" / "busybox"), "awk", "-F:", '$1=="app"{print $3}'],
        input=(image.rootfs / "etc" / "passwd").read_text(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1001"


def test_a_good_image_passes_every_check_and_is_certified(image: Image) -> None:
    assert image.run() == dict.fromkeys(sorted(IMAGE_CHECKS), "pass")
    assert evaluate(image.findings(), "certified-image") == ("certified", [])


def _drop_label(img: Image) -> None:
    del img.config["config"]["Labels"]["vendor"]


def _empty_licenses(img: Image) -> None:
    (img.rootfs / "licenses" / "busybox.txt").unlink()


def _no_user(img: Image) -> None:
    img.config["config"].pop("User")


def _root_by_name(img: Image) -> None:
    img.config["config"]["User"] = "root"


def _root_by_number(img: Image) -> None:
    img.config["config"]["User"] = "0:0"


def _unknown_user(img: Image) -> None:
    img.config["config"]["User"] = "ghost"


def _too_many_layers(img: Image) -> None:
    for n in range(39):
        extra = img.rootfs.parent / f"extra{n}"
        extra.mkdir()
        (extra / f"file{n}").write_text(str(n))
        img.layers.append(layer_digest(extra))
    assert len(img.layers) == 41


def _only_latest(img: Image) -> None:
    img.tags = ["latest"]


def _unapproved_base(img: Image) -> None:
    img.policy["approved_base_layers"] = ["sha256:" + "0" * 64]


def _dpkg_prohibited(img: Image) -> None:
    status = img.rootfs / "var" / "lib" / "dpkg" / "status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: busybox-static\nStatus: install ok installed\nVersion: 1:1.35.0-4\n\n"
        "Package: telnetd\nStatus: install ok installed\nVersion: 0.17+2.4-2\n\n"
        "Package: xinetd\nStatus: deinstall ok config-files\nVersion: 1:2.3.15.3-1\n"
    )


def _rpm_prohibited(img: Image) -> None:
    db = img.rootfs / "usr" / "lib" / "sysimage" / "rpm" / "rpmdb.sqlite"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);"
        "CREATE TABLE Name (key TEXT NOT NULL, hnum INTEGER NOT NULL, idx INTEGER NOT NULL);"
        "INSERT INTO Name VALUES ('bash', 1, 0), ('telnet-server', 2, 0);"
    )
    conn.commit()
    conn.close()


def _apk_prohibited(img: Image) -> None:
    db = img.rootfs / "lib" / "apk" / "db" / "installed"
    db.parent.mkdir(parents=True)
    db.write_text("P:musl\nV:1.2.4-r2\n\nP:xinetd\nV:2.3.15-r0\n")


def _writable_setuid(img: Image) -> None:
    target = img.rootfs / "bin" / "su-helper"
    shutil.copy2(img.rootfs / "bin" / "busybox", target)
    target.chmod(0o4777)
    assert target.stat().st_mode & stat.S_ISUID


FAILURES: list[tuple[str, Callable[[Image], None], str]] = [
    ("missing label", _drop_label, "cert.image.E001"),
    ("empty /licenses", _empty_licenses, "cert.image.E002"),
    ("no USER", _no_user, "cert.image.E003"),
    ("USER root", _root_by_name, "cert.image.E003"),
    ("USER 0:0", _root_by_number, "cert.image.E003"),
    ("USER not in passwd", _unknown_user, "cert.image.E003"),
    ("41 layers", _too_many_layers, "cert.image.E004"),
    ("only latest", _only_latest, "cert.image.E005"),
    ("unapproved base", _unapproved_base, "cert.image.E006"),
    ("dpkg telnetd", _dpkg_prohibited, "cert.image.E007"),
    ("rpm telnet-server", _rpm_prohibited, "cert.image.E007"),
    ("apk xinetd", _apk_prohibited, "cert.image.E007"),
    ("o+w setuid", _writable_setuid, "cert.image.E008"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _, m, e in FAILURES], ids=[n for n, _, _ in FAILURES]
)
def test_each_defect_fails_exactly_its_own_check(
    image: Image, mutate: Callable[[Image], None], expected: str
) -> None:
    mutate(image)
    assert image.failing() == [expected]
    finding = next(f for f in image.findings() if f.id == expected)
    assert finding.hint and "\n" not in finding.message
    assert evaluate(image.findings(), "certified-image") == ("not_certified", [expected])


def test_no_licenses_directory_fails_e002(image: Image) -> None:
    shutil.rmtree(image.rootfs / "licenses")
    assert image.failing() == ["cert.image.E002"]


def test_prohibited_packages_are_named_in_the_evidence(image: Image) -> None:
    _dpkg_prohibited(image)
    finding = next(f for f in image.findings() if f.id == "cert.image.E007")
    assert finding.evidence["prohibited"] == ["telnetd"]  # xinetd is only config-files


def test_setuid_that_is_not_world_writable_is_fine(image: Image) -> None:
    target = image.rootfs / "bin" / "su-ok"
    shutil.copy2(image.rootfs / "bin" / "busybox", target)
    target.chmod(0o4755)
    # A world-writable directory is not a world-writable setuid file.
    os.chmod(image.rootfs / "bin", 0o777)  # noqa: S103 - deliberate, inside the test image
    assert image.failing() == []


def test_base_check_is_unknown_until_an_approved_list_is_configured(image: Image) -> None:
    image.policy["approved_base_layers"] = []
    verdicts = image.run()
    assert verdicts["cert.image.E006"] == "unknown"
    assert evaluate(image.findings(), "certified-image") == ("unknown", [])
    assert evaluate(image.findings(), "development-image") == ("certified", [])


def test_an_unreadable_rpm_database_is_unknown_not_pass(image: Image) -> None:
    db = image.rootfs / "var" / "lib" / "rpm" / "rpmdb.sqlite"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    assert image.run()["cert.image.E007"] == "unknown"


@pytest.mark.parametrize(
    ("policy", "field_name"),
    [
        ({"max_layers": "many"}, "policy.max_layers"),
        ({"prohibited_packages": "x"}, "policy.prohibited_packages"),
    ],
)
def test_a_malformed_policy_is_rejected_naming_the_field(
    image: Image, policy: dict[str, Any], field_name: str
) -> None:
    image.policy = policy
    with pytest.raises(ValueError, match=field_name):
        image.findings()


def test_a_crashing_image_check_is_unknown(image: Image) -> None:
    image.config["config"]["Labels"] = ["not", "a", "dict"]
    verdicts = image.run()
    assert verdicts["cert.image.E001"] == "unknown"
    assert verdicts["cert.image.E003"] == "pass"


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"rootfs": Path("/nonexistent/rootfs")}, "rootfs"),
        ({"config": ["not", "a", "config"]}, "config"),
        ({"layers": "sha256:abc"}, "layers"),
        ({"tags": [1, 2]}, "tags"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(
    image: Image, change: dict[str, Any], field_name: str
) -> None:
    for key, value in change.items():
        setattr(image, key, value)
    with pytest.raises(ValueError, match=f"^{field_name}: "):
        image.findings()
