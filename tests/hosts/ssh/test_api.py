"""The ssh-hosts API: staff only, bad input named by field, credentials never returned, an
install Operation recorded before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import paramiko
import pytest
from rest_framework.test import APIClient

from hosts.models import AuditEntry, Operation
from hosts.models_ssh import SSHTarget

pytestmark = [pytest.mark.django_db]
URL = "/api/v1/ssh-hosts/"
FP = "SHA256:" + "Q" * 43


def private_key_text() -> str:
    import io

    key = paramiko.ECDSAKey.generate()
    out = io.StringIO()
    key.write_private_key(out)
    return out.getvalue()


def body(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": "node-1",
        "address": "192.0.2.50",
        "port": 22,
        "user": "root",
        "private_key": private_key_text(),
        "host_key_fingerprint": FP,
        "host_key_type": "ssh-ed25519",
    }
    values.update(changes)
    return values


def as_user(user: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_only_staff_may_list_or_create(outsider: Any) -> None:
    api = as_user(outsider)
    assert api.get(URL).status_code == 403
    assert api.post(URL, body(), format="json").status_code == 403
    assert APIClient().get(URL).status_code in (401, 403)


def test_create_records_an_install_operation_and_never_returns_secrets(
    admin: Any, django_capture_on_commit_callbacks: Any
) -> None:
    payload = body(passphrase="")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = as_user(admin).post(URL, payload, format="json")
    assert response.status_code == 201, response.data
    text = json.dumps(response.data, default=str)
    assert "PRIVATE KEY" not in text and 'private_key"' not in text
    op = Operation.objects.get(pk=response.data["operation"]["id"])
    assert (op.kind, op.status, op.target_type) == (
        "controlplane.ssh.install",
        "pending",
        "ssh-host",
    )
    assert len(callbacks) == 1  # the task is handed to the broker only after commit
    target = SSHTarget.objects.get(pk=response.data["ssh_host"]["id"])
    assert payload["private_key"] not in target.private_key_encrypted
    detail = as_user(admin).get(f"{URL}{target.pk}/").data
    assert "private_key" not in detail and detail["host_key_pinned"] is True


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"user": "root; rm -rf /"}, "user"),
        ({"install_prefix": "/opt/$(id)"}, "install_prefix"),
        ({"address": "x;y"}, "address"),
        ({"host_key_fingerprint": "abc"}, "host_key_fingerprint"),
        ({"private_key": "not a key"}, "private_key"),
        ({"private_key": "", "password": "pw"}, "allow_password"),
        ({"private_key": ""}, "private_key"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    admin: Any, changes: dict[str, Any], field: str
) -> None:
    response = as_user(admin).post(URL, body(**changes), format="json")
    assert response.status_code == 400, response.data
    assert field in json.dumps(response.data)
    assert not SSHTarget.objects.exists()


def test_password_needs_explicit_allow_password(admin: Any) -> None:
    api = as_user(admin)
    response = api.post(
        URL, body(private_key="", password="pw", allow_password=True, install=False),
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.data
    assert response.data["ssh_host"]["auth"] == "password"
    assert "pw" not in json.dumps(response.data, default=str).replace("password", "")


def test_without_a_fingerprint_nothing_is_installed_until_confirmed(admin: Any) -> None:
    response = as_user(admin).post(URL, body(host_key_fingerprint="", host_key_type=""),
                                   format="json")  # fmt: skip
    assert response.status_code == 201
    assert response.data["operation"] is None
    assert "scan-host-key" in response.data["next"]
    target_id = response.data["ssh_host"]["id"]
    refused = as_user(admin).post(f"{URL}{target_id}/install/", {}, format="json")
    assert refused.status_code == 202  # recorded; the worker refuses it with a clear code
    from hosts.ssh.services import ssh_operation_run

    op = ssh_operation_run(refused.data["id"])
    assert (op.status, op.error_code) == ("failed", "host_key_not_pinned")


def test_a_second_install_while_one_is_active_is_a_conflict(
    admin: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        first = as_user(admin).post(URL, body(), format="json")
    target_id = first.data["ssh_host"]["id"]
    again = as_user(admin).post(f"{URL}{target_id}/install/", {}, format="json")
    assert again.status_code == 409
    assert str(first.data["operation"]["id"]) in again.data["detail"]


def test_confirm_refuses_a_fingerprint_the_host_does_not_present(admin: Any) -> None:
    """Confirmation re-scans: a typo'd or stale fingerprint is never pinned (no network here,
    so the scan itself fails with a named code and nothing is pinned either)."""
    response = as_user(admin).post(
        URL, body(host_key_fingerprint="", host_key_type="", address="127.0.0.1", port=1,
                  install=False), format="json",
    )  # fmt: skip
    target_id = response.data["ssh_host"]["id"]
    confirm = as_user(admin).post(
        f"{URL}{target_id}/confirm-host-key/", {"fingerprint": FP, "type": "ssh-ed25519"},
        format="json",
    )  # fmt: skip
    assert confirm.status_code == 400
    assert confirm.data["code"] == "connection_refused"
    assert SSHTarget.objects.get(pk=target_id).host_key_fingerprint == ""
    assert not AuditEntry.objects.filter(action="ssh-host-key-confirm").exists()
