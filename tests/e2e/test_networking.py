"""Container networking end to end, through the REST API: two agents in network namespaces
(each with its own container bridge inside its own namespace, as a real host has), bridge
addresses, published ports reached from the other host, ``none``, clean removal, port
conflicts at create time, and socket activation with idle stop."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agent.config import load_config
from containers.models import Container, Membership, Project
from hosts.models import Host
from tests.e2e.test_containers import observed, wait_op
from tests.support.procs import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.privileged]

# Answers every connection with "pong <greeting>" (python3 of the host: host containers see
# the host's /usr). On fd 3 when socket-activated, else on the given port.
SERVER = (
    "import os, socket, sys\n"
    "s = socket.socket(fileno=3) if os.environ.get('LISTEN_FDS') else socket.create_server(("
    "'0.0.0.0', int(sys.argv[1])))\n"
    "print('listening', os.environ.get('LISTEN_FDS'), os.environ.get('LISTEN_FDNAMES'), "
    "flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(('pong ' + sys.argv[2] + ' pid=' + str(os.getpid()) + '\\n').encode())\n"
    "    c.recv(1)\n"  # until the client hangs up: a held connection keeps the server busy
    "    c.close()\n"
)


def in_netns(path: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={path}", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fetch_from(netns_path: str, address: str, port: int) -> str:
    """Connect from inside another test host's namespace and read the answer."""
    code = (
        "import socket,sys; c=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); "
        "print(c.recv(200).decode().strip())"
    )
    r = in_netns(netns_path, "python3", "-c", code, address, str(port))
    return r.stdout.strip() if r.returncode == 0 else f"failed: {r.stderr.strip()[-300:]}"


@pytest.fixture
def net_fleet(stack: Any) -> Iterator[dict[str, Any]]:
    """Two agents, each with a uniquely named bridge and a private /24 for its containers.
    Every container of the test's project is removed afterwards, even when the test failed
    (through the API; whatever survives that is killed and its cgroups removed)."""
    stack.start_worker()
    agents = []
    for i in range(2):
        agent = stack.enroll(f"net{i}", host=stack.new_host(i))
        config = load_config(agent.config_path).with_changes(
            network_bridge=f"crn{secrets.token_hex(3)}",
            network_subnet=f"10.245.{random.randrange(1, 250)}.0/24",
        )
        config.save(agent.config_path)
        agent.network = config  # type: ignore[attr-defined]
        stack.run_agent(agent)
        agents.append(agent)
    for agent in agents:
        wait_for(
            lambda a=agent: Host.objects.filter(
                pk=a.host_id, status="online", memory_total__isnull=False
            ).exists(),
            120,
            f"{agent.name} online with inventory",
        )
    user = get_user_model().objects.create_user("netops", password="x")
    slug = f"net{secrets.token_hex(3)}"
    project = Project.objects.create(slug=slug, name="Net")
    Membership.objects.create(project=project, user=user, role="operator")
    client = APIClient()
    client.force_authenticate(user)
    try:
        yield {"agents": agents, "client": client, "project": slug, "stack": stack}
    finally:
        _remove_all(client, project)


def _remove_all(client: APIClient, project: Project) -> None:
    for container in Container.objects.filter(project=project, removed_at__isnull=True):
        with contextlib.suppress(Exception):
            remove(client, str(container.pk))
    for slice_dir in Path("/sys/fs/cgroup").glob(f"*/machine.slice/machine-{project.slug}.slice"):
        for procs in slice_dir.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    for slice_dir in Path("/sys/fs/cgroup").glob(f"*/machine.slice/machine-{project.slug}.slice"):
        for directory in [*sorted(slice_dir.rglob("*"), key=lambda p: -len(p.parts)), slice_dir]:
            while directory.is_dir():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)


def create(client: APIClient, agent: Any, name: str, **fields: Any) -> dict[str, Any]:
    body = {"project": _project(), "name": name, "mode": "host", "host": agent.host_id, **fields}
    response = client.post("/api/v1/containers/", body, format="json")
    assert response.status_code == 201, response.content
    data: dict[str, Any] = response.json()
    return data


def _project() -> str:
    return Project.objects.get(name="Net").slug


def remove(client: APIClient, cid: str) -> None:
    r = client.post(f"/api/v1/containers/{cid}/remove/", {"force": True}, format="json")
    assert r.status_code == 202, r.content
    assert wait_op(client, r.json()["id"])["status"] == "succeeded"


def ids_of(fleet: dict[str, Any], name: str) -> list[str]:
    return [str(c.pk) for c in Container.objects.filter(project__slug=fleet["project"], name=name)]


