"""The agent's ContainerService on real containers (through the zygote)."""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import cgroup_dirs

from agent.containers import ContainerService
from agent.protocol.containers import ContainerSpec, ImageRef, Resources, RestartPolicy
from agent.runtime.spec import SpecOptions

pytestmark = pytest.mark.privileged

PARENT = "corraltest.slice"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "containers", tmp_path / "runtime"


@pytest.fixture
def service(dirs: tuple[Path, Path]) -> Iterator[ContainerService]:
    svc = ContainerService(*dirs, options=SpecOptions(cgroup_parent=PARENT))
    yield svc
    for status in svc.list():
        with contextlib.suppress(Exception):
            svc.remove(status.id, force=True)
    svc.close()
    for d in cgroup_dirs(f"/{PARENT}"):
        for sub in sorted(d.rglob("*"), reverse=True):
            if sub.is_dir():
                with contextlib.suppress(OSError):
                    sub.rmdir()
        with contextlib.suppress(OSError):
            d.rmdir()
    assert not cgroup_dirs(f"/{PARENT}/{PARENT.removesuffix('.slice')}-proj.slice/x"), (
        "cgroups left"
    )


def spec(command: list[str], **kw: object) -> ContainerSpec:
    base: dict[str, object] = {"id": str(uuid.uuid4()), "name": "svc-test", "project": "proj"}
    base.update(kw)
    return ContainerSpec(command=command, **base)  # type: ignore[arg-type]


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_host_container_runs_logs_and_stops_with_its_stop_signal(service: ContainerService) -> None:
    script = 'trap "exit 7" TERM; echo hello; while :; do sleep 0.05; done'
    s = spec(["/bin/sh", "-c", script], mode="host")
    assert service.create(s).state == "created"
    assert service.start(s.id).state == "running"
    wait_for(lambda: any(e["log"] == "hello\n" for e in service.logs(s.id)))
    status = service.stop(s.id, timeout=5)
    assert (status.state, status.exit_code) == ("exited", 7)
    assert service.stop(s.id).state == "exited"  # idempotent


def test_image_container_exit_code_logs_tail_and_since(
    service: ContainerService, busybox_rootfs: Path
) -> None:
    s = spec(
        ["/bin/sh", "-c", "echo one; echo two; echo err >&2; exit 3"], image=ImageRef("busybox:1")
    )
    service.create(s, [busybox_rootfs])
    before = time.time()
    service.start(s.id)
    wait_for(lambda: service.status(s.id).state == "exited")
    assert service.status(s.id).exit_code == 3
    logs = service.logs(s.id)
    assert [e["log"] for e in logs if e["stream"] == "stdout"] == ["one\n", "two\n"]
    assert [e["log"] for e in logs if e["stream"] == "stderr"] == ["err\n"]
    assert len(service.logs(s.id, tail=1)) == 1
    assert service.logs(s.id, since=time.time() + 60) == []
    assert len(service.logs(s.id, since=before - 1)) == 3
    service.start(s.id)  # a stopped container runs again; earlier output is kept
    wait_for(lambda: len(service.logs(s.id)) == 6)


def test_containers_are_found_again_by_a_new_service_with_exit_codes(
    dirs: tuple[Path, Path], service: ContainerService
) -> None:
    s = spec(["/bin/sh", "-c", "sleep 0.5; exit 4"], mode="host")
    service.create(s)
    service.start(s.id)
    service.close()  # the agent goes away; the shim does not
    time.sleep(1.0)
    again = ContainerService(*dirs, options=SpecOptions(cgroup_parent=PARENT))
    try:
        found = {st.id: st for st in again.list()}
        assert found[s.id].state == "exited" and found[s.id].exit_code == 4
    finally:
        again.close()


def test_restart_policy_holds_without_the_agent(
    dirs: tuple[Path, Path], service: ContainerService
) -> None:
    s = spec(
        ["/bin/sh", "-c", "exit 1"], mode="host", restart_policy=RestartPolicy("on-failure", 3)
    )
    service.create(s)
    service.start(s.id)
    service.close()
    again = ContainerService(*dirs, options=SpecOptions(cgroup_parent=PARENT))
    try:
        wait_for(
            lambda: again.status(s.id).restart_count == 3 and again.status(s.id).state == "exited"
        )
        assert again.status(s.id).exit_code == 1
    finally:
        again.close()


def test_stats_and_idempotent_create_and_remove(
    service: ContainerService, busybox_rootfs: Path
) -> None:
    res = Resources(memory_limit=64 * 1024 * 1024, pids_limit=20)
    s = spec(["/bin/sleep", "30"], image=ImageRef("busybox:1"), resources=res)
    service.create(s, [busybox_rootfs])
    assert service.create(s, [busybox_rootfs]).state == "created"  # same id: same container
    service.start(s.id)
    stats = service.stats(s.id)
    assert stats.memory_limit == 64 * 1024 * 1024
    assert stats.pids_current is not None and stats.pids_current >= 1
    cdir = service.state_dir / s.id
    service.remove(s.id, force=True)
    assert not cdir.exists()
    service.remove(s.id)  # missing: fine
    assert s.id not in {st.id for st in service.list()}
    assert shutil.which("true")


def test_shims_are_forked_by_the_zygote_not_the_agent(service: ContainerService) -> None:
    import os

    s = spec(["/bin/sleep", "30"], mode="host")
    service.create(s)
    shim = int(service.runtime.raw_state(s.id)["shim_pid"])
    ppid = int(Path(f"/proc/{shim}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert service.zygote is not None and ppid == service.zygote.pid
    assert ppid != os.getpid()


def test_a_forked_worker_gets_its_own_zygote(service: ContainerService) -> None:
    import os

    s = spec(["/bin/true"], mode="host")
    service.create(s)  # starts the zygote in this process
    parent_zygote = service.zygote.pid if service.zygote else None
    child = os.fork()
    if child == 0:  # like a Celery prefork child
        code = 1
        try:
            other = spec(["/bin/true"], mode="host")
            service.create(other)
            ok = service.zygote is not None and service.zygote.pid != parent_zygote
            service.remove(other.id, force=True)
            service.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert service.zygote is not None and service.zygote.pid == parent_zygote


def test_each_container_gets_its_own_mcs_pair_recorded_and_released(
    service: ContainerService,
) -> None:
    """sVirt: a unique category pair per container on the host. This kernel has no SELinux,
    so the labels are allocated, recorded and reported, and nothing is enforced or fails."""
    a = spec(["/bin/sh", "-c", "sleep 30"], mode="host")
    b = spec(["/bin/sh", "-c", "sleep 30"], mode="host", name="svc-test-b")
    label_a = service.create(a).selinux_label
    label_b = service.create(b).selinux_label
    assert label_a and label_b and label_a != label_b
    for label in (label_a, label_b):
        assert label.startswith("system_u:system_r:container_t:s0:c")
    assert service.status(a.id).selinux_label == label_a
    service.remove(a.id, force=True)
    assert a.id not in service.mcs.allocations()
    assert service.mcs.allocations()[b.id] == label_b.split(":", 3)[3]
