"""Trust on first use only with the operator's confirmation, against a real sshd."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from hosts.models import AuditEntry
from hosts.models_ssh import SSHTarget
from tests.hosts.ssh.sshd_support import SSHHost

pytestmark = [pytest.mark.privileged, pytest.mark.django_db]


def test_scan_then_confirm_pins_the_key_and_audits_who_confirmed(sshd: SSHHost, admin: Any) -> None:
    api = APIClient()
    api.force_authenticate(admin)
    created = api.post("/api/v1/ssh-hosts/", {
        "name": "fresh-1", "address": sshd.address, "port": sshd.port,
        "private_key": sshd.client_key.private_text, "install": False,
    }, format="json")  # fmt: skip
    assert created.status_code == 201, created.data
    target_id = created.data["ssh_host"]["id"]

    shown = api.post(f"/api/v1/ssh-hosts/{target_id}/scan-host-key/", {}, format="json")
    assert shown.status_code == 200
    assert (shown.data["fingerprint"], shown.data["type"]) == (
        sshd.host_key.fingerprint, "ssh-ed25519",
    )  # fmt: skip
    assert SSHTarget.objects.get(pk=target_id).host_key_fingerprint == ""  # not trusted yet

    wrong = api.post(f"/api/v1/ssh-hosts/{target_id}/confirm-host-key/",
                     {"fingerprint": "SHA256:" + "B" * 43, "type": "ssh-ed25519"},
                     format="json")  # fmt: skip
    assert wrong.status_code == 400 and wrong.data["code"] == "host_key_mismatch"
    assert sshd.host_key.fingerprint in wrong.data["detail"]

    ok = api.post(f"/api/v1/ssh-hosts/{target_id}/confirm-host-key/",
                  {"fingerprint": shown.data["fingerprint"], "type": shown.data["type"]},
                  format="json")  # fmt: skip
    assert ok.status_code == 200, ok.data
    target = SSHTarget.objects.get(pk=target_id)
    assert (target.host_key_fingerprint, target.host_key_confirmed_by) == (
        sshd.host_key.fingerprint, admin,
    )  # fmt: skip
    entry = AuditEntry.objects.get(action="ssh-host-key-confirm")
    assert entry.username == "ada" and entry.detail["fingerprint"] == sshd.host_key.fingerprint
