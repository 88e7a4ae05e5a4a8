"""Image certification checks (preflight-like) over an unpacked image.

Inputs are the unpacked root filesystem, the OCI image config (``{"config": {"User", "Labels"}
...}``), the layer digests base first, and the tags the image is pushed under. Pure reads:
nothing in the rootfs is executed or changed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.certification.data import DATA
from agent.certification.registry import finding, image_check
from agent.protocol.messages import Finding

MAX_LISTED = 20


@dataclass(frozen=True)
class ImagePolicy:
    """What an image must satisfy; the defaults live in ``data/image_policy.json``."""

    required_labels: tuple[str, ...]
    max_layers: int
    approved_base_layers: frozenset[str]
    prohibited_packages: frozenset[str]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImagePolicy:
        """Build from JSON-like data; errors name the offending field."""
        try:
            max_layers = int(data.get("max_layers", 40))
        except (TypeError, ValueError):
            raise ValueError("policy.max_layers: must be an integer") from None
        if max_layers < 1:
            raise ValueError("policy.max_layers: must be at least 1")
        out = {}
        for key in ("required_labels", "approved_base_layers", "prohibited_packages"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"policy.{key}: must be a list of strings")
            out[key] = value
        return cls(
            required_labels=tuple(out["required_labels"]),
            max_layers=max_layers,
            approved_base_layers=frozenset(out["approved_base_layers"]),
            prohibited_packages=frozenset(out["prohibited_packages"]),
        )

    @classmethod
    def default(cls) -> ImagePolicy:
        return cls.from_dict(json.loads((DATA / "image_policy.json").read_text()))


@dataclass(frozen=True)
class ImageInput:
    rootfs: Path
    config: dict[str, Any]
    layers: list[str]
    tags: list[str]
    policy: ImagePolicy

    @property
    def runtime_config(self) -> dict[str, Any]:
        inner = self.config.get("config") or {}
        return inner if isinstance(inner, dict) else {}


@image_check("cert.image.E001", "required labels are set")
def labels(img: ImageInput) -> Finding:
    cid = "cert.image.E001"
    found = img.runtime_config.get("Labels") or {}
    absent = [
        name
        for name in img.policy.required_labels
        if not isinstance(found.get(name), str) or not found[name].strip()
    ]
    if absent:
        return finding(
            cid,
            "fail",
            f"missing labels: {', '.join(absent)}",
            "add LABEL lines for each (name, vendor, version, release, summary, description)",
            missing=absent,
        )
    return finding(cid, "pass", "all required labels are set", labels=sorted(found))


@image_check("cert.image.E002", "the image carries its licences in /licenses")
def licenses(img: ImageInput) -> Finding:
    cid = "cert.image.E002"
    base = img.rootfs / "licenses"
    if base.is_symlink() or not base.is_dir():
        return finding(
            cid, "fail", "no /licenses directory", "COPY the licence texts into /licenses"
        )
    files = sorted(
        str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and not p.is_symlink()
    )
    if not files:
        return finding(cid, "fail", "/licenses is empty", "COPY the licence texts into /licenses")
    return finding(cid, "pass", f"{len(files)} licence file(s) in /licenses", files=files[:20])


def _uid_of(rootfs: Path, user: str) -> int | None:
    """The uid ``user`` (name or number, optionally ``:group``) maps to in the image."""
    name = user.split(":", 1)[0]
    if name.isdigit():
        return int(name)
    try:
        text = (rootfs / "etc" / "passwd").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


@image_check("cert.image.E003", "the image declares a non-root user")
def non_root_user(img: ImageInput) -> Finding:
    cid = "cert.image.E003"
    user = str(img.runtime_config.get("User") or "").strip()
    hint = "add USER <uid> (a numeric uid other than 0) to the image"
    if not user:
        return finding(cid, "fail", "no USER declared: the image runs as root", hint)
    uid = _uid_of(img.rootfs, user)
    if uid is None:
        return finding(
            cid, "fail", f"USER {user!r} is not in the image's /etc/passwd", hint, user=user
        )
    if uid == 0:
        return finding(cid, "fail", f"USER {user!r} is root (uid 0)", hint, user=user, uid=0)
    return finding(cid, "pass", f"runs as {user!r} (uid {uid})", user=user, uid=uid)


@image_check("cert.image.E004", "the image has few enough layers")
def layer_count(img: ImageInput) -> Finding:
    cid = "cert.image.E004"
    count, limit = len(img.layers), img.policy.max_layers
    if count > limit:
        return finding(
            cid,
            "fail",
            f"{count} layers, more than {limit}",
            "squash build steps (multi-stage builds, fewer RUN lines)",
            layers=count,
            max_layers=limit,
        )
    return finding(cid, "pass", f"{count} layers (limit {limit})", layers=count, max_layers=limit)


@image_check("cert.image.E005", "the image has a unique tag")
def unique_tag(img: ImageInput) -> Finding:
    cid = "cert.image.E005"
    real = sorted(t for t in img.tags if t and t != "latest")
    if not real:
        return finding(
            cid,
            "fail",
            "only tagged 'latest'" if img.tags else "the image has no tag",
            "tag each build with its version, e.g. 1.4.2-3",
            tags=sorted(img.tags),
        )
    return finding(cid, "pass", f"tagged {', '.join(real)}", tags=sorted(img.tags))


@image_check("cert.image.E006", "the base layer comes from an approved base image")
def approved_base(img: ImageInput) -> Finding:
    cid = "cert.image.E006"
    approved = img.policy.approved_base_layers
    if not img.layers:
        return finding(cid, "fail", "the image has no layers", layers=[])
    base = img.layers[0]
    if not approved:
        return finding(
            cid,
            "unknown",
            "no approved base layers are configured",
            "list trusted base layer digests in the image policy",
            base_layer=base,
        )
    if base in approved:
        return finding(cid, "pass", f"base layer {base[:19]} is approved", base_layer=base)
    return finding(
        cid,
        "fail",
        f"base layer {base[:19]}… is not an approved base image",
        "rebuild FROM an approved base image",
        base_layer=base,
    )


def installed_packages(rootfs: Path) -> dict[str, list[str]]:
    """Package names per package manager found in the image: dpkg, rpm (sqlite db), apk."""
    found: dict[str, list[str]] = {}
    dpkg = rootfs / "var/lib/dpkg/status"
    if dpkg.is_file():
        names = []
        for stanza in dpkg.read_text(errors="replace").split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != " "
            )
            if fields.get("Status", "").strip().endswith(" installed") and "Package" in fields:
                names.append(fields["Package"].strip())
        found["dpkg"] = sorted(names)
    for db in (rootfs / "var/lib/rpm/rpmdb.sqlite", rootfs / "usr/lib/sysimage/rpm/rpmdb.sqlite"):
        if db.is_file() and not db.is_symlink():
            found["rpm"] = _rpm_sqlite_names(db)
            break
    apk = rootfs / "lib/apk/db/installed"
    if apk.is_file():
        text = apk.read_text(errors="replace")
        found["apk"] = sorted(ln[2:] for ln in text.splitlines() if ln.startswith("P:"))
    return found


def _rpm_sqlite_names(db: Path) -> list[str]:
    """Names from rpm's sqlite backend (its ``Name`` index table), opened read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        return sorted({row[0] for row in conn.execute("SELECT key FROM Name")})
    finally:
        conn.close()


