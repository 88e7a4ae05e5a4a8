"""Driver detection: config/env override, systemd probe, cgroup2 statfs magic."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.runtime.cgroups import CgroupError, detect_driver
from agent.runtime.cgroups.detect import pid1_is_systemd

UNIFIED = Path("/sys/fs/cgroup/unified")


def test_the_override_wins_over_the_environment_and_the_host() -> None:
    env = {"CORRAL_CGROUP_DRIVER": "v2"}
    assert detect_driver(override="systemd", env=env, is_systemd=lambda: False) == "systemd"
    assert detect_driver(env=env, is_systemd=lambda: True) == "v2"


def test_a_bad_override_names_the_variable() -> None:
    with pytest.raises(CgroupError) as info:
        detect_driver(env={"CORRAL_CGROUP_DRIVER": "cgroupfs"})
    assert info.value.field == "CORRAL_CGROUP_DRIVER"


def test_systemd_wins_when_pid1_is_systemd_and_the_bus_answers(tmp_path: Path) -> None:
    assert detect_driver(env={}, root=str(tmp_path), is_systemd=lambda: True) == "systemd"


def test_a_directory_that_is_not_cgroup2_means_v1(tmp_path: Path) -> None:
    assert detect_driver(env={}, root=str(tmp_path), is_systemd=lambda: False) == "v1"


@pytest.mark.skipif(not (UNIFIED / "cgroup.procs").exists(), reason="no cgroup2 mount here")
def test_a_real_cgroup2_mount_is_recognised_by_its_statfs_magic() -> None:
    assert detect_driver(env={}, root=str(UNIFIED), is_systemd=lambda: False) == "v2"


def test_missing_root_is_an_error_naming_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(CgroupError) as info:
        detect_driver(env={}, root=missing, is_systemd=lambda: False)
    assert info.value.field == missing


def test_pid1_is_systemd_reads_its_comm(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "comm").write_text("systemd\n")
    assert pid1_is_systemd(str(tmp_path))
    (tmp_path / "1" / "comm").write_text("tini\n")
    assert not pid1_is_systemd(str(tmp_path))
    assert not pid1_is_systemd(str(tmp_path / "missing"))
