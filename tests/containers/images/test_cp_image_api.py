"""Image API: list/get/register/permissions/bad input, tenants, encrypted registry
credentials, pull operations per host and how their results land on the Image."""

from __future__ import annotations

from typing import Any

import pytest

from agent.protocol import names
from containers.images import services as image_services
from containers.models import Image, ImageLocation
from containers.models_images import ImagePull, RegistryCredential
from hosts.models import Operation
from hosts.secrets import decrypt
from tests.containers.images.cp_support import api, make_host, make_project, make_user, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def actors() -> dict[str, Any]:
    alpha, beta = make_project("alpha"), make_project("beta")
    operator = member(make_user("op-alpha"), alpha)
    viewer = member(make_user("viewer-alpha"), alpha, "viewer")
    outsider = member(make_user("op-beta"), beta)
    admin = make_user("admin", staff=True)
    return {
        "alpha": alpha,
        "beta": beta,
        "operator": operator,
        "viewer": viewer,
        "outsider": outsider,
        "admin": admin,
    }


def register(client: Any, project: str, reference: str, **extra: Any) -> Any:
    return client.post(
        "/api/v1/images/", {"project": project, "reference": reference, **extra}, format="json"
    )


def test_operator_registers_an_image_and_registering_again_is_idempotent(actors) -> None:
    client = api(actors["operator"])
    first = register(client, "alpha", "registry.example:5000/app:1.2")
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["reference"] == "registry.example:5000/app:1.2"
    assert body["certification"] == "unknown" and body["hosts"] == []
    again = register(client, "alpha", "registry.example:5000/app:1.2")
    assert again.status_code == 201 and again.json()["id"] == body["id"]
    assert Image.objects.filter(project=actors["alpha"]).count() == 1


def test_list_and_get_are_scoped_and_another_tenant_gets_404(actors) -> None:
    register(api(actors["operator"]), "alpha", "app:1")
    register(api(actors["outsider"]), "beta", "other:2")
    listed = api(actors["viewer"]).get("/api/v1/images/").json()
    assert [r["reference"] for r in listed["results"]] == ["app:1"]
    beta_id = Image.objects.get(reference="other:2").pk
    assert api(actors["operator"]).get(f"/api/v1/images/{beta_id}/").status_code == 404
    assert api(actors["outsider"]).get(f"/api/v1/images/{beta_id}/").status_code == 200
    assert api(actors["admin"]).get("/api/v1/images/").json()["count"] == 2


def test_viewer_cannot_register_and_outsider_cannot_target_another_project(actors) -> None:
    denied = register(api(actors["viewer"]), "alpha", "app:1")
    assert denied.status_code == 403
    foreign = register(api(actors["outsider"]), "alpha", "app:1")
    assert foreign.status_code == 400 and "project" in foreign.json()
    assert not Image.objects.exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"reference": "Not A Ref"}, "reference"),
        ({"reference": "app:"}, "reference"),
        ({"reference": "app:1", "registry_url": "ftp://x"}, "registry_url"),
        ({"reference": ""}, "reference"),
    ],
)
def test_bad_input_is_400_naming_the_field(actors, data, field) -> None:
    resp = api(actors["operator"]).post(
        "/api/v1/images/", {"project": "alpha", **data}, format="json"
    )
    assert resp.status_code == 400, resp.content
    assert field in str(resp.json())


def test_credentials_are_encrypted_at_rest_and_never_returned(actors) -> None:
    alpha_admin = member(make_user("admin-alpha"), actors["alpha"], "admin")
    client = api(alpha_admin)
    resp = client.post(
        "/api/v1/images/credentials/",
        {
            "project": "alpha",
            "registry": "registry.example:5000",
            "username": "robot",
            "password": "s3cret-pass",
        },
        format="json",
    )
    assert resp.status_code == 201, resp.content
    assert "s3cret-pass" not in resp.content.decode()
    assert "password" not in resp.json()
    row = RegistryCredential.objects.get()
    assert "s3cret-pass" not in row.secret and decrypt(row.secret) == "s3cret-pass"
    listed = client.get("/api/v1/images/credentials/?project=alpha")
    assert listed.json()[0]["username"] == "robot"
    assert "s3cret" not in listed.content.decode() and row.secret not in listed.content.decode()
    # Operators may use but not set credentials; other tenants do not see them at all.
    denied = api(actors["operator"]).post(
        "/api/v1/images/credentials/",
        {"project": "alpha", "registry": "r.example", "username": "u", "password": "p"},
        format="json",
    )
    assert denied.status_code == 403
    foreign = api(actors["outsider"]).get("/api/v1/images/credentials/?project=alpha")
    assert foreign.status_code == 400


def test_pull_sends_the_decrypted_credentials_only_inside_the_command(actors) -> None:
    image_services.credential_set(
        user=actors["admin"],
        project=actors["alpha"],
        registry="registry.example:5000",
        username="robot",
        password="s3cret-pass",
    )
    image = image_services.image_register(
        user=None, project=actors["alpha"], reference="registry.example:5000/app:1.2"
    )
    msg = image_services.pull_message(image, make_host("node-a"))
    assert msg.auth is not None and (msg.auth.username, msg.auth.password) == (
        "robot",
        "s3cret-pass",
    )
    other = image_services.image_register(user=None, project=actors["alpha"], reference="app:1")
    assert image_services.pull_message(other, make_host("node-b")).auth is None


