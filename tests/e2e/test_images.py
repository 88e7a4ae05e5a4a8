"""Images end to end: an archive uploaded through the API is pulled by two real agents in
their own network namespaces from the control plane's registry endpoint (per-host tokens in
signed commands), with byte progress, results folded into the Image, certified by the
agents' image checks, run as containers and collected again from both hosts.

The uploaded image then runs as a container on both hosts (the agents' own runtime) before
its collection."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from containers.images import services as image_services
from containers.models import Image, ImageLocation
from hosts.models import Host, Operation
from tests.containers.images.cp_support import docker_save, oci_tarball, passing_image
from tests.support.procs import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.privileged]


def wait_op(op_id: Any, timeout: float = 60.0) -> Operation:
    wait_for(
        lambda: Operation.objects.get(pk=op_id).status not in ("pending", "sent", "running"),
        timeout,
        f"operation {op_id} to finish",
    )
    return Operation.objects.get(pk=op_id)


@pytest.fixture
def bridge_server(stack: Any, settings: Any) -> Iterator[str]:
    """The web app served on the bridge address too, so agents in their namespaces reach the
    registry endpoint (the test's live server listens on loopback only)."""
    from django.test.testcases import LiveServerThread, _StaticFilesHandler

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, stack.broker.bridge.address]
    server = LiveServerThread(stack.broker.bridge.address, _StaticFilesHandler)
    server.daemon = True
    server.start()
    server.is_ready.wait(10)
    if server.error:
        raise server.error
    try:
        yield f"http://{stack.broker.bridge.address}:{server.port}"
    finally:
        server.terminate()
        server.join(10)


@pytest.fixture
def two_agents(stack: Any, bridge_server: str, settings: Any, tmp_path: Path) -> list[Any]:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CORRAL = {**settings.CORRAL, "PUBLIC_URL": bridge_server}
    stack.start_worker()
    agents = []
    for i in range(2):
        agent = stack.enroll(f"img{i}", host=stack.new_host(10 + i))
        stack.run_agent(agent)
        agents.append(agent)
    for agent in agents:
        wait_for(
            lambda a=agent: Host.objects.get(pk=a.host_id).status == "online",
            60,
            f"{agent.name} online",
        )
    return agents


@pytest.mark.parametrize("archive_format", ["oci-layout", "docker-save"])
def test_an_uploaded_archive_runs_as_containers_on_two_hosts(
    stack: Any, two_agents: list[Any], tmp_path: Path, archive_format: str
) -> None:
    admin = get_user_model().objects.create_user("img-admin", password="x", is_staff=True)
    client = APIClient()
    client.force_authenticate(admin)
    assert client.post("/api/v1/projects/", {"slug": "alpha", "name": "Alpha"}).status_code == 201
    built = passing_image()
    if archive_format == "oci-layout":
        archive = oci_tarball(tmp_path, built, "1.0")
    else:
        archive = docker_save(tmp_path, built, ["tools:1.0"], new_format=True)
    upload = client.post(
        "/api/v1/images/upload/",
        {"project": "alpha", "name": "tools", "archive": _named(archive)},
        format="multipart",
    )
    assert upload.status_code == 201, upload.content
    image_id = upload.json()[0]["id"]
    reference = upload.json()[0]["reference"]
    hosts = [a.host_id for a in two_agents]
    pulled = client.post(f"/api/v1/images/{image_id}/pull/", {"hosts": hosts}, format="json")
    assert pulled.status_code == 202, pulled.content
    ops = [wait_op(op["id"]) for op in pulled.json()]
    for op, agent in zip(ops, two_agents, strict=True):
        assert op.status == "succeeded", (op.error_code, op.error, agent.proc.log()[-3000:])
        assert op.result["digest"] == built.digest
        assert op.progress_total and op.progress_done == op.progress_total
        assert (agent.state_dir / "images" / "images" / f"{built.digest[7:]}.json").exists()
    image_services.image_pulls_sync()

    def both_hosts_hold_it() -> bool:
        body = client.get(f"/api/v1/images/{image_id}/").json()
        return sorted(h["name"] for h in body["hosts"]) == ["img0", "img1"]

    # The worker folds each result in as it arrives; the sync above races it harmlessly.
    wait_for(both_hosts_hold_it, 20, "both hosts recorded as holding the image")
    body = client.get(f"/api/v1/images/{image_id}/").json()
    assert body["certification"] == "certified"
    shared_layers = _run_on_both(client, reference, two_agents)
    gc = client.post(f"/api/v1/images/{image_id}/gc/")
    assert gc.status_code == 202
    for op in gc.json():
        done = wait_op(op["id"])
        assert done.status == "succeeded", (done.error_code, done.error)
        assert built.digest in done.result["removed_images"]
    for agent in two_agents:
        assert not (agent.state_dir / "images" / "images" / f"{built.digest[7:]}.json").exists()
    assert not ImageLocation.objects.filter(image_id=image_id).exists()
    # No container uses the image any more: GC freed its unpacked layers on disk.
    assert [d for d in shared_layers if Path(d).exists()] == []
    assert Image.objects.filter(pk=image_id).exists()  # the upload stays on the control plane


def _lower_dirs(agent: Any, container_id: str) -> str:
    bundle = agent.state_dir / "containers" / container_id / "bundle" / "config.json"
    return str(json.loads(bundle.read_text())["annotations"]["run.corral.rootfs.lower"])


def _run_on_both(client: APIClient, reference: str, agents: list[Any]) -> list[str]:
    """The uploaded image runs as a container on each host (the agents' own runtime, overlay
    over the pulled layers), prints from inside the image, and is removed again. A second
    container on the first host stacks the very same unpacked layer directories."""
    ids = []
    for agent in [*agents, agents[0]]:
        resp = client.post(
            "/api/v1/containers/",
            {
                "project": "alpha",
                "name": f"hello-{agent.name}-{len(ids)}",
                "image": reference,
                "host": agent.host_id,
                "command": ["/bin/sh", "-c", "echo hello from $(cat /etc/hostname); sleep 60"],
            },
            format="json",
        )
        assert resp.status_code == 201, resp.content
        created = wait_op(resp.json()["operation"]["id"])
        assert created.status == "succeeded", (created.error_code, created.error)
        assert created.result["status"]["state"] == "running"
        ids.append(resp.json()["id"])
    first, _, again = ids  # the first and third both run on the first host
    assert _lower_dirs(agents[0], first) == _lower_dirs(agents[0], again)
    shared = _lower_dirs(agents[0], first).split(":")
    assert all(Path(d).is_dir() and "/images/layers/" in d for d in shared), shared
    for cid in ids:
        wait_for(
            lambda c=cid: "hello from" in str(client.get(f"/api/v1/containers/{c}/logs/").json()),
            20,
            "the container's output",
        )
    for cid in ids:
        removed = client.post(f"/api/v1/containers/{cid}/remove/", {"force": True}, format="json")
        assert removed.status_code == 202, removed.content
        done = wait_op(removed.json()["id"])
        assert done.status == "succeeded", (done.error_code, done.error)
    return shared


def _named(path: Path) -> io.BytesIO:
    data = io.BytesIO(path.read_bytes())
    data.name = path.name
    return data
