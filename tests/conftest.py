"""Test-wide fixtures: named actors, and the real-stack fixtures from tests/support."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.stack"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"DATABASE_URL={os.environ.get('DATABASE_URL', '(default sqlite)')}",
        f"CELERY_BROKER_URL={os.environ.get('CELERY_BROKER_URL', '(default filesystem)')}",
    ]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: object) -> None:
    """Actors are created in almost every test; PBKDF2 at full strength would dominate."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright keeps an event loop on the main thread for the rest of the
    session, and asyncio users that run after it (pyroute2) would find a loop already running."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
