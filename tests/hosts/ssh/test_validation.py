"""Strict validation of host-derived values and the pinned host-key policy (no network)."""

from __future__ import annotations

import paramiko
import pytest

from hosts.ssh import client, validation
from hosts.ssh.errors import SSHError


@pytest.mark.parametrize(
    ("check", "value", "field"),
    [
        (validation.validate_user, "root; rm -rf /", "user"),
        (validation.validate_user, "Root", "user"),
        (validation.validate_user, "a" * 33, "user"),
        (validation.validate_prefix, "/opt/$(reboot)", "install_prefix"),
        (validation.validate_prefix, "/opt/`id`", "install_prefix"),
        (validation.validate_prefix, "/opt/a b", "install_prefix"),
        (validation.validate_prefix, "opt/corral", "install_prefix"),
        (validation.validate_prefix, "/opt/../etc", "install_prefix"),
        (validation.validate_prefix, "/", "install_prefix"),
        (validation.validate_prefix, "/usr", "install_prefix"),
        (validation.validate_address, "host;reboot", "address"),
        (validation.validate_address, "-oProxyCommand=x", "address"),
        (validation.validate_address, "a..b", "address"),
        (validation.validate_port, 0, "port"),
        (validation.validate_port, 70000, "port"),
        (validation.validate_fingerprint, "MD5:aa:bb", "host_key_fingerprint"),
        (validation.validate_key_type, "ssh-dss", "host_key_type"),
    ],
)
def test_bad_values_are_refused_naming_the_field(check: object, value: object, field: str) -> None:
    with pytest.raises(SSHError) as err:
        check(value)  # type: ignore[operator]
    assert err.value.code == "invalid_input"
    assert err.value.message.startswith(f"{field}: ")
    assert err.value.extra["field"] == field


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (validation.validate_user, "deploy_user-1"),
        (validation.validate_prefix, "/opt/corral-agent"),
        (validation.validate_prefix, "/srv/corral/agent_1.2"),
        (validation.validate_address, "node-1.example.org"),
        (validation.validate_address, "10.0.0.5"),
        (validation.validate_address, "fe80::1"),
    ],
)
def test_good_values_pass(check: object, value: object) -> None:
    check(value)  # type: ignore[operator]


def test_pinned_policy_names_both_fingerprints_and_types() -> None:
    presented = paramiko.ECDSAKey.generate()
    policy = client.PinnedHostKeyPolicy("SHA256:" + "A" * 43, "ssh-ed25519")
    with pytest.raises(client.HostKeyMismatch) as err:
        policy.missing_host_key(paramiko.SSHClient(), "h", presented)
    assert str(err.value) == (
        f"host key mismatch: expected SHA256:{'A' * 43} (ssh-ed25519), "
        f"got {client.fingerprint(presented)} ({presented.get_name()})"
    )


def test_pinned_policy_accepts_the_pinned_key_only() -> None:
    key = paramiko.ECDSAKey.generate()
    policy = client.PinnedHostKeyPolicy(client.fingerprint(key), key.get_name())
    policy.missing_host_key(paramiko.SSHClient(), "h", key)  # no exception
    wrong_type = client.PinnedHostKeyPolicy(client.fingerprint(key), "ssh-ed25519")
    with pytest.raises(client.HostKeyMismatch):
        wrong_type.missing_host_key(paramiko.SSHClient(), "h", key)
