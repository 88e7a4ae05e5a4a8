"""Who sees what in the UI: anonymous users are sent to log in, tenants see only their
projects' objects (another tenant's object is 404), fleet pages are for staff only."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from hosts.models import Operation
from tests.frontend.actors import client_for

pytestmark = pytest.mark.django_db

PAGES = [
    "/",
    "/hosts/",
    "/containers/",
    "/containers/new/",
    "/images/",
    "/projects/",
    "/operations/",
    "/audit/",
    "/hosts/add/",
]


@pytest.mark.parametrize("url", PAGES)
def test_anonymous_is_redirected_to_login(fleet: dict[str, Any], url: str) -> None:
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_anonymous_detail_pages_redirect_to_login(fleet: dict[str, Any]) -> None:
    for url in (f"/hosts/{fleet['host1'].pk}/", f"/containers/{fleet['c_a'].pk}/"):
        assert Client().get(url).status_code == 302


def test_login_page_logs_in_and_shows_field_error_for_bad_password(fleet: dict[str, Any]) -> None:
    client = Client()
    page = client.get("/login/")
    assert page.status_code == 200
    assert b"<title>Log in" in page.content
    bad = client.post("/login/", {"username": "operator-a", "password": "wrong"})
    assert bad.status_code == 200
    assert b"Please enter a correct username and password" in bad.content
    good = client.post("/login/", {"username": "operator-a", "password": "pw-operator-a"})
    assert good.status_code == 302
    assert client.get("/").status_code == 200


def test_logout_ends_the_session(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["op_a"])
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("url", PAGES)
def test_fleet_admin_sees_every_page_with_a_title(fleet: dict[str, Any], url: str) -> None:
    response = client_for(fleet["admin"]).get(url)
    assert response.status_code == 200
    assert b"<title>" in response.content and b"\xc2\xb7 Corral</title>" in response.content


@pytest.mark.parametrize("actor", ["op_a", "viewer_a", "member_b"])
def test_fleet_pages_are_404_for_non_staff(fleet: dict[str, Any], actor: str) -> None:
    client = client_for(fleet[actor])
    assert client.get("/audit/").status_code == 404
    assert client.get("/hosts/add/").status_code == 404
    host = fleet["host1"]
    assert client.post(f"/hosts/{host.pk}/maintenance/", {"enabled": "1"}).status_code == 404
    assert client.post(f"/hosts/{host.pk}/recheck/").status_code == 404
    assert client.post(f"/hosts/{host.pk}/remove/", {"confirm": host.name}).status_code == 404
    host.refresh_from_db()
    assert host.maintenance is False


def test_audit_link_only_in_staff_navigation(fleet: dict[str, Any]) -> None:
    assert b'href="/audit/"' in client_for(fleet["admin"]).get("/").content
    assert b'href="/audit/"' not in client_for(fleet["op_a"]).get("/").content


def test_container_list_shows_only_own_projects(fleet: dict[str, Any]) -> None:
    body = client_for(fleet["op_a"]).get("/containers/").content.decode()
    assert "web-a" in body and "db-b" not in body
    body = client_for(fleet["member_b"]).get("/containers/").content.decode()
    assert "db-b" in body and "web-a" not in body
    body = client_for(fleet["admin"]).get("/containers/").content.decode()
    assert "db-b" in body and "web-a" in body


def test_other_tenants_container_is_404(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["op_a"])
    c_b = fleet["c_b"]
    assert client.get(f"/containers/{c_b.pk}/").status_code == 404
    assert client.get(f"/containers/{c_b.pk}/logs/").status_code == 404
    assert client.get(f"/containers/{c_b.pk}/stats/").status_code == 404
    assert client.post(f"/containers/{c_b.pk}/stop/").status_code == 404
    c_b.refresh_from_db()
    assert c_b.desired_state == "running"
    assert client.get("/containers/not-a-uuid/").status_code == 404


def test_other_tenants_project_and_operation_are_404(fleet: dict[str, Any]) -> None:
    op = Operation.objects.create(kind="agent.containers.stop", project_slug="proj-b")
    client = client_for(fleet["op_a"])
    assert client.get("/projects/proj-b/").status_code == 404
    assert client.get(f"/operations/{op.pk}/").status_code == 404
    assert client_for(fleet["member_b"]).get(f"/operations/{op.pk}/").status_code == 200
    assert client.get("/projects/proj-a/").status_code == 200


def test_host_dedicated_to_another_project_is_hidden(fleet: dict[str, Any]) -> None:
    dedicated = fleet["dedicated_b"]
    client = client_for(fleet["op_a"])
    assert "node-b-only" not in client.get("/hosts/").content.decode()
    assert client.get(f"/hosts/{dedicated.pk}/").status_code == 404
    member_b = client_for(fleet["member_b"])
    assert "node-b-only" in member_b.get("/hosts/").content.decode()
    assert member_b.get(f"/hosts/{dedicated.pk}/").status_code == 200


def test_host_detail_lists_only_own_containers_and_no_admin_actions(
    fleet: dict[str, Any],
) -> None:
    url = f"/hosts/{fleet['host1'].pk}/"
    body = client_for(fleet["op_a"]).get(url).content.decode()
    assert "web-a" in body and "db-b" not in body
    assert "Re-run checks" not in body
    admin_body = client_for(fleet["admin"]).get(url).content.decode()
    assert "web-a" in admin_body and "db-b" in admin_body
    assert "Re-run checks" in admin_body


def test_viewer_sees_container_without_actions_and_cannot_act(fleet: dict[str, Any]) -> None:
    c_a = fleet["c_a"]
    client = client_for(fleet["viewer_a"])
    body = client.get(f"/containers/{c_a.pk}/").content.decode()
    assert "web-a" in body
    assert 'data-action="stop"' not in body
    assert client.post(f"/containers/{c_a.pk}/stop/").status_code == 403
    c_a.refresh_from_db()
    assert c_a.desired_state == "running"
    operator_body = client_for(fleet["op_a"]).get(f"/containers/{c_a.pk}/").content.decode()
    assert 'data-action="stop"' in operator_body


def test_project_switcher_filters_lists_and_refuses_foreign_projects(
    fleet: dict[str, Any],
) -> None:
    client = client_for(fleet["admin"])
    response = client.post("/switch-project/", {"project": "proj-b", "next": "/containers/"})
    assert response.status_code == 302 and response["Location"] == "/containers/"
    body = client.get("/containers/").content.decode()
    assert "db-b" in body and "web-a" not in body
    client.post("/switch-project/", {"project": "", "next": "/"})
    assert "web-a" in client.get("/containers/").content.decode()
    op_a = client_for(fleet["op_a"])
    assert op_a.post("/switch-project/", {"project": "proj-b"}).status_code == 404
    unsafe = op_a.post("/switch-project/", {"project": "", "next": "https://example.org/"})
    assert unsafe["Location"] == "/"


def test_projects_page_shows_members_roles_and_usage(fleet: dict[str, Any]) -> None:
    body = client_for(fleet["op_a"]).get("/projects/proj-a/").content.decode()
    assert "operator-a" in body and "viewer-a" in body
    assert "1 / 10" in body  # one live container of a 10-container quota
    listing = client_for(fleet["op_a"]).get("/projects/").content.decode()
    assert "proj-a" in listing and "proj-b" not in listing


def test_htmx_poll_after_logout_redirects_the_whole_page_to_login(fleet: dict[str, Any]) -> None:
    response = Client().get(
        "/containers/", HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="http://testserver/containers/"
    )
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith("/login/?next=http")


def test_operations_feed_explains_errors_in_plain_words(fleet: dict[str, Any]) -> None:
    Operation.objects.create(
        kind="agent.containers.create",
        project_slug="proj-a",
        status="failed",
        error_code="host_unavailable",
        error="host node-2 is offline",
    )
    Operation.objects.create(kind="agent.containers.logs", project_slug="proj-a")
    client = client_for(fleet["op_a"])
    body = client.get("/operations/").content.decode()
    assert "The host could not be reached: host node-2 is offline" in body
    assert "agent.containers.logs" not in body  # queries are hidden unless asked for
    assert "agent.containers.logs" in client.get("/operations/?queries=1").content.decode()
    assert "node-2 is offline" in client.get("/operations/?status=failed").content.decode()
    assert "node-2 is offline" not in client.get("/operations/?status=succeeded").content.decode()
