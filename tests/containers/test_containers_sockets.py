"""Socket activation as container fields: ``sockets`` and ``idle_stop_seconds`` through the
API (bad input names the item and its field; host ports taken by published ports or other
sockets are a 409 naming the holder), the wire spec the agent receives, and the migration of
the labels that declared them before."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agent.protocol import envelope
from agent.protocol.containers import ContainerSpec, SocketSpec
from containers.models import Container, Membership, Project
from containers.services import container_spec
from hosts.models import Host

pytestmark = pytest.mark.django_db
GiB = 1 << 30


@pytest.fixture
def operator() -> APIClient:
    """An operator of project "alpha", with one online host."""
    user = get_user_model().objects.create_user("op", password="x")
    project = Project.objects.create(slug="alpha", name="Alpha")
    Membership.objects.create(project=project, user=user, role="operator")
    key = envelope.public_key_to_text(envelope.generate_key().public_key())
    Host.objects.create(name="h1", status="online", public_key=key, memory_total=8 * GiB, cpus=4)
    client = APIClient()
    client.force_authenticate(user)
    return client


def post(client: APIClient, name: str, **fields: Any) -> Any:
    body = {"project": "alpha", "name": name, "mode": "host", "command": ["srv"], **fields}
    return client.post("/api/v1/containers/", body, format="json")


WEB = {"name": "web", "port": 8080}


@pytest.mark.parametrize(
    ("fields", "key", "message"),
    [
        ({"sockets": [WEB, {"name": "b", "port": 70000}]}, "sockets", "sockets[1].port: 70000"),
        ({"sockets": [WEB, {"name": "b", "port": 0}]}, "sockets", "sockets[1].port: 0 is not"),
        (
            {"sockets": [{"name": "a", "protocol": "sctp", "port": 8080}]},
            "sockets",
            "sockets[0].protocol: 'sctp' is not one of tcp, udp, unix",
        ),
        (
            {"sockets": [WEB, {"name": "web", "port": 8081}]},
            "sockets",
            "sockets[1].name: 'web' is also sockets[0]",
        ),
        (
            {"sockets": [{"name": "web", "port": 80}]},
            "sockets",
            "sockets[0].port: 80 is privileged (<1024) and not permitted",
        ),
        (
            {"ports": [{"container_port": 80, "host_port": 443}]},
            "ports",
            "ports[0].host_port: 443 is privileged (<1024) and not permitted",
        ),
        (
            {"sockets": [{"name": "ctl", "protocol": "unix", "path": "run/ctl.sock"}]},
            "sockets",
            "sockets[0].path: a unix socket needs an absolute path",
        ),
        (
            {"sockets": [{"name": "ctl", "protocol": "unix", "path": "/run/c", "port": 9}]},
            "sockets",
            "sockets[0].port: does not apply to a unix socket",
        ),
        (
            {"sockets": [{"name": "web", "port": 8080, "host_ip": "localhost"}]},
            "sockets",
            "sockets[0].host_ip: 'localhost' is not an IP address",
        ),
        ({"sockets": [{"name": "a:b", "port": 8080}]}, "sockets", "sockets[0].name:"),
        ({"sockets": [{"port": 8080}]}, "sockets", "sockets[0].name:"),
        ({"sockets": ["tcp://0.0.0.0:8080"]}, "sockets", ""),
        ({"idle_stop_seconds": 30}, "idle_stop_seconds", "socket-activated"),
        ({"sockets": [WEB], "idle_stop_seconds": 0}, "idle_stop_seconds", ""),
    ],
)
def test_bad_sockets_are_a_400_naming_the_item_and_its_field(
    operator: APIClient, fields: dict[str, Any], key: str, message: str
) -> None:
    response = post(operator, "lazy", **fields)
    assert response.status_code == 400, response.content
    errors = response.json()[key]
    assert any(message in str(e) for e in errors), errors
    assert not Container.objects.filter(name="lazy").exists()


def test_sockets_round_trip_normalised_through_the_api_and_onto_the_wire(
    operator: APIClient,
) -> None:
    sockets = [
        {"name": "web", "port": 8080},
        {"name": "dns", "protocol": "udp", "host_ip": "0.0.0.0", "port": 5353},
        {"name": "ctl", "protocol": "unix", "path": "/run/lazy.sock"},
    ]
    response = post(operator, "lazy", sockets=sockets, idle_stop_seconds=30)
    assert response.status_code == 201, response.content
    normalised = [
        {"name": "web", "protocol": "tcp", "host_ip": "127.0.0.1", "port": 8080},
        {"name": "dns", "protocol": "udp", "host_ip": "0.0.0.0", "port": 5353},
        {"name": "ctl", "protocol": "unix", "path": "/run/lazy.sock"},
    ]
    assert response.json()["sockets"] == normalised
    again = operator.get(f"/api/v1/containers/{response.json()['id']}/").json()
    assert again["sockets"] == normalised and again["idle_stop_seconds"] == 30

    spec = container_spec(Container.objects.get(pk=again["id"]))
    assert spec.sockets == [
        SocketSpec(name="web", protocol="tcp", host_ip="127.0.0.1", port=8080),
        SocketSpec(name="dns", protocol="udp", host_ip="0.0.0.0", port=5353),
        SocketSpec(name="ctl", protocol="unix", path="/run/lazy.sock"),
    ]
    assert spec.idle_stop_seconds == 30
    assert ContainerSpec.from_dict(spec.to_dict()) == spec  # what the agent decodes


def test_a_container_without_sockets_has_an_empty_list_and_no_idle_stop(
    operator: APIClient,
) -> None:
    body = post(operator, "plain").json()
    assert body["sockets"] == [] and body["idle_stop_seconds"] is None
    spec = container_spec(Container.objects.get(pk=body["id"]))
    assert spec.sockets == [] and spec.idle_stop_seconds is None


@pytest.mark.parametrize(
    ("first", "second", "field"),
    [
        # A socket on a port another container publishes, and the other way round.
        (
            {"network_mode": "bridge", "ports": [{"container_port": 80, "host_port": 8080}]},
            {"sockets": [{"name": "web", "host_ip": "10.0.0.5", "port": 8080}]},
            "sockets[0].port",
        ),
        (
            {"sockets": [{"name": "web", "host_ip": "0.0.0.0", "port": 8080}]},
            {"network_mode": "bridge", "ports": [{"container_port": 80, "host_port": 8080}]},
            "ports[0].host_port",
        ),
        (
            {"sockets": [{"name": "ctl", "protocol": "unix", "path": "/run/a.sock"}]},
            {"sockets": [{"name": "ctl", "protocol": "unix", "path": "/run/a.sock"}]},
            "sockets[0].path",
        ),
        (
            {"sockets": [{"name": "web", "port": 8080}]},
            {"sockets": [{"name": "x", "port": 9000}, {"name": "web", "port": 8080}]},
            "sockets[1].port",
        ),
    ],
)
def test_a_host_port_held_by_another_container_is_a_409_naming_field_and_holder(
    operator: APIClient, first: dict[str, Any], second: dict[str, Any], field: str
) -> None:
    holder = post(operator, "holder", **first)
    assert holder.status_code == 201, holder.content
    refused = post(operator, "second", **second)
    assert refused.status_code == 409, refused.content
    error = refused.json()
    assert error["code"] == "port_in_use" and error["field"] == field, error
    assert error["holder"] == holder.json()["id"] and "holder" in error["detail"], error


def test_own_published_port_and_socket_on_one_host_port_conflict(operator: APIClient) -> None:
    refused = post(
        operator,
        "both",
        network_mode="bridge",
        ports=[{"container_port": 80, "host_port": 8080}],
        sockets=[{"name": "web", "port": 8080}],
    )
    assert refused.status_code == 409, refused.content
    assert refused.json()["field"] == "sockets[0].port"
    assert "ports[0].host_port" in refused.json()["detail"]


def test_other_addresses_protocols_and_removed_holders_do_not_conflict(
    operator: APIClient,
) -> None:
    assert post(operator, "a", sockets=[{"name": "web", "port": 8080}]).status_code == 201
    other_ip = [{"name": "web", "host_ip": "10.0.0.5", "port": 8080}]
    assert post(operator, "b", sockets=other_ip).status_code == 201
    udp = [{"name": "web", "protocol": "udp", "port": 8080}]
    assert post(operator, "c", sockets=udp).status_code == 201
    Container.objects.filter(name="a").update(removed_at="2020-01-01T00:00:00Z")
    assert post(operator, "d", sockets=[{"name": "web", "port": 8080}]).status_code == 201


def test_the_migration_turns_socket_labels_into_the_fields(operator: APIClient) -> None:
    migration = importlib.import_module("containers.migrations.0003_container_sockets")
    project = Project.objects.get(slug="alpha")
    labels = {
        "corral.socket.web": "tcp://0.0.0.0:18090",
        "corral.socket.ctl": "unix:///run/old.sock",
        "corral.idle-stop-seconds": "2",
        "team": "blue",
    }
    old = Container.objects.create(project=project, name="old", mode="host", labels=labels)
    plain = Container.objects.create(project=project, name="plain", mode="host", labels={"a": "b"})

    migration.labels_to_fields(apps, None)

    old.refresh_from_db()
    assert old.sockets == [
        {"name": "ctl", "protocol": "unix", "path": "/run/old.sock"},
        {"name": "web", "protocol": "tcp", "host_ip": "0.0.0.0", "port": 18090},
    ]
    assert old.idle_stop_seconds == 2 and old.labels == {"team": "blue"}
    plain.refresh_from_db()
    assert plain.sockets == [] and plain.labels == {"a": "b"}

    migration.fields_to_labels(apps, None)  # and back, for a rollback
    old.refresh_from_db()
    assert old.labels == labels
