"""The agent bundle: a tar.gz of ``agent/`` only, its requirements, a wheelhouse for the target's
Python and architecture, and the service files from ``deploy/``. Never the control plane.

The wheelhouse is made once per (requirements, Python, platform) with ``pip download`` and
cached under ``var/``, so installing on a host needs no network access from the host.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from hosts.ssh.errors import SSHError

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = REPO_ROOT / "agent"
DEPLOY_DIR = REPO_ROOT / "deploy"
# The native container monitor, when `make` built it (static: it runs on any host of this
# machine's architecture).
NATIVE_MONITOR = AGENT_DIR / "runtime" / "native" / "corral-monitor"
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache"}
ARCHES = {"x86_64", "aarch64", "ppc64le", "s390x"}


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str
    version: str  # agent __version__ + short content hash: what an upgrade compares


def _cache_dir() -> Path:
    path = Path(settings.VAR_DIR) / "agent-bundles"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _platform_tags(arch: str, glibc: tuple[int, int]) -> list[str]:
    """manylinux tags the target's glibc can load, newest first, then pure wheels."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)] if major == 2 else []
    tags += [f"manylinux2014_{arch}", f"linux_{arch}"]
    return tags


def _pip_download(python: str, arch: str, glibc: tuple[int, int], dest: Path,
                  args: list[str]) -> None:  # fmt: skip
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
        *[arg for tag in _platform_tags(arch, glibc) for arg in ("--platform", tag)],
        "-d", str(dest), *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SSHError(
            "bundle_failed",
            f"pip download for Python {python} {arch} failed: "
            + (done.stderr.strip().splitlines() or ["no output"])[-1],
            step="bundle",
        )


def _target_environment(python: str, arch: str) -> dict[str, str]:
    """PEP 508 marker environment of the target (pip evaluates markers with *our* interpreter,
    so a dependency only the target's Python needs would be missing)."""
    major_minor = ".".join(python.split(".")[:2])
    return {
        "python_version": major_minor, "python_full_version": python,
        "implementation_name": "cpython", "implementation_version": python,
        "platform_python_implementation": "CPython", "platform_machine": arch,
        "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix",
        "platform_release": "", "platform_version": "", "extra": "",
    }  # fmt: skip


def _missing_requirements(wheels: Path, env: dict[str, str]) -> list[str]:
    """Requirements of the downloaded wheels that apply on the target but are not present."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    present = {canonicalize_name(w.name.split("-")[0]) for w in wheels.glob("*.whl")}
    missing: dict[str, str] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            lines = zf.read(meta).decode(errors="replace").splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # includes every "extra == ..." requirement (extra is empty)
            name = canonicalize_name(req.name)
            if name not in present:
                missing[name] = f"{req.name}{req.specifier}"
    return sorted(missing.values())


def wheelhouse(*, python: str, arch: str, glibc: tuple[int, int]) -> Path:
    """The cached wheelhouse for the target's exact Python version, made with ``pip download``
    on first use, completed with the dependencies whose markers only the target satisfies."""
    if arch not in ARCHES:
        raise SSHError("prerequisite_missing", f"unsupported architecture {arch!r}", step="bundle")
    if not re.match(r"^3\.\d+\.\d+$", python):
        raise SSHError("prerequisite_missing", f"unexpected Python version {python!r}",
                       step="bundle")  # fmt: skip
    requirements = (AGENT_DIR / "requirements.txt").read_bytes()
    key = hashlib.sha256(requirements + repr((python, arch, glibc)).encode()).hexdigest()[:16]
    target = _cache_dir() / f"wheelhouse-cp{python.replace('.', '')}-{arch}-{key}"
    if (target / ".complete").exists():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        _pip_download(python, arch, glibc, tmp, ["-r", str(AGENT_DIR / "requirements.txt")])
        env = _target_environment(python, arch)
        for _round in range(5):
            missing = _missing_requirements(tmp, env)
            if not missing:
                break
            logger.info("wheelhouse for Python %s: adding %s", python, ", ".join(missing))
            _pip_download(python, arch, glibc, tmp, missing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".complete").write_text("ok\n")
    try:
        os.rename(tmp, target)
    except OSError:  # another worker made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("agent wheelhouse ready at %s", target)
    return target


def _agent_files() -> list[Path]:
    files = []
    for root, dirs, names in os.walk(AGENT_DIR):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        files += [Path(root) / n for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return files


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def build(*, python: str, arch: str, glibc: tuple[int, int]) -> Bundle:
    """Build (or reuse) the bundle for a target. Its name is its content hash."""
    from agent import __version__

    wheels = wheelhouse(python=python, arch=arch, glibc=glibc)
    members: list[tuple[str, bytes, int]] = []
    for path in _agent_files():
        if path == NATIVE_MONITOR and arch != platform.machine():
            continue  # built for this machine: the target's shims monitor in Python instead
        mode = 0o755 if path == NATIVE_MONITOR else 0o644
        members.append((f"lib/agent/{path.relative_to(AGENT_DIR)}", path.read_bytes(), mode))
    members.append(("requirements.txt", (AGENT_DIR / "requirements.txt").read_bytes(), 0o644))
    for wheel in sorted(wheels.glob("*.whl")):
        members.append((f"wheelhouse/{wheel.name}", wheel.read_bytes(), 0o644))
    members.append(("bin/corral-agentctl", (DEPLOY_DIR / "corral-agentctl.sh").read_bytes(), 0o755))
    members.append(
        ("share/corral-agent.service.in", (DEPLOY_DIR / "corral-agent.service.in").read_bytes(),
         0o644)
    )  # fmt: skip
    content = hashlib.sha256()
    for name, data, mode in members:
        content.update(f"{name}\0{mode}\0{len(data)}\0".encode() + data)
    version = f"{__version__}+{content.hexdigest()[:12]}"
    members.append(("VERSION", (version + "\n").encode(), 0o644))
    path = _cache_dir() / f"corral-agent-{version}-cp{python.replace('.', '')}-{arch}.tar.gz"
    if not path.exists():
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name, data, mode in members:
                _add_bytes(tar, name, data, mode)
        os.replace(tmp_name, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Bundle(path=path, sha256=digest, version=version)
