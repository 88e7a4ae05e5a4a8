"""The read-only registry endpoint: per-host tokens, what it refuses, and ranged blobs."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from django.test import Client

from containers.images import services as image_services
from containers.images.tokens import _sign, registry_auth
from tests.agent.images.imgtest_helpers import sha
from tests.containers.images.cp_support import make_host, make_project, oci_tarball, passing_image

pytestmark = pytest.mark.django_db


def basic(username: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {raw}"}


@pytest.fixture
def uploaded(tmp_path) -> dict[str, Any]:
    alpha, beta = make_project("alpha"), make_project("beta")
    image = passing_image()
    (record,) = image_services.image_upload(
        user=None, project=alpha, archive=oci_tarball(tmp_path, image, "1.0"), name="tools"
    )
    other = image_services.image_upload(
        user=None, project=beta, archive=oci_tarball(tmp_path / "b", image, "2.0"), name="x"
    )
    return {"alpha": alpha, "beta": beta, "image": image, "record": record, "other": other}


def auth_for(host: Any, project: str) -> dict[str, str]:
    creds = registry_auth(host, project)
    return basic(creds.username, creds.password)


def test_an_authenticated_host_gets_the_manifest_by_tag_and_by_digest(uploaded) -> None:
    host = make_host("node-a")
    client, image = Client(), uploaded["image"]
    for ref in ("1.0", image.digest):
        resp = client.get(f"/v2/alpha/tools/manifests/{ref}", **auth_for(host, "alpha"))
        assert resp.status_code == 200
        assert resp.content == image.manifest
        assert resp["Docker-Content-Digest"] == image.digest
        assert resp["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    head = client.head("/v2/alpha/tools/manifests/1.0", **auth_for(host, "alpha"))
    assert head.status_code == 200 and head["Content-Length"] == str(len(image.manifest))
    assert client.get("/v2/", **auth_for(host, "alpha")).status_code == 200


def test_blobs_are_served_whole_and_by_range(uploaded) -> None:
    host = make_host("node-a")
    layer = uploaded["image"].layers[0]
    digest = sha(layer)
    url = f"/v2/alpha/tools/blobs/{digest}"
    whole = Client().get(url, **auth_for(host, "alpha"))
    assert whole.status_code == 200 and b"".join(whole.streaming_content) == layer
    part = Client().get(url, HTTP_RANGE="bytes=100-", **auth_for(host, "alpha"))
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 100-{len(layer) - 1}/{len(layer)}"
    assert b"".join(part.streaming_content) == layer[100:]
    past = Client().get(url, HTTP_RANGE=f"bytes={len(layer)}-", **auth_for(host, "alpha"))
    assert past.status_code == 416


def test_no_credentials_get_the_basic_challenge(uploaded) -> None:
    for url in ("/v2/", "/v2/alpha/tools/manifests/1.0"):
        resp = Client().get(url)
        assert resp.status_code == 401
        assert resp["WWW-Authenticate"].startswith("Basic ")
        assert resp.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_another_hosts_forged_or_borrowed_credentials_are_refused(uploaded) -> None:
    host_a, host_b = make_host("node-a"), make_host("node-b")
    url = "/v2/alpha/tools/manifests/1.0"
    token_a = registry_auth(host_a, "alpha").password
    # Host B claims to be host A with a token it made up.
    expires = int(time.time() + 600)
    forged = f"{expires}.alpha.{'0' * 64}"
    assert Client().get(url, **basic(str(host_a.pk), forged)).status_code == 401
    # Host B presents host A's token under its own name: the signature binds the host.
    assert Client().get(url, **basic(str(host_b.pk), token_a)).status_code == 401
    # A token signed for host B but naming host A's id in the username does not verify.
    token_b = registry_auth(host_b, "alpha").password
    assert Client().get(url, **basic(str(host_a.pk), token_b)).status_code == 401
    assert Client().get(url, **basic(str(host_a.pk), token_a)).status_code == 200


def test_a_token_is_bound_to_its_project_and_expires(uploaded) -> None:
    host = make_host("node-a")
    beta_token = auth_for(host, "beta")
    assert Client().get("/v2/alpha/tools/manifests/1.0", **beta_token).status_code == 401
    assert Client().get("/v2/beta/x/manifests/2.0", **beta_token).status_code == 200
    expired = int(time.time() - 1)
    old = f"{expired}.alpha.{_sign(str(host.pk), 'alpha', expired)}"
    resp = Client().get("/v2/alpha/tools/manifests/1.0", **basic(str(host.pk), old))
    assert resp.status_code == 401


def test_an_unenrolled_or_deleted_host_is_refused(uploaded) -> None:
    host = make_host("node-a", public_key="")
    assert Client().get("/v2/", **auth_for(host, "alpha")).status_code == 401
    gone = make_host("node-b")
    creds = auth_for(gone, "alpha")
    gone.delete()
    assert Client().get("/v2/alpha/tools/manifests/1.0", **creds).status_code == 401


def test_only_blobs_of_the_projects_uploads_are_served(uploaded, tmp_path) -> None:
    host = make_host("node-a")
    assert (
        Client().get("/v2/alpha/nothing/manifests/1.0", **auth_for(host, "alpha")).status_code
        == 404
    )
    unknown = "sha256:" + "e" * 64
    resp = Client().get(f"/v2/alpha/tools/blobs/{unknown}", **auth_for(host, "alpha"))
    assert resp.status_code == 404 and resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    # A blob that exists for beta's upload is not served under alpha's repository of another
    # name, nor to a token for alpha asking under beta's name.
    config = uploaded["image"].config_digest
    resp = Client().get(f"/v2/beta/x/blobs/{config}", **auth_for(host, "alpha"))
    assert resp.status_code == 401
