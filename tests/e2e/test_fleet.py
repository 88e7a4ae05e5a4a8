"""The fleet spine end to end: real PostgreSQL, a private Redis, the control-plane worker, and
agents running in network namespaces, each its own host."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agent.protocol import envelope, names
from agent.protocol.messages import Heartbeat, Ping
from hosts import services
from hosts.keys import signing_key
from hosts.models import Host, Operation, OperationEvent
from tests.support.procs import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.privileged]


def host_of(agent: Any) -> Host:
    return Host.objects.get(pk=agent.host_id)


def wait_status(agent: Any, status: str, timeout: float) -> float:
    started = time.monotonic()
    wait_for(lambda: host_of(agent).status == status, timeout, f"host {agent.name} to be {status}")
    return time.monotonic() - started


def wait_op(op: Operation, timeout: float = 20.0) -> Operation:
    try:
        wait_for(
            lambda: Operation.objects.get(pk=op.pk).status not in ("pending", "sent", "running"),
            timeout,
            f"operation {op.kind} to finish",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {Operation.objects.get(pk=op.pk).status}") from None
    return Operation.objects.get(pk=op.pk)


@pytest.fixture
def fleet(stack):
    stack.start_worker()
    agents = []
    for i in range(3):
        agent = stack.enroll(f"node{i}", host=stack.new_host(i))
        stack.run_agent(agent)
        agents.append(agent)
    for agent in agents:
        wait_for(
            lambda a=agent: host_of(a).status == "online" and host_of(a).inventory_at,
            120,  # agents start slowly when the machine is loaded
            f"{agent.name} online with inventory",
        )
    return agents


def admin_client() -> APIClient:
    admin = get_user_model().objects.create_user("fleet-admin", password="x", is_staff=True)
    client = APIClient()
    client.force_authenticate(admin)
    return client


def test_three_agents_in_three_namespaces_are_online_with_full_inventory(fleet, stack) -> None:
    client = admin_client()
    body = client.get("/api/v1/hosts/").json()
    assert body["count"] == 3
    rows = {row["name"]: row for row in body["results"]}
    assert set(rows) == {"node0", "node1", "node2"}
    for agent in fleet:
        row = rows[agent.name]
        assert row["status"] == "online"
        assert row["queue"] == f"host.{agent.host_id}"
        assert row["cgroup_version"] == "v1"  # this machine's real layout
        assert row["selinux_mode"] == "disabled"
        assert row["kernel"] and row["cpus"] and row["memory_total"]
        detail = client.get(f"/api/v1/hosts/{agent.host_id}/").json()
        inventory = detail["inventory"]
        for section in (
            "cpu",
            "memory",
            "disks",
            "network",
            "kernel",
            "os",
            "virtualization",
            "namespaces",
            "cgroups",
            "init",
            "selinux",
            "overlay",
            "seccomp",
            "runtimes",
            "clock",
            "agent",
            "container_network",
        ):
            assert section in inventory, section
        assert inventory["container_network"]["subnet"] == "10.88.0.0/16"
        # The agent sees its own network namespace: its test address, not the host's.
        assert agent.host.address in str(inventory["network"])
        assert detail["address"] == agent.host.address
    # Each agent consumes only its own queue: a ping to node1 is answered by node1.
    op = services.host_send(host=host_of(fleet[1]), kind=names.AGENT_PING, payload=Ping())
    op = wait_op(op)
    assert op.status == "succeeded"
    assert op.result["host"] == "node1"


def test_killed_agent_goes_unknown_then_offline_and_comes_back_as_the_same_host(
    fleet, stack
) -> None:
    victim = fleet[0]
    victim.proc.kill9()
    killed_at = time.monotonic()
    wait_status(victim, "unknown", 15)
    to_unknown = time.monotonic() - killed_at
    wait_status(victim, "offline", 20)
    to_offline = time.monotonic() - killed_at
    # thresholds: unknown after 3 s, offline after 6 s, checked every 0.5 s
    assert 2.0 <= to_unknown <= 7.0, to_unknown
    assert 5.0 <= to_offline <= 11.0, to_offline
    assert host_of(fleet[1]).status == "online"
    history = list(
        host_of(victim).status_changes.order_by("at").values_list("to_status", flat=True)
    )
    assert history[-2:] == ["unknown", "offline"]

    # A command to the offline host fails at once, naming why.
    op = services.host_send(host=host_of(victim), kind=names.AGENT_PING, payload=Ping())
    op.refresh_from_db()
    assert op.status == "failed"
    assert op.error_code == "host_unavailable"
    assert "node0 is offline since" in op.error

    stack.run_agent(victim)
    wait_status(victim, "online", 30)
    assert Host.objects.count() == 3
    assert Host.objects.filter(name="node0").count() == 1


def test_a_host_cannot_speak_for_another(fleet, stack) -> None:
    from config.celery import app

    a, b = fleet[0], fleet[1]
    key_a = envelope.private_key_from_pem((a.state_dir / "agent_key.pem").read_bytes())
    before = host_of(b)
    forged = envelope.seal(
        key_a,
        kind=names.CP_HEARTBEAT,
        host_id=b.host_id,
        payload=Heartbeat(seq=before.last_seq + 10**9, sent_at=time.time(), agent_version="6.6.6"),
    )
    app.send_task(names.CP_HEARTBEAT, kwargs={"message": forged}, queue="controlplane")
    worker = stack.procs[0]
    wait_for(lambda: "heartbeat rejected" in worker.log(), 15, "the forged beat to be rejected")
    after = host_of(b)
    assert after.agent_version != "6.6.6"
    assert after.last_seq < before.last_seq + 10**9
    assert f"claiming host {b.host_id}" in worker.log()


def test_replayed_and_expired_commands_are_refused(fleet, stack) -> None:
    from config.celery import app

    host = host_of(fleet[2])
    op = services.operation_create(kind=names.AGENT_PING, host=host)
    message = envelope.seal(
        signing_key(),
        kind=names.AGENT_PING,
        host_id=str(host.pk),
        payload=Ping(text="once"),
        operation_id=str(op.pk),
    )
    app.send_task(names.AGENT_PING, kwargs={"message": message}, queue=host.queue)
    assert wait_op(op).status == "succeeded"
    # The same signed message again: refused, and the operation keeps its outcome.
    app.send_task(names.AGENT_PING, kwargs={"message": message}, queue=host.queue)
    wait_for(
        lambda: OperationEvent.objects.filter(operation=op, message__contains="replayed").exists(),
        15,
        "the replay to be refused",
    )
    assert Operation.objects.get(pk=op.pk).status == "succeeded"

    expired_op = services.operation_create(kind=names.AGENT_PING, host=host)
    old = time.time() - 3600
    expired = envelope.seal(
        signing_key(),
        kind=names.AGENT_PING,
        host_id=str(host.pk),
        payload=Ping(),
        operation_id=str(expired_op.pk),
        ttl=60,
        now=old,
    )
    app.send_task(names.AGENT_PING, kwargs={"message": expired}, queue=host.queue)
    expired_op = wait_op(expired_op)
    assert expired_op.status == "failed"
    assert expired_op.error_code == "expired"
    assert "expired" in expired_op.error


def test_command_queued_while_the_agent_is_dead_runs_once_after_restart_or_ends_lost(
    fleet, stack
) -> None:
    victim = fleet[1]
    victim.proc.kill9()
    host = host_of(victim)
    assert host.status == "online"  # not yet noticed: the command is accepted and queued
    op = services.host_send(host=host, kind=names.AGENT_PING, payload=Ping(text="late"))
    lost = services.host_send(
        host=host, kind=names.AGENT_PING, payload=Ping(text="never"), deadline_seconds=0.5
    )
    time.sleep(1.0)
    assert services.operations_expire() >= 1
    assert Operation.objects.get(pk=lost.pk).status == "lost"
    stack.run_agent(victim)
    op = wait_op(op, 30)
    assert op.status == "succeeded"
    assert op.result["pong"] == "late"
    # The lost one may still be delivered (its envelope expired with its deadline): it must
    # then be refused as expired, never applied.
    time.sleep(1.0)
    final = Operation.objects.get(pk=lost.pk)
    assert final.status in ("lost", "failed")
    if final.status == "failed":
        assert final.error_code == "expired"
