"""Scenarios about the guest itself (stdlib only): is this the host the other scenarios need,
and do the harness's network forwards (the agent's only way out) work."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

from scenario.common import Context, read_label, run


def _mount_fstype(mount_point: str) -> str | None:
    fstype = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == mount_point:
            fstype = right.split()[0]  # the last mount on a point is the visible one
    return fstype


def guest_platform(ctx: Context) -> str:
    """systemd is PID 1, /sys/fs/cgroup is cgroup2, SELinux is enforcing with MCS."""
    facts: dict[str, Any] = {
        "kernel": os.uname().release,
        "pid1": Path("/proc/1/comm").read_text().strip(),
        "systemd_booted": Path("/run/systemd/system").is_dir(),
        "cgroup_fs": _mount_fstype("/sys/fs/cgroup"),
        "controllers": Path("/sys/fs/cgroup/cgroup.controllers").read_text().split(),
        "enforce": Path("/sys/fs/selinux/enforce").read_text().strip(),
        "mls": Path("/sys/fs/selinux/mls").read_text().strip(),
        "policy": Path("/etc/selinux/config").read_text().count("SELINUXTYPE=default"),
        "context": read_label(),
        "virt": run(["systemd-detect-virt"]).stdout.strip(),
        "uptime_s": Path("/proc/uptime").read_text().split()[0],
    }
    for key, value in facts.items():
        ctx.log(f"{key}={value}")
    assert facts["pid1"] == "systemd" and facts["systemd_booted"], "PID 1 is not systemd"
    assert facts["cgroup_fs"] == "cgroup2", f"/sys/fs/cgroup is {facts['cgroup_fs']}"
    for controller in ("memory", "pids", "cpu"):
        assert controller in facts["controllers"], f"cgroup v2 lacks the {controller} controller"
    assert facts["enforce"] == "1", "SELinux is not enforcing"
    assert facts["mls"] == "1", "the loaded policy has no MLS/MCS"
    assert ":container_engine_t:" in str(facts["context"]), "scenario is not container_engine_t"
    return (
        f"systemd PID 1, cgroup2 ({' '.join(facts['controllers'])}), SELinux enforcing MCS, "
        f"runner {facts['context']}, virt={facts['virt']}, kernel {facts['kernel']}"
    )


def cmdline() -> dict[str, str]:
    out = {}
    for word in Path("/proc/cmdline").read_text().split():
        key, found, value = word.partition("=")
        if found and key.startswith("corral."):
            out[key.removeprefix("corral.")] = value
    return out


def network_forwards(ctx: Context) -> str:
    """The broker (Redis) and control-plane HTTP forwards: several connections each, since a
    Celery agent opens more than one."""
    import redis  # the agent's own pinned client, installed into the image

    args = cmdline()
    token = args["token"]
    rhost, rport = args["redis"].rsplit(":", 1)
    first = redis.Redis(host=rhost, port=int(rport), socket_timeout=15)
    second = redis.Redis(host=rhost, port=int(rport), socket_timeout=15)
    assert first.ping() and second.ping(), "Redis PING through guestfwd failed"
    ids = (first.client_id(), second.client_id())
    assert ids[0] != ids[1], f"both clients share one upstream connection {ids}"
    first.set(f"corral:guest:{token}", read_label())
    host_value = second.get(f"corral:host:{token}")
    assert host_value == f"host-{token}".encode(), f"host key read back {host_value!r}"
    ctx.log(f"redis via {args['redis']}: two upstream connections (client ids {ids})")
    url = f"http://{args['http']}/corral-guest/{token}"
    with urllib.request.urlopen(url, timeout=15) as resp:
        body = resp.read().decode()
    assert body == f"control-plane-{token}", f"control-plane forward answered {body!r}"
    ctx.log(f"http via {args['http']}: {body}")
    first.close()
    second.close()
    return f"redis {args['redis']} (2 connections) and control-plane http {args['http']} reachable"
