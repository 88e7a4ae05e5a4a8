"""Containers across the fleet, end to end: real PostgreSQL, a private Redis, the control-plane
worker, and two agents in network namespaces running containers with the agent's own runtime.
Driven only through the REST API, checked on the host side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agent.runtime.cgroups import cgroups_path_for
from containers.models import Container, Membership, Project
from containers.services import containers_reconcile
from hosts.models import Host, Operation
from tests.support.procs import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.privileged]
MiB = 1 << 20
TICKER = [
    "/bin/sh",
    "-c",
    "echo hello-from-corral; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
]


@pytest.fixture
def fleet(stack: Any) -> dict[str, Any]:
    stack.start_worker()
    agents = []
    for i in range(2):
        agent = stack.enroll(f"node{i}", host=stack.new_host(i))
        stack.run_agent(agent)
        agents.append(agent)
    for agent in agents:
        wait_for(
            lambda a=agent: Host.objects.filter(
                pk=a.host_id, status="online", inventory_at__isnull=False, cpus__isnull=False
            ).exists(),
            120,  # agents start slowly when the machine is loaded
            f"{agent.name} online with inventory",
        )
    user = get_user_model().objects.create_user("ops", password="x")
    for slug in ("alpha", "beta"):
        project = Project.objects.create(slug=slug, name=slug.title())
        Membership.objects.create(project=project, user=user, role="operator")
    client = APIClient()
    client.force_authenticate(user)
    return {"agents": {a.host_id: a for a in agents}, "client": client, "stack": stack}


def observed(client: APIClient, cid: str, states: tuple[str, ...], timeout: float = 30) -> dict:
    body: dict = {}

    def reached() -> bool:
        nonlocal body
        body = client.get(f"/api/v1/containers/{cid}/").json()
        return body.get("observed_state") in states

    try:
        wait_for(reached, timeout, f"container to be {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {body}") from None
    return body


def wait_op(client: APIClient, op_id: str, timeout: float = 30) -> dict:
    body: dict = {}

    def done() -> bool:
        nonlocal body
        body = client.get(f"/api/v1/operations/{op_id}/").json()
        return body["status"] not in ("pending", "sent", "running")

    wait_for(done, timeout, f"operation {op_id}")
    return body


def cgroup_dirs(cid: str, project: str = "alpha") -> list[Path]:
    """The container's cgroup in every v1 hierarchy (names are systemd-escaped: '-' -> \\x2d)."""
    relative = cgroups_path_for(project, cid, driver="v1").lstrip("/")
    # Not glob(): a backslash in a pattern escapes the next character.
    hierarchies = [h for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir()]
    return [h / relative for h in hierarchies if (h / relative).is_dir()]


def leftovers(cid: str, agent: Any) -> list[str]:
    found = [str(p) for p in cgroup_dirs(cid)]
    found += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if cid in line]
    found += [str(p) for p in agent.state_dir.rglob(f"*{cid}*")]
    return found


