"""Certification on the control plane: this machine's real inventory judged under both host
profiles (directly and through the signed inventory report), profiles and policies with
history, host/image reports, the fleet timeline, and placement refusing uncertified hosts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent.certification import run_host_checks
from agent.inventory import collect_inventory, inventory_hash
from agent.protocol import envelope, names
from agent.protocol.certification import SELINUX_IDS, evaluate
from agent.protocol.messages import InventoryReport
from containers import certification
from containers.models_images import PolicyChange
from hosts.models import CertificationChange, Host
from hosts.tasks import inventory_report
from tests.containers.images.cp_support import api, make_host, make_project, make_user, member

pytestmark = pytest.mark.django_db

PASS = {"verdict": "pass", "message": "ok"}


@pytest.fixture(scope="module")
def real_inventory() -> dict[str, Any]:
    return collect_inventory()


def findings_passing_all() -> list[dict[str, Any]]:
    from agent.protocol.certification import PROFILES

    ids = set(PROFILES["certified-container-host"].required)
    return [{"id": i, **PASS} for i in sorted(ids)]


@pytest.mark.privileged
def test_this_machine_is_development_certified_but_not_production(real_inventory) -> None:
    findings = run_host_checks(real_inventory)
    assert real_inventory["agent"]["runtime"] == "corral"
    strict = evaluate(findings, "certified-container-host")
    assert strict == ("not_certified", sorted(SELINUX_IDS))
    assert evaluate(findings, "development") == ("certified", [])


def send_inventory(host: Host, key: Any, inventory: dict[str, Any]) -> None:
    """The agent's report, signed with the host's key, through the real ingestion task."""
    report = InventoryReport(
        collected_at=time.time(),
        inventory=inventory,
        findings=run_host_checks(inventory),
        inventory_hash=inventory_hash(inventory),
    )
    message = envelope.seal(key, kind=names.CP_INVENTORY, host_id=str(host.pk), payload=report)
    inventory_report(message)


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("profile", "verdict", "failed"),
    [
        ("certified-container-host", "not_certified", sorted(SELINUX_IDS)),
        ("development", "certified", []),
    ],
)
def test_the_stored_verdict_after_a_real_inventory_report(
    real_inventory, profile, verdict, failed
) -> None:
    key = envelope.generate_key()
    host = make_host(
        "this-machine",
        public_key=envelope.public_key_to_text(key.public_key()),
        labels={"corral.certification/profile": profile},
    )
    send_inventory(host, key, real_inventory)
    host.refresh_from_db()
    assert (host.certification, host.certification_profile) == (verdict, profile)
    change = CertificationChange.objects.get(host=host)
    assert (change.to_verdict, change.failed) == (verdict, failed)
    report = api(make_user("viewer")).get(f"/api/v1/hosts/{host.pk}/certification/").json()
    assert report["verdict"] == verdict
    assert report["profiles"]["certified-container-host"]["failed"] == sorted(SELINUX_IDS)
    assert report["profiles"]["development"] == {"verdict": "certified", "failed": []}
    runtime = {f["id"]: f for f in report["findings"]}
    assert runtime["cert.runtime.E001"]["verdict"] == "pass"


def test_a_host_losing_certification_shows_in_the_fleet_timeline() -> None:
    key = envelope.generate_key()
    host = make_host("node-a", public_key=envelope.public_key_to_text(key.public_key()))
    good = {"findings": findings_passing_all()}
    from hosts.certification import host_certification_record

    def report(findings: list[dict[str, Any]]) -> InventoryReport:
        return InventoryReport.from_dict(
            {"collected_at": time.time(), "inventory": {}, "findings": findings}
        )

    assert host_certification_record(host, report(good["findings"])) == "certified"
    broken = [
        {**f, "verdict": "fail", "message": "SELinux is disabled"}
        if f["id"] == "cert.selinux.E001"
        else f
        for f in good["findings"]
    ]
    assert host_certification_record(host, report(broken)) == "not_certified"
    events = api(make_user("admin", staff=True)).get("/api/v1/certification/events/").json()
    lost = [e for e in events if e["kind"] == "host_certification_lost"]
    assert len(lost) == 1
    assert lost[0]["host"] == "node-a" and lost[0]["failed"] == ["cert.selinux.E001"]
    assert (lost[0]["from"], lost[0]["to"]) == ("certified", "not_certified")


def test_profiles_are_listed_with_their_required_ids() -> None:
    body = api(make_user("u")).get("/api/v1/certification/profiles/").json()
    by_name = {p["name"]: p for p in body}
    assert by_name["development"]["kind"] == "host"
    assert "cert.selinux.E001" in by_name["certified-container-host"]["required"]
    assert by_name["development-image"]["kind"] == "image"


def test_only_fleet_admins_change_the_fleet_policy_and_each_change_is_recorded() -> None:
    admin, user = make_user("admin", staff=True), make_user("user")
    denied = api(user).put("/api/v1/certification/policy/", {"image_profile": "certified-image"})
    assert denied.status_code == 403
    resp = api(admin).put(
        "/api/v1/certification/policy/", {"image_profile": "certified-image"}, format="json"
    )
    assert resp.status_code == 200 and resp.json()["image_profile"] == "certified-image"
    assert resp.json()["updated_by"] == "admin"
    change = PolicyChange.objects.get()
    assert (change.field, change.old, change.new, change.user) == (
        "image_profile",
        "development-image",
        "certified-image",
        admin,
    )
    assert change.project is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"image_profile": "development"}, "image_profile"),  # a host profile
        ({"host_profile": "certified-image"}, "host_profile"),  # an image profile
        ({"host_profile": "nope"}, "host_profile"),
    ],
)
def test_a_profile_of_the_wrong_kind_is_400_naming_the_field(data, field) -> None:
    project = make_project("alpha")
    admin = member(make_user("alpha-admin"), project, "admin")
    resp = api(admin).put("/api/v1/certification/projects/alpha/", data, format="json")
    assert resp.status_code == 400 and resp.json()["field"] == field
    fleet = api(make_user("root", staff=True)).put(
        "/api/v1/certification/policy/", data, format="json"
    )
    assert fleet.status_code == 400 and fleet.json()["field"] == field
    assert not PolicyChange.objects.exists()


def test_project_policy_roles_history_and_tenancy() -> None:
    alpha = make_project("alpha")
    admin = member(make_user("alpha-admin"), alpha, "admin")
    operator = member(make_user("alpha-op"), alpha)
    outsider = make_user("outsider")
    url = "/api/v1/certification/projects/alpha/"
    assert api(outsider).get(url).status_code == 404
    body = api(operator).get(url).json()
    # The model's default image profile "development" names a host profile: the fleet
    # default applies instead.
    assert body["image_profile"] == "development-image"
    assert api(operator).put(url, {"image_profile": "certified-image"}).status_code == 403
    hosts_flag = api(admin).put(url, {"require_certified_hosts": True}, format="json")
    assert hosts_flag.status_code == 403  # a fleet admin's decision
    resp = api(admin).put(
        url, {"image_profile": "certified-image", "require_certified_images": True}, format="json"
    )
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["image_profile"] == "certified-image" and body["require_certified_images"]
    assert {(h["field"], h["by"]) for h in body["history"]} == {
        ("image_profile", "alpha-admin"),
        ("require_certified_images", "alpha-admin"),
    }
    timeline = api(admin).get("/api/v1/certification/events/").json()
    assert {e["field"] for e in timeline if e["kind"] == "policy_change"} == {
        "image_profile",
        "require_certified_images",
    }
    assert api(outsider).get("/api/v1/certification/events/").json() == []


def test_host_report_refuses_an_unknown_profile_and_unknown_hosts() -> None:
    host = make_host("node-a", findings=findings_passing_all())
    client = api(make_user("u"))
    ok = client.get(f"/api/v1/hosts/{host.pk}/certification/?profile=development").json()
    assert ok["profiles"] == {"development": {"verdict": "certified", "failed": []}}
    bad = client.get(f"/api/v1/hosts/{host.pk}/certification/?profile=certified-image")
    assert bad.status_code == 400 and bad.json()["field"] == "profile"
    gone = client.get("/api/v1/hosts/00000000-0000-0000-0000-000000000000/certification/")
    assert gone.status_code == 404


def test_placement_refuses_uncertified_hosts_when_the_project_requires_them() -> None:
    project = make_project(
        "alpha", require_certified_hosts=True, host_profile="certified-container-host"
    )
    operator = member(make_user("op"), project)
    failing = [
        {**f, "verdict": "fail"} if f["id"] == "cert.selinux.E002" else f
        for f in findings_passing_all()
    ]
    make_host("uncertified", certification="not_certified", findings=failing)
    data = {"project": "alpha", "name": "c1", "mode": "host"}
    resp = api(operator).post("/api/v1/containers/", data, format="json")
    assert resp.status_code == 409, resp.content
    assert "not certified" in resp.json()["detail"]
    # The verdict comes from the host's findings under the project's profile.
    certified = make_host("certified", certification="certified", findings=findings_passing_all())
    resp = api(operator).post("/api/v1/containers/", data, format="json")
    assert resp.status_code == 201, resp.content
    assert resp.json()["host"] == str(certified.pk)


def test_host_verdict_under_a_projects_profile() -> None:
    findings = [
        {**f, "verdict": "fail"} if f["id"] == "cert.selinux.E002" else f
        for f in findings_passing_all()
    ]
    host = make_host("node-a", findings=findings)
    assert certification.host_certified_for(host, make_project("dev", host_profile="development"))
    strict = make_project("prod", host_profile="certified-container-host")
    assert not certification.host_certified_for(host, strict)
    verdict, failed = certification.host_verdict(host, "certified-container-host")
    assert (verdict, failed) == ("not_certified", ["cert.selinux.E002"])
