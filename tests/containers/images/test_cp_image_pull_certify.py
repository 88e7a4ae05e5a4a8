"""An uploaded image pulled by the agent's real pull handler (real image store, real HTTP to
the control plane's registry endpoint with a per-host token), certified by the agent's real
image checks, and judged by the control plane; a project requiring certified images then
refuses a container from the failing image with the failing ids."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.images import ImageError, ImageStore
from agent.protocol import names
from agent.protocol.messages import OperationResult
from agent.worker import _pull
from containers import certification
from containers.images import services as image_services
from containers.models import Image, ImageLocation
from containers.models_images import ImageCertificationChange, ImagePull
from hosts.services import operation_create, operation_result_apply
from tests.containers.images.cp_support import (
    api,
    failing_image,
    make_host,
    make_project,
    make_user,
    member,
    oci_tarball,
    passing_image,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture
def public_url(live_server: Any, settings: Any) -> str:
    settings.CORRAL = {**settings.CORRAL, "PUBLIC_URL": live_server.url}
    return str(live_server.url)


def fake_agent(state: Path) -> Any:
    """What ``_pull`` uses of the agent: its image store and state dir (no broker)."""
    return SimpleNamespace(
        images=ImageStore(state / "images"),
        config=SimpleNamespace(state_dir=str(state)),
        progress=lambda *a, **k: None,
    )


def pull_with_real_handler(image: Image, host: Any, state: Path) -> Image:
    """Run the agent's handler on the exact payload the control plane would sign, then apply
    its result the way the operation-result task does."""
    op = operation_create(
        kind=names.AGENT_IMAGE_PULL, host=host, target_type="image", target_id=str(image.pk)
    )
    ImagePull.objects.create(image=image, host=host, operation=op)
    result = _pull(fake_agent(state), image_services.pull_message(image, host))
    applied = operation_result_apply(
        host, OperationResult(operation_id=str(op.pk), status="succeeded", result=result)
    )
    assert applied is not None and applied.status == "succeeded"
    image_services.image_apply_result(applied)
    return Image.objects.get(pk=image.pk)


def upload_into(project: Any, built: Any, tmp_path: Path, name: str) -> Image:
    (image,) = image_services.image_upload(
        user=None, project=project, archive=oci_tarball(tmp_path, built, "1.0"), name=name
    )
    return image


def test_a_passing_upload_is_pulled_by_a_host_and_certified(public_url, tmp_path) -> None:
    project = make_project("alpha")
    built = passing_image()
    image = upload_into(project, built, tmp_path, "tools")
    host = make_host("node-a")
    pulled = pull_with_real_handler(image, host, tmp_path / "agent-a")
    assert pulled.digest == built.digest
    assert pulled.certification == "certified"
    by_id = {f["id"]: f["verdict"] for f in pulled.findings}
    assert by_id["cert.image.E003"] == by_id["cert.image.E008"] == "pass"
    assert ImageLocation.objects.filter(image=image, host=host).exists()
    change = ImageCertificationChange.objects.get(image=image)
    assert (change.from_verdict, change.to_verdict) == ("unknown", "certified")
    assert change.reason == "checked on node-a"
    # Nothing of the merged check tree is left beside the store.
    assert list((tmp_path / "agent-a" / "image-checks").iterdir()) == []


def test_a_failing_upload_is_refused_for_a_project_requiring_certified_images(
    public_url, tmp_path
) -> None:
    project = make_project("alpha", require_certified_images=True)
    operator = member(make_user("op"), project)
    image = upload_into(project, failing_image(), tmp_path, "bad")
    host = make_host("node-a")
    refused_before = api(operator).post(
        "/api/v1/containers/",
        {"project": "alpha", "name": "c0", "image": image.reference},
        format="json",
    )
    assert refused_before.status_code == 409  # never checked yet: unknown is not certified
    pulled = pull_with_real_handler(image, host, tmp_path / "agent-a")
    assert pulled.certification == "not_certified"
    report = api(operator).get(f"/api/v1/images/{image.pk}/certification/").json()
    assert report["profile"] == "development-image"
    assert report["failed"] == ["cert.image.E003", "cert.image.E007"]
    telnet = next(f for f in report["findings"] if f["id"] == "cert.image.E007")
    assert telnet["evidence"]["prohibited"] == ["telnetd"]
    # The host's store dropped o+w from the setuid file while unpacking: what the host
    # would run is not world-writable, so E008 passes on the pulled image.
    assert {f["id"]: f["verdict"] for f in report["findings"]}["cert.image.E008"] == "pass"
    resp = api(operator).post(
        "/api/v1/containers/",
        {"project": "alpha", "name": "c1", "image": image.reference},
        format="json",
    )
    assert resp.status_code == 409, resp.content
    body = resp.json()
    assert body["code"] == "image_not_certified"
    assert set(body["failed_findings"]) >= {"cert.image.E003", "cert.image.E007"}
    assert "cert.image.E003" in body["detail"]


def test_changing_the_project_profile_rejudges_stored_findings(public_url, tmp_path) -> None:
    project = make_project("alpha")
    image = upload_into(project, passing_image(), tmp_path, "tools")
    pulled = pull_with_real_handler(image, make_host("node-a"), tmp_path / "agent-a")
    assert pulled.certification == "certified"
    admin = make_user("root", staff=True)
    certification.project_policy_set(user=admin, project=project, image_profile="certified-image")
    strict = Image.objects.get(pk=image.pk)
    assert strict.certification == "not_certified"  # no labels, licences, approved base
    last = ImageCertificationChange.objects.filter(image=image).first()
    assert last is not None and last.to_verdict == "not_certified"
    assert "cert.image.E001" in last.failed and "cert.image.E002" in last.failed
    assert last.reason == "project image profile set to certified-image"


def test_a_host_without_a_token_cannot_pull(public_url, tmp_path) -> None:
    project = make_project("alpha")
    image = upload_into(project, passing_image(), tmp_path, "tools")
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError) as err:
        store.pull(image.reference, registry_url=public_url)
    assert err.value.code == "unauthorized"
    assert store.list() == []