def logs(client: APIClient, cid: str) -> str:
    r = client.get(f"/api/v1/containers/{cid}/logs/?tail=200")
    return "\n".join(str(line.get("log", line)) for line in r.json().get("lines", []))


def leftovers_in_netns(agent: Any, cid: str) -> list[str]:
    """Veths, nft rules and leases that still name the container, read inside the agent's
    namespace and state directory."""
    netns = agent.host.path
    found = [
        f"link: {line}" for line in in_netns(netns, "ip", "-d", "-o", "link").stdout.splitlines()
        if cid in line
    ]  # fmt: skip
    ruleset = in_netns(netns, "nft", "list", "ruleset").stdout
    found += [f"nft: {line.strip()}" for line in ruleset.splitlines() if cid in line]
    for ipam in (agent.state_dir / "network").glob("*.ipam.json"):
        if cid in json.loads(ipam.read_text()).get("leases", {}):
            found.append(f"lease in {ipam.name}")
    found += [str(p) for p in (agent.state_dir / "network").rglob(f"*{cid}*")]
    # The pinned network namespace (agents share the test's mount namespace: nsenter --net).
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount: {line}" for line in mounts if cid in line]
    return found


def test_bridge_container_gets_an_address_reaches_its_gateway_and_is_reachable_from_another_host(
    net_fleet: dict[str, Any],
) -> None:
    client = net_fleet["client"]
    a, b = net_fleet["agents"]
    gateway = a.network.network_subnet.rsplit(".", 1)[0] + ".1"
    # The first run fails; the one its shim starts (restart policy) must still have the
    # network: its namespace is pinned, not created with the process.
    script = (
        "if [ ! -e /var/ran-once ]; then touch /var/ran-once; echo first-run; exit 3; fi; "
        f"busybox ping -c 1 -W 3 {gateway} >/dev/null && echo gateway-reachable; "
        "cat /etc/hosts; ip -o -4 addr show dev eth0; "
        f'exec python3 -c "$0" 8080 web'
    )
    created = create(
        client,
        a,
        "web",
        network_mode="bridge",
        ports=[{"container_port": 8080, "host_port": 18080}],
        restart_policy="on-failure",
        command=["/bin/sh", "-c", script, SERVER],
    )
    cid = created["id"]
    wait_for(
        lambda: client.get(f"/api/v1/containers/{cid}/").json()["restart_count"] >= 1,
        30,
        "restarted by its shim",
    )
    body = observed(client, cid, ("running",))
    assert body["ip_address"] and body["ip_address"].startswith(gateway.rsplit(".", 1)[0] + ".")
    assert body["ip_address"] != gateway
    wait_for(lambda: "listening" in logs(client, cid), 20, "server up")
    out = logs(client, cid)
    assert out.index("first-run") < out.index("gateway-reachable"), out
    assert f"{body['ip_address']}" in out and "web" in out, out  # /etc/hosts and eth0

    # The bridge lives inside agent A's namespace (its "host"), with the container's veth.
    links = in_netns(a.host.path, "ip", "-o", "link", "show", "master", a.network.network_bridge)
    assert links.stdout.count("veth") + links.stdout.count("@") >= 1, links.stdout

    # Published port: from agent B's namespace, to A's host address.
    answer = fetch_from(b.host.path, a.host.address, 18080)
    assert answer.startswith("pong web"), answer

    remove(client, cid)
    wait_for(lambda: leftovers_in_netns(a, cid) == [], 15, "no veth, lease, rule or file left")


def test_none_has_only_loopback_and_host_mode_shares_the_hosts_namespace_when_allowed(
    net_fleet: dict[str, Any],
) -> None:
    client = net_fleet["client"]
    a = net_fleet["agents"][0]
    cid = create(
        client,
        a,
        "isolated",
        network_mode="none",
        command=["/bin/sh", "-c", "echo interfaces: $(ls /sys/class/net); sleep 600"],
    )["id"]
    body = observed(client, cid, ("running",))
    assert body["ip_address"] is None
    wait_for(lambda: "interfaces:" in logs(client, cid), 20, "interfaces listed")
    line = next(x for x in logs(client, cid).splitlines() if "interfaces:" in x)
    assert line.strip().endswith("interfaces: lo"), line

    listing = ["/bin/sh", "-c", "echo interfaces: $(ls /sys/class/net); sleep 600"]
    body = {"project": net_fleet["project"], "name": "hostnet", "mode": "host",
            "host": a.host_id, "network_mode": "host", "command": listing}  # fmt: skip
    refused = client.post("/api/v1/containers/", body, format="json")
    assert refused.status_code == 400 and refused.json()["field"] == "network_mode", refused.json()
    Project.objects.filter(slug=net_fleet["project"]).update(allow_host_network=True)
    shared = client.post("/api/v1/containers/", body, format="json")
    assert shared.status_code == 201, shared.content
    hid = shared.json()["id"]
    observed(client, hid, ("running",))
    wait_for(lambda: "interfaces:" in logs(client, hid), 20, "host interfaces listed")
    line = next(x for x in logs(client, hid).splitlines() if "interfaces:" in x)
    assert "eth0" in line.split() and "lo" in line.split(), line  # the agent host's own
    remove(client, cid)


