"""Installed OCI runtimes and monitors (crun, runc, conmon) with versions and packages.

The distribution package version is recorded next to the upstream one because distributions
backport security fixes without changing the upstream number (Debian's runc 1.1.5+ds1-1+deb12u1
carries the CVE-2024-21626 fix), and the certification check has to know that.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from agent.inventory._base import Section, host_path, read_text, run_tool

RUNTIMES = ("crun", "runc", "conmon")
_VERSION_RE = re.compile(r"version\s+v?([0-9][0-9A-Za-z.+~:-]*)")


def parse_version_output(text: str) -> str | None:
    """The version number from ``<tool> --version`` output ("runc version 1.1.5+ds1" ...)."""
    match = _VERSION_RE.search(text)
    return match.group(1) if match else None


def dpkg_packages(names: set[str]) -> dict[str, str]:
    """Installed version of each package in ``names`` from the dpkg status database."""
    text = read_text("/var/lib/dpkg/status")
    if text is None:
        return {}
    out = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace():
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name = fields.get("Package")
        if name in names and fields.get("Status", "").endswith(" installed"):
            out[name] = fields.get("Version", "")
    return out


def _owning_package(path: str, candidates: dict[str, str]) -> str | None:
    """The dpkg package (among ``candidates``) whose file list contains ``path``."""
    for pkg in candidates:
        listing = read_text(f"/var/lib/dpkg/info/{pkg}.list") or read_text(
            f"/var/lib/dpkg/info/{pkg}:amd64.list"
        )
        if listing and path in listing.splitlines():
            return pkg
    return None


def collect_runtimes() -> Section:
    """Each runtime found on PATH: path, upstream version, dpkg package version."""
    packages = dpkg_packages(set(RUNTIMES))
    found: dict[str, Any] = {}
    for name in RUNTIMES:
        path = shutil.which(name)
        if path is None:
            continue
        entry: dict[str, Any] = {"path": path}
        try:
            code, text = run_tool([path, "--version"])
            entry["version"] = parse_version_output(text)
            entry["version_output"] = text.splitlines()[0] if text else ""
            if code != 0:
                entry["error"] = f"--version exited {code}"
        except (OSError, TimeoutError) as exc:
            entry["version"] = None
            entry["error"] = str(exc)
        pkg = _owning_package(path, packages) or _owning_package(os.path.realpath(path), packages)
        if pkg:
            entry["package"] = {"manager": "dpkg", "name": pkg, "version": packages[pkg]}
        found[name] = entry
    return {"runtimes": found, "dpkg": host_path("/var/lib/dpkg/status").exists()}
