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
