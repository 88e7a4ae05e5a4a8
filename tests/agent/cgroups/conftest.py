"""A fake cgroup2 kernel in a tmp dir, for the v2 and systemd drivers (this host is v1).

It does what the kernel does that the drivers rely on: interface files appear on mkdir
according to the parent's ``cgroup.subtree_control``, ``+ctl``/``-ctl`` writes are parsed
and checked against ``cgroup.controllers``, ``cgroup.freeze`` flips ``cgroup.events``,
``rmdir`` of a populated cgroup is EBUSY. Every write is recorded.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.runtime.cgroups.fs import CgroupFS

ROOT_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc"

CONTROLLER_FILES: dict[str, dict[str, str]] = {
    "cpu": {
        "cpu.weight": "100\n",
        "cpu.max": "max 100000\n",
        "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    },
    "cpuset": {"cpuset.cpus": "\n", "cpuset.mems": "\n"},
    "io": {"io.weight": "default 100\n"},
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}


class FakeCgroup2FS(CgroupFS):
    """A cgroup2 mount simulated in a directory; ``writes`` lists (path, value) in order."""

    def __init__(
        self,
        root: str,
        *,
        controllers: str = ROOT_CONTROLLERS,
        with_kill: bool = True,
        with_swap: bool = True,
        freeze_works: bool = True,
    ) -> None:
        super().__init__(root)
        self.writes: list[tuple[str, str]] = []
        self.with_kill = with_kill
        self.with_swap = with_swap
        self.freeze_works = freeze_works
        base = Path(root)
        base.mkdir(parents=True, exist_ok=True)
        (base / "cgroup.controllers").write_text(controllers + "\n")
        (base / "cgroup.subtree_control").write_text("\n")
        (base / "cgroup.procs").write_text("1\n")

    # -- kernel behaviour ----------------------------------------------------------------

    def mkdir(self, rel: str) -> bool:
        created = super().mkdir(rel)
        if created:
            path = Path(self.abspath(rel))
            parent_enabled = (path.parent / "cgroup.subtree_control").read_text().split()
            files = {
                "cgroup.controllers": " ".join(parent_enabled) + "\n",
                "cgroup.subtree_control": "\n",
                "cgroup.procs": "",
                "cgroup.events": "populated 0\nfrozen 0\n",
                "cgroup.freeze": "0\n",
            }
            if self.with_kill:
                files["cgroup.kill"] = ""
            for controller in parent_enabled:
                files.update(self._controller_files(controller))
            for name, text in files.items():
                (path / name).write_text(text)
        return created

    def _controller_files(self, controller: str) -> dict[str, str]:
        files = dict(CONTROLLER_FILES.get(controller, {}))
        if not self.with_swap:
            files.pop("memory.swap.max", None)
        return files

    def write(self, rel: str, value: str, *, step: str = "set") -> None:
        self.writes.append((rel.lstrip("/"), value))
        path = Path(self.abspath(rel))
        if path.name == "cgroup.subtree_control":
            self._subtree_control(path, value)
        elif path.name == "cgroup.procs":
            super().write(rel, path.read_text() + value + "\n", step=step)
        elif path.name == "cgroup.freeze":
            super().write(rel, value + "\n", step=step)
            if self.freeze_works:
                (path.parent / "cgroup.events").write_text(f"populated 1\nfrozen {value}\n")
        else:
            super().write(rel, value + "\n", step=step)

    def _subtree_control(self, path: Path, value: str) -> None:
        available = (path.parent / "cgroup.controllers").read_text().split()
        enabled = path.read_text().split()
        for token in value.split():
            name = token[1:]
            if token[0] not in "+-" or name not in available:
                raise OSError(errno.ENOENT, f"controller {name} not available")
            if token[0] == "+" and name not in enabled:
                enabled.append(name)
            elif token[0] == "-" and name in enabled:
                enabled.remove(name)
        path.write_text(" ".join(enabled) + "\n")

    def _remove(self, path: str) -> None:
        directory = Path(path)
        procs = directory / "cgroup.procs"
        if procs.exists() and procs.read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        for child in directory.iterdir():
            if child.is_file():
                child.unlink()
        directory.rmdir()


@pytest.fixture
def fake_v2(tmp_path: Path) -> FakeCgroup2FS:
    return FakeCgroup2FS(str(tmp_path / "cgroup"))


@pytest.fixture
def make_fake_v2(tmp_path: Path) -> Callable[..., FakeCgroup2FS]:
    """Build a fake tree with options (``controllers=``, ``with_swap=``, ...)."""
    count = 0

    def make(**kwargs: object) -> FakeCgroup2FS:
        nonlocal count
        count += 1
        return FakeCgroup2FS(str(tmp_path / f"cgroup{count}"), **kwargs)  # type: ignore[arg-type]

    return make
