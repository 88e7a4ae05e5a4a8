"""Fixtures of the UI view tests; the actors themselves live in ``actors.py``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.frontend.actors import build_fleet


@pytest.fixture(autouse=True)
def _plain_http(settings: Any) -> None:
    """The test client speaks plain HTTP and static files are not collected in tests."""
    settings.SECURE_SSL_REDIRECT = False
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast tests
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def fleet(db: Any) -> dict[str, Any]:
    """Named actors, projects A and B, three hosts and one container per project."""
    return build_fleet()
