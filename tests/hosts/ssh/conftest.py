"""Fixtures of the SSH bootstrap tests: a real sshd in a network namespace, staff actors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.hosts.ssh.sshd_support import SSHHost, ssh_host


@pytest.fixture
def sshd() -> Iterator[SSHHost]:
    with ssh_host() as host:
        yield host


@pytest.fixture
def admin(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ada", is_staff=True)


@pytest.fixture
def outsider(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("olga")


@pytest.fixture(autouse=True)
def fernet_key(settings: Any) -> str:
    """Tests run with DEBUG off (pytest-django), so they configure a key like production."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    settings.CORRAL = {**settings.CORRAL, "FERNET_KEYS": [key]}
    return key