def test_published_port_conflict_is_refused_at_create_naming_the_field_and_holder(
    net_fleet: dict[str, Any],
) -> None:
    client = net_fleet["client"]
    a, b = net_fleet["agents"]
    ports = [{"container_port": 80, "host_port": 18081}]
    first = create(
        client, a, "holder", network_mode="bridge", ports=ports, command=["sleep", "600"]
    )
    body = {
        "project": net_fleet["project"],
        "name": "second",
        "mode": "host",
        "host": a.host_id,
        "network_mode": "bridge",
        "ports": [{"container_port": 81, "host_port": 18082}, *ports],
        "command": ["sleep", "600"],
    }
    refused = client.post("/api/v1/containers/", body, format="json")
    assert refused.status_code == 409, refused.content
    error = refused.json()
    assert error["field"] == "ports[1].host_port", error
    assert "holder" in error["detail"] and error["holder"] == first["id"], error
    # Another protocol, or another host, is fine.
    udp = {**body, "name": "udp", "ports": [{**ports[0], "protocol": "udp"}]}
    assert client.post("/api/v1/containers/", udp, format="json").status_code == 201
    elsewhere = {**body, "name": "elsewhere", "host": b.host_id}
    ok = client.post("/api/v1/containers/", elsewhere, format="json")
    assert ok.status_code == 201, ok.content
    for cid in (first["id"], ok.json()["id"], *ids_of(net_fleet, "udp")):
        observed(client, cid, ("running",))
        remove(client, cid)


def test_socket_activated_container_starts_on_first_connection_and_idle_stops(
    net_fleet: dict[str, Any],
) -> None:
    client = net_fleet["client"]
    a, b = net_fleet["agents"]
    port = 18090
    cid = create(
        client,
        a,
        "lazy",
        network_mode="none",
        command=["python3", "-c", SERVER, "0", "lazy"],
        sockets=[{"name": "web", "host_ip": "0.0.0.0", "port": port}],
        idle_stop_seconds=2,
    )["id"]
    body = observed(client, cid, ("created",))
    assert body["detail"] == "waiting for connection", body
    assert not body["pid"]
    # The agent holds the socket; nothing of the container runs yet.
    assert "listening" not in logs(client, cid)

    first = fetch_from(b.host.path, a.host.address, port)
    assert first.startswith("pong lazy pid=1"), first  # pid 1 of its own pid namespace
    assert "listening 1 web" in logs(client, cid)
    # While a connection is established the container is not idle (held from the test
    # process, which reaches the test hosts over their bridge).
    with socket.create_connection((a.host.address, port), timeout=10) as held:
        assert held.recv(200).startswith(b"pong lazy")
        observed(client, cid, ("running",), 20)

    # No connection for 2 s: stopped and armed again.
    body = observed(client, cid, ("created",), 20)
    assert body["detail"] == "waiting for connection", body
    second = fetch_from(b.host.path, a.host.address, port)
    assert second.startswith("pong lazy"), second
    assert logs(client, cid).count("listening 1 web") == 2

    # The agent restarts while the container waits: the new agent arms it again. Wait for
    # the agent's own word that the second run idled out (the API's observed state can still
    # say "created" from before the second connection until the next heartbeat).
    wait_for(lambda: a.proc.log().count("(idle)") >= 2, 30, "the second idle stop")
    observed(client, cid, ("created",), 20)
    armed_before = a.proc.log().count(" armed on web")
    a.proc.kill9()
    net_fleet["stack"].run_agent(a)
    wait_for(lambda: a.proc.log().count(" armed on web") > armed_before, 150, "armed again")
    third = fetch_from(b.host.path, a.host.address, port)
    assert third.startswith("pong lazy"), third
    assert logs(client, cid).count("listening 1 web") == 3

    remove(client, cid)
    wait_for(lambda: not _port_bound(a, port), 15, "the socket closed after remove")
    wait_for(lambda: leftovers_in_netns(a, cid) == [], 15, "nothing left behind")


def _port_bound(agent: Any, port: int) -> bool:
    out = in_netns(agent.host.path, "ss", "-Hltn", f"sport = :{port}").stdout
    return bool(out.strip())
