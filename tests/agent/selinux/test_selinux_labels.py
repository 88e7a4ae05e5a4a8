"""SELinux state, labels and the disabled-host no-ops (this kernel has no SELinux)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.runtime import selinux
from agent.runtime.selinux import (
    SELinuxError,
    file_label,
    label_path,
    mount_option,
    process_label,
    selinux_enabled,
    selinux_mode,
    set_exec_label,
)

LEVEL = "s0:c12,c345"


@pytest.fixture(autouse=True)
def _clean_record() -> None:
    selinux.clear_skipped()


def test_mode_reads_selinuxfs(tmp_path: Path) -> None:
    assert selinux_mode(str(tmp_path)) == "disabled"
    assert not selinux_enabled(str(tmp_path))
    (tmp_path / "enforce").write_text("1")
    assert selinux_enabled(str(tmp_path))
    assert selinux_mode(str(tmp_path)) == "enforcing"
    (tmp_path / "enforce").write_text("0")
    assert selinux_mode(str(tmp_path)) == "permissive"


def test_this_host_reports_what_its_kernel_has() -> None:
    expected = Path("/sys/fs/selinux/enforce").exists()
    assert selinux_enabled() is expected
    assert (selinux_mode() == "disabled") is not expected


def test_labels_carry_the_level() -> None:
    assert process_label(LEVEL) == "system_u:system_r:container_t:s0:c12,c345"
    assert file_label(LEVEL) == "system_u:object_r:container_file_t:s0:c12,c345"
    assert mount_option(file_label(LEVEL)) == (
        'context="system_u:object_r:container_file_t:s0:c12,c345"'
    )
    assert process_label("s0") == "system_u:system_r:container_t:s0"


@pytest.mark.parametrize("bad", ["s1:c1,c2", "s0:c5,c5", "s0:c9,c2", "s0:c1,c1024", "s0:c1"])
def test_bad_levels_name_the_field(bad: str) -> None:
    with pytest.raises(SELinuxError) as info:
        process_label(bad)
    assert info.value.field == "level"


def test_a_label_with_a_quote_cannot_break_out_of_the_mount_option() -> None:
    with pytest.raises(SELinuxError):
        mount_option('system_u:object_r:x_t:s0",exec')


def test_disabled_set_exec_label_is_a_recorded_no_op(tmp_path: Path) -> None:
    target = tmp_path / "exec"
    set_exec_label(process_label(LEVEL), enabled=False, attr_path=str(target))
    assert not target.exists()
    (skipped,) = selinux.skipped_actions()
    assert (skipped.action, skipped.label) == ("exec_label", process_label(LEVEL))


def test_enabled_set_exec_label_writes_without_creating(tmp_path: Path) -> None:
    attr = tmp_path / "exec"
    # O_CREAT would silently create the file; the real code path must fail instead.
    with pytest.raises(SELinuxError) as info:
        set_exec_label(process_label(LEVEL), enabled=True, attr_path=str(attr))
    assert info.value.step == "exec_label"
    assert not attr.exists()
    attr.write_text("")
    set_exec_label(process_label(LEVEL), enabled=True, attr_path=str(attr))
    assert attr.read_text() == process_label(LEVEL)
    assert selinux.skipped_actions() == []


def test_disabled_label_path_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert label_path(tmp_path, file_label(LEVEL), enabled=False) == 0
    assert "security.selinux" not in os.listxattr(tmp_path / "f")
    assert selinux.skipped_actions()[0].action == "label_path"


def test_on_this_host_the_default_is_a_no_op_when_selinux_is_off(tmp_path: Path) -> None:
    if selinux_enabled():
        pytest.skip("SELinux is on: the real path is tested in the guest")
    set_exec_label(process_label(LEVEL))
    assert label_path(tmp_path, file_label(LEVEL)) == 0
    assert [s.action for s in selinux.skipped_actions()] == ["exec_label", "label_path"]


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="security.* xattrs need CAP_SYS_ADMIN")
def test_label_path_labels_a_tree_without_following_symlinks(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    outside = tmp_path / "outside"
    outside.write_text("host file")
    (upper / "escape").symlink_to(outside)
    label = file_label(LEVEL)
    try:
        count = label_path(upper, label, enabled=True)
    except SELinuxError as exc:
        pytest.skip(f"this filesystem refuses security.selinux: {exc}")
    assert count == 4  # upper, etc, etc/hosts, the symlink itself
    assert os.getxattr(upper / "etc" / "hosts", "security.selinux") == label.encode() + b"\0"
    assert "security.selinux" not in os.listxattr(outside)
