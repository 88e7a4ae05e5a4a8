"""Forms and actions of the UI: field errors beside their fields, containers created through
the API's validation, actions answering with their Operation, host admin actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from containers.models import Container
from hosts.models import EnrollmentToken, Host, Operation
from tests.frontend.actors import client_for

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def form(**overrides: str) -> dict[str, str]:
    data = {
        "project": "proj-a",
        "name": "new-one",
        "mode": "image",
        "image": "busybox:1.36",
        "command": "/bin/sh -c 'echo hello; sleep 60'",
        "env": "GREETING=hello world\nEMPTY=",
        "memory_limit": "64M",
        "cpu_millicores": "250",
        "restart_policy": "on-failure",
        "restart_max_retries": "3",
        "network_mode": "none",
    }
    data.update(overrides)
    return data


def field_error(body: str, field: str) -> str:
    """The text of the error rendered beside ``field`` ('' when none)."""
    marker = f'id="err-{field}" role="alert">'
    start = body.find(marker)
    return "" if start < 0 else body[start + len(marker) : body.index("</span>", start)]


def test_create_form_creates_container_and_redirects_to_its_operation(
    fleet: dict[str, Any],
) -> None:
    host = fleet["host1"]
    response = client_for(fleet["op_a"]).post("/containers/new/", form(host=str(host.pk)))
    assert response.status_code == 302, response.content.decode()[:2000]
    container = Container.objects.get(project__slug="proj-a", name="new-one")
    assert container.host == host
    assert container.command == ["/bin/sh", "-c", "echo hello; sleep 60"]
    assert container.env == {"GREETING": "hello world", "EMPTY": ""}
    assert container.memory_limit == 64 * 1024**2
    assert (container.restart_policy, container.restart_max_retries) == ("on-failure", 3)
    op = Operation.objects.get(target_id=str(container.pk), kind="agent.containers.create")
    assert response["Location"] == f"/containers/{container.pk}/?op={op.pk}"
    detail = client_for(fleet["op_a"]).get(response["Location"]).content.decode()
    assert 'data-testid="operation"' in detail and "agent.containers.create" in detail


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({"memory_limit": "lots"}, "memory_limit", "Use bytes or a size"),
        ({"memory_limit": "1M"}, "memory_limit", "at least"),
        ({"cpu_weight": "0"}, "cpu_weight", "between 1 and 10000"),
        ({"cpu_millicores": "abc"}, "cpu_millicores", "valid integer"),
        ({"env": "NOEQUALS"}, "env", "Line 1: expected KEY=VALUE"),
        ({"env": "1BAD=x"}, "env", "Not a valid variable name"),
        ({"name": "-bad name"}, "name", "Names are 1-63"),
        ({"name": "web-a"}, "name", "already exists"),
        ({"image": "", "mode": "image"}, "image", "needs an image"),
        ({"command": "echo 'unclosed"}, "command", "Could not split"),
        ({"restart_max_retries": "x"}, "restart_policy", "on-failure:N"),
        ({"project": "proj-b"}, "project", "may not create containers in proj-b"),
        ({"network_mode": "host"}, "network_mode", "may not use the host network"),
    ],
)
def test_create_form_shows_the_error_beside_the_field(
    fleet: dict[str, Any], overrides: dict[str, str], field: str, expected: str
) -> None:
    response = client_for(fleet["op_a"]).post("/containers/new/", form(**overrides))
    assert response.status_code == 200
    body = response.content.decode()
    assert expected in field_error(body, field), body[:3000]
    assert 'aria-invalid="true"' in body
    assert not Container.objects.filter(name="new-one").exists()


def test_create_form_keeps_entered_values_after_an_error(fleet: dict[str, Any]) -> None:
    body = client_for(fleet["op_a"]).post("/containers/new/", form(memory_limit="lots")).content
    assert b'value="new-one"' in body and b"GREETING=hello world" in body


def test_pinned_offline_host_error_is_shown(fleet: dict[str, Any]) -> None:
    host2 = fleet["host2"]  # offline
    response = client_for(fleet["op_a"]).post("/containers/new/", form(host=str(host2.pk)))
    assert response.status_code == 200
    assert "node-2 is offline" in response.content.decode()


def test_viewer_cannot_create_containers(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["viewer_a"])
    assert b"You operate no project" in client.get("/containers/new/").content
    response = client.post("/containers/new/", form())
    assert response.status_code == 200
    assert "may not create" in field_error(response.content.decode(), "project")


def test_stop_action_returns_its_operation_and_sets_desired_state(fleet: dict[str, Any]) -> None:
    c_a = fleet["c_a"]
    response = client_for(fleet["op_a"]).post(f"/containers/{c_a.pk}/stop/", **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body and 'data-testid="operation"' in body
    op = Operation.objects.get(target_id=str(c_a.pk), kind="agent.containers.stop")
    assert f"/operations/{op.pk}/" in body
    c_a.refresh_from_db()
    assert c_a.desired_state == "stopped"


def test_removing_a_running_container_is_refused_in_plain_words(fleet: dict[str, Any]) -> None:
    c_a = fleet["c_a"]
    client = client_for(fleet["op_a"])
    body = client.post(f"/containers/{c_a.pk}/remove/", **HTMX).content.decode()
    assert "Refused" in body and "is running; stop it first" in body
    without_htmx = client.post(f"/containers/{c_a.pk}/remove/")
    assert without_htmx.status_code == 302
    follow = client.get(without_htmx["Location"]).content.decode()
    assert "is running; stop it first" in follow
    assert client.post(f"/containers/{c_a.pk}/explode/", **HTMX).content.count(b"Unknown") == 1


def test_operation_progress_partial_polls_until_final(fleet: dict[str, Any]) -> None:
    op = Operation.objects.create(
        kind="agent.containers.start", project_slug="proj-a", status="running", step="pull"
    )
    client = client_for(fleet["op_a"])
    running = client.get(f"/operations/{op.pk}/", **HTMX).content.decode()
    assert 'hx-trigger="every 1s"' in running and "pull" in running
    Operation.objects.filter(pk=op.pk).update(
        status="failed", error_code="host_unavailable", error="host node-1 is offline"
    )
    done = client.get(f"/operations/{op.pk}/", **HTMX).content.decode()
    assert "hx-trigger" not in done and "host node-1 is offline" in done
    page = client.get(f"/operations/{op.pk}/").content.decode()
    assert "The host could not be reached: host node-1 is offline" in page


def test_logs_of_container_on_offline_host_say_why(fleet: dict[str, Any]) -> None:
    c_a = fleet["c_a"]
    Host.objects.filter(pk=fleet["host1"].pk).update(status="offline")
    body = client_for(fleet["op_a"]).get(f"/containers/{c_a.pk}/logs/", **HTMX).content
    assert b"Logs unavailable: host node-1 is offline" in body
    stats = client_for(fleet["op_a"]).get(f"/containers/{c_a.pk}/stats/", **HTMX).content
    assert b"host unreachable" in stats


def test_admin_toggles_maintenance(fleet: dict[str, Any]) -> None:
    host = fleet["host1"]
    client = client_for(fleet["admin"])
    client.post(f"/hosts/{host.pk}/maintenance/", {"enabled": "1"})
    host.refresh_from_db()
    assert host.maintenance is True
    assert "End maintenance" in client.get(f"/hosts/{host.pk}/").content.decode()
    client.post(f"/hosts/{host.pk}/maintenance/", {"enabled": "0"})
    host.refresh_from_db()
    assert host.maintenance is False


def test_recheck_records_a_certification_operation(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["admin"])
    host = fleet["host1"]
    response = client.post(f"/hosts/{host.pk}/recheck/")
    op = Operation.objects.get(kind="agent.certification.run", host=host)
    assert response["Location"] == f"/operations/{op.pk}/"
    assert op.requested_by == fleet["admin"] and op.status == "pending"
    offline = fleet["host2"]
    client.post(f"/hosts/{offline.pk}/recheck/")
    failed = Operation.objects.get(kind="agent.certification.run", host=offline)
    assert failed.status == "failed" and "offline" in failed.error


def test_remove_host_needs_confirmation_and_no_containers(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["admin"])
    host1, host2 = fleet["host1"], fleet["host2"]
    client.post(f"/hosts/{host2.pk}/remove/", {"confirm": "wrong"})
    assert Host.objects.filter(pk=host2.pk).exists()
    client.post(f"/hosts/{host1.pk}/remove/", {"confirm": "node-1"})
    assert Host.objects.filter(pk=host1.pk).exists()
    page = client.get(f"/hosts/{host1.pk}/").content.decode()
    assert "still has containers" in page
    client.post(f"/hosts/{host2.pk}/remove/", {"confirm": "node-2"})
    assert not Host.objects.filter(pk=host2.pk).exists()


def test_add_host_shows_a_copyable_enrollment_command(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["admin"])
    body = client.post("/hosts/add/", {"note": "rack 4"}).content.decode()
    token = EnrollmentToken.objects.get(note="rack 4")
    assert "python -m agent enroll --server" in body and "--token crl_" in body
    assert f"crl_{token.prefix}" in body and 'data-copy="#enroll-cmd"' in body
    bad = client.post("/hosts/add/", {"project_slug": "nope"}).content.decode()
    assert "No project &#x27;nope&#x27;" in bad


def test_htmx_requests_get_fragments_without_layout(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["admin"])
    for url in ("/", "/containers/", "/hosts/", "/operations/", f"/hosts/{fleet['host1'].pk}/"):
        body = client.get(url, **HTMX).content
        assert b"<html" not in body and b'<nav class="nav"' not in body, url
    live = client.get(f"/containers/{fleet['c_a'].pk}/", **HTMX).content
    assert b'data-testid="observed-state"' in live and b"<html" not in live


def test_container_filters_by_state_host_label_and_search(fleet: dict[str, Any]) -> None:
    Container.objects.filter(pk=fleet["c_a"].pk).update(labels={"tier": "web"})
    client = client_for(fleet["admin"])

    def names(query: str) -> set[str]:
        body = client.get("/containers/?" + query).content.decode()
        return {n for n in ("web-a", "db-b") if f">{n}</a>" in body}

    assert names("state=running") == {"web-a"}
    assert names("state=exited") == {"db-b"}
    assert names("host=node-1") == {"web-a", "db-b"}
    assert names("label=tier=web") == {"web-a"}
    assert names("q=db") == {"db-b"}
    assert names("image=postgres") == {"db-b"}
    assert names("project=proj-a") == {"web-a"}


def test_host_filters_and_search(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["admin"])
    online = client.get("/hosts/?status=online").content.decode()
    assert ">node-1</a>" in online and ">node-2</a>" not in online
    certified = client.get("/hosts/?certification=certified").content.decode()
    assert ">node-2</a>" in certified and ">node-1</a>" not in certified
    assert ">node-2</a>" in client.get("/hosts/?q=node-2").content.decode()
    assert ">node-1</a>" not in client.get("/hosts/?q=node-2").content.decode()


def test_host_detail_renders_inventory_findings_and_hints(fleet: dict[str, Any]) -> None:
    body = client_for(fleet["admin"]).get(f"/hosts/{fleet['host1'].pk}/").content.decode()
    assert "cert.selinux.E001" in body and "Enable SELinux in enforcing mode." in body
    assert "Test CPU" in body and "vda" in body  # a dict section and a list-of-rows section


def test_dashboard_counts_link_to_filtered_lists(fleet: dict[str, Any]) -> None:
    body = client_for(fleet["admin"]).get("/").content.decode()
    assert 'data-testid="hosts-online">2<' in body  # node-1 and node-b-only
    assert 'data-testid="hosts-offline">1<' in body
    assert 'data-testid="state-running">1<' in body
    assert 'href="/hosts/?status=offline"' in body
    assert 'href="/containers/?state=running"' in body
    assert "cert.selinux.E001" in body  # failing certification listed
    mine = client_for(fleet["member_b"]).get("/").content.decode()
    assert 'data-testid="state-running">0<' in mine and 'data-testid="state-exited">1<' in mine


def test_anonymous_cannot_post_actions(fleet: dict[str, Any]) -> None:
    c_a = fleet["c_a"]
    response = Client().post(f"/containers/{c_a.pk}/stop/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
