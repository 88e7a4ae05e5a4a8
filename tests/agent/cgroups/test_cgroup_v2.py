"""The v2 driver against a fake cgroup2 tree (see conftest): controller enabling, weight and
swap translation, stats parsing, freeze, destroy."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.cgroups import CgroupError, V2Manager, cgroups_path_for, new_manager
from agent.runtime.cgroups import v2 as v2_module

PATH = cgroups_path_for("alpha", "c1", driver="v2")  # /machine.slice/machine-alpha.slice/...


def manager(fs: Any) -> V2Manager:
    return V2Manager(PATH, fs=fs)


def read(fs: Any, rel: str) -> str:
    return str(Path(fs.abspath(rel)).read_text().strip())


def test_new_manager_returns_the_v2_driver_for_v2() -> None:
    assert isinstance(new_manager(PATH, driver="v2"), V2Manager)


def test_create_enables_controllers_in_every_ancestor_but_not_the_leaf(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    for rel in ("", "machine.slice/", "machine.slice/machine-alpha.slice/"):
        assert read(fake_v2, f"{rel}cgroup.subtree_control").split() == [
            "cpu",
            "cpuset",
            "io",
            "memory",
            "pids",
        ], rel
    leaf = mgr.cgroups_path.lstrip("/")
    assert read(fake_v2, f"{leaf}/cgroup.subtree_control") == ""
    assert read(fake_v2, f"{leaf}/cpu.weight") == "100"
    assert mgr.path() == fake_v2.abspath(leaf)


def test_create_only_enables_what_the_parent_offers_and_is_idempotent(
    make_fake_v2: Callable[..., Any],
) -> None:
    fs = make_fake_v2(controllers="cpu memory pids")
    mgr = manager(fs)
    mgr.create()
    assert read(fs, "cgroup.subtree_control").split() == ["cpu", "memory", "pids"]
    writes = len(fs.writes)
    mgr.create()
    assert len(fs.writes) == writes  # nothing left to enable


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 100), (262144, 10000)])
def test_cpu_shares_become_cpu_weight(fake_v2: Any, shares: int, weight: int) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.set({"cpu": {"shares": shares}})
    assert read(fake_v2, f"{PATH}/cpu.weight") == str(weight)


def test_cpu_quota_and_period_are_written_together_as_cpu_max(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.set({"cpu": {"quota": 50_000, "period": 200_000}})
    assert read(fake_v2, f"{PATH}/cpu.max") == "50000 200000"
    mgr.set({"cpu": {"period": 100_000}})  # the quota is kept
    assert read(fake_v2, f"{PATH}/cpu.max") == "50000 100000"
    mgr.set({"cpu": {"quota": -1}})
    assert read(fake_v2, f"{PATH}/cpu.max") == "max 100000"


def test_memory_swap_is_limit_plus_swap_as_in_oci(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.set({"memory": {"limit": 64 << 20, "swap": 96 << 20}})
    assert read(fake_v2, f"{PATH}/memory.max") == str(64 << 20)
    assert read(fake_v2, f"{PATH}/memory.swap.max") == str(32 << 20)
    mgr.set({"memory": {"limit": 64 << 20, "swap": 64 << 20}})
    assert read(fake_v2, f"{PATH}/memory.swap.max") == "0"
    mgr.set({"memory": {"limit": -1, "swap": -1}})
    assert read(fake_v2, f"{PATH}/memory.max") == "max"
    assert read(fake_v2, f"{PATH}/memory.swap.max") == "max"


def test_swap_without_swap_accounting_is_an_error_naming_the_field(
    make_fake_v2: Callable[..., Any],
) -> None:
    fs = make_fake_v2(with_swap=False)
    mgr = manager(fs)
    mgr.create()
    mgr.set({"memory": {"limit": 64 << 20, "swap": 64 << 20}})  # no swap: fine
    with pytest.raises(CgroupError) as info:
        mgr.set({"memory": {"limit": 64 << 20, "swap": 128 << 20}})
    assert info.value.field == "memory.swap"


def test_pids_cpuset_and_io_weight(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.set({"pids": {"limit": 64}, "cpu": {"cpus": "0-1", "mems": "0"}})
    assert read(fake_v2, f"{PATH}/pids.max") == "64"
    assert read(fake_v2, f"{PATH}/cpuset.cpus") == "0-1"
    assert read(fake_v2, f"{PATH}/cpuset.mems") == "0"
    mgr.set({"pids": {"limit": 0}})  # OCI: 0 = not set, keeps the value
    assert read(fake_v2, f"{PATH}/pids.max") == "64"
    mgr.set({"pids": {"limit": -1}, "blockIO": {"weight": 500}})
    assert read(fake_v2, f"{PATH}/pids.max") == "max"
    assert read(fake_v2, f"{PATH}/io.weight") == f"default {1 + (500 - 10) * 9999 // 990}"


def test_a_missing_controller_names_the_field(make_fake_v2: Callable[..., Any]) -> None:
    fs = make_fake_v2(controllers="memory")
    mgr = manager(fs)
    mgr.create()
    with pytest.raises(CgroupError) as info:
        mgr.set({"pids": {"limit": 10}})
    assert info.value.field == "pids.limit"


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"cpu": {"shares": 1}}, "cpu.shares"),
        ({"cpu": {"shares": "1024"}}, "cpu.shares"),
        ({"cpu": {"cpus": "all"}}, "cpu.cpus"),
        ({"memory": {"swap": 1 << 30}}, "memory.swap"),
        ({"memory": {"limit": -5}}, "memory.limit"),
        ({"blockIO": {"weight": 5}}, "blockIO.weight"),
        ({"memory": []}, "memory"),
    ],
)
def test_bad_resources_are_rejected_before_any_write(
    fake_v2: Any, resources: dict[str, Any], field: str
) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    before = len(fake_v2.writes)
    with pytest.raises(CgroupError) as info:
        mgr.set(resources)
    assert info.value.field == field
    assert len(fake_v2.writes) == before


def test_stats_parse_the_v2_files(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    leaf = Path(mgr.path())
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (leaf / "memory.current").write_text("4096\n")
    (leaf / "memory.peak").write_text("8192\n")
    (leaf / "memory.max").write_text("67108864\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 3\noom_kill 2\n")
    (leaf / "pids.current").write_text("5\n")
    stats = mgr.stats()
    assert stats.cpu_usage_ns == 1_500_000
    assert (stats.memory_current, stats.memory_peak, stats.memory_limit) == (4096, 8192, 64 << 20)
    assert (stats.oom_events, stats.oom_kill, stats.pids_current) == (3, 2, 5)
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.peak").unlink()  # kernels before 5.19
    stats = mgr.stats()
    assert stats.memory_limit is None
    assert stats.memory_peak == 0


def test_oom_kills_reads_only_the_memory_events(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    leaf = Path(mgr.path())
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 3\noom_kill 2\n")
    (leaf / "cpu.stat").unlink()  # stats() would need it; the OOM count does not
    assert mgr.oom_kills() == 2


def test_stats_of_a_missing_cgroup_is_an_error(fake_v2: Any) -> None:
    with pytest.raises(CgroupError, match="does not exist"):
        manager(fake_v2).stats()


def test_apply_and_pids_include_sub_cgroups(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.apply(4242)
    sub = Path(mgr.path()) / "inner"
    sub.mkdir()
    (sub / "cgroup.procs").write_text("17\n")
    assert mgr.pids() == [17, 4242]
    with pytest.raises(CgroupError) as info:
        mgr.apply(0)
    assert info.value.field == "pid"


def test_freeze_waits_for_cgroup_events_and_thaw_undoes_it(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.freeze()
    assert read(fake_v2, f"{PATH}/cgroup.freeze") == "1"
    assert "frozen 1" in read(fake_v2, f"{PATH}/cgroup.events")
    mgr.thaw()
    assert "frozen 0" in read(fake_v2, f"{PATH}/cgroup.events")


def test_freeze_that_never_completes_times_out_with_the_step(
    make_fake_v2: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(v2_module, "_FREEZE_TIMEOUT", 0.05)
    mgr = manager(make_fake_v2(freeze_works=False))
    mgr.create()
    with pytest.raises(CgroupError) as info:
        mgr.freeze()
    assert info.value.step == "freeze"


def test_kill_all_uses_cgroup_kill_when_present(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.kill_all()
    assert fake_v2.writes[-1] == (f"{PATH.lstrip('/')}/cgroup.kill", "1")


def test_destroy_removes_child_first_and_is_idempotent(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.fs.mkdir(f"{PATH}/inner")
    mgr.destroy()
    assert not Path(mgr.path()).exists()
    assert Path(mgr.path()).parent.exists()  # the project slice stays
    mgr.destroy()
    assert mgr.remove_parent_if_empty()
    assert not Path(mgr.path()).parent.exists()


def test_destroy_retries_ebusy_while_the_kernel_reaps(
    fake_v2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    real_remove = fake_v2._remove
    attempts: list[str] = []

    def flaky(path: str) -> None:
        attempts.append(path)
        if len(attempts) < 3:
            raise OSError(errno.EBUSY, "busy", path)
        real_remove(path)

    monkeypatch.setattr(fake_v2, "_remove", flaky)
    mgr.destroy()
    assert len(attempts) == 3
    assert not Path(mgr.path()).exists()


def test_destroy_of_a_populated_cgroup_fails_with_ebusy_after_retrying(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    mgr.apply(4242)
    mgr.destroy_timeout = 0.05
    with pytest.raises(CgroupError) as info:
        mgr.destroy()
    assert (info.value.step, info.value.errno) == ("destroy", errno.EBUSY)


def test_ensure_parent_creates_the_project_slice_with_default_weight(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.ensure_parent()
    project = "machine.slice/machine-alpha.slice"
    assert read(fake_v2, f"{project}/cpu.weight") == "100"
    mgr.ensure_parent({"cpu": {"shares": 2048}})
    assert read(fake_v2, f"{project}/cpu.weight") == "174"  # shares_to_weight(2048)
    assert not Path(mgr.path()).exists()


def test_open_fd_returns_a_directory_fd_for_clone_into_cgroup(fake_v2: Any) -> None:
    mgr = manager(fake_v2)
    mgr.create()
    fd = mgr.open_fd()
    try:
        st = os.fstat(fd)
        assert stat.S_ISDIR(st.st_mode)
        assert st.st_ino == os.stat(mgr.path()).st_ino
    finally:
        os.close(fd)
