"""Project slice layout and cgroups path parsing (pure logic, no root)."""

from __future__ import annotations

import pytest

from agent.runtime.cgroups import (
    CgroupError,
    cgroups_path_for,
    expand_slice,
    parse_systemd_path,
)


def test_cgroupfs_path_puts_each_project_in_its_own_slice() -> None:
    assert (
        cgroups_path_for("alpha", "c1", driver="v1")
        == "/machine.slice/machine-alpha.slice/corral-c1.scope"
    )
    assert cgroups_path_for("alpha", "c1", driver="v2", parent_slice="corral.slice") == (
        "/corral.slice/corral-alpha.slice/corral-c1.scope"
    )


def test_systemd_path_names_the_same_directory_as_cgroupfs() -> None:
    path = cgroups_path_for("alpha", "c1", driver="systemd")
    assert path == "machine-alpha.slice:corral:c1"
    parsed = parse_systemd_path(path)
    assert parsed.unit == "corral-c1.scope"
    assert parsed.cgroup == cgroups_path_for("alpha", "c1", driver="v2")


def test_dashes_in_names_are_escaped_so_they_do_not_nest_slices() -> None:
    path = cgroups_path_for("team-a", "c-1", driver="v1")
    assert path == "/machine.slice/machine-team\\x2da.slice/corral-c\\x2d1.scope"
    assert parse_systemd_path(cgroups_path_for("team-a", "c-1", driver="systemd")).cgroup == path


def test_expand_slice_nests_by_dash() -> None:
    assert expand_slice("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert expand_slice("-.slice") == ""
    with pytest.raises(CgroupError, match="slice"):
        expand_slice("a--b.slice")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"project": "../x", "container_id": "c"}, "project"),
        ({"project": "p", "container_id": "a/b"}, "container_id"),
        ({"project": "p", "container_id": "c", "parent_slice": "machine"}, "parent_slice"),
        ({"project": "p", "container_id": "c", "driver": "v3"}, "driver"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, str], field: str) -> None:
    kwargs = {"driver": "v1", **kwargs}
    with pytest.raises(CgroupError) as info:
        cgroups_path_for(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_systemd_path_must_have_three_parts() -> None:
    with pytest.raises(CgroupError, match="slice:prefix:name"):
        parse_systemd_path("machine.slice:corral")
