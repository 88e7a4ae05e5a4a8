"""Secrets at rest: Fernet with rotation, the development key, the corral.E001 check."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from hosts import secrets
from hosts.models_ssh import SSHTarget


def keys(settings: Any, *values: str) -> None:
    settings.CORRAL = {**settings.CORRAL, "FERNET_KEYS": list(values)}


def test_encrypt_round_trips_and_hides_the_text(settings: Any) -> None:
    token = secrets.encrypt("-----BEGIN OPENSSH PRIVATE KEY----- s3cret")
    assert "s3cret" not in token
    assert secrets.decrypt(token) == "-----BEGIN OPENSSH PRIVATE KEY----- s3cret"


def test_prepended_key_encrypts_and_old_key_still_decrypts(settings: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys(settings, old)
    token = secrets.encrypt("pw")
    keys(settings, new, old)
    assert secrets.decrypt(token) == "pw"
    assert Fernet(new.encode()).decrypt(secrets.encrypt("pw").encode()) == b"pw"
    keys(settings, new)
    with pytest.raises(secrets.SecretError, match="CORRAL_FERNET_KEYS"):
        secrets.decrypt(token)


@pytest.mark.django_db
def test_rotate_secrets_re_encrypts_so_the_old_key_can_be_dropped(settings: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys(settings, old)
    target = SSHTarget.objects.create(
        name="n1", address="192.0.2.10", private_key_encrypted=secrets.encrypt("the key"),
        passphrase_encrypted=secrets.encrypt("the passphrase"),
    )  # fmt: skip
    keys(settings, new, old)
    call_command("rotate_secrets")
    keys(settings, new)
    target.refresh_from_db()
    assert secrets.decrypt(target.private_key_encrypted) == "the key"
    assert secrets.decrypt(target.passphrase_encrypted) == "the passphrase"


def test_development_key_is_generated_once_with_mode_0600(settings: Any, tmp_path: Path) -> None:
    keys(settings)
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path
    token = secrets.encrypt("x")
    path = tmp_path / "fernet.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert secrets.decrypt(token) == "x"
    assert path.read_text() == first


def test_production_without_keys_refuses_and_the_check_names_the_variable(
    settings: Any,
) -> None:
    keys(settings)
    settings.DEBUG = False
    with pytest.raises(ImproperlyConfigured, match="CORRAL_FERNET_KEYS"):
        secrets.encrypt("x")
    errors = secrets.check_fernet_keys()
    assert [e.id for e in errors] == ["corral.E001"]
    assert "CORRAL_FERNET_KEYS" in errors[0].msg


def test_check_names_a_malformed_key(settings: Any) -> None:
    keys(settings, Fernet.generate_key().decode(), "not-a-key")
    errors = secrets.check_fernet_keys()
    assert [e.id for e in errors] == ["corral.E001"]
    assert "key number 2" in errors[0].msg


def test_check_passes_with_a_key(settings: Any) -> None:
    keys(settings, Fernet.generate_key().decode())
    settings.DEBUG = False
    assert secrets.check_fernet_keys() == []
