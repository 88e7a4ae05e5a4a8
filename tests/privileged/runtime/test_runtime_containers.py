"""Real containers on a busybox rootfs, asserted from the host side."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from runtime_helpers import CGROUP_PARENT, BundleFactory, cgroup_dirs

from agent.runtime.config import CAP_NUMBERS
from agent.runtime.errors import ConfigError, ContainerNotFound, RuntimeFailure
from agent.runtime.linux import LINUX
from agent.runtime.runtime import Runtime
from agent.runtime.spec import DEFAULT_CAPABILITIES

pytestmark = pytest.mark.privileged

SLEEP = ["/bin/sleep", "30"]


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in /proc/{pid}/status")


def running(runtime: Runtime, cid: str, bundle: Path) -> int:
    """Start the container and wait until its init has exec'd the user process: `start`
    returns once the process is released, and the last steps (seccomp, exec) follow it."""
    runtime.create(cid, bundle)
    runtime.start(cid)
    pid = int(runtime.state(cid)["pid"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return pid  # already ran and exited: the test reads what it left
        if not cmdline or b"python" not in cmdline:  # no longer the runtime's init code
            return pid
        time.sleep(0.005)
    raise AssertionError(f"container {cid} never exec'd its process")


def mounts_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/mounts").read_text().splitlines()


def test_container_gets_its_own_namespaces(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    pid = running(runtime, cid, make_bundle(SLEEP))
    for ns in ("pid", "uts", "ipc", "net", "mnt", "cgroup"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert status_field(pid, "NSpid").split()[-1] == "1"  # pid 1 inside its namespace


def test_hostname_is_set_in_the_uts_namespace(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    pid = running(runtime, cid, make_bundle(SLEEP, hostname="box-one"))
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "box-one"


def test_capabilities_no_new_privs_and_seccomp(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    pid = running(runtime, cid, make_bundle(SLEEP))
    expected = sum(1 << CAP_NUMBERS[c] for c in DEFAULT_CAPABILITIES)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status_field(pid, field), 16) == expected, field
    assert int(status_field(pid, "CapInh"), 16) == 0
    assert status_field(pid, "NoNewPrivs") == "1"
    assert status_field(pid, "Seccomp") == "2"


def test_the_process_starts_with_default_signal_actions(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    """Nothing ignored or blocked leaks in: this Python ignores SIGPIPE, and here SIGINT too,
    as a runner that started the tests in the background would (a ^C on the container's
    terminal would then not stop its foreground process)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    glibc_own = LINUX.signal_action(32, 1)  # glibc's; a CI runner's ancestor ignored it
    try:
        pid = running(runtime, cid, make_bundle(SLEEP))
    finally:
        signal.signal(signal.SIGINT, previous)
        LINUX.signal_action(32, glibc_own)
    assert int(status_field(pid, "SigIgn"), 16) == 0
    assert int(status_field(pid, "SigBlk"), 16) == 0


