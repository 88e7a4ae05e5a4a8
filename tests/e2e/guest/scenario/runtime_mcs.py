"""Containers started by the agent's own OCI runtime (agent.runtime) on this host: each in
``container_t`` with its own MCS pair from the allocator, in a systemd scope of its project's
slice; and an agent restart (the agent's unit stopped, KillMode=process as deployed) leaves
them running, found again from the state directory by a new Runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from scenario.common import BUSYBOX, STATE_DIR, Context, import_or_skip, read_label, run

BASE = STATE_DIR / "runtime"
RUNTIME_ROOT = "/run/corral-guest-runtime"
PROJECT = "guestproj"
ENGINE_CONTEXT = "system_u:system_r:container_engine_t:s0"
APPLETS = ("sh", "cat", "sleep", "echo", "id", "ls")


def _modules() -> tuple[Any, Any, Any, Any, Any]:
    rt_mod = import_or_skip("agent.runtime.runtime")
    spec_mod = import_or_skip("agent.runtime.spec")
    se = import_or_skip("agent.runtime.selinux")
    cg = import_or_skip("agent.runtime.cgroups")
    proto = import_or_skip("agent.protocol.containers")
    return rt_mod, spec_mod, se, cg, proto


def _lower(se: Any) -> Path:
    """A shared read-only busybox layer, ``container_file_t:s0`` (readable by every level)."""
    lower = BASE / "lower"
    shutil.rmtree(lower, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "run"):
        (lower / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, lower / "bin" / "busybox")
    for applet in APPLETS:
        (lower / "bin" / applet).symlink_to("busybox")
    se.label_path(lower, se.file_label("s0"))
    return lower


def make_bundle(name: str, level: str, lower: Path, command: str) -> tuple[str, Path, str]:
    """One container's bundle through the agent's spec conversion; (id, bundle, level)."""
    _, spec_mod, se, cg, proto = _modules()
    cid = str(uuid.uuid4())
    root = BASE / name
    shutil.rmtree(root, ignore_errors=True)
    for d in ("upper", "work", "bundle/rootfs"):
        (root / d).mkdir(parents=True)
    se.label_path(root / "upper", se.file_label(level))
    spec = proto.ContainerSpec(
        id=cid,
        name=name,
        project=PROJECT,
        image=proto.ImageRef(reference="guest/busybox:local"),
        command=["/bin/sh", "-c", command],
        resources=proto.Resources(memory_limit=64 << 20, pids_limit=32),
        network=proto.NetworkSpec(mode="none"),
    )
    options = spec_mod.SpecOptions(
        cgroup_driver=cg.detect_driver(),
        selinux_process_label=se.process_label(level),
        selinux_mount_label=se.file_label(level),
        lower_dirs=(str(lower),),
        upper_dir=str(root / "upper"),
        work_dir=str(root / "work"),
    )
    config = spec_mod.to_oci(spec, root_path=str(root / "bundle" / "rootfs"), options=options)
    (root / "bundle" / "config.json").write_text(json.dumps(config, indent=1))
    return cid, root / "bundle", level


def _check_running(ctx: Context, rt: Any, se: Any, cid: str, level: str, name: str) -> int:
    state = rt.state(cid)
    pid = int(state.get("pid") or 0)
    ctx.log(f"{name} {cid} status={state.get('status')} pid={pid}")
    assert state.get("status") == "running" and pid, f"{name} is {state.get('status')}"
    label = read_label(pid)
    with open(f"/proc/{pid}/cgroup") as fh:
        cgroup = fh.read().strip().split("::", 1)[-1]
    ctx.log(f"{name} /proc/{pid}/attr/current = {label}; cgroup {cgroup}")
    assert f"/machine-{PROJECT}.slice/" in cgroup, f"{name} is in cgroup {cgroup}"
    assert label == se.process_label(level), (
        f"{name} runs as {label}, not its process.selinuxLabel {se.process_label(level)}"
        " (the runtime did not apply process.selinuxLabel)"
    )
    return pid


def _cross_read_denied(ctx: Context, made: list[tuple[str, Path, str, str]]) -> None:
    """A process with container A's actual label cannot read the file B wrote (and can read
    A's own): the MCS check on the real labels the runtime produced."""
    (cid_a, bundle_a, _, name_a), (_, bundle_b, _, name_b) = made[0], made[1]
    with open(f"/proc/{_pid_of(cid_a)}/attr/current", "rb") as fh:
        label_a = fh.read().rstrip(b"\0\n").decode()
    for target, expect_ok in ((bundle_a, True), (bundle_b, False)):
        path = target.parent / "upper" / "mine"
        proc = subprocess.run(
            [str(BASE / "lower" / "bin" / "busybox"), "cat", str(path)],
            preexec_fn=lambda: _set_exec(label_a),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        out = (proc.stdout + proc.stderr).strip()
        ctx.log(f"{name_a} ({label_a}) reads {path}: rc={proc.returncode} {out!r}")
        if expect_ok:
            assert proc.returncode == 0, f"{name_a} cannot read its own file: {out!r}"
        else:
            assert "Permission denied" in out, f"{name_a} read {name_b}'s file: {out!r}"


def _pid_of(cid: str) -> int:
    rt_mod = import_or_skip("agent.runtime.runtime")
    return int(rt_mod.Runtime(RUNTIME_ROOT).state(cid)["pid"])


def _set_exec(label: str) -> None:
    fd = os.open("/proc/self/attr/exec", os.O_WRONLY)
    try:
        os.write(fd, label.encode())
    finally:
        os.close(fd)


def _cleanup(rt: Any, ids: list[str]) -> None:
    for cid in ids:
        try:
            rt.delete(cid, force=True)
        except Exception as exc:
            print(f"cleanup of {cid}: {exc}", flush=True)


def containers_with_mcs(ctx: Context) -> str:
    """Two containers through Runtime.create/start: distinct MCS pairs, container_t,
    files written by each carry its own categories."""
    rt_mod, _, se, _, _ = _modules()
    alloc = se.MCSAllocator(BASE / "levels.json")
    lower = _lower(se)
    rt = rt_mod.Runtime(RUNTIME_ROOT)
    made: list[tuple[str, Path, str, str]] = []
    try:
        for name in ("rt-a", "rt-b"):
            level = alloc.allocate(name)
            cid, bundle, _ = make_bundle(name, level, lower, f"echo {name} > /mine; exec sleep 300")
            rt.create(cid, str(bundle))
            rt.start(cid)
            made.append((cid, bundle, level, name))
        assert made[0][2] != made[1][2], "the allocator handed out one pair twice"
        time.sleep(1)
        for cid, bundle, level, name in made:
            _check_running(ctx, rt, se, cid, level, name)
            mine = bundle.parent / "upper" / "mine"
            got = os.getxattr(mine, "security.selinux").rstrip(b"\0").decode()
            ctx.log(f"{name} wrote {mine}: {got}")
            assert got.endswith(f":{level}"), f"{name}'s file is {got}, not level {level}"
        _cross_read_denied(ctx, made)
    finally:
        _cleanup(rt, [m[0] for m in made])
        for name in ("rt-a", "rt-b"):
            alloc.release(name)
    labels = ", ".join(f"{m[3]}={se.process_label(m[2])}" for m in made)
    return f"runtime containers running as {labels}; their files carry their own categories"


def agent_restart(ctx: Context) -> str:
    """Start containers from an agent stand-in run as a systemd service like the deployed
    unit (KillMode=process, Delegate=yes), stop that service, and find the containers still
    running, with the same pids, from a new Runtime over the same state directory."""
    rt_mod, _, se, _, _ = _modules()
    lower = _lower(se)
    rt = rt_mod.Runtime(RUNTIME_ROOT)
    ids: list[str] = []
    unit = "corral-agent-guest"
    try:
        jobs = []
        for n, name in enumerate(("keep-a", "keep-b")):
            cid, bundle, _ = make_bundle(name, f"s0:c{10 + n},c{20 + n}", lower, "exec sleep 300")
            ids.append(cid)
            jobs.append({"id": cid, "bundle": str(bundle)})
        ready = BASE / "agent-ready.json"
        ready.unlink(missing_ok=True)
        argv = [
            "systemd-run", f"--unit={unit}", "--property=KillMode=process",
            "--property=Delegate=yes",
            # As a deployed agent must: a transient unit runs as initrc_t, which the policy
            # denies the nnp_transition into container_t (noNewPrivileges containers).
            f"--property=SELinuxContext={ENGINE_CONTEXT}",
            f"--setenv=PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
            "--working-directory=/opt/corral/payload", sys.executable, "-m",
            "scenario.agent_stand_in", RUNTIME_ROOT, json.dumps(jobs), str(ready),
        ]  # fmt: skip
        started = run(argv)
        assert started.returncode == 0, f"systemd-run failed: {started.stderr.strip()}"
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, (
                f"the agent stand-in never became ready: {_journal(unit)}"
            )
            time.sleep(0.5)
        report = json.loads(ready.read_text())
        ctx.log(
            f"agent stand-in (pid {report['agent_pid']}, {report.get('context')}) started "
            f"{report['pids']}"
        )
        assert report.get("error") is None, f"agent stand-in failed: {report['error']}"
        for cid in ids:  # running before the stop, so a failure below is the stop's doing
            state = rt.state(cid)
            label = read_label(state["pid"]) if state.get("pid") else "-"
            ctx.log(f"before the stop: {cid} {state.get('status')} pid {state.get('pid')} {label}")
            assert state.get("status") == "running", f"{cid} did not start: {_journal(unit)}"
        stopped = run(["systemctl", "stop", unit])
        assert stopped.returncode == 0, f"systemctl stop failed: {stopped.stderr.strip()}"
        assert not Path(f"/proc/{report['agent_pid']}").exists(), "the agent did not stop"
        ctx.log(f"{unit} stopped; agent pid {report['agent_pid']} is gone")
        fresh = rt_mod.Runtime(RUNTIME_ROOT)
        for cid in ids:
            state = fresh.state(cid)
            ctx.log(f"after the restart: {cid} {state.get('status')} pid {state.get('pid')}")
            assert state.get("status") == "running", f"{cid} is {state.get('status')}"
            assert int(state["pid"]) == report["pids"][cid], "a container was restarted"
            assert Path(f"/proc/{state['pid']}").exists(), f"pid {state['pid']} is gone"
        listed = {st["id"] for st in fresh.list()}
        assert set(ids) <= listed, f"Runtime.list() lost containers: {listed}"
    finally:
        run(["systemctl", "stop", unit])
        run(["systemctl", "reset-failed", unit])
        _cleanup(rt, ids)
    return f"{len(ids)} containers kept running (same pids) across an agent stop; found by list()"


def _journal(unit: str) -> str:
    return run(["journalctl", "-u", unit, "--no-pager", "-n", "20"]).stdout[-1500:]
