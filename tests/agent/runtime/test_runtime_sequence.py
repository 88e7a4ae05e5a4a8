"""Start-sequence logic with the recording fake OS layer: order of security steps, rootfs
mounts, safe path resolution, seccomp compilation, state files and undo on failure."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest
from runtime_fakes import RecordingLinux

from agent.runtime import linux as L
from agent.runtime.config import Capabilities, Process, Seccomp, SeccompRule, parse_config
from agent.runtime.errors import RuntimeFailure
from agent.runtime.rootfs import Rootfs, parse_options
from agent.runtime.runtime import Runtime, parse_signal
from agent.runtime.security import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SYSCALLS_X86_64,
    apply_process_security,
    compile_seccomp,
)
from agent.runtime.state import StateStore, check_id, live_status


def test_security_switches_user_between_bounding_drop_and_capset() -> None:
    fake = RecordingLinux()
    caps = Capabilities(
        bounding=("CAP_KILL",), effective=("CAP_KILL",), permitted=("CAP_KILL",), ambient=()
    )
    apply_process_security(
        fake, Process(args=("x",), uid=1000, gid=100, capabilities=caps, no_new_privileges=True)
    )
    names = fake.names()
    last_drop = max(i for i, c in enumerate(fake.calls) if c[:2] == ("prctl", L.PR_CAPBSET_DROP))
    assert last_drop < names.index("setresgid") < names.index("setresuid") < names.index("capset")
    assert ("prctl", L.PR_SET_KEEPCAPS, 1, 0) in fake.calls  # caps survive setuid
    assert fake.calls[-1] == ("prctl", L.PR_SET_NO_NEW_PRIVS, 1, 0)
    assert ("capset", 1 << 5, 1 << 5, 0) in fake.calls
    dropped = {c[2] for c in fake.calls if c[:2] == ("prctl", L.PR_CAPBSET_DROP)}
    assert 5 not in dropped and 21 in dropped  # KILL kept, SYS_ADMIN dropped


def test_seccomp_program_checks_arch_then_denies_listed_calls() -> None:
    profile = Seccomp(
        "SCMP_ACT_ALLOW", 1, (SeccompRule(("swapon", "no_such_call"), "SCMP_ACT_ERRNO", 1),)
    )
    program, skipped = compile_seccomp(profile)
    insns = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    assert skipped == ["no_such_call"]
    assert insns[0] == (0x20, 0, 0, 4) and insns[1][3] == 0xC000003E  # load arch, compare
    assert (0x15, 0, 1, SYSCALLS_X86_64["swapon"]) in insns
    assert (
        insns[insns.index((0x15, 0, 1, SYSCALLS_X86_64["swapon"])) + 1][3] == SECCOMP_RET_ERRNO | 1
    )
    assert insns[-1] == (0x06, 0, 0, SECCOMP_RET_ALLOW)


def test_mount_options_split_into_flags_propagation_and_data() -> None:
    flags, prop, data = parse_options(("nosuid", "ro", "rbind", "rprivate", "mode=755", "size=1k"))
    assert flags == L.MS_NOSUID | L.MS_RDONLY | L.MS_BIND | L.MS_REC
    assert prop == L.MS_PRIVATE | L.MS_REC
    assert data == "mode=755,size=1k"


def _config(root: Path, mounts: list[dict[str, object]]) -> object:
    raw = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/true"]},
        "root": {"path": str(root)},
        "mounts": mounts,
        "linux": {"namespaces": [{"type": "mount"}], "maskedPaths": ["/proc/kcore"]},
    }
    return parse_config(raw, bundle=str(root.parent))


def test_rootfs_mounts_in_order_through_proc_self_fd(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data/deep", "type": "tmpfs", "source": "tmpfs", "options": ["mode=700"]},
    ]
    fake = RecordingLinux()
    fs = Rootfs(fake, _config(root, mounts))  # type: ignore[arg-type]
    fs.setup()
    mount_calls = [c for c in fake.calls if c[0] == "mount"]
    assert mount_calls[0][1:] == (None, "/", None, L.MS_REC | L.MS_PRIVATE, None)
    assert mount_calls[1][1] == str(root) and mount_calls[1][4] == L.MS_BIND | L.MS_REC
    assert mount_calls[2][3] == "proc" and mount_calls[2][2].startswith("/proc/self/fd/")
    assert mount_calls[3][3] == "tmpfs" and mount_calls[3][5] == "mode=700"
    assert (root / "proc").is_dir() and (root / "data" / "deep").is_dir()  # created inside


def test_a_symlink_in_the_rootfs_cannot_redirect_a_mount_to_the_host(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    outside = tmp_path / "host-dir"
    outside.mkdir()
    (root / "evil").symlink_to(outside)  # absolute: would point at the host if followed
    inside = root / str(outside).lstrip("/")
    inside.mkdir(parents=True)  # the same path, inside the rootfs
    (root / "dotdot").symlink_to("../../..")
    fake = RecordingLinux()
    mounts = [
        {"destination": "/evil/sub", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dotdot/escape", "type": "tmpfs", "source": "tmpfs"},
    ]
    Rootfs(fake, _config(root, mounts)).setup()  # type: ignore[arg-type]
    assert list(outside.iterdir()) == []
    assert (inside / "sub").is_dir()  # resolved inside the root
    assert (root / "escape").is_dir()


def test_rootfs_failure_names_the_mount_and_keeps_errno(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    fake = RecordingLinux()
    mounts = [{"destination": "/proc", "type": "proc", "source": "proc"}]
    fs = Rootfs(fake, _config(root, mounts))  # type: ignore[arg-type]
    fake.fail["mount"] = OSError(errno.EPERM, "nope")
    with pytest.raises(RuntimeFailure) as err:
        fs.setup()
    assert err.value.step == "rootfs.propagation" and err.value.errno == errno.EPERM


def test_state_writes_are_atomic_and_updates_locked(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.make_dir("c1")
    store.write("c1", {"id": "c1", "status": "created", "pid": 0})
    store.update("c1", lambda s: s.update(status="running"))
    assert store.read("c1")["status"] == "running"
    assert [p.name for p in store.dir("c1").iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(RuntimeFailure):
        store.make_dir("c1")
    assert store.ids() == ["c1"]


def test_concurrent_updates_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.make_dir("c1")
    store.write("c1", {"id": "c1", "count": 0})

    def bump(state: dict[str, int]) -> None:
        state["count"] += 1

    child = os.fork()
    if child == 0:  # the other writer (a shim, say)
        try:
            for _ in range(100):
                store.update("c1", bump)
        finally:
            os._exit(0)
    for _ in range(100):
        store.update("c1", bump)
    os.waitpid(child, 0)
    assert store.read("c1")["count"] == 200
    assert sorted(p.name for p in store.dir("c1").iterdir()) == ["state.json"]  # no lock file


def test_a_dead_pid_reads_as_stopped() -> None:
    assert live_status({"status": "running", "pid": 0}) == "stopped"
    me = {"status": "running", "pid": os.getpid()}
    from agent.runtime.state import proc_start_time

    me["pid_start_time"] = proc_start_time(os.getpid())  # type: ignore[assignment]
    assert live_status(me) == "running"
    me["pid_start_time"] = 1  # type: ignore[assignment]  # pid reused by another process
    assert live_status(me) == "stopped"


@pytest.mark.parametrize("bad", ["", "..", "a/b", "x y"])
def test_container_ids_cannot_escape_the_state_root(bad: str) -> None:
    with pytest.raises(RuntimeFailure):
        check_id(bad)


def test_signals_parse_by_name_or_number() -> None:
    assert parse_signal("KILL") == 9 and parse_signal("SIGTERM") == 15 and parse_signal("2") == 2
    with pytest.raises(RuntimeFailure):
        parse_signal("SIGNOPE")


def test_failed_create_undoes_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(
        '{"ociVersion": "1.0.2", "process": {"args": ["/x"]}, "root": {"path": "rootfs"},'
        ' "linux": {"namespaces": [{"type": "mount"}]}}'
    )
    rt = Runtime(tmp_path / "state", linux=RecordingLinux())

    def boom(*_: object) -> int:
        raise RuntimeFailure("rootfs.pivot_root", "Invalid argument", errno.EINVAL)

    monkeypatch.setattr(rt, "_launch_shim", boom)
    with pytest.raises(RuntimeFailure) as err:
        rt.create("c1", bundle)
    assert err.value.step == "rootfs.pivot_root"
    assert not (tmp_path / "state" / "c1").exists()


def test_selinux_mount_label_is_added_only_when_enabled(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    raw = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/true"]},
        "root": {"path": str(root)},
        "mounts": [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
        "linux": {
            "namespaces": [{"type": "mount"}],
            "mountLabel": "system_u:object_r:c_t:s0:c1,c2",
        },
    }
    for enabled, expected in ((True, 'context="system_u:object_r:c_t:s0:c1,c2"'), (False, None)):
        fake = RecordingLinux()
        Rootfs(fake, parse_config(raw, bundle=str(tmp_path)), selinux=enabled).setup()
        tmpfs = next(c for c in fake.calls if c[0] == "mount" and c[3] == "tmpfs")
        assert tmpfs[5] == expected