def test_seccomp_denies_listed_syscalls(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    # busybox `swapoff` calls swapoff(2): denied with EPERM instead of ENOENT/EINVAL.
    runtime.create(cid, make_bundle(["/bin/sh", "-c", "swapoff /nonexistent; echo rc=$?"]))
    runtime.start(cid)
    assert runtime.wait(cid, timeout=10) == 0
    log = (runtime.store.dir(cid) / "ctr.log").read_text()
    assert "Operation not permitted" in log


def test_masked_paths_are_empty_and_sys_is_read_only(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    pid = running(runtime, cid, make_bundle(SLEEP))
    root = f"/proc/{pid}/root"
    assert Path(f"{root}/proc/keys").read_text() == ""
    assert Path(f"{root}/proc/timer_list").read_text() == ""
    assert os.statvfs(f"{root}/sys").f_flag & os.ST_RDONLY
    assert os.statvfs(f"{root}/proc/sys").f_flag & os.ST_RDONLY
    assert not os.statvfs(f"{root}/tmp").f_flag & os.ST_RDONLY
    with pytest.raises(OSError):
        Path(f"{root}/sys/kernel/test-file").write_text("x")


def test_dev_is_minimal(runtime: Runtime, make_bundle: BundleFactory, cid: str) -> None:
    pid = running(runtime, cid, make_bundle(SLEEP))
    names = set(os.listdir(f"/proc/{pid}/root/dev"))
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue"} <= names
    assert "sda" not in names and "vda" not in names and "mem" not in names


def test_user_namespace_maps_ids(
    runtime: Runtime, make_bundle: BundleFactory, cid: str, busybox_rootfs: Path
) -> None:
    # The container's root (host uid 5000) must be able to reach the rootfs, as with runc:
    # pytest's tmp dirs are 0700, so the rootfs is copied below a world-traversable dir.
    base = Path(tempfile.mkdtemp(prefix="corral-userns-", dir="/tmp"))
    try:
        base.chmod(0o755)
        rootfs = base / "rootfs"
        shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
        maps = [{"containerID": 0, "hostID": 5000, "size": 1101}]
        namespaces = ("pid", "ipc", "uts", "mount", "network", "cgroup", "user")
        bundle = make_bundle(
            SLEEP,
            rootfs=rootfs,
            linux={
                "namespaces": [{"type": t} for t in namespaces],
                "uidMappings": maps,
                "gidMappings": maps,
            },
        )
        pid = running(runtime, cid, bundle)
        assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", "5000", "1101"]
        assert Path(f"/proc/{pid}/gid_map").read_text().split() == ["0", "5000", "1101"]
        assert os.stat(f"/proc/{pid}").st_uid == 5000
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        runtime.delete(cid, force=True)
    finally:
        shutil.rmtree(base)


def test_image_container_sees_only_its_layers(
    runtime: Runtime, make_bundle: BundleFactory, cid: str, tmp_path: Path, busybox_rootfs: Path
) -> None:
    top = tmp_path / "layer-top"
    (top / "app").mkdir(parents=True)
    (top / "app" / "hello.txt").write_text("from the top layer\n")
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    annotations = {
        "run.corral.rootfs.lower": f"{top}:{busybox_rootfs}",
        "run.corral.rootfs.upper": str(upper),
        "run.corral.rootfs.work": str(work),
    }
    bundle = make_bundle(
        ["/bin/sh", "-c", "echo written > /app/new.txt; sleep 30"],
        rootfs=merged,
        annotations=annotations,
    )
    pid = running(runtime, cid, bundle)
    root = Path(f"/proc/{pid}/root")
    assert (root / "app" / "hello.txt").read_text() == "from the top layer\n"
    assert sorted(os.listdir(root)) == sorted(set(os.listdir(busybox_rootfs)) | {"app"})
    assert not (root / "usr").exists()  # the host's /usr is not there
    deadline = time.monotonic() + 5
    new = upper / "app" / "new.txt"
    while not (new.exists() and new.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (upper / "app" / "new.txt").read_text() == "written\n"  # writes go to the upper dir
    assert not (top / "app" / "new.txt").exists()
    assert not any(
        str(merged) in line for line in Path("/proc/self/mounts").read_text().splitlines()
    )


def test_host_container_sees_host_usr_read_only(
    runtime: Runtime, make_bundle: BundleFactory, cid: str, tmp_path: Path
) -> None:
    from agent.runtime.spec import SpecOptions, host_mounts, prepare_host_rootfs

    root, private = tmp_path / "hostroot", tmp_path / "private"
    prepare_host_rootfs(root, private)
    mounts = make_bundle(SLEEP)  # only to reuse the default mounts below
    del mounts
    from agent.runtime.spec import base_mounts

    bundle = make_bundle(
        ["/usr/bin/sleep", "30"],
        rootfs=root,
        mounts=base_mounts() + host_mounts(SpecOptions(private_dir=str(private))),
    )
    pid = running(runtime, cid, bundle)
    croot = Path(f"/proc/{pid}/root")
    assert sorted(os.listdir(croot / "usr" / "bin"))[:50] == sorted(os.listdir("/usr/bin"))[:50]
    assert os.statvfs(croot / "usr").f_flag & os.ST_RDONLY
    (croot / "etc" / "corral-private-test").write_text("x")  # private /etc: copy-on-write
    assert not Path("/etc/corral-private-test").exists()
    assert (private / "etc-upper" / "corral-private-test").exists()


def test_create_failure_names_the_step_and_leaves_nothing(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    bundle = make_bundle(
        ["/bin/does-not-exist"],
        linux={"cgroupsPath": f"{CGROUP_PARENT}/{cid}", "resources": {"pids": {"limit": 10}}},
    )
    with pytest.raises(RuntimeFailure) as err:
        runtime.create(cid, bundle)
    assert err.value.step == "process.args[0]"
    assert not runtime.store.dir(cid).exists()
    assert not cgroup_dirs(f"{CGROUP_PARENT}/{cid}")


def test_a_cgroup_that_cannot_be_made_fails_create_and_leaves_nothing(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    """The cgroup is made while the init builds its rootfs; its failure is still reported as
    cgroup.create, and undone along with the init and the state."""
    cg = f"{CGROUP_PARENT}/{cid}"
    cpus = str(os.cpu_count() or 1) + "-4095"  # no such CPUs: the kernel refuses the cpuset
    bundle = make_bundle(SLEEP, linux={"cgroupsPath": cg, "resources": {"cpu": {"cpus": cpus}}})
    with pytest.raises(RuntimeFailure) as err:
        runtime.create(cid, bundle)
    assert err.value.step == "cgroup.create"
    assert not runtime.store.dir(cid).exists()
    assert not cgroup_dirs(cg)
    assert runtime.store.ids() == []


def test_bad_config_is_rejected_before_touching_the_host(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    bundle = make_bundle(SLEEP, process={"cwd": "relative"})
    with pytest.raises(ConfigError) as err:
        runtime.create(cid, bundle)
    assert err.value.field == "process.cwd"
    assert not runtime.store.dir(cid).exists()


def test_delete_leaves_no_state_cgroup_or_process(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    cg = f"{CGROUP_PARENT}/{cid}"
    pid = running(runtime, cid, make_bundle(SLEEP, linux={"cgroupsPath": cg}))
    assert cgroup_dirs(cg)
    with pytest.raises(RuntimeFailure):
        runtime.delete(cid)  # running: needs force
    runtime.delete(cid, force=True)
    assert not runtime.store.dir(cid).exists()
    assert not cgroup_dirs(cg)
    assert (
        not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )
    with pytest.raises(ContainerNotFound):
        runtime.state(cid)


def test_memory_limit_oom_kill_is_reported(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    bundle = make_bundle(
        ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        linux={
            "cgroupsPath": f"{CGROUP_PARENT}/{cid}",
            "resources": {"memory": {"limit": 16 * 1024 * 1024}},
        },
    )
    runtime.create(cid, bundle)
    runtime.start(cid)
    assert runtime.wait(cid, timeout=20) == 137
    state = runtime.raw_state(cid)
    assert state["oom_killed"] is True
    if state["monitor"] == "native":  # it came through the native monitor's exit record
        record = json.loads((runtime.store.dir(cid) / "exit.json").read_text())
        assert record == {"exit_code": 137, "finished_at": state["finished_at"], "oom_killed": True}


def test_pids_limit_is_enforced(runtime: Runtime, make_bundle: BundleFactory, cid: str) -> None:
    script = "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait; echo done"
    bundle = make_bundle(
        ["/bin/sh", "-c", script],
        linux={"cgroupsPath": f"{CGROUP_PARENT}/{cid}", "resources": {"pids": {"limit": 4}}},
    )
    runtime.create(cid, bundle)
    runtime.start(cid)
    assert runtime.wait(cid, timeout=20) is not None
    log = (runtime.store.dir(cid) / "ctr.log").read_text()
    assert "can't fork" in log or "Resource temporarily unavailable" in log


def test_container_survives_kill_9_of_its_creator(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    bundle = make_bundle(["/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done"])
    code = (
        "import sys, time; from agent.runtime.runtime import Runtime; "
        f"rt = Runtime({str(runtime.store.root)!r}); rt.create({cid!r}, {str(bundle)!r}); "
        f"rt.start({cid!r}); print('up', flush=True); time.sleep(60)"
    )
    creator = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=Path(__file__).parents[3]
    )
    try:
        assert creator.stdout is not None and creator.stdout.readline().strip() == b"up"
        state = runtime.raw_state(cid)
        shim = int(state["shim_pid"])
        assert int(Path(f"/proc/{shim}/stat").read_text().split(") ")[1].split()[1]) != creator.pid
        deadline = time.monotonic() + 5
        while (
            "shim-" not in Path(f"/proc/{shim}/cgroup").read_text() and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert (
            Path(f"/proc/{shim}/cgroup").read_text()
            != Path(f"/proc/{creator.pid}/cgroup").read_text()
        )
        creator.send_signal(signal.SIGKILL)
        creator.wait()
        log = runtime.store.dir(cid) / "ctr.log"
        size = log.stat().st_size
        time.sleep(0.3)
        assert runtime.state(cid)["status"] == "running"
        assert log.stat().st_size > size  # the shim still collects output
        # pid 1 of a pid namespace ignores signals it has no handler for: KILL, as after a
        # stop timeout.
        runtime.kill(cid, "KILL")
        assert runtime.wait(cid, timeout=10) == 128 + signal.SIGKILL
        assert runtime.state(cid)["status"] == "stopped"
    finally:
        creator.kill()
        creator.wait()


def test_restart_policy_on_failure_is_enforced_by_the_shim(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    bundle = make_bundle(
        ["/bin/sh", "-c", "echo run; exit 3"], annotations={"run.corral.restart": "on-failure:2"}
    )
    runtime.create(cid, bundle)
    runtime.start(cid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = runtime.raw_state(cid)
        if (
            state.get("restart_count") == 2
            and state["status"] == "stopped"
            and state.get("exit_code") == 3
        ):
            break
        time.sleep(0.05)
    state = runtime.raw_state(cid)
    assert state["restart_count"] == 2
    assert state["exit_code"] == 3
    log = (runtime.store.dir(cid) / "ctr.log").read_text()
    assert log.count('"run\\n"') == 3


def test_exec_joins_the_running_container(
    runtime: Runtime, make_bundle: BundleFactory, cid: str, tmp_path: Path
) -> None:
    from agent.runtime.process import Stdio

    pid = running(runtime, cid, make_bundle(SLEEP, hostname="exec-box"))
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        code = runtime.exec(
            cid, ["/bin/sh", "-c", "hostname; cat /proc/1/cmdline"], stdio=Stdio(0, fd, fd)
        )
    finally:
        os.close(fd)
    assert code == 0
    text = out.read_text()
    assert text.startswith("exec-box\n")
    assert "sleep" in text
    assert pid


def test_cli_reports_one_line_errors_and_nonzero_status(
    tmp_path: Path, make_bundle: BundleFactory
) -> None:
    bundle = make_bundle(SLEEP, process={"args": []})
    cmd = [
        sys.executable,
        "-m",
        "agent.runtime",
        "--root",
        str(tmp_path / "st"),
        "create",
        "x1",
        "--bundle",
        str(bundle),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert res.returncode != 0
    assert res.stderr.count("\n") == 1 and "process.args" in res.stderr
    res = subprocess.run(
        [*cmd[:5], "state", "nope"], capture_output=True, text=True, cwd=Path(__file__).parents[3]
    )
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_log_is_json_lines_rotated_by_size(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done"
    bundle = make_bundle(
        ["/bin/sh", "-c", script], annotations={"run.corral.log.max-bytes": "4096"}
    )
    runtime.create(cid, bundle)
    runtime.start(cid)
    assert runtime.wait(cid, timeout=10) == 0
    log = runtime.store.dir(cid) / "ctr.log"
    rotated = runtime.store.dir(cid) / "ctr.log.1"
    assert rotated.exists()
    assert log.stat().st_size <= 4096 + 200 and rotated.stat().st_size <= 4096 + 200
    import json

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[-1]["log"] == "line-299\n" and entries[-1]["stream"] == "stdout"
    assert entries[-1]["time"].endswith("Z") and entries[-1]["ts"] > 0


def test_namespaces_given_by_path_are_joined(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    first = running(runtime, cid, make_bundle(SLEEP))
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    namespaces.append({"type": "network", "path": f"/proc/{first}/ns/net"})
    second = running(runtime, cid + "-b", make_bundle(SLEEP, linux={"namespaces": namespaces}))
    assert os.readlink(f"/proc/{second}/ns/net") == os.readlink(f"/proc/{first}/ns/net")
    assert os.readlink(f"/proc/{second}/ns/pid") != os.readlink(f"/proc/{first}/ns/pid")


def test_seccomp_names_it_cannot_apply_are_reported_in_the_state(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["swapon", "no_such_syscall"], "action": "SCMP_ACT_ERRNO"}],
    }
    runtime.create(cid, make_bundle(SLEEP, linux={"seccomp": profile}))
    warnings = runtime.state(cid)["warnings"]
    assert any("no_such_syscall" in w for w in warnings)


def test_a_shim_that_moved_into_its_scope_leaves_no_scope_after_delete(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    from agent.runtime.scope import shim_cgroup
    from agent.runtime.state import proc_start_time

    running(runtime, cid, make_bundle(SLEEP))
    shim = int(runtime.raw_state(cid)["shim_pid"])
    deadline = time.monotonic() + 5  # it moves once the container has run SCOPE_DELAY
    while "shim-" not in Path(f"/proc/{shim}/cgroup").read_text():
        assert time.monotonic() < deadline, "the shim never moved into its scope"
        time.sleep(0.01)
    assert cgroup_dirs(shim_cgroup(cid))
    runtime.delete(cid, force=True)
    assert proc_start_time(shim) is None  # exited (a zombie until its new parent reaps it)
    assert not cgroup_dirs(shim_cgroup(cid))


def test_a_short_container_is_recorded_without_its_shim_ever_moving(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    from agent.runtime.scope import shim_cgroup

    runtime.create(cid, make_bundle(["/bin/true"]))
    runtime.start(cid)
    assert runtime.wait(cid, timeout=10) == 0
    assert not cgroup_dirs(shim_cgroup(cid))  # done within SCOPE_DELAY: no scope was made
    runtime.delete(cid)
    assert runtime.store.ids() == []


def test_the_cgroup_namespace_is_rooted_at_the_containers_own_cgroup(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    # The init sets up its rootfs while the shim still moves it into its cgroup, and makes
    # its cgroup namespace only once it is there: inside, its own cgroup must read as "/".
    cg = f"{CGROUP_PARENT}/{cid}"
    script = "cat /proc/self/cgroup; sleep 30"
    pid = running(runtime, cid, make_bundle(["/bin/sh", "-c", script], linux={"cgroupsPath": cg}))
    assert f":memory:{cg}\n" in Path(f"/proc/{pid}/cgroup").read_text()
    log = runtime.store.dir(cid) / "ctr.log"
    deadline = time.monotonic() + 10
    while ":memory:" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the container printed no /proc/self/cgroup"
        time.sleep(0.02)
    inside = "".join(json.loads(line)["log"] for line in log.read_text().splitlines())
    assert ":memory:/\n" in inside
    assert ":pids:/\n" in inside


# What a CLI ``run`` must not import (issue #4, the CLI within 2x of crun): each of these cost
# milliseconds of every command's start-up before it was taken off the path.
CLI_RUN_NEVER_IMPORTS = {
    "argparse",
    "dataclasses",
    "inspect",
    "typing",
    "datetime",
    "logging",
    "socket",  # the sync channel uses _socket; socket.py only for a console socket
    "pathlib",  # the state store and the config loader work on strings
    "agent.runtime.cgroups",  # a bundle without cgroupsPath needs no cgroup driver
}


def test_cli_run_stays_off_the_slow_imports(tmp_path: Path, make_bundle: BundleFactory) -> None:
    bundle = make_bundle(["/bin/true"])
    root = str(tmp_path / "st")
    cli = [sys.executable, "-X", "importtime", "-m", "agent.runtime", "--root", root]
    done = subprocess.run(
        [*cli, "run", "diet1", "--bundle", str(bundle)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[3],
    )
    assert done.returncode == 0, done.stderr
    # "import time: self | cumulative | <indent>name", for the CLI and the shim it forks
    loaded = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()}
    assert "agent.runtime.shim" in loaded  # the parse sees the create path's imports
    assert not CLI_RUN_NEVER_IMPORTS & loaded
