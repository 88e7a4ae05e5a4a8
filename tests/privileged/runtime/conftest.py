"""Fixtures for real containers: a busybox-static rootfs, bundles, a runtime with its own
state root, and a check that nothing (state, cgroups, processes) is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import BUSYBOX, CGROUP_PARENT, BundleFactory, cgroup_dirs, make_config

from agent.runtime.runtime import Runtime


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not Path(BUSYBOX).exists():
        pytest.skip("busybox-static is not installed")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rootfs with busybox-static and its applet symlinks (relative to the rootfs)."""
    _needs_root()
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s", "/bin"], check=True)
    for name in ("proc", "sys", "dev", "etc", "tmp", "root"):
        (root / name).mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


@pytest.fixture
def make_bundle(tmp_path: Path, busybox_rootfs: Path) -> BundleFactory:
    """``make_bundle(args, **overrides)`` writes a bundle dir with config.json."""
    counter = iter(range(1000))

    def factory(args: list[str], *, rootfs: Path | None = None, **overrides: Any) -> Path:
        bundle = tmp_path / f"bundle{next(counter)}"
        bundle.mkdir()
        config = make_config(rootfs or busybox_rootfs, args, **overrides)
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    return factory


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime with a private state root; every container is force-deleted afterwards and
    the test fails if one left a process or cgroup behind."""
    rt = Runtime(tmp_path / "state")
    yield rt
    leftovers = []
    for cid in rt.store.ids():
        state = rt.store.read(cid)
        with contextlib.suppress(Exception):
            rt.delete(cid, force=True)
        leftovers.append((cid, state.get("cgroups_path")))
    for _cid, cg in leftovers:
        if cg:
            assert not cgroup_dirs(cg), f"cgroup {cg} left behind"
    for d in cgroup_dirs(CGROUP_PARENT):
        with contextlib.suppress(OSError):
            for sub in sorted(d.rglob("*"), reverse=True):
                if sub.is_dir():
                    sub.rmdir()
            d.rmdir()


@pytest.fixture
def cid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
