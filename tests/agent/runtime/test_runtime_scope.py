"""The probe that spares ``delete`` the cgroup driver when there is no shim cgroup to remove."""

from __future__ import annotations

from pathlib import Path

from agent.runtime.scope import SHIM_SLICE, shim_cgroup, shim_cgroups_may_exist


def _cgroup(root: Path, path: str, procs: str = "") -> Path:
    directory = root / path.lstrip("/")
    directory.mkdir(parents=True)
    (directory / "cgroup.procs").write_text(procs)
    return directory


def test_nothing_to_remove_when_neither_scope_nor_slice_exists(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    assert not shim_cgroups_may_exist("c1", str(tmp_path))


def test_the_shims_own_scope_is_found_in_a_v1_hierarchy(tmp_path: Path) -> None:
    _cgroup(tmp_path / "pids", SHIM_SLICE)
    _cgroup(tmp_path / "pids", shim_cgroup("c1"), procs="4242\n")
    assert shim_cgroups_may_exist("c1", str(tmp_path))


def test_an_empty_slice_left_behind_is_found(tmp_path: Path) -> None:
    _cgroup(tmp_path / "memory", SHIM_SLICE)
    assert shim_cgroups_may_exist("c1", str(tmp_path))


def test_a_slice_other_shims_still_use_is_left_alone(tmp_path: Path) -> None:
    _cgroup(tmp_path / "memory", SHIM_SLICE)
    _cgroup(tmp_path / "memory", shim_cgroup("other"), procs="4242\n")
    _cgroup(tmp_path / "cpu", SHIM_SLICE, procs="4343\n")  # a shim stepping out to exit
    assert not shim_cgroups_may_exist("c1", str(tmp_path))