def test_container_lifecycle_through_the_api_leaves_nothing_behind(fleet: dict) -> None:
    client = fleet["client"]
    response = client.post(
        "/api/v1/containers/",
        {
            "project": "alpha",
            "name": "hello",
            "mode": "host",
            "command": TICKER,
            "memory_limit": 64 * MiB,
            "pids_limit": 32,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    cid = created["id"]
    assert created["host"] in fleet["agents"]
    assert (
        "placed on" in Operation.objects.get(pk=created["operation"]["id"]).events.first().message
    )
    body = observed(client, cid, ("running",))
    assert body["desired_state"] == "running" and body["pid"]
    agent = fleet["agents"][body["host"]]

    # The host side: the container's cgroup under the project's slice, with its limits.
    dirs = cgroup_dirs(cid)
    assert any("machine-alpha.slice" in str(d) for d in dirs), dirs
    memory = next(d for d in dirs if "/memory/" in str(d))
    assert int((memory / "memory.limit_in_bytes").read_text()) == 64 * MiB
    pids = next(d for d in dirs if "/pids/" in str(d))
    assert (pids / "pids.max").read_text().strip() == "32"

    def logs_have_hello() -> bool:
        r = client.get(f"/api/v1/containers/{cid}/logs/?tail=50")
        return r.status_code == 200 and any(
            "hello-from-corral" in str(line) for line in r.json()["lines"]
        )

    wait_for(logs_have_hello, 20, "the container's first log line through the API")
    stats = client.get(f"/api/v1/containers/{cid}/stats/")
    assert stats.status_code == 200, stats.content
    assert stats.json()["memory_current"] > 0
    assert stats.json()["pids_current"] >= 1

    stop = client.post(f"/api/v1/containers/{cid}/stop/", {"timeout": 2}, format="json")
    assert stop.status_code == 202
    assert wait_op(client, stop.json()["id"])["status"] == "succeeded"
    observed(client, cid, ("exited", "stopped"))
    remove = client.post(f"/api/v1/containers/{cid}/remove/")
    assert remove.status_code == 202
    assert wait_op(client, remove.json()["id"])["status"] == "succeeded"
    assert Container.objects.get(pk=cid).observed_state == "removed"
    assert client.get(f"/api/v1/containers/{cid}/").status_code == 404
    wait_for(lambda: leftovers(cid, agent) == [], 10, "no cgroup, mount or state left")


def test_stop_while_the_agent_is_dead_applies_once_and_state_converges(fleet: dict) -> None:
    client = fleet["client"]
    created = client.post(
        "/api/v1/containers/",
        {
            "project": "alpha",
            "name": "survivor",
            "mode": "host",
            "command": TICKER,
        },
        format="json",
    ).json()
    cid = created["id"]
    body = observed(client, cid, ("running",))
    agent = fleet["agents"][body["host"]]
    pid = body["pid"]

    agent.proc.kill9()
    time.sleep(1.0)
    assert Path(f"/proc/{pid}").exists(), "the container must survive its agent"
    stop = client.post(f"/api/v1/containers/{cid}/stop/", {"timeout": 2}, format="json")
    assert stop.status_code == 202
    fleet["stack"].run_agent(agent)
    result = wait_op(client, stop.json()["id"], 60)
    assert result["status"] == "succeeded", result
    body = observed(client, cid, ("exited", "stopped"), 30)
    assert Container.objects.get(pk=cid).desired_state == "stopped"
    assert containers_reconcile()["stopped"] == 0  # converged: nothing to fix
    events = [e["kind"] for e in client.get(f"/api/v1/containers/{cid}/events/").json()]
    assert events.count("stop") == 1


def test_two_projects_share_a_host_cpu_fairly(fleet: dict) -> None:
    client = fleet["client"]
    host_id = next(iter(fleet["agents"]))
    burn = ["/bin/sh", "-c", "while :; do :; done & while :; do :; done & wait"]
    ids = {}
    for slug in ("alpha", "beta"):
        r = client.post(
            "/api/v1/containers/",
            {
                "project": slug,
                "name": f"burn-{slug}",
                "mode": "host",
                "command": burn,
                "host": host_id,
            },
            format="json",
        )
        assert r.status_code == 201, r.content
        ids[slug] = r.json()["id"]
    for cid in ids.values():
        observed(client, cid, ("running",))

    # Both containers' usage must be read at the same instant: the cgroups' own counters,
    # back to back, on this host (the stats API is checked once below, for both).
    counters = {}
    for slug, cid in ids.items():
        found = [d for d in cgroup_dirs(cid, slug) if d.parent.parent.parent.name == "cpuacct"]
        assert found, f"no cpuacct cgroup for {slug}"
        counters[slug] = found[0] / "cpuacct.usage"

    def usage() -> dict[str, int]:
        return {slug: int(path.read_text()) for slug, path in counters.items()}

    time.sleep(1.0)
    before = usage()
    time.sleep(4.0)
    after = usage()
    used = {s: after[s] - before[s] for s in ids}
    for cid in ids.values():
        assert client.get(f"/api/v1/containers/{cid}/stats/").json()["cpu_usage_ns"] > 0
    share = used["alpha"] / (used["alpha"] + used["beta"])
    for cid in ids.values():
        client.post(f"/api/v1/containers/{cid}/remove/", {"force": True}, format="json")
    # Both project slices have the default weight and four busy loops compete for two cores:
    # each project should get half. 35-65% allows for other load on this shared machine.
    assert 0.35 <= share <= 0.65, (share, used)
