"""Containers API: every endpoint and action with named actors (fleet admin, operator of A,
viewer of A, member of B only, anonymous), and bad input that names the field."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agent.protocol import envelope
from containers.models import Container, Membership, Project
from containers.services import container_create
from hosts.models import AuditEntry, Host

pytestmark = pytest.mark.django_db
GiB = 1 << 30


@pytest.fixture
def world() -> dict[str, Any]:
    users = get_user_model().objects
    actors = {
        "admin": users.create_user("admin", password="x", is_staff=True),
        "op_a": users.create_user("op_a", password="x"),
        "viewer_a": users.create_user("viewer_a", password="x"),
        "member_b": users.create_user("member_b", password="x"),
    }
    a = Project.objects.create(slug="alpha", name="Alpha", max_containers=3)
    b = Project.objects.create(slug="beta", name="Beta")
    Membership.objects.create(project=a, user=actors["op_a"], role="operator")
    Membership.objects.create(project=a, user=actors["viewer_a"], role="viewer")
    Membership.objects.create(project=b, user=actors["member_b"], role="operator")
    key = envelope.public_key_to_text(envelope.generate_key().public_key())
    host = Host.objects.create(
        name="h1", status="online", public_key=key, memory_total=8 * GiB, cpus=4
    )
    ca, _ = container_create(user=actors["admin"], project=a, name="web", mode="host")
    cb, _ = container_create(user=actors["admin"], project=b, name="db", mode="host")
    return {"actors": actors, "a": a, "b": b, "host": host, "ca": ca, "cb": cb}


def client_for(world: dict[str, Any], actor: str) -> APIClient:
    client = APIClient()
    if actor != "anonymous":
        client.force_authenticate(world["actors"][actor])
    return client


@pytest.mark.parametrize(
    ("actor", "visible"),
    [
        ("admin", {"web", "db"}),
        ("op_a", {"web"}),
        ("viewer_a", {"web"}),
        ("member_b", {"db"}),
        ("anonymous", None),
    ],
)
def test_container_list_shows_only_the_actors_projects(world, actor, visible) -> None:
    response = client_for(world, actor).get("/api/v1/containers/")
    if visible is None:
        assert response.status_code == 401
        return
    assert response.status_code == 200
    assert {row["name"] for row in response.json()["results"]} == visible


@pytest.mark.parametrize(
    ("actor", "get", "stop", "create", "delete"),
    [
        ("admin", 200, 202, 201, 202),
        ("op_a", 200, 202, 201, 202),
        ("viewer_a", 200, 403, 403, 403),
        ("member_b", 404, 404, 400, 404),
        ("anonymous", 401, 401, 401, 401),
    ],
)
def test_every_container_endpoint_answers_each_actor(
    world, actor, get, stop, create, delete
) -> None:
    client = client_for(world, actor)
    cid = world["ca"].pk
    assert client.get(f"/api/v1/containers/{cid}/").status_code == get
    assert client.get(f"/api/v1/containers/{cid}/events/").status_code == get
    assert client.get(f"/api/v1/containers/{cid}/operations/").status_code == get
    assert (
        client.post(f"/api/v1/containers/{cid}/stop/", {"timeout": 5}, format="json").status_code
        == stop
    )
    assert client.post(f"/api/v1/containers/{cid}/start/").status_code == stop
    assert client.post(f"/api/v1/containers/{cid}/restart/").status_code == stop
    created = client.post(
        "/api/v1/containers/",
        {"project": "alpha", "name": f"n-{actor}", "mode": "host"},
        format="json",
    )
    assert created.status_code == create, created.content
    if create == 400:
        assert "project" in created.json()
    assert client.delete(f"/api/v1/containers/{cid}/?force=true").status_code == delete


def test_another_tenants_container_answers_404_for_logs_and_stats(world) -> None:
    client = client_for(world, "member_b")
    cid = world["ca"].pk
    assert client.get(f"/api/v1/containers/{cid}/logs/").status_code == 404
    assert client.get(f"/api/v1/containers/{cid}/stats/").status_code == 404


def test_action_returns_the_operation_to_poll_and_sets_desired_state(world) -> None:
    client = client_for(world, "op_a")
    response = client.post(f"/api/v1/containers/{world['ca'].pk}/stop/")
    assert response.status_code == 202
    body = response.json()
    assert body["kind"] == "agent.containers.stop"
    assert body["target_id"] == str(world["ca"].pk)
    container = Container.objects.get(pk=world["ca"].pk)
    assert container.desired_state == "stopped"
    op = client.get(f"/api/v1/operations/{body['id']}/")
    assert op.status_code == 200
    assert client_for(world, "member_b").get(f"/api/v1/operations/{body['id']}/").status_code == 404


def test_action_on_an_offline_host_fails_at_once_with_the_reason(world) -> None:
    Host.objects.filter(pk=world["host"].pk).update(status="offline")
    response = client_for(world, "op_a").post(f"/api/v1/containers/{world['ca'].pk}/stop/")
    assert response.status_code == 503
    body = response.json()
    assert "h1 is offline since" in body["detail"]
    assert body["operation"]["status"] == "failed"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "bad name!"}, "name"),
        ({"name": "ok", "memory_limit": 1024}, "memory_limit"),
        ({"name": "ok", "restart_policy": "sometimes"}, "restart_policy"),
        ({"name": "ok", "env": {"1BAD": "x"}}, "env"),
        ({"name": "ok", "cpu_weight": 0}, "cpu_weight"),
        ({"name": "ok", "mode": "image"}, "image_reference"),
        ({"name": "ok", "host": "00000000-0000-0000-0000-000000000000"}, "host"),
        ({"name": "ok", "ports": [{"container_port": 80, "host_port": 70000}]}, "ports"),
        ({"name": "ok", "network_mode": "host"}, "network_mode"),
        ({"name": "web"}, "name"),
    ],
)
def test_bad_input_is_a_field_error_never_a_500(world, payload, field) -> None:
    body = {"project": "alpha", "mode": "host", **payload}
    response = client_for(world, "op_a").post("/api/v1/containers/", body, format="json")
    assert response.status_code in (400, 409), response.content
    text = response.content.decode()
    assert field in text, text


def test_quota_exceeded_names_the_quota_and_current_use(world) -> None:
    client = client_for(world, "op_a")
    for i in range(2):
        assert (
            client.post(
                "/api/v1/containers/",
                {"project": "alpha", "name": f"q{i}", "mode": "host"},
                format="json",
            ).status_code
            == 201
        )
    response = client.post(
        "/api/v1/containers/", {"project": "alpha", "name": "q9", "mode": "host"}, format="json"
    )
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "quota_exceeded"
    assert body["quota"] == "max_containers" and body["limit"] == 3 and body["used"] == 3


def test_no_host_fits_names_the_failed_constraint(world) -> None:
    response = client_for(world, "op_a").post(
        "/api/v1/containers/",
        {
            "project": "alpha",
            "name": "picky",
            "mode": "host",
            "placement": {"disk": "ssd"},
        },
        format="json",
    )
    assert response.status_code == 409
    assert response.json()["code"] == "no_host_fits"
    assert "labels do not match" in response.json()["detail"]


def test_remove_of_a_running_container_needs_force_and_removed_is_final(world) -> None:
    Container.objects.filter(pk=world["ca"].pk).update(observed_state="running")
    client = client_for(world, "op_a")
    response = client.post(f"/api/v1/containers/{world['ca'].pk}/remove/")
    assert response.status_code == 409
    assert "force" in response.json()["detail"]
    assert (
        client.post(
            f"/api/v1/containers/{world['ca'].pk}/remove/", {"force": True}, format="json"
        ).status_code
        == 202
    )
    again = client.post(f"/api/v1/containers/{world['ca'].pk}/start/")
    assert again.status_code == 409
    assert "was removed" in again.json()["detail"]


def test_projects_members_and_quotas_by_role(world) -> None:
    admin, op_a = client_for(world, "admin"), client_for(world, "op_a")
    assert (
        op_a.post("/api/v1/projects/", {"slug": "x", "name": "X"}, format="json").status_code == 403
    )
    assert (
        admin.post("/api/v1/projects/", {"slug": "x", "name": "X"}, format="json").status_code
        == 201
    )
    assert op_a.get("/api/v1/projects/beta/").status_code == 404
    assert (
        op_a.post(
            "/api/v1/projects/alpha/members/",
            {"username": "member_b", "role": "viewer"},
            format="json",
        ).status_code
        == 403
    )
    assert (
        admin.post(
            "/api/v1/projects/alpha/members/",
            {"username": "member_b", "role": "viewer"},
            format="json",
        ).status_code
        == 201
    )
    usage = op_a.get("/api/v1/projects/alpha/usage/").json()
    assert usage["containers"] == 1


def test_audit_log_records_mutations_and_is_for_admins_only(world) -> None:
    client_for(world, "op_a").post(f"/api/v1/containers/{world['ca'].pk}/stop/")
    client_for(world, "viewer_a").post(f"/api/v1/containers/{world['ca'].pk}/stop/")
    entries = AuditEntry.objects.order_by("at")
    assert [(e.username, e.status_code, e.outcome) for e in entries] == [
        ("op_a", 202, "ok"),
        ("viewer_a", 403, "denied"),
    ]
    assert entries[0].object_id == str(world["ca"].pk)
    assert client_for(world, "op_a").get("/api/v1/audit/").status_code == 403
    listed = client_for(world, "admin").get("/api/v1/audit/?username=op_a").json()
    assert listed["count"] == 1


def test_a_taken_name_is_refused_with_a_sentence_naming_the_field(world) -> None:
    response = client_for(world, "op_a").post(
        "/api/v1/containers/", {"project": "alpha", "name": "web", "mode": "host"}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "name"
    assert "already exists in project alpha" in body["detail"]