@image_check("cert.image.E007", "no prohibited packages are installed")
def prohibited_packages(img: ImageInput) -> Finding:
    cid = "cert.image.E007"
    try:
        found = installed_packages(img.rootfs)
    except (OSError, sqlite3.Error) as exc:
        return finding(cid, "unknown", f"package database unreadable: {exc}")
    bad = sorted({n for names in found.values() for n in names} & img.policy.prohibited_packages)
    managers = sorted(found)
    if bad:
        return finding(
            cid,
            "fail",
            f"prohibited packages installed: {', '.join(bad)}",
            "remove them from the image",
            prohibited=bad,
            package_managers=managers,
        )
    return finding(
        cid,
        "pass",
        "no prohibited packages"
        + ("" if managers else " (no package database: nothing installed by a package manager)"),
        package_managers=managers,
        packages=sum(len(v) for v in found.values()),
    )


@image_check("cert.image.E008", "no world-writable setuid or setgid files")
def writable_setuid(img: ImageInput) -> Finding:
    cid = "cert.image.E008"
    bad: list[str] = []
    for dirpath, _dirs, files in os.walk(img.rootfs):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            special = mode & (stat.S_ISUID | stat.S_ISGID)
            if stat.S_ISREG(mode) and special and mode & stat.S_IWOTH:
                bad.append("/" + os.path.relpath(path, img.rootfs))
    if bad:
        return finding(
            cid,
            "fail",
            f"{len(bad)} world-writable setuid/setgid file(s), e.g. {sorted(bad)[0]}",
            "chmod o-w those files, or drop their setuid/setgid bit",
            files=sorted(bad)[:MAX_LISTED],
            count=len(bad),
        )
    return finding(cid, "pass", "no world-writable setuid/setgid files")