def test_pull_makes_one_operation_per_host_and_an_offline_host_fails_its_own(actors) -> None:
    online, offline = make_host("node-a"), make_host("node-b", status="offline")
    image = image_services.image_register(user=None, project=actors["alpha"], reference="app:1")
    resp = api(actors["operator"]).post(
        f"/api/v1/images/{image.pk}/pull/", {"hosts": [str(online.pk), str(offline.pk)]}
    )
    assert resp.status_code == 202, resp.content
    ops = {op["host"]: op for op in resp.json()}
    assert ops[str(offline.pk)]["status"] == "failed"
    assert ops[str(offline.pk)]["error_code"] == "host_unavailable"
    assert ops[str(online.pk)]["status"] == "pending"
    assert all(op["kind"] == names.AGENT_IMAGE_PULL for op in resp.json())
    assert ImagePull.objects.filter(image=image).count() == 2


def test_pull_refuses_bad_hosts_and_viewers(actors) -> None:
    image = image_services.image_register(user=None, project=actors["alpha"], reference="app:1")
    bad = api(actors["operator"]).post(f"/api/v1/images/{image.pk}/pull/", {"hosts": []})
    assert bad.status_code == 400 and "hosts" in bad.json()
    unknown = api(actors["operator"]).post(
        f"/api/v1/images/{image.pk}/pull/",
        {"hosts": ["00000000-0000-0000-0000-000000000000"]},
    )
    assert unknown.status_code == 400 and "hosts" in unknown.json()
    host = make_host("node-a")
    viewer = api(actors["viewer"]).post(f"/api/v1/images/{image.pk}/pull/", {"hosts": [host.pk]})
    assert viewer.status_code == 403
    dedicated = make_host("node-b", project_slug="beta")
    resp = api(actors["operator"]).post(
        f"/api/v1/images/{image.pk}/pull/", {"hosts": [dedicated.pk]}
    )
    assert resp.status_code == 400 and resp.json()["field"] == "hosts"


def _pull_result(digest: str, findings: list[dict[str, Any]]) -> dict[str, Any]:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "Env": ["PATH=/bin"],
            "User": "1000",
            "WorkingDir": "/srv",
            "Labels": {"tier": "web"},
            "ExposedPorts": {"8080/tcp": {}},
            "StopSignal": "SIGQUIT",
            "Healthcheck": {"Test": ["NONE"]},
        },
    }
    return {
        "digest": digest,
        "size": 1234,
        "config": config,
        "layers": ["sha256:" + "a" * 64],
        "platform": "linux/amd64",
        "labels": {"tier": "web"},
        "findings": findings,
    }


def test_a_finished_pull_lands_on_the_image_once(actors) -> None:
    host = make_host("node-a")
    image = image_services.image_register(user=None, project=actors["alpha"], reference="app:1")
    (op,) = image_services.image_pull(user=None, image=image, hosts=[host])
    digest = "sha256:" + "b" * 64
    findings = [
        {"id": "cert.image.E003", "verdict": "pass", "message": "runs as 1000"},
        {"id": "cert.image.E007", "verdict": "pass", "message": "none"},
        {"id": "cert.image.E008", "verdict": "pass", "message": "none"},
    ]
    Operation.objects.filter(pk=op.pk).update(
        status="succeeded", result=_pull_result(digest, findings)
    )
    body = api(actors["operator"]).get(f"/api/v1/images/{image.pk}/").json()
    assert body["digest"] == digest and body["size"] == 1234
    assert body["platform"] == "linux/amd64"
    assert body["config"]["User"] == "1000" and body["config"]["StopSignal"] == "SIGQUIT"
    assert "Healthcheck" not in body["config"]
    assert body["labels"] == {"tier": "web"}
    assert body["certification"] == "certified"  # development-image: the fleet default
    assert [h["name"] for h in body["hosts"]] == ["node-a"]
    assert image_services.image_pulls_sync() == 0  # folded once
    assert ImageLocation.objects.filter(image=image, host=host).count() == 1


def test_gc_sends_a_keep_list_to_every_host_holding_the_image(actors) -> None:
    a, b = make_host("node-a"), make_host("node-b")
    image = image_services.image_register(user=None, project=actors["alpha"], reference="app:1")
    other = image_services.image_register(user=None, project=actors["alpha"], reference="db:2")
    Image.objects.filter(pk=other.pk).update(digest="sha256:" + "c" * 64)
    for host in (a, b):
        ImageLocation.objects.create(image=image, host=host)
    ImageLocation.objects.create(image=other, host=a)
    resp = api(actors["operator"]).post(f"/api/v1/images/{image.pk}/gc/")
    assert resp.status_code == 202
    payloads = {
        Operation.objects.get(pk=op["id"]).host.name: Operation.objects.get(pk=op["id"]).payload
        for op in resp.json()
    }
    assert payloads == {"node-a": {"keep": ["sha256:" + "c" * 64]}, "node-b": {"keep": []}}
    assert not ImageLocation.objects.filter(image=image).exists()
